"""Units of the Slicer module's Lib for issue #19 (no server, no Slicer): lasso fill, segment colours, background
entries, in-place plane writes and their undo patches, answer-box ROI frames, stale box nodes, the job discard
hook, and the interaction helpers (shortcuts, settings, run-on-placement, target segments, server modes).

The MRML side of these (writing the internal labelmap, rebuilding the closed surface, QShortcuts, the embedded
Segment Editor) can only be checked inside Slicer: see MedPLIBLabelTest and slicer_extension/README.md.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "slicer_extension" / "MedPLIBLabel"))

import MedPLIBLabelLib as lib  # noqa: E402
from MedPLIBLabelLib import geometry as g, interaction as ia, labels, protocol as pr, refer, regions  # noqa: E402

M = np.array([[-1.0, 0, 0, 40], [0, -1.0, 0, 50], [0, 0, 2.5, -30], [0, 0, 0, 1]])  # LPS-like, det < 0
DIMS = (80, 96, 40)


# ---------------------------------------------------------------------------------------------------- lasso
def test_polygon_mask_fills_the_inside_and_keeps_the_outline():
    square = ([10, 10, 30, 30], [5, 25, 25, 5])
    mask = regions.polygon_mask((40, 40), *square)
    assert mask[20, 15] and mask[10, 5] and mask[30, 25] and not mask[35, 15] and not mask[20, 30]
    assert mask.sum() == 21 * 21
    thin = regions.polygon_mask((40, 40), [5, 5.2, 5.4], [3, 20, 3])  # a sliver: only its outline
    assert thin[5, 10] and thin.sum() >= 18
    clipped = regions.polygon_mask((10, 10), [-5, -5, 20, 20], [-5, 20, 20, -5])  # larger than the plane
    assert clipped.all()


@pytest.mark.parametrize("view", ["axial", "sagittal", "coronal"])
def test_lasso_region_on_each_view_of_a_flipped_volume(view):
    centre = np.array([40, 48, 20])
    world = g.ijk_to_ras(centre, M)
    normal = {"axial": 2, "sagittal": 0, "coronal": 1}[view]
    s = g.standard_slice_to_ras(view, center=world, offset=float(world[normal]))
    ring = [world + 6 * (np.cos(a) * s[:3, 0] + np.sin(a) * s[:3, 1]) for a in np.linspace(0, 6.28, 16)]
    region = regions.lasso_region(pr.LassoPrompt(ring), M, s, dims=DIMS)
    assert region.index == centre[region.axis]
    row_axis, col_axis = regions.plane_axes(region.axis)
    assert region.plane[centre[row_axis], centre[col_axis]]
    vol = lib.region_volume(region.plane, region.axis, region.index, DIMS)
    assert vol.shape == DIMS[::-1] and vol[centre[2], centre[1], centre[0]] == 1
    assert not pr.label_outside_slice(vol, region.axis, region.index)
    with pytest.raises(pr.PromptError):
        regions.lasso_region(pr.LassoPrompt(ring[:2]), M, s, dims=DIMS)
    off = [p + 20 * s[:3, 2] for p in ring]
    with pytest.raises(pr.PromptError):
        regions.lasso_region(pr.LassoPrompt(off), M, s, dims=DIMS)


def test_one_lasso_per_question():
    s = g.standard_slice_to_ras("axial", center=g.ijk_to_ras([40, 48, 20], M))
    lasso = pr.LassoPrompt([[0, 0, 0], [1, 0, 0], [1, 1, 0]])
    with pytest.raises(pr.PromptError, match="one lasso"):
        pr.build_infer_params("q", [lasso, lasso], M, s)


# ---------------------------------------------------------------------------------------------------- item 2, 5
def test_new_segments_get_distinct_stable_colours():
    server = {"brain": 1, "grey matter": 2, "white matter": 3, "csf": 4}
    first = labels.pick_segment_color("white matter", server, [])
    assert first == labels.segment_color(3)  # the server's stable value, not the per-answer value 1
    used = [first]
    for name in ("brain", "tumour", "cyst", "csf"):
        c = labels.pick_segment_color(name, server, used)
        assert c not in used, (name, c, used)
        used.append(c)
    assert labels.pick_segment_color("white matter", server, []) == first  # stable across sessions
    full = list(labels.SEGMENT_COLORS)
    assert labels.pick_segment_color("x", {}, full) in labels.SEGMENT_COLORS


def test_background_entries_are_dropped():
    assert lib.clean_label_names({"background": 0, "Background": 5, "liver": 1, "zero": 0, "x": "2"}) == \
        {"liver": 1, "x": 2}
    r = lib.InferResult.from_params({"label_names": {"background": 0, "liver": 1}, "seg_count": 1}, "/x.nii.gz")
    assert r.label_names == {"liver": 1}
    only_bg = lib.InferResult.from_params({"label_names": {"background": 0}, "seg_count": 1}, "/x.nii.gz")
    assert not only_bg.has_masks
    label = np.zeros((3, 4, 5), np.uint8)
    label[1, 2, 3] = 1
    masks = pr.masks_from_label(label, {"background": 0, "liver": 1}, 2, 1)
    assert list(masks) == ["liver"]
    info = lib.ServerInfo.from_info("http://x", {"name": "MedPLIB Label", "labels": {"background": 0, "brain": 1}})
    assert info.labels == {"brain": 1}


# ---------------------------------------------------------------------------------------------------- item 7
def test_inplace_plane_write_and_slice_sized_undo_patch():
    dims = (6, 5, 4)  # IJK
    extent = (-1, 6, 0, 4, -2, 3)  # a labelmap larger than the volume (offset 1, 0, 2)
    offset = regions.internal_offset(M, extent, M, dims)
    assert offset == (1, 0, 2)
    internal = np.zeros((6, 5, 8), np.uint8)  # KJI of the extent
    internal[2 + 1, 0, 1] = 3  # another segment of the shared layer, on the plane written
    internal[2 + 1, 4, 6] = 1  # this segment's old voxel, outside the new mask
    mask = np.zeros((5, 6), bool)  # plane k=1: rows J, columns I
    mask[2, 2] = mask[0, 0] = True
    previous = regions.write_plane_inplace(internal, mask, 1, 2, 1, offset, dims)
    plane = internal[3, 0:5, 1:7]
    assert plane[2, 2] == 1 and plane[0, 0] == 1 and plane[4, 5] == 0  # old voxel gone
    assert previous.shape == (5, 6) and previous.nbytes <= 5 * 6  # slice-sized undo patch
    stack = lib.UndoStack()
    entry = stack.push("seg", 2, 1, previous, offset=offset)
    assert entry.offset == (1, 0, 2)
    regions.restore_plane_inplace(internal, stack.pop().previous, 2, 1, offset, dims)
    assert internal[3, 0, 1] == 3 and internal[3, 4, 6] == 1 and internal.sum() == 4
    # Another grid, or a labelmap not covering the volume: no in-place write (the module re-imports the segment).
    assert regions.internal_offset(M @ np.diag([1, 1, 2, 1]), extent, M, dims) is None
    assert regions.internal_offset(M, (0, 5, 0, 4, 1, 3), M, dims) is None


# ---------------------------------------------------------------------------------------------------- item 10
def test_answer_box_rois_have_a_right_handed_frame_and_enclose_the_voxels():
    boxes = [{"label": "csf", "ijk": [[10, 12, 5], [30, 40, 7]]}, {"label": "csf", "ijk": [[1, 2, 3], [4, 5, 6]]}]
    specs = refer.rois_from_boxes(boxes, M)
    for spec, box in zip(specs, boxes):
        assert np.linalg.det(spec.axes) > 0  # mirrored otherwise (the volume's det is negative)
        corners = g.ras_to_ijk(refer.roi_corners(spec), M)
        lo, hi = np.asarray(box["ijk"][0]) - 0.5, np.asarray(box["ijk"][1]) + 0.5
        np.testing.assert_allclose(corners.min(axis=0), lo, atol=1e-9)
        np.testing.assert_allclose(corners.max(axis=0), hi, atol=1e-9)
    assert [s.name for s in specs] == ["csf", "csf (2)"]


def test_stale_box_nodes_include_numbered_ones_of_earlier_answers():
    nodes = [("csf", "vtkMRMLScalarVolumeNode1"), ("csf (2)", "vtkMRMLScalarVolumeNode1"), ("old", "1"),
             ("other volume", "vtkMRMLScalarVolumeNode2"), ("user ROI", None)]
    assert refer.stale_box_nodes(nodes, "vtkMRMLScalarVolumeNode1") == ["csf", "csf (2)", "old"]


# ---------------------------------------------------------------------------------------------------- item 9
def test_a_cancelled_job_hands_its_result_to_on_discard():
    gate, seen = threading.Event(), []
    job = lib.BackgroundJob(lambda: (gate.wait(5), "result")[1], on_discard=seen.append)
    job.cancel()
    gate.set()
    while not job.finished:
        time.sleep(0.005)
    time.sleep(0.02)
    assert seen == ["result"]
    late = lib.BackgroundJob(lambda: "late", on_discard=seen.append)
    late.wait(5)
    late.cancel()  # finished, never delivered
    assert seen == ["result", "late"]
    delivered = lib.BackgroundJob(lambda: "kept", on_discard=seen.append)
    assert delivered.result(5) == "kept"
    delivered.cancel()
    assert seen == ["result", "late"]  # a delivered result is the caller's, never discarded


def test_poll_waits_on_a_running_job():
    runner = lib.JobRunner()
    runner.submit(time.sleep, 0.2)
    t0 = time.monotonic()
    assert runner.poll(yield_s=0.05) == "running"
    assert time.monotonic() - t0 >= 0.045  # the wait is what lets the worker run inside Slicer
    t0 = time.monotonic()
    runner.poll(yield_s=0.0)
    assert time.monotonic() - t0 < 0.02


# ---------------------------------------------------------------------------------------------------- interaction
def test_shortcuts_are_single_keys_and_listed():
    keys = [k for k, _, _ in ia.SHORTCUTS]
    assert len(keys) == len(set(keys)) and all(len(k) == 1 for k in keys if k != "Ctrl+Z")
    text = ia.shortcut_help()
    for key, _, what in ia.SHORTCUTS:
        assert f"{key.upper() if len(key) == 1 else key}: {what}" in text


def test_settings_values():
    assert ia.settings_value("MedPLIBLabel/showIn3D", "true") is True
    assert ia.settings_value("MedPLIBLabel/showIn3D", "false") is False
    assert ia.settings_value("MedPLIBLabel/runOnPlacement", None) is True
    assert ia.settings_value("MedPLIBLabel/autoFetchNextSample", 1) is True
    assert ia.settings_value("MedPLIBLabel/serverUrl", "http://h:1") == "http://h:1"


def test_run_on_placement_rules():
    kw = dict(connected=True, has_volume=True, question="what is this?")
    assert ia.run_on_placement(True, "positive", **kw) == (True, "")
    assert ia.run_on_placement(True, "box", **kw)[0]
    assert not ia.run_on_placement(True, "scribble", **kw)[0]  # a stroke runs once finished
    assert ia.run_on_placement(True, "lasso", finished_stroke=True, **kw)[0]
    assert ia.run_on_placement(False, "positive", **kw) == (False, "")
    assert "running" in ia.run_on_placement(True, "positive", busy=True, **kw)[1]
    assert "question" in ia.run_on_placement(True, "negative", connected=True, has_volume=True)[1]
    assert ia.run_on_placement(True, "negative", connected=True, has_volume=True, segment_name="csf")[0]


def test_segment_targets():
    segs = {"Segment_1": "brain", "Segment_2": "csf"}
    named = ia.segment_targets("named", ["csf", "tumour"], segs)
    assert [(t.name, t.segment_id, t.create) for t in named] == [("csf", "Segment_2", False),
                                                                  ("tumour", None, True)]
    sel = ia.segment_targets("selected", ["tumour", "csf"], segs, selected_id="Segment_1")
    assert [(t.name, t.segment_id) for t in sel] == [("brain", "Segment_1"), ("csf", "Segment_2")]
    assert ia.segment_targets("selected", ["x"], segs, selected_id=None)[0].create  # nothing selected: by name
    new = ia.segment_targets("new", ["csf", "csf"], segs)
    assert [t.name for t in new] == ["csf (2)", "csf (3)"] and all(t.create for t in new)
    with pytest.raises(ValueError):
        ia.segment_targets("other", [], segs)
    assert [ia.next_segment_index(3, c) for c in (-1, 0, 2)] == [0, 1, 0] and ia.next_segment_index(0, 0) == 0


def test_modes_list_only_what_the_server_offers():
    assert ia.available_modes(None) == [("ask", ia.MODE_TITLES["ask"])]
    info = lib.ServerInfo.from_info("http://x", {"name": "MedPLIB Label", "config": {"medplib": {"modes": [
        "box3d", "nonsense"]}}, "models": {"m": {"config": {"modes": ["promptable"]}}}})
    assert [m for m, _ in ia.available_modes(info)] == ["ask", "box3d", "promptable"]


def test_answers_say_when_the_mask_came_from_the_atlases_or_the_box():
    """The chat line names the source of a mask that is not the model's own (the server's response fields, as
    docs/params.md documents them; a real server's response is checked in tests/test_atlas_prior.py)."""
    prior = {"used": True, "structure": "left thalamus", "atlases": ["aal3", "hammers", "ibsr"]}
    sliced = lib.InferResult.from_params({"answer": "Sure, it is [SEG].", "label_names": {"target": 1},
                                          "seg_count": 1, "mask_source": "atlas_prior", "atlas_prior": prior}, "/x")
    assert sliced.source_note == "from 3 registered atlases" and sliced.has_masks
    volume = lib.InferResult.from_params({"answer": "Here is the left thalamus (registered atlases).",
                                          "scope": "volume", "label_names": {"target": 1}, "seg_count": 1,
                                          "slices": {"target": {"mask_source": "atlas_prior", "atlas_prior": prior}}},
                                         "/x")
    assert volume.source_note == "from 3 registered atlases"
    boxed = lib.InferResult.from_params({"mask_source": "promptable", "atlas_prior": {}}, None)
    assert boxed.source_note == "mask from the box (LiteMedSAM)"
    model = lib.InferResult.from_params({"mask_source": "medplib",
                                         "atlas_prior": {"used": False, "unavailable": "2D image"}}, None)
    assert model.source_note == ""
