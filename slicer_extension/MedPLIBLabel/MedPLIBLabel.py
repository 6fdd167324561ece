"""MedPLIB Label: ask a MedPLIB biomedical multimodal LLM (served by MONAI Label) about the slice you are looking at.

This file is the thin Slicer layer: the module description, the widget (Qt/MRML plumbing), the logic (MRML reads
and writes) and the in-Slicer self-test. Everything that can be pure Python (HTTP client, RAS/IJK geometry, wire
params, background jobs, chat history, undo stack) lives in the MedPLIBLabelLib package next to this file, which
imports no slicer/qt/ctk/vtk and is unit-tested outside Slicer.

Threading rule: the worker threads of MedPLIBLabelLib.jobs only run MedPLIBClient calls and file I/O. Every Qt,
VTK and MRML call below runs on Slicer's main thread (the widget polls the jobs with a qt.QTimer).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedPLIBLabelLib import (BackgroundJob, BoxPrompt, ChatHistory, ClientError, JobRunner, MedPLIBClient,
                            ObliqueSliceError, PointPrompt, PromptError, ScribblePrompt, SliceOutsideVolumeError,
                            UndoStack, Unauthorized, build_infer_params, ijk_to_ras, label_outside_slice,
                            masks_from_label, point_on_view, ras_to_ijk, read_slice,
                            roi_corners_world, slice_axis_from_normal, slice_index, slice_spacing,
                            standard_slice_to_ras, write_slice)
from MedPLIBLabelLib.codec import file_extension

logger = logging.getLogger("MedPLIBLabel")

SETTINGS_URL = "MedPLIBLabel/serverUrl"
SETTINGS_URL_HISTORY = "MedPLIBLabel/serverUrlHistory"
SETTINGS_UPLOAD_OK = "MedPLIBLabel/dontAskBeforeUpload"
DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_ID_ATTR = "MedPLIBLabel.ImageId"
SERVER_ATTR = "MedPLIBLabel.ServerUrl"
PROMPT_ATTR = "MedPLIBLabel.Prompt"
CLIENT_TIMEOUT_S = 30.0  # connect / info / datastore calls (per socket operation)
SLICE_TIMEOUT_S = 300.0  # one slice (the first request also loads the model)
VOLUME_TIMEOUT_S = 1800.0  # every slice of a volume
POLL_MS = 100
TRAIN_POLL_MS = 5000
VIEW_NAMES = ("Red", "Yellow", "Green")
SEGMENT_COLORS = [(0.90, 0.49, 0.13), (0.16, 0.67, 0.35), (0.20, 0.47, 0.85), (0.85, 0.20, 0.35),
                  (0.62, 0.36, 0.80), (0.95, 0.80, 0.20), (0.15, 0.75, 0.80), (0.55, 0.55, 0.55)]

# (kind, MRML class, node name, colour, positive)
PROMPT_KINDS = (
    ("positive", "vtkMRMLMarkupsFiducialNode", "MedPLIB positive points", (0.2, 0.85, 0.3), True),
    ("negative", "vtkMRMLMarkupsFiducialNode", "MedPLIB negative points", (0.95, 0.25, 0.25), False),
    ("box", "vtkMRMLMarkupsROINode", "MedPLIB box", (1.0, 0.85, 0.1), True),
    ("scribble", "vtkMRMLMarkupsCurveNode", "MedPLIB scribble", (1.0, 0.55, 0.1), True),
    ("lasso", "vtkMRMLMarkupsClosedCurveNode", "MedPLIB lasso", (0.2, 0.8, 0.95), True),
)

DISCLAIMER = ("<b>Research use only - not for clinical use.</b> MedPLIB answers and masks are produced by a "
              "machine-learning model, may be wrong, and must not be used for diagnosis or treatment.")


def userMessage(exc: BaseException) -> str:
    """The plain-English message of a Lib error (``user_message``), else the exception text."""
    return getattr(exc, "user_message", "") or str(exc) or type(exc).__name__


#
# MedPLIBLabel
#


class MedPLIBLabel(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedPLIB Label"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["MedPLIB Label developers"]
        self.parent.helpText = (
            "Ask questions about the slice shown in the Red, Yellow or Green view and get grounded segmentations "
            "from a <b>MedPLIB</b> model served by a <b>MONAI Label</b> server. Place positive/negative points, a "
            "box, a scribble or a lasso on the current slice, type a question and press <i>Ask</i>; or segment a "
            "named structure on the whole volume. Answers are kept in a chat history per volume, masks go into "
            "named segments (Ctrl+Z undoes the last result), labels can be submitted to the server and the model "
            "retrained.<br><br>" + DISCLAIMER + "<br><br>See slicer_extension/README.md for set-up and the "
            "self-test.")
        self.parent.acknowledgementText = (
            "MedPLIB (Huang et al., 'Towards a Multimodal Large Language Model with Pixel-Level Insight for "
            "Biomedicine'), MONAI Label and 3D Slicer. The module's layout follows the MONAI Label Slicer plugin "
            "and SlicerNNInteractive.")


#
# MedPLIBLabelWidget
#


class MedPLIBLabelWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt plumbing only: every request runs in a MedPLIBLabelLib job polled by a QTimer; MRML work is delegated to
    MedPLIBLabelLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.client = None
        self.serverInfo = None
        self.runner = JobRunner()  # user actions: one at a time
        self.statusRunner = JobRunner()  # training status polls, never blocks the user's requests
        self.history = ChatHistory()
        self.undoStack = UndoStack()
        self.pollTimer = None
        self.trainingTimer = None
        self.undoShortcut = None
        self.lastPromptView = None  # the view the last prompt was placed in
        self.lastHoveredView = None  # the slice view the mouse was last over
        self.crosshairNode = None
        self.busyWhat = ""
        self.turnCounter = 0
        self.tmpdir = None
        self._observedPromptNodes = []

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedPLIBLabel.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedPLIBLabelLogic()
        self.tmpdir = tempfile.mkdtemp(prefix="MedPLIBLabel-")

        self.ui.disclaimerLabel.setText(DISCLAIMER)
        self.ui.progressWidget.hide()
        self.loadServerHistory()

        for placeWidget in self.placeWidgets().values():
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.buttonsVisible = False
            placeWidget.placeButton().show()
            placeWidget.deleteButton().show()
        self.ui.boxPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        for name in ("positivePointsPlaceWidget", "negativePointsPlaceWidget", "scribblePlaceWidget",
                     "lassoPlaceWidget"):
            getattr(self.ui, name).placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        # Server
        self.ui.testConnectionButton.connect("clicked()", self.onTestConnection)
        self.ui.serverComboBox.lineEdit().connect("returnPressed()", self.onTestConnection)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateButtons)
        # Volume
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolumeChanged)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.nextSampleButton.connect("clicked()", self.onNextSample)
        self.ui.uploadVolumeButton.connect("clicked()", self.onUploadVolume)
        # Prompts
        self.ui.clearPromptsButton.connect("clicked()", self.onClearPrompts)
        # Ask
        self.ui.askButton.connect("clicked()", self.onAsk)
        self.ui.questionLineEdit.connect("returnPressed()", self.onAsk)
        self.ui.segmentVolumeButton.connect("clicked()", self.onSegmentVolume)
        self.ui.undoButton.connect("clicked()", self.onUndo)
        self.ui.cancelButton.connect("clicked()", self.onCancel)
        self.ui.clearChatButton.connect("clicked()", self.onClearChat)
        # Active learning
        self.ui.submitLabelButton.connect("clicked()", self.onSubmitLabel)
        self.ui.trainButton.connect("clicked()", self.onTrain)
        self.ui.stopTrainButton.connect("clicked()", self.onStopTraining)
        self.ui.refreshTrainingButton.connect("clicked()", self.onRefreshTraining)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.trainingTimer = qt.QTimer()
        self.trainingTimer.setInterval(TRAIN_POLL_MS)
        self.trainingTimer.connect("timeout()", self.onRefreshTraining)

        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:
            self.undoShortcut = qt.QShortcut(qt.QKeySequence("Ctrl+Z"), mainWindow)
            self.undoShortcut.setEnabled(False)  # only while the module is shown (enter/exit)
            self.undoShortcut.connect("activated()", self.onUndo)
            self.undoShortcut.connect("activatedAmbiguously()", self.onUndo)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.setupPromptNodes()
        self.observeCrosshair()
        self.onVolumeChanged(self.ui.inputVolumeSelector.currentNode())

    def cleanup(self) -> None:
        self.runner.cancel()
        self.statusRunner.cancel()
        for timer in (self.pollTimer, self.trainingTimer):
            if timer is not None:
                timer.stop()
        if self.undoShortcut is not None:
            self.undoShortcut.setEnabled(False)
            self.undoShortcut.setParent(None)
            self.undoShortcut.deleteLater()
            self.undoShortcut = None
        self.removeObservers()
        self._observedPromptNodes = []
        self.crosshairNode = None
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def enter(self) -> None:
        self.setupPromptNodes()
        if self.undoShortcut is not None:
            self.undoShortcut.setEnabled(True)

    def exit(self) -> None:
        if self.undoShortcut is not None:
            self.undoShortcut.setEnabled(False)
        for placeWidget in self.placeWidgets().values():
            placeWidget.setPlaceModeEnabled(False)

    def onReload(self) -> None:
        """Developer "Reload": also reload the Lib, which Slicer's reload does not touch."""
        order = ["errors", "codec", "geometry", "protocol", "jobs", "history", "client"]  # dependencies first
        loaded = [n for n in sys.modules if n.startswith("MedPLIBLabelLib.")]
        loaded.sort(key=lambda n: order.index(n.split(".", 1)[1]) if n.split(".", 1)[1] in order else len(order))
        for name in loaded + (["MedPLIBLabelLib"] if "MedPLIBLabelLib" in sys.modules else []):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        self.runner.cancel()
        self.undoStack.clear()
        self.history.clear()
        self.removePromptObservers()
        self.ui.progressWidget.hide()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.setupPromptNodes()
        self.observeCrosshair()
        self.refreshChat()
        self.updateButtons()

    # ------------------------------------------------------------------ prompts
    def placeWidgets(self) -> dict:
        return {"positive": self.ui.positivePointsPlaceWidget, "negative": self.ui.negativePointsPlaceWidget,
                "box": self.ui.boxPlaceWidget, "scribble": self.ui.scribblePlaceWidget,
                "lasso": self.ui.lassoPlaceWidget}

    def setupPromptNodes(self) -> None:
        """(Re)create the prompt markups nodes, give them to the place widgets and observe them."""
        self.removePromptObservers()
        for kind, placeWidget in self.placeWidgets().items():
            node = self.logic.getPromptNode(kind)
            placeWidget.setCurrentNode(node)
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPromptPlaced)
            for event in (slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
                          slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent):
                self.addObserver(node, event, self.onPromptModified)
            self._observedPromptNodes.append(node)
        self.updatePromptSummary()

    def removePromptObservers(self) -> None:
        for node in self._observedPromptNodes:
            self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPromptPlaced)
            for event in (slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
                          slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent):
                self.removeObserver(node, event, self.onPromptModified)
        self._observedPromptNodes = []

    def onPromptPlaced(self, caller, event) -> None:
        # The mouse is over the view the prompt was just placed in: remember it (never assume Red).
        view = self.logic.viewUnderMouse()
        if view:
            self.lastPromptView = view
        self.updatePromptSummary()

    def onPromptModified(self, caller, event) -> None:
        self.updatePromptSummary()

    def onClearPrompts(self) -> None:
        for placeWidget in self.placeWidgets().values():
            placeWidget.setPlaceModeEnabled(False)
        self.logic.clearPrompts()
        self.lastPromptView = None
        self.setupPromptNodes()  # the box node is recreated so that a new box can be drawn

    def updatePromptSummary(self) -> None:
        counts = self.logic.promptCounts()
        parts = [f"{n} {label}" for label, n in counts.items() if n]
        where = f" on the {self.lastPromptView} view" if self.lastPromptView and parts else ""
        self.ui.promptSummaryLabel.setText(("Prompts: " + ", ".join(parts) + where + ".") if parts
                                           else "No prompts: the question is about the whole slice.")

    def observeCrosshair(self) -> None:
        """Track the slice view the mouse was last over: a question without prompts is about that view's slice."""
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is self.crosshairNode:
            return
        if self.crosshairNode is not None:
            self.removeObserver(self.crosshairNode, slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent,
                                self.onCursorMoved)
        self.crosshairNode = crosshair
        if crosshair is not None:
            self.addObserver(crosshair, slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self.onCursorMoved)

    def onCursorMoved(self, caller, event) -> None:
        view = self.logic.viewUnderMouse()
        if view:
            self.lastHoveredView = view

    def targetView(self, prompts) -> str:
        """The view whose current slice is sent: the one chosen in the UI, else the one all prompts lie on (the
        view of the last prompt first), else the view the mouse was last over. Never assumes Red."""
        choice = self.ui.promptViewComboBox.currentText
        if choice in VIEW_NAMES:
            return choice
        return self.logic.chooseView(self.ui.inputVolumeSelector.currentNode(), prompts,
                                     preferred=self.lastPromptView or self.lastHoveredView
                                     or self.logic.viewUnderMouse())

    # ------------------------------------------------------------------ server
    def loadServerHistory(self) -> None:
        settings = qt.QSettings()
        history = [u for u in str(settings.value(SETTINGS_URL_HISTORY, "") or "").split(";") if u]
        current = str(settings.value(SETTINGS_URL, "") or "") or DEFAULT_URL
        self.ui.serverComboBox.clear()
        for url in [current] + [u for u in history if u != current]:
            self.ui.serverComboBox.addItem(url)
        self.ui.serverComboBox.setCurrentIndex(0)

    def saveServerHistory(self, url: str) -> None:
        settings = qt.QSettings()
        history = [u for u in str(settings.value(SETTINGS_URL_HISTORY, "") or "").split(";") if u and u != url]
        settings.setValue(SETTINGS_URL, url)
        settings.setValue(SETTINGS_URL_HISTORY, ";".join([url] + history[:9]))

    def serverUrl(self) -> str:
        return self.ui.serverComboBox.currentText.strip() or DEFAULT_URL

    def onTestConnection(self) -> None:
        try:
            # A new client per connection: the token is kept in memory only, never saved.
            client = MedPLIBClient(self.serverUrl(), token=self.ui.tokenLineEdit.text.strip() or None,
                                   timeout=CLIENT_TIMEOUT_S)
        except ClientError as exc:
            self.setServerStatus(userMessage(exc), error=True)
            return
        self.setServerStatus(f"Connecting to {client.url} ...")
        self.submit("Connecting", client.test_connection, onDone=lambda info: self.onConnected(client, info),
                    onError=self.onConnectionFailed)

    def onConnected(self, client, info) -> None:
        self.client, self.serverInfo = client, info
        self.saveServerHistory(client.url)
        previous = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.clear()
        names = sorted(info.models, key=lambda n: (n != "medplib", "medplib" not in n.lower(), n))
        for name in names:
            model = info.models[name]
            self.ui.modelComboBox.addItem(name)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, model.description, qt.Qt.ToolTipRole)
        if previous in names:
            self.ui.modelComboBox.setCurrentIndex(names.index(previous))
        current = self.ui.segmentNameComboBox.currentText
        self.ui.segmentNameComboBox.clear()
        for label in sorted(info.labels, key=lambda n: info.labels[n]):
            self.ui.segmentNameComboBox.addItem(label)
        self.ui.segmentNameComboBox.setEditText(current)
        if info.strategies:
            strategy = self.ui.strategyComboBox.currentText
            self.ui.strategyComboBox.clear()
            for name in info.strategies:
                self.ui.strategyComboBox.addItem(name)
            if strategy in info.strategies:
                self.ui.strategyComboBox.setCurrentIndex(info.strategies.index(strategy))
        device = info.medplib.get("device") if isinstance(info.medplib, dict) else None
        self.setServerStatus(f"Connected: {info.summary()}" + (f"; device {device}" if device else ""))
        self.updateButtons()

    def onConnectionFailed(self, exc) -> None:
        self.client, self.serverInfo = None, None
        self.ui.modelComboBox.clear()
        hint = " Enter a valid access token." if isinstance(exc, Unauthorized) else ""
        self.setServerStatus(userMessage(exc) + hint, error=True)
        self.updateButtons()

    def setServerStatus(self, text: str, error: bool = False) -> None:
        self.ui.serverStatusLabel.setText(text)
        self.ui.serverStatusLabel.setStyleSheet("color: #c0392b;" if error else "")

    def requireConnection(self) -> bool:
        if self.client is None:
            slicer.util.warningDisplay("Connect to a MedPLIB Label server first (Server section, "
                                       "'Test connection').", windowTitle="MedPLIB Label")
            return False
        return True

    # ------------------------------------------------------------------ jobs
    def submit(self, what: str, fn, *args, onDone=None, onError=None, **kwargs) -> bool:
        """Run ``fn`` (a Lib client call; no Qt/MRML inside) in the background and poll it from the timer."""
        if self.runner.busy:
            slicer.util.showStatusMessage("MedPLIB Label: a request is still running; wait or cancel it.", 3000)
            return False
        self.busyWhat = what
        self.runner.submit(fn, *args, on_done=onDone, on_error=onError or (lambda exc: self.onJobError(what, exc)),
                           name=what, **kwargs)
        self.pollTimer.start()
        self.updateButtons()
        return True

    def onPoll(self) -> None:
        state = self.runner.poll()  # runs the callbacks here, on the main thread
        self.statusRunner.poll()
        if self.runner.busy:
            if self.runner.show_progress:  # only after ~2 s, so quick answers don't flash a progress bar
                self.ui.progressLabel.setText(self.runner.status_text(self.busyWhat))
                self.ui.progressWidget.show()
            return
        self.ui.progressWidget.hide()
        if not self.statusRunner.busy:
            self.pollTimer.stop()
        if state != "running":
            self.updateButtons()

    def onCancel(self) -> None:
        if self.runner.cancel():
            slicer.util.showStatusMessage(f"MedPLIB Label: cancelled ({self.busyWhat}); the server may still "
                                          "finish the request, its answer is discarded.", 5000)
        self.ui.progressWidget.hide()
        self.updateButtons()

    def onJobError(self, what: str, exc: BaseException) -> None:
        logger.error("%s failed: %r", what, exc)
        message = userMessage(exc)
        if isinstance(exc, Unauthorized):
            message += "\n\nEnter an access token in the Server section and test the connection again."
        slicer.util.errorDisplay(f"{what} failed:\n{message}", windowTitle="MedPLIB Label",
                                 detailedText=f"{type(exc).__name__}: {exc}")

    def updateButtons(self, *unused) -> None:
        connected = self.client is not None
        busy = self.runner.busy
        volume = self.ui.inputVolumeSelector.currentNode()
        hasModel = bool(self.ui.modelComboBox.currentText)
        self.ui.testConnectionButton.enabled = not busy
        self.ui.nextSampleButton.enabled = connected and not busy
        self.ui.uploadVolumeButton.enabled = connected and not busy and volume is not None
        self.ui.askButton.enabled = connected and hasModel and not busy and volume is not None
        self.ui.segmentVolumeButton.enabled = connected and hasModel and not busy and volume is not None
        self.ui.undoButton.enabled = bool(self.undoStack) and not busy
        self.ui.submitLabelButton.enabled = connected and not busy and volume is not None and \
            self.ui.segmentationSelector.currentNode() is not None
        self.ui.trainButton.enabled = connected and not busy
        self.ui.stopTrainButton.enabled = connected and not busy
        self.ui.refreshTrainingButton.enabled = connected
        self.ui.cancelButton.enabled = busy
        imageId = self.logic.imageIdOf(volume, self.client.url if connected else None) if volume else None
        self.ui.imageIdLabel.setText(imageId or ("not on the server yet (uploaded on the first question)"
                                                 if volume else "-"))

    # ------------------------------------------------------------------ volume
    def onVolumeChanged(self, volume) -> None:
        segmentation = self.logic.segmentationFor(volume) if volume is not None else None
        if segmentation is not None:
            self.ui.segmentationSelector.setCurrentNode(segmentation)
        self.refreshChat()
        self.updateButtons()

    def onNextSample(self) -> None:
        if not self.requireConnection():
            return
        strategy = self.ui.strategyComboBox.currentText or "random"
        self.submit("Fetching the next sample", fetchSample, self.client, strategy, self.tmpdir,
                    onDone=self.onSampleFetched)

    def onSampleFetched(self, fetched) -> None:
        if fetched is None:
            slicer.util.infoDisplay("The server has no more images to label with this strategy.",
                                    windowTitle="MedPLIB Label")
            return
        info, path = fetched
        try:
            volume = self.logic.loadSample(path, str(info["id"]), self.client.url)
        finally:
            _remove(path)
        self.ui.inputVolumeSelector.setCurrentNode(volume)
        self.ui.segmentationSelector.setCurrentNode(self.logic.ensureSegmentation(volume, None))
        self.onClearPrompts()
        slicer.util.showStatusMessage(f"MedPLIB Label: loaded sample {info['id']}", 3000)

    def askUploadPermission(self) -> bool:
        return slicer.util.confirmOkCancelDisplay(
            "The voxels and geometry of the selected volume (no patient name or other DICOM information) will be "
            f"sent to the MedPLIB server at {self.client.url} and stored in its datastore.\n\nContinue?",
            windowTitle="MedPLIB Label: send image data", dontShowAgainSettingsKey=SETTINGS_UPLOAD_OK)

    def onUploadVolume(self) -> None:
        self.uploadVolume()

    def uploadVolume(self, then=None) -> None:
        """Privacy confirmation, write the volume (main thread), upload it in the background, then ``then()``."""
        if not self.requireConnection():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None or not self.askUploadPermission():
            return
        imageId = self.logic.newImageId(volume)
        path = os.path.join(self.tmpdir, imageId + ".nii.gz")
        try:
            with slicer.util.tryWithErrorDisplay("Could not write the volume for upload.", waitCursor=True):
                self.logic.saveVolume(volume, path)
        except Exception:
            return
        url = self.client.url

        def uploaded(serverId):
            self.logic.setImageId(volume, serverId or imageId, url)
            self.updateButtons()
            slicer.util.showStatusMessage(f"MedPLIB Label: uploaded as {serverId or imageId}", 3000)
            if callable(then):
                then()

        self.submit("Uploading the volume", uploadFile, self.client, path, imageId, onDone=uploaded)

    # ------------------------------------------------------------------ ask
    def onAsk(self) -> None:
        self.ask(scope="slice")

    def onSegmentVolume(self) -> None:
        self.ask(scope="volume")

    def ask(self, scope: str) -> None:
        if not self.requireConnection():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None:
            slicer.util.warningDisplay("Select or load a volume first.", windowTitle="MedPLIB Label")
            return
        question = self.ui.questionLineEdit.text.strip()
        segmentName = self.ui.segmentNameComboBox.currentText.strip()
        if scope == "volume" and not (question or segmentName):
            slicer.util.warningDisplay("Type what to segment (a question or a segment name) for the whole volume.",
                                       windowTitle="MedPLIB Label")
            return
        imageId = self.logic.imageIdOf(volume, self.client.url)
        if not imageId:  # a local volume: upload it first (after the privacy confirmation), then ask
            self.uploadVolume(then=lambda: self.ask(scope))
            return
        try:
            prompts = self.logic.collectPrompts(volume) if scope == "slice" else []
            view = self.targetView(prompts)
            request = self.logic.buildRequest(volume, self.logic.sliceNodeForView(view), prompts, question=question,
                                              segmentName=segmentName, task=self.ui.taskComboBox.currentText,
                                              scope=scope, viewName=view)
        except (PromptError, ObliqueSliceError, SliceOutsideVolumeError, ValueError) as exc:
            slicer.util.warningDisplay(userMessage(exc), windowTitle="MedPLIB Label")
            return
        params, context = request
        context["segmentationID"] = self.logic.ensureSegmentation(
            volume, self.ui.segmentationSelector.currentNode()).GetID()
        self.ui.segmentationSelector.setCurrentNodeID(context["segmentationID"])
        model = self.ui.modelComboBox.currentText
        where = f"{view} slice {context['index']}" if scope == "slice" else "whole volume"
        self.submit(f"Asking MedPLIB ({where})", self.client.infer, model, imageId, params,
                    timeout=SLICE_TIMEOUT_S if scope == "slice" else VOLUME_TIMEOUT_S,
                    onDone=lambda result: self.onAnswer(result, context),
                    onError=lambda exc: self.onAnswerFailed(exc, context))

    def onAnswer(self, result, context) -> None:
        volume = slicer.mrmlScene.GetNodeByID(context["volumeID"])
        segmentation = slicer.mrmlScene.GetNodeByID(context["segmentationID"])
        masks = {}
        try:
            # seg_count 0: a text-only answer. The server still attaches an empty label volume, which must not
            # wipe the slice of the named segment.
            if volume is not None and segmentation is not None and result.label_path and result.label_names \
                    and result.seg_count > 0:
                self.turnCounter += 1
                group = (context["segmentationID"], context["volumeID"], self.turnCounter)
                masks = self.logic.applyResult(result, context, segmentation, self.undoStack, group)
        except Exception as exc:
            logger.exception("applying the answer failed")
            slicer.util.errorDisplay(f"The answer arrived but its mask could not be applied:\n{exc}",
                                     windowTitle="MedPLIB Label")
        finally:
            if result.label_path:
                _remove(result.label_path)
        self.history.record(context["volumeID"], context["shownQuestion"], result.answer or "(no text answer)",
                            masks=masks, task=result.task, axis=context["axis"],
                            slice=context["index"] if context["scope"] == "slice" else None,
                            latency_ms=result.latency_ms)
        self.refreshChat()
        self.updateButtons()

    def onAnswerFailed(self, exc, context) -> None:
        self.history.record(context["volumeID"], context["shownQuestion"], "", error=userMessage(exc),
                            axis=context["axis"], slice=context["index"] if context["scope"] == "slice" else None)
        self.refreshChat()
        self.onJobError("Asking MedPLIB", exc)

    def refreshChat(self) -> None:
        volume = self.ui.inputVolumeSelector.currentNode()
        html = self.history.to_html(volume.GetID()) if volume is not None else ""
        self.ui.chatBrowser.setHtml(html or "<p><i>Questions and answers about this volume appear here.</i></p>")
        scrollBar = self.ui.chatBrowser.verticalScrollBar()
        scrollBar.setValue(scrollBar.maximum)

    def onClearChat(self) -> None:
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is not None:
            self.history.clear(volume.GetID())
        self.refreshChat()

    def onUndo(self) -> None:
        if self.runner.busy:
            slicer.util.showStatusMessage("MedPLIB Label: wait for the running request (or cancel it) to undo.", 3000)
            return
        if not self.undoStack:
            slicer.util.showStatusMessage("MedPLIB Label: nothing to undo.", 2000)
            return
        restored = self.logic.undoLast(self.undoStack)
        slicer.util.showStatusMessage(f"MedPLIB Label: undid the last result ({', '.join(restored)})."
                                      if restored else "MedPLIB Label: nothing to undo.", 3000)
        self.updateButtons()

    # ------------------------------------------------------------------ active learning
    def onSubmitLabel(self) -> None:
        if not self.requireConnection():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.segmentationSelector.currentNode()
        imageId = self.logic.imageIdOf(volume, self.client.url) if volume else None
        if not imageId:
            slicer.util.warningDisplay("This volume is not on the server: fetch it with 'Next sample' or upload it "
                                       "first.", windowTitle="MedPLIB Label")
            return
        path = os.path.join(self.tmpdir, imageId + "_label.nii.gz")
        try:
            labelNames = self.logic.writeLabel(volume, segmentation, self.serverInfo.labels, path)
        except ValueError as exc:
            slicer.util.warningDisplay(str(exc), windowTitle="MedPLIB Label")
            return
        self.submit("Submitting the label", submitLabel, self.client, imageId, path, labelNames,
                    onDone=lambda res: slicer.util.showStatusMessage(
                        f"MedPLIB Label: label of {imageId} saved ({', '.join(labelNames)}).", 5000))

    def trainerName(self) -> str:
        trainers = list(self.serverInfo.trainers) if self.serverInfo else []
        model = self.ui.modelComboBox.currentText
        return model if model in trainers else (trainers[0] if trainers else "medplib")

    def onTrain(self) -> None:
        if not self.requireConnection():
            return
        self.submit("Starting training", self.client.train, self.trainerName(),
                    onDone=lambda res: (self.ui.trainingStatusLabel.setText("Training: started"),
                                        self.trainingTimer.start()))

    def onStopTraining(self) -> None:
        if self.requireConnection():
            self.submit("Stopping training", self.client.stop_training, onDone=lambda res: self.onRefreshTraining())

    def onRefreshTraining(self) -> None:
        if self.client is None or self.statusRunner.busy:
            return
        self.statusRunner.submit(self.client.train_status, on_done=self.onTrainingStatus,
                                 on_error=lambda exc: self.ui.trainingStatusLabel.setText(
                                     "Training status unavailable: " + userMessage(exc)), name="training status")
        self.pollTimer.start()

    def onTrainingStatus(self, status) -> None:
        text = trainingStatusText(status)
        self.ui.trainingStatusLabel.setText(text)
        if not text.startswith("Training: RUNNING"):
            self.trainingTimer.stop()


