"""The sample datastore built from real images shipped in installed wheels (sample_data/build_sample_data.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_NAMES = {"grey matter": 1, "white matter": 2, "csf": 3}


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_sample_data", ROOT / "sample_data" / "build_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


bsd = _load_builder()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return bsd.build(tmp_path_factory.mktemp("sample") / "datastore")


@pytest.fixture(scope="module")
def objects(store) -> dict:
    return json.loads((store / "datastore_v2.json").read_text())["objects"]


def _image(store: Path, image_id: str) -> nib.Nifti1Image:
    return nib.load(store / f"{image_id}.nii.gz")


def _label(store: Path, image_id: str) -> nib.Nifti1Image:
    return nib.load(store / "labels" / "final" / f"{image_id}.nii.gz")


def _labelled(objects: dict) -> list[str]:
    return [k for k, v in objects.items() if v["labels"].get("final")]


def test_images_modalities_and_label_status(store, objects):
    assert len(objects) >= 5
    modalities = {k: v["image"]["info"]["modality"] for k, v in objects.items()}
    assert "CT" in modalities.values() and "MR" in modalities.values()
    assert set(_labelled(objects)) == {"mni152_t1", "mni152_t1_lps_aniso"}
    assert set(objects) - set(_labelled(objects)) >= {"ct_small", "mr_small"}
    for image_id in objects:
        assert (store / f"{image_id}.nii.gz").is_file()


def test_labels_share_image_geometry_and_values(store, objects):
    for image_id in _labelled(objects):
        img, lab = _image(store, image_id), _label(store, image_id)
        assert lab.shape == img.shape
        np.testing.assert_allclose(lab.affine, img.affine, atol=1e-5)
        data = np.asanyarray(lab.dataobj)
        assert data.dtype == np.uint8
        assert set(np.unique(data).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("image_id", ["mni152_t1", "mni152_t1_lps_aniso"])
def test_tissue_fractions_and_contrast_are_anatomical(store, image_id):
    img = np.asanyarray(_image(store, image_id).dataobj).astype(float)
    lab = np.asanyarray(_label(store, image_id).dataobj)
    brain = lab > 0
    voxel_ml = np.prod(_image(store, image_id).header.get_zooms()[:3]) / 1000
    assert 1200 < brain.sum() * voxel_ml < 2200  # an adult intracranial volume in ml
    frac = {k: (lab == k).sum() / brain.sum() for k in (1, 2, 3)}
    assert 0.45 < frac[1] < 0.70 and 0.25 < frac[2] < 0.45 and 0.03 < frac[3] < 0.15, frac
    # T1 weighting: white matter brighter than grey matter, which is brighter than CSF.
    mean = {k: img[lab == k].mean() for k in (1, 2, 3)}
    assert mean[2] > mean[1] > mean[3], mean


def test_mni_template_is_full_resolution_ras(store):
    img = _image(store, "mni152_t1")
    assert img.shape == (197, 233, 189)
    assert img.header.get_zooms() == (1.0, 1.0, 1.0)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")


def test_aniso_volume_is_reoriented_resampled_copy(store):
    src_img, src_lab = _image(store, "mni152_t1"), np.asanyarray(_label(store, "mni152_t1").dataobj)
    dst_img, dst_lab = _image(store, "mni152_t1_lps_aniso"), np.asanyarray(_label(store, "mni152_t1_lps_aniso").dataobj)
    zooms = dst_img.header.get_zooms()
    assert sorted(zooms) == [1.0, 1.0, 2.5]
    codes = nib.aff2axcodes(dst_img.affine)
    assert codes != nib.aff2axcodes(src_img.affine) and set(codes) == {"L", "P", "S"}
    # Same world point -> same tissue: every other 2.5 mm slice lands exactly on the 1 mm grid.
    ijk = np.indices(dst_lab.shape)[:, :, :, ::2].reshape(3, -1)
    src_ijk = np.linalg.inv(src_img.affine) @ dst_img.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    src_ijk = np.rint(src_ijk[:3]).astype(int)
    inside = np.all((src_ijk >= 0) & (src_ijk < np.array(src_lab.shape)[:, None]), axis=0)
    assert inside.mean() > 0.95
    got = dst_lab[tuple(ijk[:, inside])]
    want = src_lab[tuple(src_ijk[:, inside])]
    assert np.array_equal(got, want)
    # The intensities follow the anatomy too (smoothed along y, so correlated rather than equal).
    a = np.asanyarray(dst_img.dataobj)[tuple(ijk[:, inside])].astype(float)
    b = np.asanyarray(src_img.dataobj)[tuple(src_ijk[:, inside])].astype(float)
    assert np.corrcoef(a, b)[0, 1] > 0.95


def test_ct_slice_keeps_dicom_geometry_and_hounsfield_units(store):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    img = _image(store, "ct_small")
    assert img.shape == (ds.Columns, ds.Rows, 1)
    np.testing.assert_allclose(img.header.get_zooms(), [*map(float, ds.PixelSpacing), float(ds.SliceThickness)], rtol=1e-6)
    lps_origin = np.array(ds.ImagePositionPatient, float)
    np.testing.assert_allclose(img.affine[:3, 3], lps_origin * [-1, -1, 1], atol=1e-4)  # LPS -> RAS
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    hu = ds.pixel_array.astype(int) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert np.array_equal(np.asanyarray(img.dataobj)[:, :, 0], hu.T)


def test_metadata_in_datastore_json(objects):
    for image_id, obj in objects.items():
        info = obj["image"]["info"]
        assert info["modality"] in {"CT", "MR"}, image_id
        for key in ("body_part", "source", "licence", "provenance", "shape", "spacing", "orientation"):
            assert info.get(key), (image_id, key)
        assert info["labelled"] == bool(obj["labels"].get("final"))
        if info["labelled"]:
            assert info["label_names"] == EXPECTED_NAMES
            assert info["structures"]["brain"] == [1, 2, 3]
            assert info["structures"]["grey matter"] == [1] and info["structures"]["white matter"] == [2]
            assert obj["labels"]["final"]["info"]["label_names"] == EXPECTED_NAMES
    assert objects["mni152_t1_lps_aniso"]["image"]["info"]["derived"] is True
    assert objects["mni152_t1"]["image"]["info"]["derived"] is False


def test_monailabel_local_datastore_reads_it(store, objects):
    from monailabel.datastore.local import LocalDatastore

    before = (store / "datastore_v2.json").read_bytes()
    ds = LocalDatastore(str(store), extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    assert set(ds.list_images()) == set(objects)
    assert set(ds.get_labeled_images()) == set(_labelled(objects))
    assert set(ds.get_unlabeled_images()) == set(objects) - set(_labelled(objects))
    assert len(ds.datalist()) == len(_labelled(objects))
    assert ds.get_image_info("ct_small")["modality"] == "CT"
    assert ds.get_label_info("mni152_t1", "final")["structures"]["brain"] == [1, 2, 3]
    # Nothing to reconcile: the server sees the datastore exactly as built.
    assert (store / "datastore_v2.json").read_bytes() == before


def test_held_out_split(store, objects):
    splits = json.loads((store / "splits.json").read_text())
    assert set(splits["images"]) == set(_labelled(objects))
    intervals = {}
    for image_id, entry in splits["images"].items():
        img = _image(store, image_id)
        lab = np.asanyarray(_label(store, image_id).dataobj)
        for axis, spec in entry["axes"].items():
            axis = int(axis)
            held, guard = spec["held_out"], spec["guard"]
            assert held and guard and not set(held) & set(guard)
            assert held == list(range(held[0], held[-1] + 1))  # one contiguous block
            assert 0 <= min(held + guard) and max(held + guard) < img.shape[axis]
            assert lab.take(held, axis=axis).any()
            # The block sits in the world interval it claims.
            w = "xyz".index(spec["world_axis"])
            centres = img.affine[w, axis] * np.array(held) + img.affine[w, 3]
            lo, hi = spec["held_out_mm"]
            assert np.all((centres >= lo) & (centres <= hi))
            intervals.setdefault(spec["world_axis"], set()).add((lo, hi))
    # Both labelled volumes hold out the same world slabs, so the derived copy cannot leak them.
    assert all(len(v) == 1 for v in intervals.values()) and set(intervals) == {"x", "y", "z"}


def test_rebuild_is_deterministic_and_idempotent(store, tmp_path):
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    def strip_ts(raw: bytes) -> dict:
        data = json.loads(raw)
        for obj in data["objects"].values():
            for part in [obj["image"], *obj["labels"].values()]:
                part["info"].pop("ts", None)
        return data

    other = bsd.build(tmp_path / "again")
    a, b = files(store), files(other)
    a.pop(".lock", None), b.pop(".lock", None)  # left by LocalDatastore in the shared fixture
    assert a.keys() == b.keys()
    for name in a:
        if name == "datastore_v2.json":
            assert strip_ts(a[name]) == strip_ts(b[name])
        else:
            assert a[name] == b[name], name

    stamps = {p: p.stat().st_mtime_ns for p in other.rglob("*.nii.gz")}
    assert bsd.build(other) == other  # complete: skipped
    assert {p: p.stat().st_mtime_ns for p in other.rglob("*.nii.gz")} == stamps

    (other / "labels" / "final" / "mni152_t1.nii.gz").unlink()
    assert not bsd.is_complete(other)
    bsd.build(other)  # incomplete: rebuilt
    assert bsd.is_complete(other) and files(other)["labels/final/mni152_t1.nii.gz"] == a["labels/final/mni152_t1.nii.gz"]


def test_cli_reports_skip(store, capsys):
    assert bsd.main(["--out", str(store)]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "mni152_t1_lps_aniso" in out and "ct_small" in out


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a datastore")
    with pytest.raises(FileExistsError):
        bsd.build(tmp_path, force=True)
    assert (tmp_path / "notes.txt").exists()


def test_copy_is_still_complete(store, tmp_path):
    shutil.copytree(store, tmp_path / "copy")
    assert bsd.is_complete(tmp_path / "copy")  # no absolute paths inside: the folder is relocatable
