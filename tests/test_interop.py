"""Interoperability against a REAL MONAI Label server (`monailabel start_server`, one per module).

Clients: the stock 3D Slicer plugin client (loaded from the file the monailabel wheel ships), the generic
`monailabel.client.MONAILabelClient`, and raw HTTP (httpx). Every label file that comes back is read with
SimpleITK / nibabel / pynrrd and compared with the datastore image it was computed on.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import warnings
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from .server_harness import venv_bin

ROOT = Path(__file__).resolve().parents[1]
LABELLED = {"mni152_t1", "mni152_t1_lps_aniso"}  # the images with a final label in the sample datastore
APP_LABELS = ["brain", "grey matter", "white matter", "csf", "target"]  # main.DEFAULT_LABELS
SLICER_CLIENT_REL = Path("plugins", "slicer", "MONAILabel", "MONAILabelLib", "client.py")


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def info(server) -> dict:
    r = httpx.get(server.url + "/info/", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _find_slicer_client() -> Path | None:
    """The stock Slicer client: `<venv>/monailabel/plugins/...` (wheel data files) or inside site-packages."""
    import monailabel

    prefix = Path(sys.prefix)
    candidates = [prefix / "monailabel" / SLICER_CLIENT_REL, venv_bin().parent / "monailabel" / SLICER_CLIENT_REL,
                  Path(monailabel.__file__).parent / SLICER_CLIENT_REL]
    for c in candidates:
        if c.is_file():
            return c
    hits = sorted(prefix.glob("**/MONAILabelLib/client.py"))
    return hits[0] if hits else None


@pytest.fixture(scope="module")
def slicer_lib():
    path = _find_slicer_client()
    if path is None:
        pytest.skip("the 3D Slicer plugin's MONAILabelLib/client.py is not installed in this environment")
    spec = importlib.util.spec_from_file_location("stock_slicer_monailabel_client", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # `import cgi`
        spec.loader.exec_module(module)
    return module


@pytest.fixture()
def slicer_client(slicer_lib, server, tmp_path):
    return slicer_lib.MONAILabelClient(server.url, str(tmp_path))


@pytest.fixture()
def generic_client(server, tmp_path):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(server.url, str(tmp_path))


# ----------------------------------------------------------------------------------------------- helpers
def image_path(studies: Path, image_id: str) -> Path:
    return studies / f"{image_id}.nii.gz"


def read_ijk(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def assert_same_geometry(label_file, image_file) -> None:
    """SimpleITK size / origin / spacing / direction of the label equal those of the image."""
    lab, img = sitk.ReadImage(str(label_file)), sitk.ReadImage(str(image_file))
    assert lab.GetDimension() == 3
    assert lab.GetSize() == img.GetSize()
    np.testing.assert_allclose(lab.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(lab.GetSpacing(), img.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(lab.GetDirection(), img.GetDirection(), atol=1e-5)
    assert lab.GetNumberOfComponentsPerPixel() == 1


def assert_only_slice(label: np.ndarray, axis: int, k: int) -> None:
    """The label is non-empty and every non-zero voxel has index k along `axis`."""
    nz = np.nonzero(label)
    assert nz[0].size > 0, "empty label"
    assert set(np.unique(nz[axis]).tolist()) == {k}, f"voxels outside slice {k} of axis {axis}"


def slicer_config(info: dict, name: str, section: str = "models") -> dict:
    """MONAILabelWidget.getParamsFromConfig(section, name): the first value of every list option."""
    cfg = info.get(section, {}).get(name, {}).get("config", {})
    return {k: v[0] if isinstance(v, list) else v for k, v in cfg.items()}


def slicer_infer(client, info, model, image_id, base: dict, config_edits: dict | None = None, slice_index=None):
    """What the Slicer plugin sends: its own keys, then the model config (as edited in the config table), then
    `slice` (2D models), and MONAILabelLogic.infer's result_extension=.nrrd / result_dtype=uint8."""
    params = dict(base)
    params.update({**slicer_config(info, model), **(config_edits or {})})
    if slice_index is not None:
        params["slice"] = slice_index
    params["result_extension"] = ".nrrd"
    params["result_dtype"] = "uint8"
    return client.infer(model, image_id, params, None, None, None)


