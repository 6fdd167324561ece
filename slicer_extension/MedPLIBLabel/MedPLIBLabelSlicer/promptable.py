"""PromptableMixin: the widget's promptable modes (issue #17, Slicer side). "Segment (promptable)": clicks / box /
scribble / lasso on the current slice -> a LiteMedSAM mask (the server's ``medplib_sam``) into the target segment,
no question; each new click or box replaces the previous mask of the same interaction (Lib InteractionSession),
with undo. "Segment in 3D from these prompts": the same prompts propagated through the volume (``medplib_sam_3d``);
the planes the mask covers are written in place, one undo patch per plane. Qt plumbing only: params, session and
status texts are in MedPLIBLabelLib.promptable. Checked only inside Slicer (see slicer_extension/README.md).
"""

from __future__ import annotations

import logging

import slicer

from MedPLIBLabelLib import (PROMPTABLE_MODES, SLICE_TIMEOUT_S, VOLUME_TIMEOUT_S,
                             ObliqueSliceError, PromptError, SliceOutsideVolumeError, infer_with_region, mode_model,
                             promptable_segment_name, promptable_status, remove_file, user_message)
from MedPLIBLabelSlicer.interaction import _, readSetting

__all__ = ["PromptableMixin"]

logger = logging.getLogger("MedPLIBLabel")


class PromptableMixin:
    """Promptable segmentation for MedPLIBLabelWidget (needs its ui, logic, client, serverInfo, runner, history,
    undoStack, promptSession and submit/targetView/requireConnection/uploadVolume)."""

    def currentMode(self) -> str:
        return self.ui.modeComboBox.currentData or "ask"

    def isPromptableMode(self) -> bool:
        return self.currentMode() in PROMPTABLE_MODES

    def onSegment3D(self) -> None:
        self.segmentPromptable(volume3d=True)

    def selectedSegmentName(self):
        segmentation = self.ui.segmentationSelector.currentNode()
        segmentId = self.selectedSegmentId()
        segment = segmentation.GetSegmentation().GetSegment(segmentId) if segmentation and segmentId else None
        return segment.GetName() if segment is not None else None

    def segmentPromptable(self, volume3d: bool = False) -> None:
        """Send the prompts on the current slice to the server's promptable model (3D: propagated)."""
        if not self.requireConnection():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None:
            slicer.util.warningDisplay(_("Select or load a volume first."), windowTitle="MedPLIB Label")
            return
        model = mode_model(self.serverInfo, "box3d" if volume3d else "promptable")
        if model is None:
            slicer.util.warningDisplay(_("This server offers no promptable model for this mode."),
                                       windowTitle="MedPLIB Label")
            return
        imageId = self.logic.imageIdOf(volume, self.client.url)
        if not imageId:  # a local volume: upload it first (after the privacy confirmation), then segment
            self.uploadVolume(then=lambda: self.segmentPromptable(volume3d))
            return
        segmentName = promptable_segment_name(self.ui.segmentNameComboBox.currentText, self.selectedSegmentName())
        try:
            prompts = self.logic.collectPrompts(volume)
            view = self.targetView(prompts)
            sliceNode = self.logic.sliceNodeForView(view)
            region = self.logic.lassoRegion(volume, sliceNode, prompts)  # a lasso goes as its filled region
            params, context = self.logic.buildPromptableRequest(volume, sliceNode, prompts, segmentName,
                                                                viewName=view, volume3d=volume3d,
                                                                hasRegion=region is not None)
        except (PromptError, ObliqueSliceError, SliceOutsideVolumeError, ValueError) as exc:
            slicer.util.warningDisplay(user_message(exc), windowTitle="MedPLIB Label")
            return
        context["segmentationID"] = self.logic.ensureSegmentation(
            volume, self.ui.segmentationSelector.currentNode()).GetID()
        self.ui.segmentationSelector.setCurrentNodeID(context["segmentationID"])
        where = f"{view} slice {context['index']}" + (", in 3D" if volume3d else "")
        self.submit(_("Segmenting") + f" ({where})", infer_with_region, self.client, model, imageId, params,
                    region, self.logic.volumeGeometry(volume)[0], self.tmpdir,
                    timeout=VOLUME_TIMEOUT_S if volume3d else SLICE_TIMEOUT_S,
                    onDone=lambda result: self.onPromptableAnswer(result, context),
                    onError=lambda exc: self.onAnswerFailed(exc, context))

    def onPromptableAnswer(self, result, context) -> None:
        """Write the mask (slice: replacing this interaction's previous mask; 3D: the covered planes), record the
        turn, and say on the status line what was segmented (3D: slices covered and why propagation stopped)."""
        volume = slicer.mrmlScene.GetNodeByID(context["volumeID"])
        segmentation = slicer.mrmlScene.GetNodeByID(context["segmentationID"])
        volume3d = context["scope"] == "volume"
        written = {}
        try:
            # An empty mask from a later click of the interaction still replaces its previous mask (back to the
            # segment's content from before the interaction); an empty first mask creates nothing.
            replaces = (not volume3d and self.promptSession.active and bool(result.label_path)
                        and bool(result.label_names))
            if volume is not None and segmentation is not None and (result.has_masks or replaces):
                self.turnCounter += 1
                group = (context["segmentationID"], context["volumeID"], self.turnCounter)
                written = self.logic.applyResult(result, context, segmentation, self.undoStack, group,
                                                 serverLabels=self.serverInfo.labels if self.serverInfo else None,
                                                 targetMode=self.targetMode(),
                                                 selectedSegmentId=self.selectedSegmentId(),
                                                 showIn3D=readSetting("MedPLIBLabel/showIn3D"),
                                                 interaction=None if volume3d else self.promptSession)
                if volume3d:
                    self.promptSession.reset()  # the next click starts a new interaction on the 3D result
        except Exception as exc:
            logger.exception("applying the promptable mask failed")
            slicer.util.errorDisplay(_("The mask arrived but could not be applied:") + "\n" +
                                     user_message(exc),
                                     windowTitle="MedPLIB Label")
        finally:
            if result.label_path:
                remove_file(result.label_path)
        status = promptable_status(result.params, written)
        self.ui.promptSummaryLabel.setText(status)
        slicer.util.showStatusMessage("MedPLIB Label: " + status, 8000)
        self.history.record(context["volumeID"], context["shownQuestion"], status, masks=written,
                            task=result.task, axis=context["axis"],
                            slice=None if volume3d else context["index"], latency_ms=result.latency_ms)
        self.refreshChat()
        self.updateButtons()
