"""The logic the Slicer module delegates to its pure-Python Lib (`slicer_extension/MedPLIBLabel/MedPLIBLabelLib`),
tested without Slicer: choosing the view the prompts lie on, rotated ROIs to boxes, collecting prompts, segment names
to label values and the submitted label array, the training status line, safe image ids (the server's rule), which
answers may touch segments, widget states and texts, the worker-thread functions and the developer reload order.
"""

from __future__ import annotations

import random
import re
import string
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "slicer_extension" / "MedPLIBLabel"))

import MedPLIBLabelLib as lib  # noqa: E402
from MedPLIBLabelLib import geometry as g  # noqa: E402
from MedPLIBLabelLib import labels, prompts, tasks, ui_state  # noqa: E402
from MedPLIBLabelLib.protocol import BoxPrompt, PointPrompt, PromptError, ScribblePrompt  # noqa: E402


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _ijk_to_ras(spacing=(0.9, 1.1, 2.5), origin=(-40.0, -50.0, -30.0), direction=None) -> np.ndarray:
    m = np.eye(4)
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    m[:3, :3] = d * np.asarray(spacing, float)
    m[:3, 3] = origin
    return m


DIMS = (80, 90, 40)
IJK2RAS = _ijk_to_ras()
LPS = _ijk_to_ras(direction=np.diag([-1.0, -1.0, 1.0]), origin=(40.0, 50.0, -30.0))  # a DICOM-like LPS volume


def _views_through(ras, ijk_to_ras=IJK2RAS, parent=None, names=("Red", "Yellow", "Green")):
    """{name: slice_to_ras} of the standard views, each plane through `ras` (rotated with an oblique parent)."""
    out = {}
    for name in names:
        s = g.standard_slice_to_ras(name)
        if parent is not None:
            rot = np.eye(4)
            rot[:3, :3] = np.asarray(parent)[:3, :3]
            s = rot @ s
        s[:3, 3] = ras
        out[name] = s
    return out


# ============================================================================== (a) the view the prompts lie on
def test_choose_view_prefers_the_view_of_the_last_prompt():
    centre = g.ijk_to_ras([40, 45, 20], IJK2RAS)
    views = _views_through(centre)  # the point lies on all three planes
    assert prompts.choose_view([centre], views, IJK2RAS) == "Red"
    for name in ("Red", "Yellow", "Green"):
        assert prompts.choose_view([centre], views, IJK2RAS, preferred=name) == name
    assert prompts.choose_view([centre], views, IJK2RAS, preferred="Slice4") == "Red"  # not a view: ignored


def test_choose_view_finds_the_only_view_that_shows_the_points():
    centre = g.ijk_to_ras([40, 45, 20], IJK2RAS)
    views = _views_through(centre)
    # Move Red and Green away: the points (a stroke on the sagittal plane through the centre) are only on Yellow.
    views["Red"] = views["Red"].copy()
    views["Red"][:3, 3] += [0, 0, 10 * 2.5]
    views["Green"] = views["Green"].copy()
    views["Green"][:3, 3] += [0, 5 * 1.1, 0]
    stroke = [g.ijk_to_ras([40, j, k], IJK2RAS) for j, k in ((30, 10), (50, 12), (60, 30))]
    assert prompts.choose_view(stroke, views, IJK2RAS, preferred="Red") == "Yellow"
    # Within half a voxel of the plane is on it, a voxel away is not.
    near = centre + [0.4 * 0.9, 0, 0]
    assert prompts.choose_view([near], views, IJK2RAS, preferred="Red") == "Yellow"
    with pytest.raises(PromptError) as err:
        prompts.choose_view([centre + [1.0, 0, 0]], views, IJK2RAS)
    assert "not all on the current slice" in err.value.user_message


