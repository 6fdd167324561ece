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

from .user_work import snapshot

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


# ------------------------------------------------------------------ a datastore users worked in (issue #15)


def _user_work(store: Path, tmp_path: Path) -> tuple[set[str], set[str]]:
    """Add what users leave behind, through the server's own datastore class where a client could do it: an
    uploaded .nii with no metadata and its final and original labels, a final label on an unlabelled sample
    image, an original-tag label on a labelled one, an image with no metadata in the index and a DICOMweb-cached
    series. Returns (their files relative to `store`, the index entries to compare)."""
    from monailabel.config import settings

    from medplib_label.datastore import SafeLocalDatastore

    from .user_work import add_bare_image, add_dicomweb_series

    ds = SafeLocalDatastore(str(store), extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT, auto_reload=False)
    upload = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    img = nib.load(upload)
    label = (np.asanyarray(img.dataobj) > np.asanyarray(img.dataobj).mean()).astype(np.uint8)
    lab = tmp_path / "upload_label.nii.gz"
    nib.save(nib.Nifti1Image(label, img.affine), lab)
    ct = nib.load(store / "ct_small.nii.gz")
    ct_lab = tmp_path / "ct_label.nii.gz"
    nib.save(nib.Nifti1Image((np.asanyarray(ct.dataobj) > 0).astype(np.uint8), ct.affine), ct_lab)
    mni = nib.load(store / "mni152_t1.nii.gz")
    mni_lab = tmp_path / "mni_label.nii.gz"
    nib.save(nib.Nifti1Image((np.asanyarray(mni.dataobj) > 80).astype(np.uint8), mni.affine), mni_lab)

    ds.add_image("my_scan", str(upload), {})  # what PUT /datastore/?image=my_scan does with an empty params
    ds.save_label("my_scan", str(lab), "final", {})
    ds.save_label("my_scan", str(lab), "original", {"user": "someone"})
    ds.save_label("ct_small", str(ct_lab), "final", {"label_info": [{"name": "target", "idx": 1}]})
    ds.save_label("mni152_t1", str(mni_lab), "original", {})
    bare = add_bare_image(store, "no_metadata", store / "mr_small.nii.gz")
    uid = add_dicomweb_series(store, tmp_path / "dicom")
    files = {"my_scan.nii", "labels/final/my_scan.nii.gz", "labels/original/my_scan.nii.gz",
             "labels/final/ct_small.nii.gz", "labels/original/mni152_t1.nii.gz", f"{bare}.nii.gz", f"{uid}.nii.gz"}
    return files, {"my_scan", bare, uid}


def test_user_work_survives_the_build_step_and_rebuilds(store, tmp_path, capsys):
    """`make serve` runs the build step on every start: with users' images and labels in the datastore it must
    neither fail (their images have no modality, shape or spacing) nor touch them, also when it rebuilds."""
    store = Path(shutil.copytree(store, tmp_path / "datastore"))
    files, ids = _user_work(store, tmp_path)
    before = snapshot(store, files, ids)
    ours = store / "labels" / "final" / "mni152_t1.nii.gz"
    sample_label = ours.read_bytes()

    assert bsd.main(["--out", str(store)]) == 0  # complete: skipped, and the summary lists every image
    out = capsys.readouterr().out
    assert "skipped" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows["my_scan"] == ["unknown", "33x41x25", "2x2x2", "yes"]  # geometry from the file's header
    assert rows["no_metadata"] == ["unknown", "64x64x1", "0.3125x0.3125x0.8", "no"]
    uid = next(i for i in ids if i.startswith("1."))
    assert rows[uid][0] == "CT" and rows[uid][-1] == "no"
    assert rows["ct_small"][-1] == "yes" and rows["mni152_t1"] == ["MR", "197x233x189", "1x1x1", "yes"]
    assert snapshot(store, files, ids) == before

    ours.unlink()  # incomplete: rebuilt, then forced: both replace only the builder's own files
    assert not bsd.is_complete(store)
    for force in (False, True):
        bsd.build(store, force=force)
        assert snapshot(store, files, ids) == before
        objects = json.loads((store / "datastore_v2.json").read_text())["objects"]
        assert ours.read_bytes() == sample_label and objects["mni152_t1"]["labels"]["final"]["info"]["structures"]
        assert set(objects["mni152_t1"]["labels"]) == {"final", "original"}
        assert objects["ct_small"]["labels"]["final"]["info"]["label_info"] == [{"name": "target", "idx": 1}]
        assert bsd.is_complete(store)
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert bsd.main(["--out", str(store)]) == 0 and "skipped" in capsys.readouterr().out  # idempotent
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == stamps

    # And MONAI Label reads the merged index as it is: every image and label, nothing to reconcile.
    from monailabel.datastore.local import LocalDatastore

    index = (store / "datastore_v2.json").read_bytes()
    ds = LocalDatastore(str(store), extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    assert ids <= set(ds.list_images()) and {"my_scan", "ct_small"} <= set(ds.get_labeled_images())
    assert (store / "datastore_v2.json").read_bytes() == index


def test_never_overwrites_a_users_image_under_a_sample_id(store, tmp_path):
    """An upload named like a sample image (here `nibabel_epi`) replaced it: it stays the user's."""
    from .user_work import add_bare_image

    store = Path(shutil.copytree(store, tmp_path / "datastore"))
    add_bare_image(store, "nibabel_epi", store / "mr_small.nii.gz")
    before = (store / "nibabel_epi.nii.gz").read_bytes()
    assert bsd.is_complete(store)  # their image counts as present: no rebuild on every start
    bsd.build(store, force=True)
    assert (store / "nibabel_epi.nii.gz").read_bytes() == before
    assert json.loads((store / "datastore_v2.json").read_text())["objects"]["nibabel_epi"] == {
        "image": {"ext": ".nii.gz"}}
    assert bsd.is_complete(store)
