"""MedPLIB Label: ask a MedPLIB biomedical multimodal LLM (served by MONAI Label) about the slice you are looking at.

This file is the thin Slicer layer: the module description and the widget (Qt plumbing). Everything else lives in
two packages next to it:

* MedPLIBLabelLib: everything that can be pure Python (HTTP client, RAS/IJK geometry, wire params, prompts and views,
  label values, widget states and texts, background jobs and their worker functions, chat history, undo stack). It
  imports no slicer/qt/ctk/vtk and is unit-tested outside Slicer.
* MedPLIBLabelSlicer: the logic (MRML reads and writes: prompt markups, matrices, segments, undo) and the in-Slicer
  self-test MedPLIBLabelTest, imported here so that Slicer finds it in this module.

Threading rule: the worker threads of MedPLIBLabelLib.jobs only run MedPLIBClient calls and file I/O. Every Qt,
VTK and MRML call runs on Slicer's main thread (the widget polls the jobs with a qt.QTimer).
"""

from __future__ import annotations

import importlib
import logging
import sys

import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MedPLIBLabelLib import (POLL_MS, PROMPTABLE_MODES, SLICE_TIMEOUT_S, VIEW_NAMES, VOLUME_TIMEOUT_S, ChatHistory,
                             InteractionSession, JobRunner, ObliqueSliceError, PromptError,
                             SliceOutsideVolumeError, UndoStack, Unauthorized, button_states, discard_result,
                             image_id_text, infer_with_region, make_temp_dir, mode_model, prompt_summary, reload_order,
                             remove_file, remove_temp_dir, user_message)
from MedPLIBLabelSlicer.interaction import InteractionMixin, MedPLIBLabelSettingsPanel, _, readSetting
from MedPLIBLabelSlicer.logic import PROMPT_ATTR, MedPLIBLabelLogic
from MedPLIBLabelSlicer.parameters import HAS_WRAPPER
from MedPLIBLabelSlicer.promptable import PromptableMixin
from MedPLIBLabelSlicer.server_sections import ServerSectionsMixin
from MedPLIBLabelSlicer.selftest import MedPLIBLabelTest  # noqa: F401  (Slicer runs <Module>Test from this module)

__all__ = ["MedPLIBLabel", "MedPLIBLabelWidget", "MedPLIBLabelLogic", "MedPLIBLabelTest"]

logger = logging.getLogger("MedPLIBLabel")

TRAIN_POLL_MS = 5000

DISCLAIMER = ("<b>Research use only - not for clinical use.</b> MedPLIB answers and masks are produced by a "
              "machine-learning model, may be wrong, and must not be used for diagnosis or treatment.")


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
        self.settingsPanel = None
        slicer.app.connect("startupCompleted()", self.registerSettingsPanel)

    def registerSettingsPanel(self) -> None:
        """Edit -> Application Settings -> MedPLIB Label (not in --no-main-window runs)."""
        if slicer.app.commandOptions().noMainWindow:
            return
        self.settingsPanel = MedPLIBLabelSettingsPanel()
        slicer.app.settingsDialog().addPanel("MedPLIB Label", self.settingsPanel)


#
# MedPLIBLabelWidget
#


class MedPLIBLabelWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, ServerSectionsMixin, InteractionMixin,
                         PromptableMixin):
    """Qt plumbing only: every request runs in a MedPLIBLabelLib job polled by a QTimer; MRML work is delegated to
    MedPLIBLabelLogic. The Server, sample/upload and Active learning handlers are in ServerSectionsMixin; shortcuts,
    run on placement, Segment Editor, target and modes in InteractionMixin; the promptable modes (LiteMedSAM, no
    question; 3D from the prompts) in PromptableMixin."""

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
        self.promptSession = InteractionSession()  # the promptable interaction whose mask a new click replaces
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
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedPLIBLabel.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedPLIBLabelLogic()
        # The module's own folder under Slicer's temporary path: result files never land in the system temp.
        self.tmpdir = make_temp_dir(slicer.app.temporaryPath)

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
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.targetComboBox.connect("currentIndexChanged(int)", self.onTargetChanged)
        self.ui.nextSampleButton.connect("clicked()", self.onNextSample)
        self.ui.uploadVolumeButton.connect("clicked()", self.onUploadVolume)
        # Prompts
        self.ui.clearPromptsButton.connect("clicked()", self.onClearPrompts)
        # Ask
        self.ui.askButton.connect("clicked()", self.onAsk)
        self.ui.questionLineEdit.connect("returnPressed()", self.onAsk)
        self.ui.segmentVolumeButton.connect("clicked()", self.onSegmentVolume)
        self.ui.reportButton.connect("clicked()", self.onReport)
        self.ui.segment3DButton.connect("clicked()", self.onSegment3D)
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

        self.setupInteraction()
        self.setupPromptNodes()
        self.observeCrosshair()
        self.initializeParameterNode()
        self.onVolumeChanged(self.ui.inputVolumeSelector.currentNode())
        if self.parent.isEntered:  # a developer Reload rebuilds the widget without calling enter(): keys back on
            self.enter()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        """Bind volume and segmentation selectors to the parameter node (saved with the scene); select the volume
        shown in the views when none is chosen yet."""
        if self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = self.logic.getParameterNode()
        if not HAS_WRAPPER:
            return
        if self._parameterNode.inputVolume is None:
            shown = self.logic.shownVolume() or slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if shown is not None:
                self._parameterNode.inputVolume = shown
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        index = self.ui.targetComboBox.findData(self._parameterNode.targetMode)
        if index >= 0:
            self.ui.targetComboBox.setCurrentIndex(index)

    def onModelChanged(self, *unused) -> None:
        if HAS_WRAPPER and self._parameterNode is not None and self.ui.modelComboBox.currentText:
            self._parameterNode.model = self.ui.modelComboBox.currentText

    def onTargetChanged(self, *unused) -> None:
        if HAS_WRAPPER and self._parameterNode is not None:
            self._parameterNode.targetMode = self.targetMode()

    def onSegmentationChanged(self, *unused) -> None:
        self.syncSegmentEditor()
        self.updateButtons()

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
        self.cleanupInteraction()
        if self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self.removeObservers()
        self._observedPromptNodes = []
        self.crosshairNode = None
        remove_temp_dir(self.tmpdir)  # a cancelled job's late file is removed by its on_discard

    def enter(self) -> None:
        self.setupPromptNodes()
        self.enableKeys(True)
        self.syncSegmentEditor()

    def exit(self) -> None:
        self.enableKeys(False)
        self.ui.segmentEditorWidget.setActiveEffect(None)
        for placeWidget in self.placeWidgets().values():
            placeWidget.setPlaceModeEnabled(False)

    def onReload(self) -> None:
        """Developer "Reload": also reload MedPLIBLabelLib and MedPLIBLabelSlicer (dependencies first), which
        Slicer's reload of this file does not touch."""
        for name in reload_order(sys.modules):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        self.runner.cancel()
        self.undoStack.clear()
        self.promptSession.reset()
        self.history.clear()
        self.removePromptObservers()
        self.ui.progressWidget.hide()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.setupPromptNodes()
        self.initializeParameterNode()
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
        self.maybeRunOnPlacement(caller.GetAttribute(PROMPT_ATTR) or "")

    def onPromptModified(self, caller, event) -> None:
        self.updatePromptSummary()

    def onClearPrompts(self) -> None:
        for placeWidget in self.placeWidgets().values():
            placeWidget.setPlaceModeEnabled(False)
        self.logic.clearPrompts()
        self.promptSession.reset()  # the next click starts a new promptable interaction
        self.lastPromptView = None
        self.setupPromptNodes()  # the box node is recreated so that a new box can be drawn

    def updatePromptSummary(self) -> None:
        self.ui.promptSummaryLabel.setText(prompt_summary(self.logic.promptCounts(), self.lastPromptView))

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

    # ------------------------------------------------------------------ jobs
    def submit(self, what: str, fn, *args, onDone=None, onError=None, **kwargs) -> bool:
        """Run ``fn`` (a Lib client call; no Qt/MRML inside) in the background and poll it from the timer. A
        cancelled job's result files are removed by discard_result in the worker."""
        if self.runner.busy:
            slicer.util.showStatusMessage("MedPLIB Label: " + _("a request is still running; wait or cancel it."),
                                          3000)
            return False
        self.busyWhat = what
        self.runner.submit(fn, *args, on_done=onDone, on_error=onError or (lambda exc: self.onJobError(what, exc)),
                           name=what, on_discard=discard_result, **kwargs)
        self.pollTimer.start()
        self.updateButtons()
        return True

    def onPoll(self) -> None:
        # poll() waits POLL_YIELD_S on the job: PythonQt holds the GIL while Qt idles, this wait lets the worker run.
        state = self.runner.poll()  # runs the callbacks here, on the main thread
        self.statusRunner.poll(yield_s=0.0)
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
        message = user_message(exc)
        if isinstance(exc, Unauthorized):
            message += "\n\nEnter an access token in the Server section and test the connection again."
        slicer.util.errorDisplay(_("{what} failed:").format(what=what) + f"\n{message}", windowTitle="MedPLIB Label",
                                 detailedText=f"{type(exc).__name__}: {exc}")

    def updateButtons(self, *unused) -> None:
        connected = self.client is not None
        volume = self.ui.inputVolumeSelector.currentNode()
        states = button_states(connected=connected, busy=self.runner.busy, has_volume=volume is not None,
                               has_model=bool(self.ui.modelComboBox.currentText), can_undo=bool(self.undoStack),
                               has_segmentation=self.ui.segmentationSelector.currentNode() is not None,
                               can_3d=mode_model(self.serverInfo, "box3d") is not None)
        for name, enabled in states.items():  # the names are checked against the .ui by the static tests
            getattr(self.ui, name).enabled = enabled
        imageId = self.logic.imageIdOf(volume, self.client.url if connected else None) if volume else None
        self.ui.imageIdLabel.setText(image_id_text(imageId, volume is not None))

    # ------------------------------------------------------------------ volume
    def onVolumeChanged(self, volume) -> None:
        segmentation = self.logic.segmentationFor(volume) if volume is not None else None
        if segmentation is not None:
            self.ui.segmentationSelector.setCurrentNode(segmentation)
        self.syncSegmentEditor()
        self.refreshChat()
        self.updateButtons()

    # ------------------------------------------------------------------ ask
    def onAsk(self) -> None:
        self.ask(scope="slice")

    def onSegmentVolume(self) -> None:
        self.ask(scope="volume")

    def onReport(self) -> None:
        self.ask(scope="slice", task="report")

    def ask(self, scope: str, task: str = "") -> None:
        if not self.requireConnection():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None:
            slicer.util.warningDisplay(_("Select or load a volume first."), windowTitle="MedPLIB Label")
            return
        if self.currentMode() in PROMPTABLE_MODES and task != "report":  # no question: the prompts alone
            self.segmentPromptable(volume3d=self.currentMode() == "box3d" or scope == "volume")
            return
        question = self.ui.questionLineEdit.text.strip()
        segmentName = self.ui.segmentNameComboBox.currentText.strip()
        task = task or self.ui.taskComboBox.currentText
        if task == "report":  # the report grounds the server's labels by name; the typed text only sets its language
            segmentName = ""
        if scope == "volume" and not (question or segmentName):
            slicer.util.warningDisplay(_("Type what to segment (a question or a segment name) for the whole volume."),
                                       windowTitle="MedPLIB Label")
            return
        imageId = self.logic.imageIdOf(volume, self.client.url)
        if not imageId:  # a local volume: upload it first (after the privacy confirmation), then ask
            self.uploadVolume(then=lambda: self.ask(scope, task))
            return
        try:
            prompts = self.logic.collectPrompts(volume) if scope == "slice" and task != "report" else []
            view = self.targetView(prompts)
            sliceNode = self.logic.sliceNodeForView(view)
            request = self.logic.buildRequest(volume, sliceNode, prompts, question=question,
                                              segmentName=segmentName, task=task, scope=scope, viewName=view,
                                              history=self.history)
            region = self.logic.lassoRegion(volume, sliceNode, prompts)  # sent as its filled region
        except (PromptError, ObliqueSliceError, SliceOutsideVolumeError, ValueError) as exc:
            slicer.util.warningDisplay(user_message(exc), windowTitle="MedPLIB Label")
            return
        params, context = request
        context["segmentationID"] = self.logic.ensureSegmentation(
            volume, self.ui.segmentationSelector.currentNode()).GetID()
        self.ui.segmentationSelector.setCurrentNodeID(context["segmentationID"])
        model = self.ui.modelComboBox.currentText
        where = f"{view} slice {context['index']}" if scope == "slice" else "whole volume"
        self.submit(_("Asking MedPLIB") + f" ({where})", infer_with_region, self.client, model, imageId, params,
                    region, self.logic.volumeGeometry(volume)[0], self.tmpdir,
                    timeout=SLICE_TIMEOUT_S if scope == "slice" else VOLUME_TIMEOUT_S,
                    onDone=lambda result: self.onAnswer(result, context),
                    onError=lambda exc: self.onAnswerFailed(exc, context))

    def onAnswer(self, result, context) -> None:
        volume = slicer.mrmlScene.GetNodeByID(context["volumeID"])
        segmentation = slicer.mrmlScene.GetNodeByID(context["segmentationID"])
        masks = {}
        if volume is not None and result.boxes:
            try:
                self.logic.showBoxes(volume, result.boxes)
            except Exception:  # boxes are a bonus: a failure here must not lose the answer or its masks
                logger.exception("showing the answer's boxes failed")
        try:
            # has_masks is False for a text-only answer (seg_count 0): the server still attaches an empty label
            # volume, which must not wipe the slice of the named segment.
            if volume is not None and segmentation is not None and result.has_masks:
                self.turnCounter += 1
                group = (context["segmentationID"], context["volumeID"], self.turnCounter)
                masks = self.logic.applyResult(result, context, segmentation, self.undoStack, group,
                                               serverLabels=self.serverInfo.labels if self.serverInfo else None,
                                               targetMode=self.targetMode(),
                                               selectedSegmentId=self.selectedSegmentId(),
                                               showIn3D=readSetting("MedPLIBLabel/showIn3D"))
        except Exception as exc:
            logger.exception("applying the answer failed")
            slicer.util.errorDisplay(_("The answer arrived but its mask could not be applied:") + "\n" +
                                     user_message(exc),
                                     windowTitle="MedPLIB Label")
        finally:
            if result.label_path:
                remove_file(result.label_path)
        answer = result.answer or "(no text answer)"
        if result.source_note:
            answer += f" ({result.source_note})"
        self.history.record(context["volumeID"], context["shownQuestion"], answer,
                            masks=masks, task=result.task, axis=context["axis"],
                            slice=context["index"] if context["scope"] == "slice" else None,
                            latency_ms=result.latency_ms)
        self.refreshChat()
        self.updateButtons()

    def onAnswerFailed(self, exc, context) -> None:
        self.history.record(context["volumeID"], context["shownQuestion"], "", error=user_message(exc),
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
        restored = self.logic.undoLast(self.undoStack, showIn3D=readSetting("MedPLIBLabel/showIn3D"))
        slicer.util.showStatusMessage(f"MedPLIB Label: undid the last result ({', '.join(restored)})."
                                      if restored else "MedPLIB Label: nothing to undo.", 3000)
        self.updateButtons()