def raw_infer(server, model: str, image: str, params: dict, files: dict | None = None):
    """POST /infer/<model>; returns (status, params-json or error body, label bytes, label filename)."""
    r = httpx.post(f"{server.url}/infer/{model}", params={"image": image},
                   data={"params": json.dumps(params)}, files=files, timeout=120)
    if r.status_code != 200:
        return r.status_code, r.text, None, None
    ctype = r.headers.get("content-type", "")
    if "multipart" not in ctype:
        return r.status_code, r.json(), None, None
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    out_params, data, filename = None, None, None
    for part in MultipartDecoder(r.content, ctype).parts:
        disp = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disp:
            out_params = json.loads(part.content)
        elif 'name="image"' in disp:
            data = part.content
            filename = disp.split('filename="', 1)[1].split('"', 1)[0] if 'filename="' in disp else None
    return r.status_code, out_params, data, filename


def save(tmp_path: Path, data: bytes, filename: str) -> Path:
    path = tmp_path / filename
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------- 1. Slicer
def test_slicer_client_info_and_activelearning(slicer_client, studies):
    got = slicer_client.info()
    assert got["models"]["medplib"]["type"] == "deepgrow" and got["models"]["medplib"]["dimension"] == 2
    assert got["models"]["medplib_seg"]["type"] == "segmentation"
    labels = got["labels"]
    assert set(APP_LABELS) <= set(labels if isinstance(labels, list) else labels.keys())
    assert {"first", "random"} <= set(got["strategies"])

    all_ids = {p.name[: -len(".nii.gz")] for p in studies.glob("*.nii.gz")}
    for strategy in ("first", "random"):
        sample = slicer_client.next_sample(strategy, slicer_config(got, strategy, "strategies"))
        assert sample["id"] in all_ids - LABELLED, sample
        assert Path(sample["path"]).is_file()


def test_slicer_client_deepgrow_segment_name(slicer_client, info, studies):
    """Clicks on slice 90 with the segment "white matter" selected and no question: the promptable path
    (LiteMedSAM from the clicks; the name only names the segment, docs/params.md routing rules)."""
    k = 90
    base = {"label": "white matter", "foreground": [[98, 120, k]], "background": [[20, 20, k]]}
    result_file, out = slicer_infer(slicer_client, info, "medplib", "mni152_t1", base, slice_index=k)
    assert result_file and result_file.endswith(".nrrd")
    assert out["task"] == "promptable" and out["seg_count"] == 1
    assert out["label_names"] == {"white matter": 1}
    assert out["prompts_used"]["foreground"] == 1 and out["prompts_used"]["background"] == 1
    assert_same_geometry(result_file, image_path(studies, "mni152_t1"))
    label = read_ijk(result_file)
    # Slicer imports every label value as a segment and names them from `labels=[segment]`: only value 1.
    assert set(np.unique(label).tolist()) == {0, 1}
    assert_only_slice(label, 2, k)


def test_slicer_client_region_vqa(slicer_client, info, studies):
    """A point plus a question typed into the config table: region VQA, the answer comes back in params."""
    k = 90
    base = {"label": "white matter", "foreground": [[40, 120, k]], "background": []}
    result_file, out = slicer_infer(slicer_client, info, "medplib", "mni152_t1", base,
                                    config_edits={"question": "What is this?"}, slice_index=k)
    assert out["task"] == "region"
    assert out["answer"].strip() in {"left", "right"}, out["answer"]
    assert out["seg_count"] == 0
    assert result_file and Path(result_file).is_file()
    assert_same_geometry(result_file, image_path(studies, "mni152_t1"))
    assert not read_ijk(result_file).any()