def test_choose_view_without_points_or_views():
    views = _views_through([0.0, 0.0, 0.0], names=("Green", "Yellow"))
    assert prompts.choose_view([], views, IJK2RAS) == "Yellow"  # Red, Yellow, Green order among existing views
    assert prompts.choose_view([], views, IJK2RAS, preferred="Green") == "Green"
    assert prompts.choose_view([[1.0, 2.0, 3.0]], views, None, preferred="Green") == "Green"  # no volume
    assert prompts.choose_view([], {}, IJK2RAS) == "Red"
    assert prompts.view_order(["Slice4", "Green", "Red"], preferred=None) == ["Red", "Green", "Slice4"]
    assert prompts.view_order(["Slice4", "Green", "Red"], preferred="Slice4") == ["Slice4", "Red", "Green"]


def test_choose_view_skips_oblique_views_and_uses_the_parent_transform():
    centre = g.ijk_to_ras([40, 45, 20], IJK2RAS)
    views = _views_through(centre)
    tilted = views["Red"].copy()
    tilted[:3, :3] = _rot(0, 20) @ tilted[:3, :3]
    views["Red"] = tilted
    assert prompts.choose_view([centre], views, IJK2RAS, preferred="Red") == "Yellow"

    parent = np.eye(4)
    parent[:3, :3] = _rot(0, 17) @ _rot(2, 31)
    parent[:3, 3] = [3.0, -2.0, 7.0]
    world = g.ijk_to_ras([10, 70, 5], IJK2RAS, parent)
    pviews = _views_through(world, parent=parent)
    assert prompts.choose_view([world], pviews, IJK2RAS, parent, preferred="Green") == "Green"
    # Without the parent transform the rotated views are oblique to the volume: none qualifies.
    with pytest.raises(PromptError):
        prompts.choose_view([world], pviews, IJK2RAS, None)


def test_prompt_points_cover_points_box_centres_and_strokes():
    pts = prompts.prompt_points([PointPrompt([1, 2, 3]), BoxPrompt([0, 0, 0], [2, 4, 6]),
                                 ScribblePrompt([[5, 5, 5], [6, 6, 6]])])
    assert pts == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [6.0, 6.0, 6.0]]
    assert prompts.prompt_points([]) == [] and prompts.prompt_points(None) == []


# ============================================================================== (b) rotated ROI -> box
def test_box_from_axis_aligned_roi():
    box = BoxPrompt.from_roi([10.0, 20.0, 30.0], [4.0, 6.0, 0.0])
    assert box.corner_a == [8.0, 17.0, 30.0] and box.corner_b == [12.0, 23.0, 30.0]
    with_volume = BoxPrompt.from_roi([10.0, 20.0, 30.0], [4.0, 6.0, 0.0], np.eye(3), ijk_to_ras=IJK2RAS)
    np.testing.assert_allclose(with_volume.corner_a, box.corner_a, atol=1e-9)
    np.testing.assert_allclose(with_volume.corner_b, box.corner_b, atol=1e-9)


@pytest.mark.parametrize("volume", ["ras", "lps", "oblique"])
def test_rotated_roi_becomes_the_ijk_bounding_box(volume):
    m = {"ras": IJK2RAS, "lps": LPS, "oblique": _ijk_to_ras(direction=_rot(2, 12) @ _rot(0, -7))}[volume]
    centre = g.ijk_to_ras([40, 45, 20], m)
    axes = (_rot(2, 30) @ _rot(1, 10)).T  # rows: the ROI's X, Y, Z axes in world
    size = [20.0, 10.0, 4.0]
    box = BoxPrompt.from_roi(centre, size, axes, ijk_to_ras=m)
    corners = g.roi_corners_world(centre, size, axes)
    ijk = g.ras_to_ijk(corners, m)
    got = g.ras_to_ijk(np.array([box.corner_a, box.corner_b]), m)
    np.testing.assert_allclose(got[0], ijk.min(axis=0), atol=1e-9)  # corner_a is the IJK minimum
    np.testing.assert_allclose(got[1], ijk.max(axis=0), atol=1e-9)
    # Every ROI corner lies inside the box in IJK, and the box is larger than the ROI's own extent.
    assert np.all(ijk >= got[0] - 1e-9) and np.all(ijk <= got[1] + 1e-9)
    assert all(isinstance(v, float) for v in box.corner_a + box.corner_b)
    # The wire box contains the ROI's voxels.
    roi = g.roi_to_ijk(box.corner_a, box.corner_b, m, dims=DIMS)
    for a in range(3):
        assert roi[2 * a] <= int(np.floor(ijk[:, a].min() + 0.5)) and roi[2 * a + 1] >= int(np.floor(
            ijk[:, a].max() + 0.5))


