"""The MONAI Label app in-process (real FastAPI app, real sample datastore, fitted tiny model)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medplib.data.planes import PlaneMapper
from medplib.data.volumes import read_volume

from .app_client import monailabel_client, parse_infer


@pytest.fixture(scope="module")
def server(sample_datastore_master, fitted_tiny_dir, tmp_path_factory):
    import shutil

    studies = shutil.copytree(sample_datastore_master, tmp_path_factory.mktemp("app") / "datastore")
    with monailabel_client(studies, {"model": str(fitted_tiny_dir)}) as (client, instance):
        yield client, instance, studies


def infer(client, image, params, files=None, model="medplib"):
    return client.post(f"/infer/{model}?image={image}", data={"params": json.dumps(params)}, files=files)


def test_info_lists_models_labels_and_conf(server, fitted_tiny_dir):
    client, _, _ = server
    info = client.get("/info/").json()
    assert set(info["models"]) == {"medplib", "medplib_seg", "medplib_sam", "medplib_sam_3d"}
    assert info["models"]["medplib"]["type"] == "deepgrow" and info["models"]["medplib"]["dimension"] == 2
    assert info["models"]["medplib_seg"]["type"] == "segmentation"
    assert list(info["labels"]) == ["brain", "grey matter", "white matter", "csf", "target"]
    conf = info["config"]["medplib"]
    assert conf["model"] == str(fitted_tiny_dir) and conf["threshold"] == "0.1" and conf["max_new_tokens"] == "64"
    assert conf["device"] == "auto" and conf["dtype"] == "auto"


IMAGES = {"mni152_t1": (197, 233, 189), "mni152_t1_lps_aniso": (197, 189, 93)}


def _prompts(shape, axis):
    """A point, a box and a scribble near the centre of the middle slice of `axis`."""
    c = [n // 2 for n in shape]
    k = c[axis]
    a, b = [x for x in range(3) if x != axis]

    def at(da, db):
        p = list(c)
        p[a] += da
        p[b] += db
        return p

    roi = []
    for x in range(3):
        lo, hi = (c[x] - 10, c[x] + 12) if x != axis else (k, k)
        roi += [hi, lo]  # deliberately unordered, as Slicer may send it
    return k, at(0, 0), roi, [at(-8, -8), at(0, 5), at(8, 8)]


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_every_prompt_type_on_every_axis(server, tmp_path, image, axis):
    client, _, studies = server
    shape = IMAGES[image]
    ref = nib.load(f"{studies}/{image}.nii.gz")
    k, point, roi, scribble = _prompts(shape, axis)
    cases = [
        {"question": "What is this?", "foreground": [point]},
        {"question": "What is this?", "roi": roi},
        {"question": "What is this?", "scribble": scribble},
        {"label": "white matter"},  # grounding of the segment name (Slicer's deepgrow tools)
        # grounding + clicks (an explicit task; with task auto, clicks and a bare name are promptable segmentation,
        # tested in test_promptable_app.py)
        {"label": "white matter", "task": "ground", "foreground": [point], "background": [scribble[0]]},
    ]
    for params in cases:
        params = {**params, "axis": axis, "slice": k}
        res, label, _ = parse_infer(infer(client, image, params), tmp_path)
        assert label.shape == ref.shape and np.allclose(label.affine, ref.affine, atol=1e-4), params
        data = np.asanyarray(label.dataobj)
        other = np.delete(data, k, axis=axis)
        assert not other.any(), "slice scope must only fill the target slice"
        assert res["slice"] == k and res["axis"] == axis and "latency_ms" in res and res["model"]
        if "question" in params:
            assert res["task"] == "region" and res["answer"] in ("left", "right")
            assert res["prompts_used"]["regions"] == 1
        else:
            assert res["task"] == "ground" and res["question"] == "Please segment the white matter."
            assert res["seg_count"] >= 1 and set(res["label_names"]) <= set(client.get("/info/").json()["labels"])
            assert data.any() and set(np.unique(data)) <= set(range(res["seg_count"] + 1))


def test_uploaded_scribble_label_file(server, tmp_path):
    client, _, studies = server
    ref = nib.load(f"{studies}/mni152_t1.nii.gz")
    scribble = np.zeros(ref.shape, np.uint8)
    scribble[90:110, 100:104, 80] = 1
    path = tmp_path / "scribble.nii.gz"
    nib.save(nib.Nifti1Image(scribble, ref.affine), str(path))
    with open(path, "rb") as fh:
        r = infer(client, "mni152_t1", {"question": "What is this?", "slice": 80, "label_name": "target"},
                  files={"label": ("scribble.nii.gz", fh, "application/octet-stream")})
    res, label, _ = parse_infer(r, tmp_path)
    assert res["task"] == "region" and res["prompts_used"]["scribble"] and label.shape == ref.shape
    with open(path, "rb") as fh:  # the same scribble is not on slice 81
        r = infer(client, "mni152_t1", {"question": "What is this?", "slice": 81},
                  files={"label": ("scribble.nii.gz", fh, "application/octet-stream")})
    assert r.status_code == 422 and "label" in r.json()["detail"]


@pytest.mark.parametrize("image,axis", [("mni152_t1", 2), ("mni152_t1", 0), ("mni152_t1_lps_aniso", 1),
                                        ("mni152_t1_lps_aniso", 2), ("mni152_t1_lps_aniso", 0)])
def test_point_reaches_the_model_on_exactly_its_voxel(server, image, axis):
    """Checked on what the model received: the centre of the rasterised point square maps back to (i, j, k)."""
    client, instance, studies = server
    ijk = [60, 70, 40] if image == "mni152_t1_lps_aniso" else [90, 120, 70]
    r = infer(client, image, {"question": "What is this?", "foreground": [ijk], "axis": axis, "slice": ijk[axis]})
    assert r.status_code == 200, r.text
    engine = instance().engine
    square = engine.features.last().last_region_masks[0]
    rows, cols = np.nonzero(square)
    centre = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
    vol = read_volume(f"{studies}/{image}.nii.gz")
    mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, axis, ijk[axis])
    assert square.shape == mapper.model_shape
    assert mapper.to_voxel(*centre) == tuple(ijk)
    # And the model saw the voxel's own intensity there (same window as the response reports).
    plane = mapper.extract(vol.array)
    assert plane[int(centre[0]), int(centre[1])] == pytest.approx(float(vol.array[tuple(ijk)]), rel=0.2, abs=2)


@pytest.mark.parametrize("params,field", [
    ({"question": "What?", "foreground": [[500, 1, 1]], "slice": 1}, "foreground[0]"),
    ({"question": "What?", "foreground": [[90, 100, 70]], "slice": 71}, "foreground[0]"),
    ({"question": "What?", "axis": 3}, "axis"),
    ({"question": "What?", "task": "dance"}, "task"),
    ({"question": "What?", "scope": "galaxy"}, "scope"),
    ({"question": "What?", "slice": 999}, "slice"),
    ({"question": "What?", "roi": [1, 2, 3]}, "roi"),
    ({"question": "What?", "roi": [10, 10, 20, 40, 70, 70], "slice": 70}, "roi"),
    ({"question": "What?", "window": {"center": 10, "width": -1}}, "window"),
    ({"question": "What?", "scribble": []}, "scribble"),  # an empty stroke is not "no scribble"
    ({"question": "What?", "scribble": [[]]}, "scribble"),
    ({"question": "a\x00b"}, "question"),
    ({"task": "vqa"}, "question"),
    ({}, "question"),
])
def test_bad_params_get_422_naming_the_field(server, params, field):
    client, _, _ = server
    r = infer(client, "mni152_t1", params)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_nrrd_result_and_window(server, tmp_path):
    client, _, studies = server
    r = infer(client, "ct_small", {"label": "target", "slice": 0, "result_extension": ".nrrd",
                                   "window": {"center": 40, "width": 400}})
    res, _, path = parse_infer(r, tmp_path)
    assert path.suffix == ".nrrd"
    lab, img = read_volume(str(path)), read_volume(f"{studies}/ct_small.nii.gz")
    assert lab.shape == img.shape and np.allclose(lab.direction, img.direction)
    assert np.allclose(lab.spacing, img.spacing) and np.allclose(lab.origin, img.origin)
    assert res["prompts_used"]["window"] == {"center": 40.0, "width": 400.0}


def test_features_cached_between_questions_on_one_slice(server, tmp_path):
    client, _, _ = server
    first, _, _ = parse_infer(infer(client, "mni152_t1", {"question": "What modality?", "slice": 33}), tmp_path)
    second, _, _ = parse_infer(infer(client, "mni152_t1", {"label": "brain", "slice": 33}), tmp_path)
    assert not first["features_cached"] and second["features_cached"]
    assert second["latency_ms"]["clip_encoder"] == 0.0


def test_stock_slicer_slice_param_is_k_even_on_other_axes(server, tmp_path):
    """Slicer's MONAILabel plugin always sends `slice` = K; with axis 0 or 1 the clicks give the real slice."""
    client, _, _ = server
    res, label, _ = parse_infer(infer(client, "mni152_t1", {"foreground": [[98, 120, 90]], "slice": 90, "axis": 0,
                                                              "label": "white matter"}), tmp_path)
    assert res["slice"] == 98 and res["axis"] == 0 and res["task"] == "promptable"  # a click and a bare name
    data = np.asanyarray(label.dataobj)
    assert not np.delete(data, 98, axis=0).any()


def test_refine_clicks_reuse_the_last_grounded_mask(server, tmp_path):
    client, instance, _ = server
    r = infer(client, "mni152_t1", {"refine": True, "foreground": [[90, 100, 60]], "slice": 60})
    assert r.status_code == 422 and "refine" in r.json()["detail"]
    first, _, _ = parse_infer(infer(client, "mni152_t1", {"label": "white matter", "slice": 60}), tmp_path)
    pred = instance().engine.features.last()
    before = dict(pred.counters)
    res, label, _ = parse_infer(infer(client, "mni152_t1", {"refine": True, "foreground": [[90, 100, 60]],
                                                              "background": [[60, 60, 60]], "slice": 60,
                                                              "label": "white matter"}), tmp_path)
    assert res["task"] == "refine" and res["seg_count"] == first["seg_count"] >= 1
    assert res["label_names"] == {"white matter": 1}
    delta = {k: pred.counters[k] - before[k] for k in before}
    assert delta == {"clip_encoder": 0, "sam_encoder": 0, "prefill": 0, "image_prefill": 0, "mask_decoder": 1}
    assert not np.delete(np.asanyarray(label.dataobj), 60, axis=2).any()
