"""MedPLIBLabelTest: the in-Slicer self-test of the MedPLIB Label module (``MedPLIBLabel.py`` re-exports it, so
Slicer's "Reload and Test", the Self Tests module and ``slicer.testing.runUnitTest`` find it in the module).

The geometry and box tests need no server; the widget round trip needs a running MedPLIB Label server at
$MEDPLIB_LABEL_URL (default http://127.0.0.1:8000; ``make serve`` in the repository) and is skipped without one.
See slicer_extension/README.md.
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

from MedPLIBLabelLib import (DEFAULT_URL, SLICE_TIMEOUT_S, VIEW_NAMES, VOLUME_TIMEOUT_S, ClientError, MedPLIBClient,
                             covered_planes, ijk_to_ras, mode_model, ras_to_ijk, read_slice, slice_index,
                             standard_slice_to_ras, user_message)
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
        self.setUp()
        self.test_MedPLIBLabel_PromptableBox()

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

    # ------------------------------------------------------------------ the widget, against a server
    def pumpWidget(self, widget, timeout: float) -> None:
        """Run the widget's poll timer until its request is done (the answer path runs in onPoll)."""
        t0 = time.time()
        while widget.runner.busy or widget.runner.job is not None:
            if time.time() - t0 > timeout:
                widget.onCancel()
                raise TimeoutError(f"{widget.busyWhat} did not finish in {timeout:.0f} s")
            slicer.app.processEvents()
            widget.onPoll()
            time.sleep(0.02)
        slicer.app.processEvents()

    def connectedWidget(self):
        """The module's widget connected to $MEDPLIB_LABEL_URL through its own Test connection button; skips the
        test (ctest registers it) when no server answers."""
        url = os.environ.get("MEDPLIB_LABEL_URL", DEFAULT_URL)
        try:
            MedPLIBClient(url, timeout=5).test_connection()
        except ClientError as exc:
            self.skipTest(f"no MedPLIB Label server at {url}: {user_message(exc)} (start one with `make serve`)")
        slicer.util.selectModule("MedPLIBLabel")
        widget = slicer.modules.MedPLIBLabelWidget
        widget.ui.serverComboBox.setEditText(url)
        widget.ui.tokenLineEdit.setText(os.environ.get("MEDPLIB_LABEL_TOKEN", ""))
        widget.ui.testConnectionButton.click()
        self.pumpWidget(widget, 60)
        self.assertIsNotNone(widget.client, widget.ui.serverStatusLabel.text)
        return widget

    def test_MedPLIBLabel_AskAndUndo(self) -> None:
        """Drives the widget: upload, run-on-placement of a positive point (placement, Ask, polling, the answer
        path: masks, boxes, history), Ctrl+Z, Submit label, Next sample; removes the image it uploaded. The upload
        confirmation dialog is answered by a stand-in (the only GUI fake)."""
        widget = self.connectedWidget()
        logic, client = widget.logic, widget.client
        volume = self.loadVolume()
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.askUploadPermission = lambda: True  # the privacy dialog would block a headless run
        widget.uploadVolume()
        self.pumpWidget(widget, 300)
        imageId = logic.imageIdOf(volume, client.url)
        self.assertTrue(imageId, "the upload did not record the server's image id")
        try:
            self.askThroughTheWidget(widget, volume)
            widget.ui.submitLabelButton.click()
            self.pumpWidget(widget, 120)
            self.assertIn("final", client.datastore("all")["objects"][imageId]["labels"])
            widget.ui.nextSampleButton.click()
            self.pumpWidget(widget, 300)
            sample = widget.ui.inputVolumeSelector.currentNode()
            self.assertIsNot(sample, volume)
            self.assertTrue(logic.imageIdOf(sample, client.url))
        finally:
            client.remove_image(imageId)  # the test leaves no image behind in the datastore
        self.delayDisplay("MedPLIB Label widget round trip passed")

    def askThroughTheWidget(self, widget, volume) -> None:
        logic = widget.logic
        sliceNode, centre = self.redSliceNode(logic, volume)
        widget.ui.runOnPlacementCheckBox.checked = True
        widget.ui.questionLineEdit.setText("Please segment the brain.")
        widget.ui.segmentNameComboBox.setEditText("brain")
        widget.ui.promptViewComboBox.setCurrentText("Red")
        widget.lastPromptView = "Red"
        turns = len(widget.history.turns(volume.GetID()))
        positive = logic.getPromptNode("positive")
        positive.AddControlPointWorld(vtk.vtkVector3d(*centre))  # placing fires PointPositionDefinedEvent
        slicer.app.processEvents()
        if not widget.runner.busy:  # outside an interactive view the event may not fire: ask as the button does
            widget.ui.askButton.click()
        self.pumpWidget(widget, SLICE_TIMEOUT_S)
        self.assertEqual(len(widget.history.turns(volume.GetID())), turns + 1, "the chat got no turn")
        segmentation = widget.ui.segmentationSelector.currentNode()
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("brain")
        self.assertTrue(segmentId, "the answer created no 'brain' segment")
        ijkToRas, parent, dims = logic.volumeGeometry(volume)
        index = slice_index(ijkToRas, logic.sliceToRas(sliceNode), parent, dims=dims)
        arr = logic.segmentArray(segmentation, segmentId, volume)
        onSlice = int(read_slice(arr, 2, index).sum())
        self.assertGreater(onSlice, 0, "the segment is empty on the asked slice")
        self.assertEqual(int(arr.sum()), onSlice, "slice scope wrote voxels outside the current slice")
        self.assertTrue(widget.undoShortcut is None or widget.undoShortcut.enabled, "Ctrl+Z is off while shown")
        self.assertEqual(widget.undoShortcut.key.toString() if widget.undoShortcut else "Ctrl+Z", "Ctrl+Z")
        widget.onUndo()  # what the Ctrl+Z shortcut calls (QShortcut key events cannot be sent from Python here)
        self.assertFalse(segmentation.GetSegmentation().GetSegmentIdBySegmentName("brain"))
        widget.ui.askButton.click()  # again, to have a segment for Submit label
        self.pumpWidget(widget, SLICE_TIMEOUT_S)
        widget.onClearPrompts()

    # ------------------------------------------------------------------ promptable modes, against a server
    def test_MedPLIBLabel_PromptableBox(self) -> None:
        """The promptable mode through the widget: a box on the Red slice -> a mask inside the box on that slice
        only, without a question; a second run replaces the interaction's mask (not added); Ctrl+Z's handler;
        then "Segment in 3D from these prompts" -> several slices and the coverage on the status line. Skipped
        without a server, or when the server announces no promptable model."""
        widget = self.connectedWidget()
        logic, client = widget.logic, widget.client
        if mode_model(widget.serverInfo, "promptable") is None:
            self.skipTest("the server announces no promptable model (/info config.modes)")
        volume = self.loadVolume()
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.askUploadPermission = lambda: True
        widget.uploadVolume()
        self.pumpWidget(widget, 300)
        imageId = logic.imageIdOf(volume, client.url)
        self.assertTrue(imageId, "the upload did not record the server's image id")
        try:
            sliceNode, centre = self.redSliceNode(logic, volume)
            widget.ui.modeComboBox.setCurrentIndex(widget.ui.modeComboBox.findData("promptable"))
            self.assertEqual(widget.currentMode(), "promptable")
            widget.ui.questionLineEdit.setText("")
            widget.ui.segmentNameComboBox.setEditText("object")
            widget.ui.promptViewComboBox.setCurrentText("Red")
            widget.onClearPrompts()
            box = logic.getPromptNode("box")
            box.SetCenter(*centre)
            box.SetSize(60.0, 60.0, 1.0)
            slicer.app.processEvents()
            widget.ui.askButton.click()  # what run on placement does after a box is drawn
            self.pumpWidget(widget, SLICE_TIMEOUT_S)
            segmentation = widget.ui.segmentationSelector.currentNode()
            segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("object")
            self.assertTrue(segmentId, "the promptable box created no 'object' segment")
            ijkToRas, parent, dims = logic.volumeGeometry(volume)
            index = slice_index(ijkToRas, logic.sliceToRas(sliceNode), parent, dims=dims)
            arr = logic.segmentArray(segmentation, segmentId, volume)
            onSlice = int(read_slice(arr, 2, index).sum())
            self.assertGreater(onSlice, 0, "the promptable mask is empty on the box's slice")
            self.assertEqual(int(arr.sum()), onSlice, "the promptable mask has voxels off the box's slice")
            corners = ras_to_ijk([np.asarray(centre) - 31.0, np.asarray(centre) + 31.0], ijkToRas, parent)
            lo, hi = corners.min(axis=0), corners.max(axis=0)
            kk, jj, ii = np.nonzero(arr)
            self.assertTrue(ii.min() >= lo[0] - 1 and ii.max() <= hi[0] + 1 and jj.min() >= lo[1] - 1
                            and jj.max() <= hi[1] + 1, "the promptable mask leaves the box")
            widget.ui.askButton.click()  # the same interaction again: its mask is replaced, never added to
            self.pumpWidget(widget, SLICE_TIMEOUT_S)
            self.assertEqual(int(logic.segmentArray(segmentation, segmentId, volume).sum()), onSlice)
            widget.onUndo()  # back to the first mask of the interaction
            self.assertEqual(int(logic.segmentArray(segmentation, segmentId, volume).sum()), onSlice)
            if mode_model(widget.serverInfo, "box3d") is not None:
                widget.ui.segment3DButton.click()
                self.pumpWidget(widget, VOLUME_TIMEOUT_S)
                arr3d = logic.segmentArray(segmentation, segmentId, volume)
                self.assertGreater(len(covered_planes(arr3d, 2)), 1, "3D from the box covered one slice only")
                self.assertIn("slice(s) covered", widget.ui.promptSummaryLabel.text)
                widget.onUndo()  # every plane the 3D answer wrote comes back
                self.assertEqual(int(logic.segmentArray(segmentation, segmentId, volume).sum()), onSlice)
            widget.onClearPrompts()
        finally:
            client.remove_image(imageId)
        self.delayDisplay("MedPLIB Label promptable box passed")