def test_slicer_client_roi_grounding(slicer_client, info):
    """A Slicer ROI ([i_a, i_b, j_a, j_b, k_a, k_b], corners in any order) with only the segment name: the
    promptable mask from the box, inside the box, on that slice."""
    k = 90
    base = {"label": "white matter", "foreground": [], "background": []}
    result_file, out = slicer_infer(slicer_client, info, "medplib", "mni152_t1",
                                    {**base, "roi": [150, 40, 190, 50, k, k]}, slice_index=k)
    assert out["prompts_used"]["roi"] is True and out["task"] == "promptable"
    assert out["label_names"] == {"white matter": 1}
    label = read_ijk(result_file)
    i, j, kk = np.nonzero(label)
    assert len(i) and set(kk.tolist()) == {k}
    assert i.min() >= 40 and i.max() <= 150 and j.min() >= 50 and j.max() <= 190


def test_slicer_client_segmentation_model(slicer_client, info, studies):
    """`medplib_seg` as Slicer's "Auto Segmentation" calls it: config only, every app structure grounded."""
    result_file, out = slicer_infer(slicer_client, info, "medplib_seg", "nibabel_anatomical", {})
    assert result_file.endswith(".nrrd")
    assert_same_geometry(result_file, image_path(studies, "nibabel_anatomical"))
    names = out["label_names"]
    assert set(names) <= set(APP_LABELS) and len(names) >= 1
    # Slicer maps label values 1..N to the names sorted by value: they must be exactly 1..N.
    assert sorted(names.values()) == list(range(1, len(names) + 1))
    label = read_ijk(result_file)
    values = set(np.unique(label).tolist()) - {0}
    assert values and values <= set(names.values())
    assert out["seg_count"] == len(values)
    assert len(np.unique(np.nonzero(label)[2])) > 1, "a volume model should fill more than one slice"


# ----------------------------------------------------------------------------------------------- 2. generic
def test_generic_client_info_and_models(generic_client, studies, tmp_path):
    got = generic_client.info()
    assert {"medplib", "medplib_seg"} <= set(got["models"])

    # deepgrow-style click on the anisotropic, permuted LPS volume (axis 2 = coronal there)
    k = 46
    label_file, out = generic_client.infer(
        "medplib", "mni152_t1_lps_aniso", {"label": "grey matter", "foreground": [[98, 100, k]], "slice": k})
    assert label_file.endswith(".nii.gz") and out["label_names"] == {"grey matter": 1} and out["seg_count"] >= 1
    assert_same_geometry(label_file, image_path(studies, "mni152_t1_lps_aniso"))
    assert_only_slice(read_ijk(label_file), 2, k)

    # region VQA on the CT
    label_file, out = generic_client.infer("medplib", "ct_small", {"question": "What is this?",
                                                                   "foreground": [[64, 64, 0]]})
    assert out["task"] == "region" and out["answer"].strip() in {"left", "right"}, out
    assert_same_geometry(label_file, image_path(studies, "ct_small"))

    # segmentation model with a segment name
    label_file, out = generic_client.infer("medplib_seg", "mr_small", {"label": "white matter"})
    assert out["label_names"] == {"white matter": 1}
    assert_same_geometry(label_file, image_path(studies, "mr_small"))
    assert set(np.unique(read_ijk(label_file)).tolist()) == {0, 1}

    # an uploaded image instead of a datastore id (`file=`): the label has the upload's geometry
    upload = tmp_path / "upload" / "ct_copy.nii.gz"
    upload.parent.mkdir()
    shutil.copy(image_path(studies, "ct_small"), upload)
    label_file, out = generic_client.infer("medplib_seg", "", {"label": "brain"}, file=str(upload))
    assert out["label_names"] == {"brain": 1}
    assert_same_geometry(label_file, upload)