def trainingStatusText(status) -> str:
    """One line for the training status label from GET /train/ (a task dict, or None)."""
    if not status:
        return "Training: none run yet"
    if isinstance(status, list):
        status = status[-1] if status else {}
    state = str(status.get("status", "unknown")).upper()
    details = status.get("details") or []
    last = str(details[-1]).strip() if details else ""
    return f"Training: {state}" + (f" - {last[:200]}" if last else "")


# Worker functions: they run in a MedPLIBLabelLib job thread, so they only use the client and files.
def fetchSample(client, strategy: str, tmpdir: str):
    info = client.next_sample(strategy)
    if not info:
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(info["id"])) or "sample"
    path = os.path.join(tmpdir, safe + file_extension(info.get("path") or info.get("name") or ""))
    client.download_image(str(info["id"]), path)
    return info, path


def uploadFile(client, path: str, imageId: str) -> str:
    try:
        return client.upload_image(path, imageId)
    finally:
        _remove(path)


def submitLabel(client, imageId: str, path: str, labelNames: dict) -> dict:
    try:
        return client.save_label(imageId, path, labelNames)
    finally:
        _remove(path)


def removeNodeWithHelpers(node) -> None:
    """Remove a temporary volume node with its display and storage nodes."""
    if node is None:
        return
    helpers = [node.GetStorageNode()] + [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    slicer.mrmlScene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(helper)


def _remove(path) -> None:
    try:
        if path and os.path.exists(path):
            os.remove(path)
    except OSError:
        pass


#
# MedPLIBLabelLogic
#


class MedPLIBLabelLogic(ScriptedLoadableModuleLogic):
    """MRML reads and writes around the pure Lib: prompt nodes, geometry matrices, request context, segments and
    undo. Usable without the widget (the self-test drives it directly)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    # ------------------------------------------------------------------ prompt nodes
    def getPromptNode(self, kind: str):
        spec = {k[0]: k for k in PROMPT_KINDS}[kind]
        _, className, name, color, _ = spec
        for node in slicer.util.getNodesByClass(className):
            if node.GetAttribute(PROMPT_ATTR) == kind:
                return node
        node = slicer.mrmlScene.AddNewNodeByClass(className, name)
        node.SetAttribute(PROMPT_ATTR, kind)
        node.SetSaveWithScene(False)  # prompts are transient; the answers live in segments and the chat
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetTextScale(0)
        if kind in ("scribble", "lasso"):
            node.SetCurveTypeToLinear()  # send the stroke as drawn (no spline overshoot)
        if kind == "box":
            display.SetFillOpacity(0.1)
        return node

    def clearPrompts(self) -> None:
        for kind, className, _, _, _ in PROMPT_KINDS:
            node = self.getPromptNode(kind)
            if kind == "box":
                slicer.mrmlScene.RemoveNode(node)  # a fresh ROI node is the reliable way to draw a new box
            else:
                node.RemoveAllControlPoints()

    @staticmethod
    def _definedPointsWorld(node) -> list:
        points = []
        for i in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(i) != slicer.vtkMRMLMarkupsNode.PositionDefined:
                continue  # skip the preview point that follows the mouse while placing
            p = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, p)
            points.append(p)
        return points

    @staticmethod
    def _roiDefined(roi) -> bool:
        size = [0.0, 0.0, 0.0]
        roi.GetSizeWorld(size)
        return sum(1 for s in size if s > 1e-6) >= 2

    def promptCounts(self) -> dict:
        counts = {}
        for kind, _, _, _, _ in PROMPT_KINDS:
            node = self.getPromptNode(kind)
            if kind == "box":
                counts["box"] = 1 if self._roiDefined(node) else 0
            elif kind in ("positive", "negative"):
                counts[f"{kind} point(s)"] = len(self._definedPointsWorld(node))
            else:
                counts[kind] = 1 if len(self._definedPointsWorld(node)) >= 2 else 0
        return counts

    def collectPrompts(self, volume=None) -> list:
        """The Lib prompts (world coordinates) from the prompt markups nodes."""
        prompts = []
        for positive in (True, False):
            node = self.getPromptNode("positive" if positive else "negative")
            prompts += [PointPrompt(ras=p, positive=positive) for p in self._definedPointsWorld(node)]
        roi = self.getPromptNode("box")
        if self._roiDefined(roi):
            center, size = [0.0] * 3, [0.0] * 3
            roi.GetCenterWorld(center)
            roi.GetSizeWorld(size)
            axes = []
            for getter in (roi.GetXAxisWorld, roi.GetYAxisWorld, roi.GetZAxisWorld):
                a = [0.0] * 3
                getter(a)
                axes.append(a)
            corners = roi_corners_world(center, size, axes)
            if volume is not None:
                # A rotated ROI: the volume-axis-aligned box around its 8 corners, given back as 2 world corners.
                ijkToRas, parent, _ = self.volumeGeometry(volume)
                ijk = ras_to_ijk(corners, ijkToRas, parent)
                lo, hi = ijk_to_ras(ijk.min(axis=0), ijkToRas, parent), ijk_to_ras(ijk.max(axis=0), ijkToRas, parent)
            else:
                lo, hi = corners.min(axis=0), corners.max(axis=0)
            prompts.append(BoxPrompt(corner_a=[float(v) for v in lo], corner_b=[float(v) for v in hi]))
        strokes = []
        for kind in ("scribble", "lasso"):
            points = self._definedPointsWorld(self.getPromptNode(kind))
            if len(points) >= 2:
                if kind == "lasso":
                    points = points + [points[0]]  # closed curve: back to the start
                strokes.append(ScribblePrompt(ras_points=points))
        return prompts + strokes

    @staticmethod
    def promptPointsWorld(prompts) -> list:
        points = []
        for p in prompts:
            if isinstance(p, PointPrompt):
                points.append(list(p.ras))
            elif isinstance(p, BoxPrompt):
                points.append([(a + b) / 2.0 for a, b in zip(p.corner_a, p.corner_b)])
            elif isinstance(p, ScribblePrompt):
                points += [list(q) for q in p.ras_points]
        return points

    # ------------------------------------------------------------------ views and geometry
    @staticmethod
    def viewNames() -> list:
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            return list(layoutManager.sliceViewNames())
        return [n.GetLayoutName() for n in slicer.util.getNodesByClass("vtkMRMLSliceNode")]

    @staticmethod
    def sliceNodeForView(viewName: str):
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            widget = layoutManager.sliceWidget(viewName)
            if widget is not None:
                return widget.mrmlSliceNode()
        for node in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
            if node.GetLayoutName() == viewName:
                return node
        raise ValueError(f"There is no {viewName} slice view in the current layout.")

    @staticmethod
    def viewUnderMouse():
        """The layout name of the slice view under the mouse (the view a point was just placed in), or None."""
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is None:
            return None
        xyz = [0.0, 0.0, 0.0]
        sliceNode = crosshair.GetCursorPositionXYZ(xyz)
        return sliceNode.GetLayoutName() if sliceNode is not None else None

    @staticmethod
    def matrix(vtkMatrix) -> np.ndarray:
        return slicer.util.arrayFromVTKMatrix(vtkMatrix)

    def volumeGeometry(self, volume):
        """(IJK->RAS 4x4, parent-to-world 4x4 or None, IJK dims) of a volume, as the Lib expects them."""
        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        parent = None
        transformNode = volume.GetParentTransformNode()
        if transformNode is not None:
            if not transformNode.IsTransformToWorldLinear():
                raise ValueError("The volume is under a non-linear transform. Harden the transform first.")
            p = vtk.vtkMatrix4x4()
            transformNode.GetMatrixTransformToWorld(p)
            parent = self.matrix(p)
        dims = list(volume.GetImageData().GetDimensions())
        return self.matrix(m), parent, dims

    def sliceToRas(self, sliceNode) -> np.ndarray:
        return self.matrix(sliceNode.GetSliceToRAS())

    def chooseView(self, volume, prompts, preferred=None) -> str:
        """The slice view all prompts lie on (``preferred`` first), else ``preferred``, else Red.

        Raises PromptError when there are prompts but no view shows all of them on its current slice.
        """
        names = self.viewNames()
        order = ([preferred] if preferred in names else []) + [n for n in VIEW_NAMES if n in names and n != preferred]
        order += [n for n in names if n not in order]
        points = self.promptPointsWorld(prompts)
        if not points or volume is None:
            return order[0] if order else "Red"
        ijkToRas, parent, _ = self.volumeGeometry(volume)
        for name in order:
            sliceToRas = self.sliceToRas(self.sliceNodeForView(name))
            try:
                spacing = slice_spacing(ijkToRas, sliceToRas, parent)
            except ObliqueSliceError:
                continue
            if all(point_on_view(p, sliceToRas, spacing) for p in points):
                return name
        raise PromptError("The prompts are not all on the current slice of one view (Red, Yellow or Green). "
                          "Scroll back to the slice you drew on, or clear the prompts and draw them again.")

    @staticmethod
    def displayedWindow(volume):
        """The window/level the volume is shown with, as the server's ``window`` ({center, width}), or None."""
        display = volume.GetDisplayNode()
        if display is None or not hasattr(display, "GetWindow"):
            return None
        width, level = float(display.GetWindow()), float(display.GetLevel())
        return {"center": level, "width": width} if width > 0 else None

    def buildRequest(self, volume, sliceNode, prompts, question="", segmentName="", task="auto", scope="slice",
                     viewName=""):
        """(server params, context for applying the answer) for the prompts on ``sliceNode``'s current slice."""
        ijkToRas, parent, dims = self.volumeGeometry(volume)
        sliceToRas = self.sliceToRas(sliceNode)
        params = build_infer_params(question, prompts, ijkToRas, sliceToRas, parent, task=task or "auto",
                                    scope=scope, segment_name=segmentName or None,
                                    window=self.displayedWindow(volume), dims=dims)
        axis, _ = slice_axis_from_normal(ijkToRas, sliceToRas, parent)
        index = slice_index(ijkToRas, sliceToRas, parent, dims=dims)
        shown = question or (f"Segment the {segmentName}" if segmentName else "(describe the slice)")
        if scope == "volume":
            shown += " [whole volume]"
        elif prompts:
            shown += f" [{len(prompts)} prompt(s)]"
        context = {"volumeID": volume.GetID(), "axis": axis, "index": index, "scope": scope,
                   "view": viewName or sliceNode.GetLayoutName(), "question": question, "shownQuestion": shown,
                   "segmentName": segmentName}
        return params, context

    # ------------------------------------------------------------------ datastore images
    @staticmethod
    def imageIdOf(volume, serverUrl):
        if volume is None or not serverUrl or volume.GetAttribute(SERVER_ATTR) != serverUrl:
            return None
        return volume.GetAttribute(IMAGE_ID_ATTR) or None

    @staticmethod
    def setImageId(volume, imageId: str, serverUrl: str) -> None:
        volume.SetAttribute(IMAGE_ID_ATTR, imageId)
        volume.SetAttribute(SERVER_ATTR, serverUrl)

    @staticmethod
    def newImageId(volume) -> str:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", volume.GetName() or "volume").strip("_") or "volume"
        return f"slicer_{name[:40]}_{time.strftime('%Y%m%d_%H%M%S')}"

    @staticmethod
    def saveVolume(volume, path: str) -> None:
        """Write the volume's own voxels and IJK->RAS (not hardened, no DICOM tags) without changing its storage
        node, so the server's IJK matches Slicer's."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        storage.UseCompressionOn()
        if not storage.WriteData(volume):
            raise OSError(f"could not write {path}")

    def loadSample(self, path: str, imageId: str, serverUrl: str):
        volume = slicer.util.loadVolume(path, {"name": imageId, "show": True})
        self.setImageId(volume, imageId, serverUrl)
        volume.SetAttribute("MedPLIBLabel.Sample", "1")
        return volume

    # ------------------------------------------------------------------ segments
    @staticmethod
    def segmentationFor(volume):
        for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            if node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == volume.GetID():
                return node
        return None

    def ensureSegmentation(self, volume, segmentation):
        if segmentation is None:
            segmentation = self.segmentationFor(volume)
        if segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                              f"{volume.GetName()} MedPLIB")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        return segmentation

    @staticmethod
    def readLabelFile(path: str, volume) -> np.ndarray:
        """The returned label volume as a KJI array (it has the server image's geometry and index order)."""
        labelNode = slicer.util.loadVolume(path, {"labelmap": True, "show": False, "singleFile": True})
        try:
            label = slicer.util.arrayFromVolume(labelNode).copy()
        finally:
            removeNodeWithHelpers(labelNode)
        expected = slicer.util.arrayFromVolume(volume).shape
        if label.shape != expected:
            raise ValueError(f"the server's label has shape {label.shape} (KJI) but the volume has {expected}; "
                             "is this volume the image the server segmented?")
        return label

    @staticmethod
    def segmentArray(segmentation, segmentId: str, volume) -> np.ndarray:
        """The segment as a uint8 0/1 KJI array in the volume's geometry."""
        shape = slicer.util.arrayFromVolume(volume).shape
        try:
            arr = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        except Exception:  # an empty segment cannot always be exported
            arr = None
        if arr is None or arr.shape != shape:
            return np.zeros(shape, np.uint8)
        return (arr > 0).astype(np.uint8)

    def applyResult(self, result, context, segmentation, undoStack, group) -> dict:
        """Write the answer's masks into named segments (slice scope: only that slice is replaced) and push the
        replaced planes on ``undoStack``. Returns ``{segment name: voxels written}``."""
        volume = slicer.mrmlScene.GetNodeByID(context["volumeID"])
        label = self.readLabelFile(result.label_path, volume)
        axis, index, scope = context["axis"], context["index"], context["scope"]
        if scope == "slice" and label_outside_slice(label, axis, index):
            logger.warning("the slice answer has voxels outside slice %d of axis %d; only that slice is used",
                           index, axis)
        masks = masks_from_label(label, result.label_names, axis, index, scope)
        written = {}
        segments = segmentation.GetSegmentation()
        with slicer.util.RenderBlocker():
            for name, mask in masks.items():
                segmentId = segments.GetSegmentIdBySegmentName(name)
                created = not segmentId
                if created and not mask.any():
                    continue  # no empty new segments
                if created:
                    color = SEGMENT_COLORS[(result.label_names.get(name, 1) - 1) % len(SEGMENT_COLORS)]
                    segmentId = segments.AddEmptySegment("", name, color)
                arr = np.zeros(label.shape, np.uint8) if created else self.segmentArray(segmentation, segmentId,
                                                                                           volume)
                if scope == "slice":
                    previous = write_slice(arr, mask.astype(np.uint8), axis, index)
                    undoStack.push(segmentId, axis, index, previous, group=group, created=created)
                else:
                    undoStack.push(segmentId, None, None, arr.copy(), group=group, created=created)
                    arr[...] = mask
                slicer.util.updateSegmentBinaryLabelmapFromArray(arr, segmentation, segmentId, volume)
                segment = segments.GetSegment(segmentId)
                segment.SetTag("MedPLIB.Question", context.get("question") or context.get("segmentName") or "")
                segment.SetTag("MedPLIB.Answer", result.answer or "")
                written[name] = int(np.count_nonzero(mask))
        segmentation.Modified()
        return written

    def undoLast(self, undoStack) -> list:
        """Undo the most recent answer (all segments it wrote). Returns the names of the segments restored."""
        entries = undoStack.pop_group()
        if not entries:
            return []
        segmentationID, volumeID = entries[0].group[0], entries[0].group[1]
        segmentation = slicer.mrmlScene.GetNodeByID(segmentationID)
        volume = slicer.mrmlScene.GetNodeByID(volumeID)
        if segmentation is None or volume is None:
            return []
        segments = segmentation.GetSegmentation()
        restored = []
        with slicer.util.RenderBlocker():
            for entry in entries:
                segment = segments.GetSegment(entry.segment_id)
                if segment is None:
                    continue
                name = segment.GetName()
                if entry.created:
                    segments.RemoveSegment(entry.segment_id)
                else:
                    if entry.axis is None:
                        arr = entry.previous.astype(np.uint8)
                    else:
                        arr = self.segmentArray(segmentation, entry.segment_id, volume)
                        write_slice(arr, entry.previous.astype(np.uint8), entry.axis, entry.index)
                    slicer.util.updateSegmentBinaryLabelmapFromArray(arr, segmentation, entry.segment_id, volume)
                restored.append(name)
        segmentation.Modified()
        return restored

    def writeLabel(self, volume, segmentation, serverLabels, path: str) -> dict:
        """Write the segments as one label volume (values from the server's labels where the names match) to
        ``path`` for "Submit label"; returns ``{name: value}``."""
        if segmentation is None:
            raise ValueError("Select the segmentation to submit.")
        segments = segmentation.GetSegmentation()
        ids = [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())]
        if not ids:
            raise ValueError("The segmentation has no segments to submit.")
        serverLabels = dict(serverLabels or {})
        nextValue = max(list(serverLabels.values()) + [0]) + 1
        label = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
        names = {}
        for segmentId in ids:
            name = segments.GetSegment(segmentId).GetName()
            value = serverLabels.get(name)
            if value is None:
                value, nextValue = nextValue, nextValue + 1
            label[self.segmentArray(segmentation, segmentId, volume) > 0] = value
            names[name] = int(value)
        labelNode = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, "MedPLIBLabel submit")
        try:
            slicer.util.updateVolumeFromArray(labelNode, label)
            self.saveVolume(labelNode, path)
        finally:
            removeNodeWithHelpers(labelNode)
        return names


