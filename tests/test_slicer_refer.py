"""The Slicer extension's refer-and-ground library (pure Python): ROI specs from an answer's IJK boxes (exact on
oblique, anisotropic volumes with a parent transform), the chat history a follow-up sends, report params; and
the client against the REAL server (conftest `server`: `monailabel start_server`, fitted tiny model).
Slicer itself is not installable here; the ROI nodes are checked by the module's in-Slicer self-test."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MedPLIBLabel"))

import MedPLIBLabelLib as lib  # noqa: E402

IMAGE = "mni152_t1"


def oblique_matrix() -> np.ndarray:
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([0.8, 1.2, 2.5]) @ np.diag([-1, -1, 1])  # LPS-like flips, anisotropic voxels
    m[:3, 3] = [10.0, -20.0, 5.0]
    return m


def test_roi_encloses_exactly_the_box_voxels_on_an_oblique_volume():
    ijk_to_ras = oblique_matrix()
    parent = np.eye(4)
    parent[:3, 3] = [1.0, 2.0, 3.0]
    boxes = [{"label": "white matter", "ijk": [[3, 4, 7], [9, 12, 7]]},
             {"label": "white matter", "ijk": [[0, 0, 7], [0, 0, 7]]}, {"label": "csf", "ijk": [[1, 2, 3], [4, 5, 6]]}]
    specs = lib.rois_from_boxes(boxes, ijk_to_ras, parent)
    assert [s.name for s in specs] == ["white matter", "white matter (2)", "csf"]
    world = parent @ ijk_to_ras
    for spec, box in zip(specs, boxes):
        lo, hi = (np.asarray(v, float) for v in box["ijk"])
        faces = [[a, b, c] for a in (lo[0] - 0.5, hi[0] + 0.5) for b in (lo[1] - 0.5, hi[1] + 0.5)
                 for c in (lo[2] - 0.5, hi[2] + 0.5)]
        expected = np.asarray(faces) @ world[:3, :3].T + world[:3, 3]
        got = lib.roi_corners(spec)
        assert sorted(map(tuple, np.round(got, 6))) == sorted(map(tuple, np.round(expected, 6)))
        assert np.allclose(spec.object_to_world()[:3, 3], spec.center)
    assert specs[1].size == pytest.approx((0.8, 1.2, 2.5))  # one voxel
    with pytest.raises(ValueError, match="max < min"):
        lib.rois_from_boxes([{"label": "x", "ijk": [[5, 0, 0], [4, 0, 0]]}], np.eye(4))


def test_history_params_keep_answered_turns_of_this_slice_capped():
    h = lib.ChatHistory()
    for i in range(8):
        h.record("vol", f"q{i}", f"a{i}", task="vqa", axis=2, slice=90)
    h.record("vol", "bad", "", error="timeout", axis=2, slice=90)
    h.record("vol", "report", "<ref>brain</ref>...", task="report", axis=2, slice=90)
    h.record("vol", "elsewhere", "other slice", axis=2, slice=10)
    sent = lib.history_params(h, "vol", axis=2, index=90)
    assert sent == [{"question": f"q{i}", "answer": f"a{i}"} for i in range(2, 8)]
    assert len(lib.history_params(h, "vol")) == 6 and lib.history_params(h, "other") == []
    params = lib.build_infer_params("and on the left?", [], np.eye(4), np.eye(4), task="auto", history=sent,
                                    dims=(200, 200, 200))
    assert params["history"] == sent and params["axis"] == 2
    report = lib.build_infer_params(None, [], np.eye(4), np.eye(4), task="report", dims=(200, 200, 200))
    assert report["task"] == "report" and "history" not in report


@pytest.fixture(scope="module")
def client(server):
    return lib.MedPLIBClient(server.url, timeout=300)


def test_follow_up_and_report_against_the_real_server(client, studies):
    first = client.infer("medplib", IMAGE, {"question": "What is this image?", "slice": 90, "axis": 2})
    h = lib.ChatHistory()
    h.record("vol", "What is this image?", first.answer or "?", task=first.task, axis=2, slice=90)
    follow = client.infer("medplib", IMAGE, {"question": "And which plane?", "slice": 90, "axis": 2,
                                             "history": lib.history_params(h, "vol", axis=2, index=90)})
    assert follow.params["history_used"] == 1
    rep = client.infer("medplib", IMAGE, {"task": "report", "slice": 90, "axis": 2, "threshold": 0.05,
                                          "labels": ["brain"], "min_box_area": 1})
    assert rep.task == "report" and rep.label_path
    assert all(b["label"] in rep.label_names for b in rep.boxes)
    assert rep.boxes, "the fitted tiny model grounds 'brain' on this slice at threshold 0.05"
    # (the report's quality on the sample data is tested with the default model: test_report_default.py)
    img = nib.load(str(Path(studies) / f"{IMAGE}.nii.gz"))
    label = np.asanyarray(nib.load(rep.label_path).dataobj)
    specs = lib.rois_from_boxes(rep.boxes, img.affine)  # NIfTI affines are IJK -> RAS
    for spec, box in zip(specs, rep.boxes):
        (i0, j0, k0), (i1, j1, k1) = box["ijk"]
        sub = label[i0:i1 + 1, j0:j1 + 1, k0:k1 + 1] == rep.label_names[box["label"]]
        assert sub.sum() >= box["voxels"]
        centre = img.affine[:3, :3] @ ((np.array([i0, j0, k0]) + [i1, j1, k1]) / 2) + img.affine[:3, 3]
        assert np.allclose(spec.center, centre)
    lib.remove_file(rep.label_path)
