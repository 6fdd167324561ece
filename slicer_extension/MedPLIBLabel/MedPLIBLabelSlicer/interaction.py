"""InteractionMixin: the interactive parts of MedPLIBLabelWidget (single-key shortcuts, run on placement, the
embedded Segment Editor, the answer target and mode combos) and the Application Settings panel. Qt plumbing only;
the decisions are in MedPLIBLabelLib.interaction. Checked only inside Slicer (see slicer_extension/README.md).
"""

from __future__ import annotations

import ctk
import qt
import slicer

from MedPLIBLabelLib import (SETTINGS_DEFAULTS, SHORTCUTS, TARGET_MODES, available_modes, next_segment_index,
                             run_on_placement, settings_value, shortcut_help)

try:
    from slicer.i18n import tr as _  # Slicer >= 5.4: user-facing strings are translatable
except ImportError:  # older Slicer
    def _(text: str) -> str:
        return text

__all__ = ["InteractionMixin", "MedPLIBLabelSettingsPanel", "readSetting", "_"]

TARGET_TITLES = {"named": "Segment named after the answer", "selected": "Selected segment",
                 "new": "New segment (fresh colour)"}


def readSetting(key: str):
    """A MedPLIB Label Application Setting, typed (Lib settings_value)."""
    return settings_value(key, qt.QSettings().value(key))


class MedPLIBLabelSettingsPanel(ctk.ctkSettingsPanel):
    """Edit -> Application Settings -> MedPLIB Label: server URL, show in 3D, auto-fetch the next sample, run on
    placement. ctkSettingsPanel stores each registered property in QSettings under its key."""

    def __init__(self, *args, **kwargs) -> None:
        ctk.ctkSettingsPanel.__init__(self, *args, **kwargs)
        form = qt.QFormLayout(self)
        self.serverUrl = qt.QLineEdit()
        self.serverUrl.placeholderText = "http://127.0.0.1:8000"
        form.addRow(_("Server URL:"), self.serverUrl)
        self.registerProperty("MedPLIBLabel/serverUrl", self.serverUrl, "text", str(qt.SIGNAL("textChanged(QString)")))
        for key, title in (("MedPLIBLabel/showIn3D", _("Show segments in 3D")),
                           ("MedPLIBLabel/autoFetchNextSample", _("Fetch the next sample after Submit label")),
                           ("MedPLIBLabel/runOnPlacement", _("Run on placement (clicks and boxes)"))):
            box = qt.QCheckBox()
            box.checked = bool(SETTINGS_DEFAULTS[key])
            form.addRow(title, box)
            self.registerProperty(key, ctk.ctkBooleanMapper(box, "checked", str(qt.SIGNAL("toggled(bool)"))),
                                  "valueAsInt", str(qt.SIGNAL("valueAsIntChanged(int)")))