#
# MedPLIBLabelTest
#


class MedPLIBLabelTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test. The round trip needs a running MedPLIB Label server at $MEDPLIB_LABEL_URL
    (default http://127.0.0.1:8000; start one with `make serve` in the repository)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self, **kwargs) -> None:
        self.setUp()
        self.test_MedPLIBLabel_Geometry()
        self.setUp()
        self.test_MedPLIBLabel_AskAndUndo()

    # ------------------------------------------------------------------ helpers
    def loadVolume(self):
        """SampleData MRHead when available, else a synthetic volume (a bright ellipsoid, anisotropic voxels)."""
        try:
            import SampleData

            volume = SampleData.SampleDataLogic().downloadSample("MRHead")
            if volume is not None:
                return volume
        except Exception as exc:  # no network, or no SampleData module
            logging.info("MRHead unavailable (%s); using a synthetic volume", exc)
        k, j, i = np.mgrid[0:48, 0:96, 0:80].astype(np.float32)
        arr = 800.0 * ((((i - 40) / 28) ** 2 + ((j - 48) / 34) ** 2 + ((k - 24) / 18) ** 2) < 1.0)
        arr += 100.0 * np.random.RandomState(0).rand(*arr.shape)
        volume = slicer.util.addVolumeFromArray(arr.astype(np.int16), name="MedPLIBSynthetic")
        volume.SetSpacing(1.0, 1.0, 2.5)
        volume.SetOrigin(-40.0, -48.0, -60.0)
        volume.CreateDefaultDisplayNodes()
        volume.GetDisplayNode().SetAutoWindowLevel(True)
        return volume

    def redSliceNode(self, logic, volume):
        """The Red view's slice node (a standalone axial slice node when there is no main window), moved to the
        volume centre; returns (sliceNode, centre RAS of a voxel)."""
        ijkToRas, parent, dims = logic.volumeGeometry(volume)
        centre = ijk_to_ras([d // 2 for d in dims], ijkToRas, parent).tolist()
        if slicer.app.layoutManager() is not None:
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            sliceNode = logic.sliceNodeForView("Red")
        else:
            sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
            sliceNode.SetLayoutName("Red")
            m = vtk.vtkMatrix4x4()
            for r, row in enumerate(standard_slice_to_ras("Red", offset=centre[2], center=centre).tolist()):
                for c, value in enumerate(row):
                    m.SetElement(r, c, value)
            sliceNode.GetSliceToRAS().DeepCopy(m)
            sliceNode.UpdateMatrices()
        sliceNode.RotateToVolumePlane(volume)  # axial-most volume plane (MRHead may be slightly oblique)
        sliceNode.JumpSliceByOffsetting(*centre)  # the plane through the centre voxel
        slicer.app.processEvents()
        return sliceNode, centre

    @staticmethod
    def waitFor(job, timeout: float):
        """Poll a Lib job like the widget does (keeping Slicer responsive) and return its result."""
        t0 = time.time()
        while not job.done:
            if time.time() - t0 > timeout:
                job.cancel()
                raise TimeoutError(f"{job.name} did not finish in {timeout:.0f} s")
            slicer.app.processEvents()
            time.sleep(0.05)
        return job.result()

    # ------------------------------------------------------------------ tests
    def test_MedPLIBLabel_Geometry(self) -> None:
        """The Lib's slice axis/index agree with Slicer's own GetSliceIndexFromOffset in every slice view."""
        self.delayDisplay("Geometry: Lib vs vtkMRMLSliceLogic")
        logic = MedPLIBLabelLogic()
        volume = self.loadVolume()
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            self.delayDisplay("No layout manager (--no-main-window): slice-logic comparison skipped")
            return
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        ijkToRas, parent, dims = logic.volumeGeometry(volume)
        for name in VIEW_NAMES:
            sliceWidget = layoutManager.sliceWidget(name)
            if sliceWidget is None:
                continue
            sliceLogic = sliceWidget.sliceLogic()
            sliceNode = sliceWidget.mrmlSliceNode()
            sliceNode.RotateToVolumePlane(volume)
            sliceLogic.SnapSliceOffsetToIJK()
            slicer.app.processEvents()
            expected = sliceLogic.GetSliceIndexFromOffset(sliceLogic.GetSliceOffset(), volume) - 1
            got = slice_index(ijkToRas, logic.sliceToRas(sliceNode), parent, dims=dims)
            self.assertEqual(got, expected, f"{name}: Lib slice index {got} != Slicer {expected}")
        self.delayDisplay("Geometry test passed")

    def test_MedPLIBLabel_AskAndUndo(self) -> None:
        url = os.environ.get("MEDPLIB_LABEL_URL", DEFAULT_URL)
        self.delayDisplay(f"Round trip with the MedPLIB Label server at {url}")
        logic = MedPLIBLabelLogic()
        volume = self.loadVolume()

        client = MedPLIBClient(url, token=os.environ.get("MEDPLIB_LABEL_TOKEN") or None, timeout=CLIENT_TIMEOUT_S)
        try:
            info = self.waitFor(BackgroundJob(client.test_connection, name="connect"), 60)
        except ClientError as exc:
            self.fail(f"No usable MedPLIB Label server at {url}: {userMessage(exc)} "
                      "(start one with `make serve`, or set MEDPLIB_LABEL_URL)")
        model = "medplib" if "medplib" in info.models else sorted(info.models)[0]

        path = os.path.join(tempfile.mkdtemp(prefix="MedPLIBLabelTest-"), "volume.nii.gz")
        logic.saveVolume(volume, path)
        imageId = logic.newImageId(volume).replace("slicer_", "slicer_selftest_", 1)
        serverId = self.waitFor(BackgroundJob(uploadFile, client, path, imageId, name="upload"), 300)
        logic.setImageId(volume, serverId or imageId, client.url)

        sliceNode, centre = self.redSliceNode(logic, volume)
        positive = logic.getPromptNode("positive")
        positive.RemoveAllControlPoints()
        positive.AddControlPointWorld(vtk.vtkVector3d(*centre))
        prompts = logic.collectPrompts(volume)
        self.assertEqual(len(prompts), 1)
        self.assertEqual(logic.chooseView(volume, prompts, preferred="Red"), "Red")

        params, context = logic.buildRequest(volume, sliceNode, prompts, question="Please segment the brain.",
                                             segmentName="brain", scope="slice", viewName="Red")
        self.assertEqual(params["foreground"][0][context["axis"]], context["index"])
        segmentation = logic.ensureSegmentation(volume, None)
        context["segmentationID"] = segmentation.GetID()
        result = self.waitFor(BackgroundJob(client.infer, model, logic.imageIdOf(volume, client.url), params,
                                            timeout=SLICE_TIMEOUT_S, name="infer"), SLICE_TIMEOUT_S + 30)
        self.delayDisplay(f"Answer: {result.answer!r}; masks: {result.label_names}")
        self.assertTrue(result.label_path, "the server returned no label volume")
        self.assertGreater(result.seg_count, 0, f"the model answered {result.answer!r} without a mask")

        undoStack = UndoStack()
        try:
            written = logic.applyResult(result, context, segmentation, undoStack, (segmentation.GetID(),
                                                                                   volume.GetID(), 1))
        finally:
            _remove(result.label_path)
        self.assertTrue(written, f"the answer's masks {result.label_names} are empty on slice {context['index']}")
        name = next(iter(written))
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        self.assertTrue(segmentId, f"segment {name!r} was not created")
        arr = logic.segmentArray(segmentation, segmentId, volume)
        onSlice = int(read_slice(arr, context["axis"], context["index"]).sum())
        self.assertGreater(onSlice, 0, f"segment {name!r} is empty on slice {context['index']}")
        self.assertEqual(int(arr.sum()), onSlice, "slice scope wrote voxels outside the current slice")

        self.assertIn(name, logic.undoLast(undoStack))
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        if segmentId:  # the segment existed before: its slice must be back to empty
            self.assertEqual(int(logic.segmentArray(segmentation, segmentId, volume).sum()), 0)
        self.assertFalse(undoStack)
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        self.delayDisplay("MedPLIB Label round trip passed")
