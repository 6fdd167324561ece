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

from MedPLIBLabelLib import (BOX_ATTR, LassoPrompt, build_infer_params, build_promptable_params,
                             check_label_geometry, choose_view, collect_prompts, covered_planes, history_params,
                             internal_offset, label_outside_slice, label_values, lasso_region, masks_from_label, new_image_id, pick_segment_color,
                             prompt_counts, prompt_points, read_plane_inplace, read_slice, restore_plane_inplace,
                             roi_is_defined, rois_from_boxes, segment_targets, segments_to_label, shown_question,
                             slice_axis_from_normal, slice_index, stale_box_nodes, write_plane_inplace, write_slice)
from MedPLIBLabelSlicer.parameters import wrapParameterNode

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

    def getParameterNode(self):
        """The module's parameter node, typed (slicer.parameterNodeWrapper) where Slicer has it (5.2+)."""
        return wrapParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self))

    @staticmethod
    def shownVolume():
        """The volume shown in the Red view (else any slice view), so the module starts on what the user sees."""
        layoutManager = slicer.app.layoutManager()
        names = ["Red"] + [n for n in (layoutManager.sliceViewNames() if layoutManager else []) if n != "Red"]
        for name in names:
            widget = layoutManager.sliceWidget(name) if layoutManager else None
            if widget is None:
                continue
            volumeId = widget.sliceLogic().GetSliceCompositeNode().GetBackgroundVolumeID()
            node = slicer.mrmlScene.GetNodeByID(volumeId) if volumeId else None
            if node is not None and node.IsA("vtkMRMLScalarVolumeNode"):
                return node
        return None

    @staticmethod
    def segmentEditorNode():
        """The shared Segment Editor parameter node (the one the Segment Editor module uses)."""
        node = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("SegmentEditor")
            node = slicer.mrmlScene.AddNode(node)
        return node

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

    def lassoRegion(self, volume, sliceNode, prompts):
        """The filled region of the lasso among ``prompts`` on ``sliceNode``'s slice (None without a lasso)."""
        lassos = [p for p in prompts if isinstance(p, LassoPrompt)]
        if not lassos:
            return None
        ijkToRas, parent, dims = self.volumeGeometry(volume)
        return lasso_region(lassos[0], ijkToRas, self.sliceToRas(sliceNode), parent, dims=dims)

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

    def buildPromptableRequest(self, volume, sliceNode, prompts, segmentName, viewName="", volume3d=False,
                               hasRegion=False):
        """(params of medplib_sam / medplib_sam_3d, context) for the prompts on ``sliceNode``'s slice: no question;
        3D answers change only the planes they cover (``coveredOnly``)."""
        ijkToRas, parent, dims = self.volumeGeometry(volume)
        sliceToRas = self.sliceToRas(sliceNode)
        axis, _ = slice_axis_from_normal(ijkToRas, sliceToRas, parent)
        index = slice_index(ijkToRas, sliceToRas, parent, dims=dims)
        params = build_promptable_params(prompts, ijkToRas, sliceToRas, parent, dims=dims, segment_name=segmentName,
                                         window=self.displayedWindow(volume), volume=volume3d, has_region=hasRegion)
        shown = f"Segment {segmentName}" + (" in 3D" if volume3d else "") + f" [{len(prompts)} prompt(s)]"
        context = {"volumeID": volume.GetID(), "axis": axis, "index": index,
                   "scope": "volume" if volume3d else "slice", "coveredOnly": volume3d,
                   "view": viewName or sliceNode.GetLayoutName(), "question": "", "shownQuestion": shown,
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

    def volumeSnapshot(self, volume):
        """(KJI voxel copy, IJK->RAS) for an upload: the volume's own voxels and matrix (not hardened, no DICOM
        tags), so the server's IJK matches Slicer's. A memory copy only: the worker writes the file."""
        return slicer.util.arrayFromVolume(volume).copy(), self.volumeGeometry(volume)[0]

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

    def readLabelFile(self, path: str, volume) -> np.ndarray:
        """The returned label volume as a KJI array, after checking that it lies on the volume's voxel grid (same
        shape and IJK->RAS; raises LabelGeometryError otherwise, so nothing lands in the wrong voxels)."""
        labelNode = slicer.util.loadVolume(path, {"labelmap": True, "show": False, "singleFile": True})
        try:
            label = slicer.util.arrayFromVolume(labelNode).copy()
            m = vtk.vtkMatrix4x4()
            labelNode.GetIJKToRASMatrix(m)
            labelMatrix = self.matrix(m)
        finally:
            removeNodeWithHelpers(labelNode)
        check_label_geometry(labelMatrix, label.shape, self.volumeGeometry(volume)[0],
                             slicer.util.arrayFromVolume(volume).shape)
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

    @staticmethod
    def _closedSurfaceName() -> str:
        return slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()

    def _internalPlane(self, segmentation, segmentId: str, volume):
        """(labelmap, its KJI array, label value, offset, IJK dims) to write one plane of a segment in place, or
        None when the internal labelmap is not the volume's full grid (then the segment is re-imported whole)."""
        segmentationObj = segmentation.GetSegmentation()
        binaryName = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        getSource = getattr(segmentationObj, "GetSourceRepresentationName", None) or \
            segmentationObj.GetMasterRepresentationName  # Slicer < 5.4
        if getSource() != binaryName or segmentation.GetParentTransformNode() != volume.GetParentTransformNode():
            return None
        segment = segmentationObj.GetSegment(segmentId)
        labelmap = segment.GetRepresentation(binaryName) if segment is not None else None
        if labelmap is None or labelmap.GetPointData() is None or labelmap.GetPointData().GetScalars() is None:
            return None
        m = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(m)
        ijkToRas, _, dims = self.volumeGeometry(volume)
        offset = internal_offset(self.matrix(m), labelmap.GetExtent(), ijkToRas, dims)
        if offset is None:
            return None
        array = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation, segmentId)
        return labelmap, array, int(segment.GetLabelValue()), offset, dims

    @staticmethod
    def _internalModified(segmentation, segmentId: str, labelmap) -> None:
        labelmap.GetPointData().GetScalars().Modified()
        labelmap.Modified()  # the segmentation observes its source representation: display and 3D update
        segmentation.GetSegmentation().GetSegment(segmentId).Modified()

    def applyResult(self, result, context, segmentation, undoStack, group, serverLabels=None, targetMode="named",
                    selectedSegmentId=None, showIn3D=False, interaction=None) -> dict:
        """Write the answer's masks into segments (``targetMode``: see Lib segment_targets) and push undo patches.
        Slice scope: only that plane changes, written in place into the segment's internal labelmap when it covers
        the volume (the undo patch is that plane); otherwise, and in volume scope, the segment is re-imported.
        A promptable 3D answer (``context["coveredOnly"]``) changes only the planes its mask covers: in place with
        one undo patch per plane, else re-imported. ``interaction`` (Lib InteractionSession, promptable slice
        answers): the new mask replaces the previous mask of the same interaction, the segment's content from
        before it is kept. New segments get a stable or unused colour. Returns ``{segment name: voxels written}``."""
        volume = slicer.mrmlScene.GetNodeByID(context["volumeID"])
        label = self.readLabelFile(result.label_path, volume)
        axis, index, scope = context["axis"], context["index"], context["scope"]
        if scope == "slice" and label_outside_slice(label, axis, index):
            logger.warning("the slice answer has voxels outside slice %d of axis %d; only that slice is used",
                           index, axis)
        masks = masks_from_label(label, result.label_names, axis, index, scope)
        written = {}
        segments = segmentation.GetSegmentation()
        hadSurface = segments.ContainsRepresentation(self._closedSurfaceName())
        existing = {segments.GetNthSegmentID(i): segments.GetNthSegment(i).GetName()
                    for i in range(segments.GetNumberOfSegments())}
        targets = segment_targets(targetMode, list(masks), existing, selectedSegmentId)
        with slicer.util.RenderBlocker():
            for target in targets:
                mask = masks[target.mask_name]
                if target.create and not mask.any():
                    continue  # no empty new segments
                segmentId = target.segment_id
                if target.create:
                    used = [tuple(segments.GetNthSegment(i).GetColor()) for i in range(segments.GetNumberOfSegments())]
                    segmentId = segments.AddEmptySegment("", target.name,
                                                         pick_segment_color(target.mask_name, serverLabels, used))
                covered = context.get("coveredOnly") and scope != "slice"
                inplace = None if target.create or (scope != "slice" and not covered) else self._internalPlane(
                    segmentation, segmentId, volume)
                key = (context["volumeID"], segmentation.GetID(), target.name, axis, index)
                if inplace is not None and covered:
                    labelmap, array, value, offset, dims = inplace
                    for j in covered_planes(mask, axis):  # one undo patch per touched plane
                        previous = write_plane_inplace(array, read_slice(mask, axis, j), value, axis, j, offset, dims)
                        undoStack.push(segmentId, axis, j, previous, group=group, offset=offset)
                    self._internalModified(segmentation, segmentId, labelmap)
                elif inplace is not None:
                    labelmap, array, value, offset, dims = inplace
                    if interaction is not None:
                        mask = interaction.plane(key, read_plane_inplace(array, value, axis, index, offset, dims),
                                                 mask)
                    previous = write_plane_inplace(array, mask, value, axis, index, offset, dims)
                    undoStack.push(segmentId, axis, index, previous, group=group, offset=offset)
                    self._internalModified(segmentation, segmentId, labelmap)
                else:
                    arr = np.zeros(label.shape, np.uint8) if target.create else self.segmentArray(
                        segmentation, segmentId, volume)
                    if scope == "slice":
                        if interaction is not None:
                            mask = interaction.plane(key, read_slice(arr, axis, index) > 0, mask)
                        previous = write_slice(arr, mask.astype(np.uint8), axis, index)
                        undoStack.push(segmentId, axis, index, previous, group=group, created=target.create)
                    elif covered:  # the covered planes replaced, the others kept; undo: the whole segment
                        undoStack.push(segmentId, None, None, arr.copy(), group=group, created=target.create)
                        for j in covered_planes(mask, axis):
                            write_slice(arr, read_slice(mask, axis, j).astype(np.uint8), axis, j)
                    else:
                        undoStack.push(segmentId, None, None, arr.copy(), group=group, created=target.create)
                        arr[...] = mask
                    slicer.util.updateSegmentBinaryLabelmapFromArray(arr, segmentation, segmentId, volume)
                segment = segments.GetSegment(segmentId)
                segment.SetTag("MedPLIB.Question", context.get("question") or context.get("segmentName") or "")
                segment.SetTag("MedPLIB.Answer", result.answer or "")
                written[segment.GetName()] = int(np.count_nonzero(mask))
        self.rebuildSurface(segmentation, hadSurface or showIn3D)
        segmentation.Modified()
        return written

    def rebuildSurface(self, segmentation, wanted: bool) -> None:
        """Re-create the closed surface that updating a labelmap invalidates (else 3D views go blank)."""
        if wanted and segmentation is not None:
            segmentation.CreateClosedSurfaceRepresentation()

    def showBoxes(self, volume, boxes) -> list:
        """One ROI node per box of an answer, named after its phrase, oriented along the volume's IJK axes (a
        right-handed frame). Every box node of an earlier answer about this volume is removed first, numbered ones
        included, so asking again does not pile them up."""
        ijkToRas, parent, _ = self.volumeGeometry(volume)
        existing = [(n, n.GetAttribute(BOX_ATTR)) for n in slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")]
        for old in stale_box_nodes(existing, volume.GetID()):
            removeNodeWithHelpers(old)
        nodes = []
        for spec in rois_from_boxes(boxes, ijkToRas, parent):
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", spec.name)
            roi.SetAttribute(BOX_ATTR, volume.GetID())
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

    def undoLast(self, undoStack, showIn3D: bool = False) -> list:
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
        hadSurface = segments.ContainsRepresentation(self._closedSurfaceName())
        restored = []
        with slicer.util.RenderBlocker():
            for entry in entries:
                segment = segments.GetSegment(entry.segment_id)
                if segment is None:
                    continue
                name = segment.GetName()
                inplace = self._internalPlane(segmentation, entry.segment_id, volume) if entry.offset else None
                if entry.created:
                    segments.RemoveSegment(entry.segment_id)
                elif inplace is not None and tuple(inplace[3]) == entry.offset:
                    labelmap, array, _, offset, dims = inplace
                    restore_plane_inplace(array, entry.previous, entry.axis, entry.index, offset, dims)
                    self._internalModified(segmentation, entry.segment_id, labelmap)
                else:
                    if entry.axis is None:
                        arr = entry.previous.astype(np.uint8)
                    else:
                        arr = self.segmentArray(segmentation, entry.segment_id, volume)
                        write_slice(arr, (entry.previous > 0).astype(np.uint8), entry.axis, entry.index)
                    slicer.util.updateSegmentBinaryLabelmapFromArray(arr, segmentation, entry.segment_id, volume)
                restored.append(name)
        self.rebuildSurface(segmentation, hadSurface or showIn3D)
        segmentation.Modified()
        return restored

    def labelArray(self, volume, segmentation, serverLabels):
        """(KJI label array, IJK->RAS, ``{name: value}``) of the segments for "Submit label" (values from the
        server's labels where the names match). The worker writes the file."""
        if segmentation is None:
            raise ValueError("Select the segmentation to submit.")
        segments = segmentation.GetSegmentation()
        ids = [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())]
        names = [segments.GetSegment(segmentId).GetName() for segmentId in ids]
        values = label_values(names, serverLabels)  # ValueError when there are no segments
        label = segments_to_label(((name, self.segmentArray(segmentation, segmentId, volume))  # one at a time
                                   for name, segmentId in zip(names, ids)), values,
                                  shape=slicer.util.arrayFromVolume(volume).shape)
        return label, self.volumeGeometry(volume)[0], values