def test_rotated_roi_with_parent_transform():
    parent = np.eye(4)
    parent[:3, :3] = _rot(1, 25)
    parent[:3, 3] = [1.0, 2.0, 3.0]
    centre = g.ijk_to_ras([30, 40, 10], IJK2RAS, parent)
    axes = _rot(2, 45).T
    box = BoxPrompt.from_roi(centre, [8.0, 8.0, 2.0], axes, ijk_to_ras=IJK2RAS, parent=parent)
    ijk = g.ras_to_ijk(g.roi_corners_world(centre, [8.0, 8.0, 2.0], axes), IJK2RAS, parent)
    got = g.ras_to_ijk(np.array([box.corner_a, box.corner_b]), IJK2RAS, parent)
    np.testing.assert_allclose(got, [ijk.min(axis=0), ijk.max(axis=0)], atol=1e-9)


def test_collect_prompts_from_markups_positions():
    got = prompts.collect_prompts(positive=[[1, 2, 3]], negative=[[4, 5, 6], [7, 8, 9]],
                                  roi=([0, 0, 0], [2.0, 2.0, 0.0], None), scribble=[[0, 0, 0], [1, 1, 0]],
                                  lasso=[[0, 0, 0], [1, 0, 0], [1, 1, 0]])
    kinds = [type(p).__name__ for p in got]
    # The lasso is a LassoPrompt (sent as the region it encloses), not a closed scribble (sent as its outline).
    assert kinds == ["PointPrompt", "PointPrompt", "PointPrompt", "BoxPrompt", "ScribblePrompt", "LassoPrompt"]
    assert [p.positive for p in got[:3]] == [True, False, False]
    assert got[3].corner_a == [-1.0, -1.0, 0.0] and got[3].corner_b == [1.0, 1.0, 0.0]
    assert len(got[5].ras_points) == 3  # not closed by repeating the first point: the fill closes it
    assert len(got[4].ras_points) == 2  # the scribble stays open
    assert prompts.stroke_prompt([[0, 0, 0], [1, 1, 0]], closed=True) is None  # 2 points enclose nothing
    # An undrawn ROI (a new ROI node is 0 x 0 x 0), a 1-point stroke and no points: nothing.
    assert prompts.collect_prompts(roi=([5, 5, 5], [0.0, 0.0, 0.0], None), scribble=[[1, 1, 1]], lasso=[]) == []
    assert prompts.roi_is_defined([3.0, 2.0, 0.0]) and not prompts.roi_is_defined([3.0, 0.0, 0.0])
    assert prompts.stroke_prompt([[1, 2, 3]]) is None


def test_collected_prompts_build_the_request_on_the_chosen_view():
    """The module's flow without Slicer: markups -> prompts -> view -> /infer params."""
    centre = g.ijk_to_ras([40, 45, 20], IJK2RAS)
    views = _views_through(centre)
    views["Red"][:3, 3] += [0, 0, 2.5 * 3]  # the user scrolled Red away; the prompts are on Yellow and Green
    p2 = g.ijk_to_ras([40, 45, 25], IJK2RAS)
    got = prompts.collect_prompts(positive=[centre, p2], roi=(p2, [0.0, 10.0, 6.0], None), ijk_to_ras=IJK2RAS)
    view = prompts.choose_view(prompts.prompt_points(got), views, IJK2RAS, preferred="Red")
    assert view == "Yellow"
    params = lib.build_infer_params("what is this?", got, IJK2RAS, views[view], dims=DIMS)
    assert params["axis"] == 0 and params["slice"] == 40
    assert params["foreground"] == [[40, 45, 20], [40, 45, 25]]
    assert params["roi"][:2] == [40, 40]


