"""MedPLIBLabelLogic: the MRML reads and writes around the pure MedPLIBLabelLib (prompt markups nodes, geometry
matrices, request context, segments and undo). Main thread only; usable without the widget (the self-test drives
it directly).
"""

from __future__ import annotations

import logging

import numpy as np

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from MedPLIBLabelLib import (build_infer_params, choose_view, collect_prompts, history_params, label_outside_slice,
                             label_values, masks_from_label, new_image_id, prompt_counts, prompt_points,
                             roi_is_defined, rois_from_boxes, segment_color, segments_to_label, shown_question,
                             slice_axis_from_normal, slice_index, write_slice)

logger = logging.getLogger("MedPLIBLabel")

IMAGE_ID_ATTR = "MedPLIBLabel.ImageId"
SERVER_ATTR = "MedPLIBLabel.ServerUrl"
PROMPT_ATTR = "MedPLIBLabel.Prompt"

# (kind, MRML class, node name, colour)
PROMPT_KINDS = (
    ("positive", "vtkMRMLMarkupsFiducialNode", "MedPLIB positive points", (0.2, 0.85, 0.3)),
    ("negative", "vtkMRMLMarkupsFiducialNode", "MedPLIB negative points", (0.95, 0.25, 0.25)),
    ("box", "vtkMRMLMarkupsROINode", "MedPLIB box", (1.0, 0.85, 0.1)),
    ("scribble", "vtkMRMLMarkupsCurveNode", "MedPLIB scribble", (1.0, 0.55, 0.1)),
    ("lasso", "vtkMRMLMarkupsClosedCurveNode", "MedPLIB lasso", (0.2, 0.8, 0.95)),
)


