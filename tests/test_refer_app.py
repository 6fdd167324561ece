"""Refer-and-ground through the app (in-process server, fitted tiny model): boxes out of every grounded mask,
boxes written in questions as region prompts, capped history, Chinese intents, `task: report` on the tiny model.
(The report's quality on the sample data is checked with the default model in test_report_default.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medplib.imaging.boxes import parse_boxes

from .app_client import monailabel_client, parse_infer


@pytest.fixture(scope="module")
def client(sample_datastore_master, fitted_tiny_dir, tmp_path_factory):
    import shutil

    studies = shutil.copytree(sample_datastore_master, tmp_path_factory.mktemp("refer") / "datastore")
    with monailabel_client(studies, {"model": str(fitted_tiny_dir)}) as (c, _):
        yield c


def infer(client, params, tmp_path, image="mni152_t1", json_only=False):
    r = client.post(f"/infer/medplib?image={image}" + ("&output=json" if json_only else ""),
                    data={"params": json.dumps(params)})
    if json_only:
        return r
    return parse_infer(r, tmp_path)


def test_grounded_masks_come_with_exact_component_boxes(client, tmp_path):
    params, img, _ = infer(client, {"label": "brain", "slice": 90, "threshold": 0.05, "min_box_area": 1}, tmp_path)
    label = np.asanyarray(img.dataobj)
    assert params["seg_count"] >= 1 and (label > 0).any(), "the tiny model must produce a mask here"
    comps, n = ndimage.label(label[:, :, 90] > 0, structure=np.ones((3, 3), bool))
    assert len(params["boxes"]) == n
    for b in params["boxes"]:
        (i0, j0, k0), (i1, j1, k1) = b["ijk"]
        assert k0 == k1 == 90 and b["label"] == "brain" and b["value"] == 1
        inside = label[i0:i1 + 1, j0:j1 + 1, 90] > 0
        assert inside.sum() >= b["voxels"]
        # the box is tight: every edge row/column holds mask
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert parse_boxes(b["bird"], (1000, 1000))[0].phrase == "brain"
        assert b["medrega"].startswith("<ref>brain</ref><box>[[")
    assert params["box_format"] == "medrega" and params["box_text"].startswith("<ref>brain</ref><box>[[")
    big, _, _ = infer(client, {"label": "brain", "slice": 90, "threshold": 0.05, "min_box_area": 10 ** 6,
                               "box_format": "bird"}, tmp_path)
    assert big["boxes"] == [] and big["box_text"] == "" and big["box_format"] == "bird"


def test_box_in_question_is_a_region_prompt(client):
    for q in ("What is <ref>this</ref><box>[[300, 300, 700, 700]]</box>?", "What is <box>(300,300),(700,700)</box>?"):
        r = infer(client, {"question": q, "slice": 90}, None, json_only=True)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["task"] == "region" and out["prompts_used"]["text_boxes"] == 1
        assert out["question"].count("<region>") == 1 and "<box>" not in out["question"]
    r = infer(client, {"question": "What is <box>[[700, 300, 300, 700]]</box>?", "slice": 90}, None, json_only=True)
    assert r.status_code == 422 and r.json()["detail"].startswith("question:")


def test_history_is_used_capped_and_validated(client):
    turns = [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(9)]
    r = infer(client, {"question": "And this one?", "slice": 90, "history": turns}, None, json_only=True)
    assert r.status_code == 200, r.text
    assert r.json()["history_used"] == 6 and r.json()["history_dropped"] == 3
    plain = infer(client, {"question": "And this one?", "slice": 90}, None, json_only=True).json()
    assert plain["history_used"] == 0
    r = infer(client, {"question": "x?", "slice": 90, "history": [{"question": "q", "answer": " "}]}, None,
              json_only=True)
    assert r.status_code == 422 and "history.0.answer" in r.json()["detail"]
    r = infer(client, {"question": "x?", "slice": 90, "box_format": "yolo"}, None, json_only=True)
    assert r.status_code == 422 and "box_format" in r.json()["detail"]


@pytest.mark.parametrize("question", ["请分割白质。", "请在这张图像中分割出白质", "白质在哪里？请输出分割掩码。"])
def test_chinese_grounding_prompts_reach_the_grounding_path(client, question):
    r = infer(client, {"question": question, "slice": 90}, None, json_only=True)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["task"] == "ground" and out["question"] == question
    # named via the glossary, so Slicer keeps the segment (the tiny model may answer without a <SEG>; the name is
    # then the one the file would carry)
    assert list(out["label_names"]) == ["white matter"]


def test_report_task_shape_on_the_tiny_model(client, tmp_path):
    params, img, _ = infer(client, {"task": "report", "slice": 90, "labels": ["brain", "csf"], "threshold": 0.05},
                           tmp_path)
    label = np.asanyarray(img.dataobj)
    assert params["task"] == "report" and params["targets"] == ["brain", "csf"]
    lines = [ln for ln in params["answer"].splitlines() if ln.startswith("<ref>")]
    assert len(lines) == len(params["report"]) == len(params["label_names"])
    for line, row in zip(lines, params["report"]):
        assert line.startswith(f"<ref>{row['label']}</ref>") and params["label_names"][row["label"]] == row["value"]
        assert (label == row["value"]).any()
    r = infer(client, {"task": "report", "slice": 90, "foreground": [[90, 100, 90]]}, None, json_only=True)
    assert r.status_code == 422 and r.json()["detail"].startswith("task:")


def test_volume_report_gives_millilitres_from_the_spacing(client, tmp_path):
    """`task: report` in volume scope: one line per structure with its volume in mL (voxels x spacing), a box on the
    structure's largest slice, 3D IJK boxes, and the multi-label file behind the lines."""
    image = "nibabel_anatomical"  # 33 x 41 x 25 voxels of 2.0 x 2.0 x 2.2 mm: a few seconds on the tiny model
    params, img, _ = infer(client, {"task": "report", "scope": "volume", "axis": 2, "labels": ["white matter"],
                                    "threshold": 0.05, "min_box_area": 1}, tmp_path, image=image)
    label = np.asanyarray(img.dataobj)
    assert params["task"] == "report" and params["scope"] == "volume"
    assert len(params["report"]) == 1, "the fitted tiny model grounds something at threshold 0.05"
    row = params["report"][0]
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    assert row["volume_ml"] == pytest.approx((label == row["value"]).sum() * voxel_ml, rel=1e-6)
    line = params["answer"].splitlines()[0]
    assert line.startswith("<ref>white matter</ref><box>[[") and line.endswith(f"{row['volume_ml']:.2f} mL")
    assert np.take(label == row["value"], row["box_slice"], axis=2).sum() == max(
        np.take(label == row["value"], k, axis=2).sum() for k in range(label.shape[2]))
    assert all(b["label"] == "white matter" and len(b["ijk"][0]) == 3 for b in params["boxes"])