def test_prompt_counts_and_summary():
    counts = prompts.prompt_counts(2, 0, True, 1, 3)
    assert list(counts.items()) == [("positive point(s)", 2), ("negative point(s)", 0), ("box", 1),
                                    ("scribble", 0), ("lasso", 1)]
    assert prompts.prompt_summary(counts, "Yellow") == \
        "Prompts: 2 positive point(s), 1 box, 1 lasso on the Yellow view."
    assert prompts.prompt_summary(counts) == "Prompts: 2 positive point(s), 1 box, 1 lasso."
    assert prompts.prompt_summary(prompts.prompt_counts(), "Red") == \
        "No prompts: the question is about the whole slice."


# ============================================================================== (c) segments -> label values
def test_label_values_use_the_server_labels_then_new_values():
    server = {"liver": 1, "spleen": 2, "kidney": 7}
    assert labels.label_values(["spleen", "tumour", "liver", "cyst"], server) == \
        {"spleen": 2, "tumour": 8, "liver": 1, "cyst": 9}
    assert labels.label_values(["a", "b"], None) == {"a": 1, "b": 2}
    assert labels.label_values(["a", "a", "b"], {}) == {"a": 1, "b": 2}  # same name, same value
    with pytest.raises(ValueError, match="no segments"):
        labels.label_values([], server)


def test_segments_to_label_merges_in_order():
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, :2, :2] = 1
    b = np.zeros_like(a)
    b[0, 1:, 1:] = 1  # overlaps a at [0, 1, 1]
    values = labels.label_values(["a", "b"], {"b": 5})
    label = labels.segments_to_label([("a", a), ("b", b)], values, shape=a.shape)
    assert label.dtype == np.uint8 and label.shape == a.shape
    assert label[0, 0, 0] == 6 and label[0, 1, 1] == 5 and label[0, 2, 3] == 5 and label[1].sum() == 0
    assert set(np.unique(label)) == {0, 5, 6}
    empty = labels.segments_to_label([], {}, shape=(2, 2, 2))
    assert empty.shape == (2, 2, 2) and not empty.any()
    # A generator is consumed one segment at a time (the module exports segments lazily).
    seen = []

    def lazy():
        for name, mask in (("a", a), ("b", b)):
            seen.append(name)
            yield name, mask

    np.testing.assert_array_equal(labels.segments_to_label(lazy(), values, shape=a.shape), label)
    np.testing.assert_array_equal(labels.segments_to_label(lazy(), values), label)  # shape from the first mask
    assert seen == ["a", "b", "a", "b"]
    big = labels.segments_to_label([("x", a)], {"x": 300})
    assert big.dtype == np.uint16 and big.max() == 300  # would wrap around in uint8
    with pytest.raises(ValueError, match="shape"):
        labels.segments_to_label([("a", a), ("b", np.zeros((2, 3, 5)))], values)


def test_segment_colors_cycle():
    assert labels.segment_color(1) == labels.SEGMENT_COLORS[0]
    assert labels.segment_color(len(labels.SEGMENT_COLORS) + 2) == labels.SEGMENT_COLORS[1]
    assert labels.segment_color(None) == labels.SEGMENT_COLORS[0]


# ============================================================================== (d) training status line
@pytest.mark.parametrize("status,text,running", [
    (None, "Training: none run yet", False),
    ({}, "Training: none run yet", False),
    ([], "Training: none run yet", False),
    ({"status": "RUNNING", "details": ["epoch 1", " epoch 2 loss 0.3 "]}, "Training: RUNNING - epoch 2 loss 0.3",
     True),
    ({"status": "done"}, "Training: DONE", False),
    ({"details": []}, "Training: UNKNOWN", False),
    ([{"status": "DONE"}, {"status": "running", "details": ["x" * 500]}], "Training: RUNNING - " + "x" * 200, True),
])
def test_training_status_text(status, text, running):
    assert ui_state.training_status_text(status) == text
    assert ui_state.training_running(status) is running