# ----------------------------------------------------------------------------------------------- 3. raw HTTP
BAD_REQUESTS = [
    pytest.param({"question": "What is this?", "foreground": [[40, 120, 91]], "slice": 90}, "foreground",
                 id="point-off-slice"),
    pytest.param({"question": "What is this?", "foreground": [[300, 120, 90]]}, "foreground", id="point-outside"),
    pytest.param({"question": "What is this?", "background": [[40, -5, 90]], "slice": 90}, "background",
                 id="background-outside"),
    pytest.param({"label": "white matter", "slice": 500}, "slice", id="slice-outside"),
    pytest.param({"label": "white matter", "axis": 3}, "axis", id="unknown-axis"),
    pytest.param({"label": "white matter", "axis": "z"}, "axis", id="axis-not-int"),
    pytest.param({"question": "What is this?", "task": "caption"}, "task", id="bad-task"),
    pytest.param({"label": "white matter", "scope": "study"}, "scope", id="bad-scope"),
    pytest.param({"question": "What is this?", "task": "region", "scope": "volume", "foreground": [[98, 120, 90]]},
                 "scope", id="volume-region-vqa"),  # region prompts in volume scope propagate a mask; no VQA
    pytest.param({"label": "white matter", "roi": [1, 2, 3]}, "roi", id="roi-length"),
    pytest.param({"question": "What is this?", "scribble": []}, "scribble", id="empty-scribble"),
    pytest.param({"label": "white matter", "window": {"center": 40, "width": -1}}, "window", id="window-width"),
    pytest.param({"label": "white matter", "result_extension": ".png"}, "result_extension", id="bad-extension"),
    pytest.param({"label": "white matter", "threshold": 2}, "threshold", id="bad-threshold"),
    pytest.param({"question": "What is this?", "task": "region"}, "foreground", id="region-without-prompt"),
]


@pytest.mark.parametrize("params, field", BAD_REQUESTS)
def test_bad_params_give_4xx_naming_the_field(server, params, field):
    status, body, _, _ = raw_infer(server, "medplib", "mni152_t1", params)
    assert 400 <= status < 500, (status, body)
    detail = json.loads(body).get("detail")
    assert isinstance(detail, str) and field in detail, detail


def test_server_still_serves_after_errors(server, studies, tmp_path):
    raw_infer(server, "medplib", "mni152_t1", {"label": "white matter", "axis": 7})
    status, out, data, name = raw_infer(server, "medplib", "ct_small", {"label": "white matter"})
    assert status == 200 and data and out["label_names"] == {"white matter": 1}


