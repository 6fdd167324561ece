"""`task: report` with the committed default model on the sample data (a held-out slice): it names the labelled
structures, each with a box that sits on its truth mask, in English and in Chinese."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medplib.imaging.boxes import PixelBox, box_iou

from .app_client import monailabel_client, parse_infer

MODEL = Path(__file__).resolve().parents[1] / "monailabel_app" / "model" / "small"
STRUCTURES = {"brain": (1, 2, 3), "grey matter": (1,), "white matter": (2,)}


def _bbox(mask: np.ndarray) -> PixelBox:
    rows, cols = np.nonzero(mask)
    return PixelBox(cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


@pytest.fixture(scope="module")
def client(sample_datastore_master, tmp_path_factory):
    studies = shutil.copytree(sample_datastore_master, tmp_path_factory.mktemp("report") / "datastore")
    with monailabel_client(studies, {"model": str(MODEL)}) as (c, _):
        yield c, Path(studies)


def test_report_names_structures_with_boxes_on_their_truth(client, tmp_path):
    c, studies = client
    splits = json.loads((studies / "splits.json").read_text())["images"]["mni152_t1"]["axes"]["2"]["held_out"]
    k = int(splits[len(splits) // 2])
    r = c.post("/infer/medplib?image=mni152_t1", data={"params": json.dumps({"task": "report", "slice": k})})
    params, img, _ = parse_infer(r, tmp_path)
    truth = np.asanyarray(nib.load(str(studies / "labels" / "final" / "mni152_t1.nii.gz")).dataobj)[:, :, k]
    label = np.asanyarray(img.dataobj)
    lines = params["answer"].splitlines()
    rows = {row["label"]: row for row in params["report"]}
    assert set(STRUCTURES) <= set(rows), params["answer"]
    assert [ln.split("</ref>")[0][len("<ref>"):] for ln in lines] == list(params["label_names"])
    for name, values in STRUCTURES.items():
        row = rows[name]
        line = lines[row["value"] - 1]
        assert line.startswith(f"<ref>{name}</ref><box>[[") and line.endswith("mm² on this slice")
        largest = next(b for b in params["boxes"] if b["label"] == name)
        (i0, j0, _), (i1, j1, _) = largest["ijk"]
        pred = PixelBox(j0, i0, j1 + 1, i1 + 1)  # (x = j, y = i) on the IJK slice
        truth_box = _bbox(np.isin(truth, values))
        assert box_iou(pred, truth_box) >= 0.7, (name, largest["ijk"], truth_box)
        inside = np.isin(truth[i0:i1 + 1, j0:j1 + 1], values).sum() / np.isin(truth, values).sum()
        assert inside >= 0.9, (name, inside)  # the box holds (almost) all of the structure
        assert (label[:, :, k] == row["value"]).any() and row["area_mm2"] > 0

    r = c.post("/infer/medplib?image=mni152_t1&output=json",
               data={"params": json.dumps({"task": "report", "slice": k, "question": "请生成报告",
                                           "box_format": "bird"})})
    zh = r.json()
    assert zh["task"] == "report" and "<ref>白质</ref><box>(" in zh["answer"] and "面积" in zh["answer"]