def removeNodeWithHelpers(node) -> None:
    """Remove a temporary volume node with its display and storage nodes."""
    if node is None:
        return
    helpers = [node.GetStorageNode()] + [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    slicer.mrmlScene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(helper)


class MedPLIBLabelLogic(ScriptedLoadableModuleLogic):
    """MRML reads and writes around the pure Lib: prompt nodes, geometry matrices, request context, segments and
    undo. Usable without the widget (the self-test drives it directly)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    # ------------------------------------------------------------------ prompt nodes
    def getPromptNode(self, kind: str):
        _, className, name, color = {k[0]: k for k in PROMPT_KINDS}[kind]
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
        for kind, _, _, _ in PROMPT_KINDS:
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
    def _roiWorld(roi):
        """(center, size, [x, y, z axes]) of an ROI node, in world coordinates."""
        center, size = [0.0] * 3, [0.0] * 3
        roi.GetCenterWorld(center)
        roi.GetSizeWorld(size)
        axes = []
        for getter in (roi.GetXAxisWorld, roi.GetYAxisWorld, roi.GetZAxisWorld):
            a = [0.0] * 3
            getter(a)
            axes.append(a)
        return center, size, axes

    def _promptPoints(self) -> dict:
        return {kind: self._definedPointsWorld(self.getPromptNode(kind))
                for kind in ("positive", "negative", "scribble", "lasso")}

    def promptCounts(self) -> dict:
        points = self._promptPoints()
        size = [0.0] * 3
        self.getPromptNode("box").GetSizeWorld(size)
        return prompt_counts(len(points["positive"]), len(points["negative"]), roi_is_defined(size),
                             len(points["scribble"]), len(points["lasso"]))

    def collectPrompts(self, volume=None) -> list:
        """The Lib prompts (world coordinates) from the prompt markups nodes. With ``volume``, a rotated box becomes
        the volume-axis-aligned box around it."""
        points = self._promptPoints()
        ijkToRas, parent = (None, None) if volume is None else self.volumeGeometry(volume)[:2]
        return collect_prompts(points["positive"], points["negative"], self._roiWorld(self.getPromptNode("box")),
                               points["scribble"], points["lasso"], ijk_to_ras=ijkToRas, parent=parent)

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
        points = prompt_points(prompts)
        if not points or volume is None:
            return choose_view([], dict.fromkeys(names), None, preferred=preferred)
        ijkToRas, parent, _ = self.volumeGeometry(volume)
        views = {name: self.sliceToRas(self.sliceNodeForView(name)) for name in names}
        return choose_view(points, views, ijkToRas, parent, preferred=preferred)

    @staticmethod
    def displayedWindow(volume):
        """The window/level the volume is shown with, as the server's ``window`` ({center, width}), or None."""
        display = volume.GetDisplayNode()
        if display is None or not hasattr(display, "GetWindow"):
            return None
        width, level = float(display.GetWindow()), float(display.GetLevel())
        return {"center": level, "width": width} if width > 0 else None

    def buildRequest(self, volume, sliceNode, prompts, question="", segmentName="", task="auto", scope="slice",
                     viewName="", history=None):
        """(server params, context for applying the answer) for the prompts on ``sliceNode``'s current slice.
        ``history``: the chat; the last turns about this slice go along so follow-up questions have context."""
        ijkToRas, parent, dims = self.volumeGeometry(volume)
        sliceToRas = self.sliceToRas(sliceNode)
        axis, _ = slice_axis_from_normal(ijkToRas, sliceToRas, parent)
        index = slice_index(ijkToRas, sliceToRas, parent, dims=dims)
        turns = (history_params(history, volume.GetID(), axis=axis, index=index)
                 if history is not None and scope == "slice" and task != "report" else [])
        params = build_infer_params(question, prompts, ijkToRas, sliceToRas, parent, task=task or "auto",
                                    scope=scope, segment_name=segmentName or None,
                                    window=self.displayedWindow(volume), dims=dims, history=turns or None)
        context = {"volumeID": volume.GetID(), "axis": axis, "index": index, "scope": scope,
                   "view": viewName or sliceNode.GetLayoutName(), "question": question,
                   "shownQuestion": shown_question(question, segmentName, scope, len(prompts)),
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
        return new_image_id(volume.GetName())

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
                    segmentId = segments.AddEmptySegment("", name, segment_color(result.label_names.get(name, 1)))
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

    def showBoxes(self, volume, boxes) -> list:
        """One ROI node per box of an answer, named after its phrase, oriented along the volume's IJK axes.
        Earlier box nodes of the same names are replaced, so asking again does not pile them up."""
        ijkToRas, parent, _ = self.volumeGeometry(volume)
        nodes = []
        for spec in rois_from_boxes(boxes, ijkToRas, parent):
            old = slicer.mrmlScene.GetFirstNode(spec.name, "vtkMRMLMarkupsROINode")
            if old is not None and old.GetAttribute("MedPLIB.Box") == "1":
                removeNodeWithHelpers(old)
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", spec.name)
            roi.SetAttribute("MedPLIB.Box", "1")
            matrix = vtk.vtkMatrix4x4()
            for r in range(4):
                for c in range(4):
                    matrix.SetElement(r, c, float(spec.object_to_world()[r, c]))
            roi.SetAndObserveObjectToNodeMatrix(matrix)  # centre and axes; the size is along these axes
            roi.SetCenter(*spec.center)  # the same centre, set the way every Slicer 5 release reads it
            roi.SetSize(*spec.size)
            roi.SetLocked(True)
            nodes.append(roi)
        return nodes

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
        names = [segments.GetSegment(segmentId).GetName() for segmentId in ids]
        values = label_values(names, serverLabels)  # ValueError when there are no segments
        label = segments_to_label(((name, self.segmentArray(segmentation, segmentId, volume))  # one at a time
                                   for name, segmentId in zip(names, ids)), values,
                                  shape=slicer.util.arrayFromVolume(volume).shape)
        labelNode = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, "MedPLIBLabel submit")
        try:
            slicer.util.updateVolumeFromArray(labelNode, label)
            self.saveVolume(labelNode, path)
        finally:
            removeNodeWithHelpers(labelNode)
        return values