# ============================================================================== (e) safe image ids
def _server_rule():
    """The server's id check (monailabel_app/datastore.py), read from its source so the two cannot drift apart."""
    src = (ROOT / "monailabel_app" / "datastore.py").read_text(encoding="utf-8")
    pattern = re.search(r'SAFE_ID = re\.compile\(r"([^"]+)"\)', src).group(1)
    assert '".." in value' in src
    rx = re.compile(pattern)
    return lambda value: bool(rx.match(value)) and ".." not in value


def test_lib_id_rule_is_the_servers():
    assert ui_state.SAFE_ID.pattern == re.search(r'SAFE_ID = re\.compile\(r"([^"]+)"\)', (
        ROOT / "monailabel_app" / "datastore.py").read_text(encoding="utf-8")).group(1)


@pytest.mark.parametrize("name,expected", [
    ("MRHead", "MRHead"),
    ("CT chest (contrast)", "CT_chest__contrast"),
    ("brain.nii.gz", "brain.nii.gz"),
    ("../../etc/passwd", "etc_passwd"),
    ("a..b...c", "a.b.c"),
    ("__x__", "x"),
    ("-.-x-.-", "x"),
    ("Schädel 1", "Sch_del_1"),
    ("", "volume"),
    (None, "volume"),
    ("...", "volume"),
    ("日本語", "volume"),
])
def test_safe_image_id(name, expected):
    assert ui_state.safe_image_id(name) == expected
    assert _server_rule()(ui_state.safe_image_id(name))