def _affine_from_nrrd(header: dict) -> np.ndarray:
    """RAS affine of an NRRD header (space directions / origin are in `space`, here LPS)."""
    assert header["space"] in ("left-posterior-superior", "LPS"), header["space"]
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    aff[:3, 3] = np.asarray(header["space origin"], dtype=float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


def test_nrrd_result_and_lps_aniso_geometry(server, studies, tmp_path):
    """`.nrrd` gives an NRRD label; on the permuted LPS anisotropic volume both formats have the image's
    shape and affine (read with nibabel / pynrrd, independently of SimpleITK), and the same voxels."""
    import nrrd

    image_id = "mni152_t1_lps_aniso"
    img = nib.load(str(image_path(studies, image_id)))
    params = {"label": "white matter", "foreground": [[98, 100, 46]], "slice": 46}

    status, out_nrrd, data, name = raw_infer(server, "medplib", image_id, {**params, "result_extension": ".nrrd"})
    assert status == 200, out_nrrd
    assert name.endswith(".nrrd") and data[:4] == b"NRRD"
    nrrd_path = save(tmp_path, data, "label.nrrd")
    nrrd_data, header = nrrd.read(str(nrrd_path))
    assert nrrd_data.shape == img.shape
    np.testing.assert_allclose(_affine_from_nrrd(header), img.affine, atol=1e-4)

    status, out_nii, data, name = raw_infer(server, "medplib", image_id, {**params, "result_extension": ".nii.gz"})
    assert status == 200, out_nii
    assert name.endswith(".nii.gz")
    nii = nib.load(str(save(tmp_path, data, "label.nii.gz")))
    assert nii.shape == img.shape
    np.testing.assert_allclose(nii.affine, img.affine, atol=1e-4)
    assert_same_geometry(tmp_path / "label.nii.gz", image_path(studies, image_id))
    assert_same_geometry(nrrd_path, image_path(studies, image_id))

    nii_data = np.asarray(nii.dataobj)
    assert nii_data.any()
    np.testing.assert_array_equal(nii_data, nrrd_data)


# expected view of each voxel axis of mni152_t1_lps_aniso (axes point L, S, P)
ANISO_VIEWS = {0: "sagittal", 1: "axial", 2: "coronal"}


@pytest.mark.parametrize("axis, k", [(0, 90), (1, 100), (2, 40)])
def test_slice_scope_fills_only_the_slice(server, studies, tmp_path, axis, k):
    status, out, data, name = raw_infer(server, "medplib", "mni152_t1_lps_aniso",
                                        {"question": "Please segment the liver.", "axis": axis, "slice": k})
    assert status == 200, out
    assert out["axis"] == axis and out["slice"] == k and out["seg_count"] >= 1
    assert out["view"] == ANISO_VIEWS[axis]
    path = save(tmp_path, data, name)
    assert_same_geometry(path, image_path(studies, "mni152_t1_lps_aniso"))
    label = read_ijk(path)
    assert_only_slice(label, axis, k)
    assert set(np.unique(label).tolist()) - {0} <= set(out["label_names"].values())


def test_slice_follows_the_first_point_on_other_axes(server, tmp_path):
    """Without `slice`, the slice is the first foreground point's index along `axis` (here axis 1)."""
    status, out, data, name = raw_infer(server, "medplib", "mni152_t1_lps_aniso",
                                        {"question": "Please segment the liver.", "axis": 1,
                                         "foreground": [[98, 60, 46]]})
    assert status == 200, out
    assert out["slice"] == 60
    assert_only_slice(read_ijk(save(tmp_path, data, name)), 1, 60)


# ----------------------------------------------------------------------------------------------- 4. volume
def test_volume_scope_equals_per_slice_calls(server, studies, tmp_path):
    """scope=volume grounds every slice along the axis; on each tested slice the result equals the slice-scope
    call with the same question (same predictor path, so exactly equal)."""
    image_id, axis = "nibabel_anatomical", 2  # 33 x 41 x 25: 25 model calls
    question = "Please segment the white matter."
    common = {"question": question, "label": "white matter", "task": "ground", "axis": axis}
    status, out, data, name = raw_infer(server, "medplib", image_id, {**common, "scope": "volume"})
    assert status == 200, out
    assert out["label_names"] == {"white matter": 1}
    n = nib.load(str(image_path(studies, image_id))).shape[axis]
    stats = out["slices"]["white matter"]
    assert stats["slices_total"] == n
    vol_path = save(tmp_path, data, "volume_" + name)
    assert_same_geometry(vol_path, image_path(studies, image_id))
    vol = read_ijk(vol_path)
    filled = [k for k in range(n) if np.take(vol, k, axis=axis).any()]
    assert len(filled) >= 3, "the volume mask should span several slices"
    assert len(filled) == stats["slices_with_mask"]

    tested = sorted({filled[0], filled[len(filled) // 2], filled[-1], n // 2})
    for k in tested:
        status, s_out, s_data, s_name = raw_infer(server, "medplib", image_id, {**common, "scope": "slice",
                                                                                "slice": k})
        assert status == 200, s_out
        sl = read_ijk(save(tmp_path, s_data, f"slice{k}_{s_name}"))
        assert not np.delete(sl, k, axis=axis).any()
        np.testing.assert_array_equal(np.take(vol, k, axis=axis), np.take(sl, k, axis=axis),
                                      err_msg=f"volume mask differs from the slice-scope mask on slice {k}")