class InteractionMixin:
    """Shortcuts, run on placement, Segment Editor, answer target and modes for MedPLIBLabelWidget."""

    # ------------------------------------------------------------------ set-up
    def setupInteraction(self) -> None:
        self.keyShortcuts = []
        self.ui.shortcutsLabel.setText(_("Keys (while the module is shown): ") + shortcut_help())
        self.ui.runOnPlacementCheckBox.checked = readSetting("MedPLIBLabel/runOnPlacement")
        self.ui.targetComboBox.clear()
        for mode in TARGET_MODES:
            self.ui.targetComboBox.addItem(_(TARGET_TITLES[mode]), mode)
        self.fillModes(None)
        editor = self.ui.segmentEditorWidget
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())  # shared with the Segment Editor module
        for kind in ("scribble", "lasso"):
            self.placeWidgets()[kind].connect("activeMarkupsPlaceModeChanged(bool)",
                                              lambda active, kind=kind: self.onStrokePlaceMode(kind, active))
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:
            return
        for key, method, _text in SHORTCUTS:
            if method == "onUndo":
                continue  # Ctrl+Z is self.undoShortcut (it also answers ambiguous activations)
            shortcut = qt.QShortcut(qt.QKeySequence(key), mainWindow)
            shortcut.setEnabled(False)  # only while the module is shown (enter/exit)
            # A focused line edit takes plain letters first (Qt's ShortcutOverride), so typing is not hijacked.
            shortcut.connect("activated()", getattr(self, method))
            self.keyShortcuts.append(shortcut)

    def cleanupInteraction(self) -> None:
        for shortcut in getattr(self, "keyShortcuts", []):
            shortcut.setEnabled(False)
            shortcut.setParent(None)
            shortcut.deleteLater()
        self.keyShortcuts = []

    def enableKeys(self, enabled: bool) -> None:
        for shortcut in getattr(self, "keyShortcuts", []):
            shortcut.setEnabled(enabled)
        if self.undoShortcut is not None:
            self.undoShortcut.setEnabled(enabled)

    def syncSegmentEditor(self) -> None:
        """Point the embedded Segment Editor at the selected segmentation and volume."""
        editor = self.ui.segmentEditorWidget
        editor.setSegmentationNode(self.ui.segmentationSelector.currentNode())
        volume = self.ui.inputVolumeSelector.currentNode()
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # Slicer < 5.4
        setSource(volume)

    def fillModes(self, info) -> None:
        """The mode combo lists only what the server offers (Lib available_modes); "ask" is always there."""
        self.ui.modeComboBox.clear()
        for mode, title in available_modes(info):
            self.ui.modeComboBox.addItem(_(title), mode)

    def targetMode(self) -> str:
        return self.ui.targetComboBox.currentData or "named"

    def selectedSegmentId(self):
        return self.logic.segmentEditorNode().GetSelectedSegmentID() or None

    # ------------------------------------------------------------------ run on placement
    def maybeRunOnPlacement(self, kind: str, finishedStroke: bool = False) -> None:
        run, why = run_on_placement(self.ui.runOnPlacementCheckBox.checked, kind, finished_stroke=finishedStroke,
                                    busy=self.runner.busy, connected=self.client is not None,
                                    has_volume=self.ui.inputVolumeSelector.currentNode() is not None,
                                    question=self.ui.questionLineEdit.text,
                                    segment_name=self.ui.segmentNameComboBox.currentText, mode=self.currentMode())
        if run:
            self.ask(scope="slice")
        elif why:
            slicer.util.showStatusMessage("MedPLIB Label: " + _(why), 3000)

    def onStrokePlaceMode(self, kind: str, active: bool) -> None:
        if not active:  # the user finished the scribble or lasso
            self.maybeRunOnPlacement(kind, finishedStroke=True)

    # ------------------------------------------------------------------ shortcut handlers
    def startPlacing(self, kind: str) -> None:
        for other, widget in self.placeWidgets().items():
            if other != kind:
                widget.setPlaceModeEnabled(False)
        self.placeWidgets()[kind].setPlaceModeEnabled(True)

    def onPlacePositive(self) -> None:
        self.startPlacing("positive")

    def onPlaceNegative(self) -> None:
        self.startPlacing("negative")

    def onPlaceBox(self) -> None:
        self.startPlacing("box")

    def onPlaceScribble(self) -> None:
        self.startPlacing("scribble")

    def onPlaceLasso(self) -> None:
        self.startPlacing("lasso")

    def onTogglePolarity(self) -> None:
        positive = self.placeWidgets()["positive"]
        self.startPlacing("negative" if positive.placeModeEnabled else "positive")

    def onNextSegment(self) -> None:
        segmentation = self.ui.segmentationSelector.currentNode()
        if segmentation is None:
            return
        segments = segmentation.GetSegmentation()
        ids = [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())]
        if not ids:
            return
        current = self.selectedSegmentId()
        nextId = ids[next_segment_index(len(ids), ids.index(current) if current in ids else -1)]
        self.logic.segmentEditorNode().SetSelectedSegmentID(nextId)
        slicer.util.showStatusMessage("MedPLIB Label: " + _("segment") + f" {segments.GetSegment(nextId).GetName()}",
                                      2000)

    def onToggleVisibility(self) -> None:
        segmentation = self.ui.segmentationSelector.currentNode()
        display = segmentation.GetDisplayNode() if segmentation is not None else None
        if display is not None:
            display.SetVisibility(not display.GetVisibility())