def test_safe_image_id_is_always_accepted_by_the_server():
    ok = _server_rule()
    rng = random.Random(0)
    alphabet = string.printable + "äöü日本.._--/\\\x00 "
    for _ in range(2000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        sid = ui_state.safe_image_id(name)
        assert ok(sid) and ui_state.is_safe_id(sid) and len(sid) <= 128, (name, sid)
        assert set(sid) <= set(string.ascii_letters + string.digits + "._-")
    assert len(ui_state.safe_image_id("a" * 500)) == 128
    assert ui_state.safe_image_id("a" * 50, max_len=10) == "a" * 10
    assert ui_state.safe_image_id("!!!", fallback="sample") == "sample"


def test_new_image_id():
    ok = _server_rule()
    sid = ui_state.new_image_id("MR Head.nrrd", stamp="20240102_030405")
    assert sid == "slicer_MR_Head.nrrd_20240102_030405" and ok(sid)
    long = ui_state.new_image_id("x" * 300, stamp="20240102_030405")
    assert long == "slicer_" + "x" * 40 + "_20240102_030405" and ok(long)
    assert re.fullmatch(r"slicer_volume_\d{8}_\d{6}", ui_state.new_image_id(""))
    assert ok(ui_state.new_image_id("...").replace("slicer_", "slicer_selftest_", 1))  # what the self-test sends


# ============================================================================== (f) which answers touch segments
def test_has_masks_only_when_the_model_returned_masks():
    text_only = lib.InferResult.from_params({"answer": "It is the liver.", "label_names": {"liver": 1},
                                             "seg_count": 0}, "/tmp/label.nii.gz")
    assert not text_only.has_masks  # the server attaches an all-zero label and label_names even then
    grounded = lib.InferResult.from_params({"answer": "[SEG]", "label_names": {"liver": 1}, "seg_count": 1},
                                           "/tmp/label.nii.gz")
    assert grounded.has_masks
    assert not lib.InferResult.from_params({"label_names": {"liver": 1}, "seg_count": 1}, None).has_masks
    assert not lib.InferResult.from_params({"label_names": {}, "seg_count": 2}, "/tmp/l.nii.gz").has_masks
    assert not lib.InferResult(params={}).has_masks


# ============================================================================== widget states and texts
def test_button_states():
    idle = ui_state.button_states(connected=False, busy=False, has_volume=True, has_model=False, can_undo=False,
                                  has_segmentation=True)
    assert idle["testConnectionButton"] and not any(v for k, v in idle.items() if k != "testConnectionButton")
    ready = ui_state.button_states(connected=True, busy=False, has_volume=True, has_model=True, can_undo=True,
                                   has_segmentation=True, can_3d=True)
    assert all(v for k, v in ready.items() if k != "cancelButton") and not ready["cancelButton"]
    # "Segment in 3D from these prompts" only when the server announces the box3d mode
    assert not ui_state.button_states(connected=True, busy=False, has_volume=True, has_model=True, can_undo=True,
                                      has_segmentation=True)["segment3DButton"]
    busy = ui_state.button_states(connected=True, busy=True, has_volume=True, has_model=True, can_undo=True,
                                  has_segmentation=True)
    assert {k for k, v in busy.items() if v} == {"cancelButton", "refreshTrainingButton"}
    no_volume = ui_state.button_states(connected=True, busy=False, has_volume=False, has_model=True, can_undo=False,
                                       has_segmentation=False)
    assert not (no_volume["askButton"] or no_volume["uploadVolumeButton"] or no_volume["submitLabelButton"]
                or no_volume["undoButton"])
    assert no_volume["nextSampleButton"] and no_volume["trainButton"]
    no_seg = dict(ready)
    no_seg.update(ui_state.button_states(connected=True, busy=False, has_volume=True, has_model=True,
                                         can_undo=True, has_segmentation=False))
    assert not no_seg["submitLabelButton"] and no_seg["askButton"]


def test_texts_and_choices():
    assert ui_state.image_id_text("abc", True) == "abc"
    assert ui_state.image_id_text(None, True).startswith("not on the server yet")
    assert ui_state.image_id_text(None, False) == "-"
    assert ui_state.url_choices("", "", "http://d") == ["http://d"]
    assert ui_state.url_choices("http://b", "http://a;http://b;;http://c", "http://d") == \
        ["http://b", "http://a", "http://c"]
    assert ui_state.url_choices(None, ["http://a", "http://b"], "http://a") == ["http://a", "http://b"]
    hist = ";".join(f"http://h{i}" for i in range(15))
    after = ui_state.url_history_after_connect("http://h5", hist).split(";")
    assert after[0] == "http://h5" and len(after) == 10 and after.count("http://h5") == 1
    assert ui_state.url_history_after_connect("http://x", None) == "http://x"
    assert ui_state.sort_model_names(["seg", "b_medplib", "medplib", "a"]) == ["medplib", "b_medplib", "a", "seg"]
    assert ui_state.pick_trainer(["medplib", "other"], "other") == "other"
    assert ui_state.pick_trainer(["t1"], "medplib") == "t1"
    assert ui_state.pick_trainer([], "x") == "medplib"
    assert ui_state.shown_question("What is it?", "liver", "slice", 2) == "What is it? [2 prompt(s)]"
    assert ui_state.shown_question("", "liver", "volume", 0) == "Segment the liver [whole volume]"
    assert ui_state.shown_question("", "", "slice", 0) == "(describe the slice)"

    class E(Exception):
        user_message = "friendly"

    assert ui_state.user_message(E("tech")) == "friendly"
    assert ui_state.user_message(ValueError("tech")) == "tech"
    assert ui_state.user_message(KeyError()) == "KeyError"
    info = lib.ServerInfo.from_info("http://h", {"name": "MedPLIB Label", "version": "0.1.0",
                                                 "models": {"medplib": {"type": "deepgrow", "dimension": 2}},
                                                 "config": {"medplib": {"device": "cuda:0"}}})
    assert info.status_line() == "Connected: MedPLIB Label 0.1.0: medplib (deepgrow, 2D); device cuda:0"
    info.medplib = {}
    assert info.status_line() == "Connected: MedPLIB Label 0.1.0: medplib (deepgrow, 2D)"


def test_reload_order_puts_dependencies_first():
    loaded = ["MedPLIBLabelSlicer", "MedPLIBLabelSlicer.selftest", "MedPLIBLabelLib.client", "numpy",
              "MedPLIBLabelLib", "MedPLIBLabelLib.errors", "MedPLIBLabelSlicer.logic", "MedPLIBLabelLib.prompts",
              "MedPLIBLabelLib.protocol", "MedPLIBLabelLib.newthing", "MedPLIBLabelSlicer.server_sections"]
    assert ui_state.reload_order(loaded) == [
        "MedPLIBLabelLib.errors", "MedPLIBLabelLib.protocol", "MedPLIBLabelLib.prompts", "MedPLIBLabelLib.client",
        "MedPLIBLabelLib.newthing", "MedPLIBLabelLib", "MedPLIBLabelSlicer.logic",
        "MedPLIBLabelSlicer.server_sections", "MedPLIBLabelSlicer.selftest", "MedPLIBLabelSlicer"]
    assert ui_state.reload_order(["numpy"]) == []
    # Every Lib module comes after the Lib modules it imports.
    order = list(ui_state.LIB_MODULE_ORDER)
    for name in order:
        src = (ROOT / "slicer_extension" / "MedPLIBLabel" / "MedPLIBLabelLib" / f"{name}.py").read_text()
        for dep in re.findall(r"^from \.(\w+) import", src, re.M):
            assert order.index(dep) < order.index(name), f"{name} imports {dep}, which reloads later"


# ============================================================================== worker-thread functions
class FakeClient:
    def __init__(self, sample=None):
        self.sample = sample
        self.calls = []

    def next_sample(self, strategy):
        self.calls.append(("next_sample", strategy))
        return self.sample

    def download_image(self, image_id, path):
        self.calls.append(("download_image", image_id, path))
        Path(path).write_bytes(b"img")
        return path

    def upload_image(self, path, image_id):
        self.calls.append(("upload_image", Path(path).read_bytes(), image_id))
        return image_id + "_stored"

    def save_label(self, image_id, path, label_names):
        self.calls.append(("save_label", image_id, Path(path).read_bytes(), dict(label_names)))
        raise RuntimeError("server said no")


def test_worker_functions(tmp_path):
    client = FakeClient({"id": "../evil id", "path": "/data/x.nii.gz"})
    info, path = tasks.fetch_sample(client, "random", str(tmp_path))
    assert info["id"] == "../evil id" and Path(path).parent == tmp_path
    assert Path(path).name == "evil_id.nii.gz" and Path(path).read_bytes() == b"img"
    assert client.calls[1] == ("download_image", "../evil id", path)
    assert tasks.fetch_sample(FakeClient(None), "random", str(tmp_path)) is None

    up = tmp_path / "up.nii.gz"
    up.write_bytes(b"vol")
    assert tasks.upload_file(client, str(up), "slicer_x") == "slicer_x_stored" and not up.exists()

    label = tmp_path / "label.nii.gz"
    label.write_bytes(b"lab")
    with pytest.raises(RuntimeError):
        tasks.submit_label(client, "img", str(label), {"liver": 1})
    assert not label.exists()  # removed even when the request fails
    assert client.calls[-1] == ("save_label", "img", b"lab", {"liver": 1})
    tasks.remove_file(str(label))  # already gone: no error
    tasks.remove_file(None)


def test_new_names_are_exported_from_the_package():
    for name in ("choose_view", "collect_prompts", "prompt_points", "label_values", "segments_to_label",
                 "training_status_text", "safe_image_id", "new_image_id", "button_states", "fetch_sample",
                 "upload_file", "submit_label", "remove_file", "user_message", "VIEW_NAMES", "DEFAULT_URL",
                 "SLICE_TIMEOUT_S", "VOLUME_TIMEOUT_S", "CLIENT_TIMEOUT_S"):
        assert hasattr(lib, name) and name in lib.__all__, name
    assert lib.VIEW_NAMES == ("Red", "Yellow", "Green")
    assert hasattr(BoxPrompt, "from_roi") and isinstance(lib.InferResult.has_masks, property)
