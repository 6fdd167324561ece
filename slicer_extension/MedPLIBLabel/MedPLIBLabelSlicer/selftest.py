"""MedPLIBLabelTest: the in-Slicer self-test of the MedPLIB Label module (``MedPLIBLabel.py`` re-exports it, so
Slicer's "Reload and Test", the Self Tests module and ``slicer.testing.runUnitTest`` find it in the module).

The geometry test needs no server; the round trip needs a running MedPLIB Label server at $MEDPLIB_LABEL_URL
(default http://127.0.0.1:8000; ``make serve`` in the repository). See slicer_extension/README.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import numpy as np

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from MedPLIBLabelLib import (CLIENT_TIMEOUT_S, DEFAULT_URL, SLICE_TIMEOUT_S, VIEW_NAMES, BackgroundJob, ClientError,
                             MedPLIBClient, UndoStack, ijk_to_ras, read_slice, remove_file, slice_index,
                             standard_slice_to_ras, upload_file, user_message)
from MedPLIBLabelSlicer.logic import MedPLIBLabelLogic

__all__ = ["MedPLIBLabelTest"]


class MedPLIBLabelTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test. The round trip needs a running MedPLIB Label server at $MEDPLIB_LABEL_URL
    (default http://127.0.0.1:8000; start one with `make serve` in the repository)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self, **kwargs) -> None:
        self.setUp()
        self.test_MedPLIBLabel_Geometry()
        self.setUp()
        self.test_MedPLIBLabel_BoxRois()
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

    def test_MedPLIBLabel_BoxRois(self) -> None:
        """An answer's IJK boxes become ROI nodes whose world bounds enclose exactly those voxels."""
        self.delayDisplay("Boxes: ROI nodes from an answer's IJK boxes")
        logic = MedPLIBLabelLogic()
        volume = self.loadVolume()
        boxes = [{"label": "white matter", "ijk": [[10, 12, 5], [30, 40, 5]]},
                 {"label": "white matter", "ijk": [[2, 3, 5], [4, 6, 5]]}]
        nodes = logic.showBoxes(volume, boxes)
        self.assertEqual([n.GetName() for n in nodes], ["white matter", "white matter (2)"])
        ijkToRas, parent, _ = logic.volumeGeometry(volume)
        world = parent @ ijkToRas if parent is not None else ijkToRas
        for node, box in zip(nodes, boxes):
            lo, hi = (np.asarray(v, float) for v in box["ijk"])
            centre = world[:3, :3] @ ((lo + hi) / 2) + world[:3, 3]
            got = [0.0, 0.0, 0.0]
            node.GetCenterWorld(got)
            np.testing.assert_allclose(got, centre, atol=1e-3)
            np.testing.assert_allclose(node.GetSize(), (hi - lo + 1) * np.linalg.norm(world[:3, :3], axis=0),
                                       atol=1e-3)
        self.assertEqual(len(logic.showBoxes(volume, boxes[:1])), 1)  # asking again replaces, not piles up
        self.assertEqual(len([n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")
                              if n.GetName() == "white matter"]), 1)
        self.delayDisplay("Box ROI test passed")

    def test_MedPLIBLabel_AskAndUndo(self) -> None:
        url = os.environ.get("MEDPLIB_LABEL_URL", DEFAULT_URL)
        self.delayDisplay(f"Round trip with the MedPLIB Label server at {url}")
        logic = MedPLIBLabelLogic()
        volume = self.loadVolume()

        client = MedPLIBClient(url, token=os.environ.get("MEDPLIB_LABEL_TOKEN") or None, timeout=CLIENT_TIMEOUT_S)
        try:
            info = self.waitFor(BackgroundJob(client.test_connection, name="connect"), 60)
        except ClientError as exc:
            self.fail(f"No usable MedPLIB Label server at {url}: {user_message(exc)} "
                      "(start one with `make serve`, or set MEDPLIB_LABEL_URL)")
        model = "medplib" if "medplib" in info.models else sorted(info.models)[0]

        path = os.path.join(tempfile.mkdtemp(prefix="MedPLIBLabelTest-"), "volume.nii.gz")
        logic.saveVolume(volume, path)
        imageId = logic.newImageId(volume).replace("slicer_", "slicer_selftest_", 1)
        serverId = self.waitFor(BackgroundJob(upload_file, client, path, imageId, name="upload"), 300)
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
            remove_file(result.label_path)
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
