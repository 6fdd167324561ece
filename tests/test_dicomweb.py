"""The DICOMweb datastore against a real, private Orthanc (tests/orthanc_harness.py) with real DICOM files.

An MR series is written with pydicom from the MNI152 T1 template (nilearn's data file; anisotropic voxels so any
axis swap shows), plus pydicom's CT_small.dcm. Checks: QIDO listing and filters, the series -> NIfTI geometry, MedPLIB
grounding through the app in-process, the final label stored as a DICOM SEG (read back from Orthanc over WADO-RS and
compared voxel for voxel), labelled/unlabelled bookkeeping, the training datalist from a fresh cache, and that
MONAI Label's dcmqi download is never reached.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from .orthanc_harness import OrthancServer, OrthancUnavailable, find_orthanc

LPS = np.diag([-1.0, -1.0, 1.0])
STRIDE = (3, 4, 6)  # voxels of the 1 mm template per DICOM voxel along x, y, z: spacing 3 x 4 x 6 mm
Z_RANGE = (54, 126)  # 12 slices through the middle of the brain
MNI_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"  # nilearn's copy of the MNI152 2009a T1


@dataclass
class Series:
    study_uid: str
    series_uid: str
    files: list[Path]
    array: np.ndarray  # IJK, what the NIfTI must hold
    spacing: tuple[float, float, float]
    origin: np.ndarray  # LPS of voxel (0, 0, 0)
    direction: np.ndarray  # 3x3, columns = LPS directions of the voxel axes


def mni_path() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nilearn (which carries the MNI152 template) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / MNI_FILE
    if not path.is_file():
        pytest.skip(f"MNI152 template not found at {path}")
    return path


def write_mr_series(out: Path) -> Series:
    """Slices of the MNI152 T1 as a DICOM MR series with the geometry of the NIfTI (RAS -> LPS)."""
    import nibabel as nib

    img = nib.load(str(mni_path()))
    data = np.asanyarray(img.dataobj).astype(np.int16)
    sx, sy, sz = STRIDE
    sub = data[::sx, ::sy, Z_RANGE[0]:Z_RANGE[1]:sz]
    a = img.affine
    axes = [LPS @ a[:3, n] for n in range(3)]
    spacing = tuple(float(np.linalg.norm(axes[n]) * s) for n, s in enumerate(STRIDE))
    row_dir, col_dir, normal = (v / np.linalg.norm(v) for v in axes)

    def lps(i: float, j: float, k: float) -> np.ndarray:
        return LPS @ (a @ np.array([i * sx, j * sy, Z_RANGE[0] + k * sz, 1.0]))[:3]

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(sub.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientSex = "MEDPLIB-TEST-1", "Test^MNI152", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "ACC1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.SeriesDescription, ds.BodyPartExamined = "MNI152 T1 (test)", "BRAIN"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in lps(0, 0, k)]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]  # row spacing (y), column spacing (x)
        ds.SliceThickness = f"{spacing[2]:.4f}"
        plane = np.ascontiguousarray(sub[:, :, k].T)  # rows = j, columns = i
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = plane.astype("<i2").tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        path = out / f"slice_{k:03d}.dcm"
        ds.save_as(str(path), write_like_original=False)
        files.append(path)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    return Series(study, series, files, sub, spacing, lps(0, 0, 0), direction)


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A private Orthanc holding the MR series (slices uploaded in shuffled order) and CT_small.dcm."""
    try:
        install = find_orthanc()
    except OrthancUnavailable as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("pacs")
    mr = write_mr_series(root / "mr")
    server = OrthancServer(root / "orthanc", install=install)
    with server:
        for path in np.random.RandomState(0).permutation(mr.files):
            server.upload(path)
        ct_file = pydicom.data.get_testdata_file("CT_small.dcm")
        server.upload(ct_file)
        ct_uid = str(pydicom.dcmread(ct_file, stop_before_pixels=True).SeriesInstanceUID)
        yield server, mr, ct_uid


def make_store(server: OrthancServer, cache: Path, **kwargs):
    from monailabel.datastore.dicom import DICOMwebClientX

    from medplib_label.dicomweb import MedPLIBDICOMwebDatastore

    return MedPLIBDICOMwebDatastore(DICOMwebClientX(url=server.dicomweb_url), cache_path=str(cache), **kwargs)


@pytest.fixture()
def no_dcmqi(monkeypatch):
    """MONAI Label's stock DICOMweb path downloads dcmqi from GitHub: make reaching it a test failure."""
    from monailabel.interfaces.app import MONAILabelApp

    def refuse(self):
        raise AssertionError("MONAI Label's dcmqi download was reached")

    monkeypatch.setattr(MONAILabelApp, "_download_dcmqi_tools", refuse)


@pytest.fixture()
def app(pacs, fitted_tiny_dir, tmp_path, monkeypatch, no_dcmqi):
    """The MedPLIB app in-process on the Orthanc DICOMweb URL, its cache under tmp_path.

    Until MedPLIBApp.init_datastore builds the DICOMweb datastore itself, MONAI Label's remote-datastore hook is
    pointed at it (the app class is loaded from main.py afresh, so the shared base class is patched)."""
    from monailabel.config import settings
    from monailabel.interfaces.app import MONAILabelApp

    from medplib_label.dicomweb import dicomweb_datastore

    from .app_client import monailabel_client

    server, _, _ = pacs
    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_CACHE_PATH", str(tmp_path / "cache"))
    monkeypatch.setattr(MONAILabelApp, "init_remote_datastore",
                        lambda self: dicomweb_datastore(self.studies, getattr(self, "label_map", None), self.conf))
    with monailabel_client(server.dicomweb_url, {"model": str(fitted_tiny_dir), "skip_trainers": "true"}) as (
            client, instance):
        yield client, instance()


# ---------------------------------------------------------------------- tests
def test_lists_series_with_filters_and_dicom_info(pacs, tmp_path):
    from monailabel.interfaces.exception import ImageNotFoundException

    server, mr, ct_uid = pacs
    store = make_store(server, tmp_path / "all")
    assert sorted(store.list_images()) == sorted([mr.series_uid, ct_uid])
    info = store.get_image_info(mr.series_uid)
    assert info["modality"] == "MR" and info["StudyInstanceUID"] == mr.study_uid
    assert info["PatientID"] == "MEDPLIB-TEST-1" and info["body_part"] == "brain"
    mr_only = make_store(server, tmp_path / "mr", search_filter={"Modality": "MR"})
    assert mr_only.list_images() == [mr.series_uid]
    with pytest.raises(ImageNotFoundException):  # the filter also limits what can be fetched
        mr_only.get_image_uri(ct_uid)
    assert make_store(server, tmp_path / "none", search_filter={"Modality": "PT"}).list_images() == []
    assert store.get_image_info("1.2.3.4.5") == {}
    assert store.status()["total"] == 2 and store.status()["completed"] == 0


def test_series_becomes_nifti_with_the_dicom_geometry(pacs, tmp_path):
    from medplib.data.volumes import read_volume

    server, mr, ct_uid = pacs
    store = make_store(server, tmp_path / "cache")
    path = store.get_image_uri(mr.series_uid)
    assert path.endswith(f"{mr.series_uid}.nii.gz") and Path(path).is_file()
    vol = read_volume(path)
    assert vol.shape == mr.array.shape == (66, 59, 12)
    assert np.allclose(vol.spacing, mr.spacing, atol=1e-3) and np.allclose(vol.spacing, (3, 4, 6), atol=1e-3)
    assert np.allclose(vol.origin, mr.origin, atol=1e-3)
    assert np.allclose(vol.direction, mr.direction, atol=1e-5)
    assert np.array_equal(vol.array, mr.array)  # voxel for voxel, slices sorted by position
    assert store.get_image_uri(mr.series_uid) == path  # cached
    ct = read_volume(store.get_image_uri(ct_uid))
    assert ct.shape == (128, 128, 1)


def test_grounding_then_final_label_as_dicom_seg_round_trip(pacs, app, tmp_path):
    import pydicom_seg
    from dicomweb_client.api import DICOMwebClient

    from medplib.data.volumes import read_volume, write_label

    from .app_client import parse_infer

    server, mr, ct_uid = pacs
    client, instance = app
    store = instance.datastore()
    assert type(store).__name__ == "MedPLIBDICOMwebDatastore"
    stats = client.get("/datastore/?output=stats").json()
    assert stats["total"] == 2 and stats["completed"] == 0

    # MedPLIB text grounding on the whole series, fetched from Orthanc by SeriesInstanceUID
    res = client.post(f"/infer/medplib_seg?image={mr.series_uid}",
                      data={"params": json.dumps({"label": "white matter", "largest_cc": False})})
    params, label_img, _ = parse_infer(res, tmp_path)
    assert params["task"] == "ground" and params.get("seg_count", 1) >= 1
    image = read_volume(store.get_image_uri(mr.series_uid))
    mask = np.asanyarray(label_img.dataobj)
    assert mask.shape == image.shape

    # the annotator's final label: the model's mask (1) plus a hand-drawn region (3)
    final = (mask > 0).astype(np.uint8)
    final[20:30, 25:35, 4:7] = 3
    final_path = write_label(final, image)
    label_info = {"label_info": [{"name": "brain", "idx": 1}, {"name": "white matter", "idx": 3}],
                  "client_id": "pytest"}
    with open(final_path, "rb") as fh:
        res = client.put(f"/datastore/label?image={mr.series_uid}&tag=final",
                         data={"params": json.dumps(label_info)}, files={"label": ("final.nii.gz", fh)})
    assert res.status_code == 200, res.text

    # read the SEG back from Orthanc over WADO-RS, independently of the datastore
    seg_uids = server.series_uids("SEG")
    assert len(seg_uids) == 1
    web = DICOMwebClient(url=server.dicomweb_url)
    seg = web.retrieve_series(mr.study_uid, seg_uids[0])[0]
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == mr.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == mr.series_uid
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(mr.files)
    src = pydicom.dcmread(str(mr.files[0]), stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID and seg.PatientID == src.PatientID
    expected = {v: name for v, name in {1: "brain", 3: "white matter"}.items() if (final == v).any()}
    assert {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence} == expected
    result = pydicom_seg.MultiClassReader().read(seg)
    back = np.asarray(result.data).transpose(2, 1, 0)  # ZYX -> IJK
    assert back.shape == final.shape and np.array_equal(back, final)
    assert np.allclose(result.image.GetOrigin(), image.origin, atol=1e-3)
    assert np.allclose(result.image.GetSpacing(), image.spacing, atol=1e-4)

    # bookkeeping: labelled now, the CT is still unlabelled
    stats = client.get("/datastore/?output=stats").json()
    assert stats["completed"] == 1 and stats["label_tags"]["final"] == 1
    assert store.get_labeled_images() == [mr.series_uid]
    assert store.get_unlabeled_images() == [ct_uid]
    assert client.get("/datastore/?output=all").json()["objects"][mr.series_uid]["labels"]["final"]["info"][
        "SeriesInstanceUID"] == seg_uids[0]

    # a fresh cache (another server, or a training subprocess) gets the label from the SEG on Orthanc
    fresh = make_store(server, tmp_path / "fresh")
    assert fresh.get_labeled_images() == [mr.series_uid]
    pairs = fresh.datalist()
    assert len(pairs) == 1 and pairs[0]["image"].endswith(f"{mr.series_uid}.nii.gz")
    assert np.array_equal(read_volume(pairs[0]["label"]).array, final)
    # the cache is a plain local datastore: what torchrun ranks (medplib/training/ddp.py) open
    from monailabel.datastore.local import LocalDatastore

    assert LocalDatastore(fresh._datastore_path, auto_reload=False).datalist() == pairs
    assert fresh.get_label_info(mr.series_uid, "final")["label_names"] == {n: v for v, n in expected.items()}
    res = client.get(f"/datastore/label?label={mr.series_uid}&tag=final")
    assert res.status_code == 200


def test_bad_labels_are_refused_before_anything_is_stored(pacs, tmp_path):
    from fastapi import HTTPException

    from medplib.data.volumes import read_volume, write_label

    server, mr, ct_uid = pacs
    store = make_store(server, tmp_path / "cache")
    before = server.series_uids("SEG")
    ct = read_volume(store.get_image_uri(ct_uid))
    with pytest.raises(HTTPException) as err:  # the CT's grid is not the MR's
        store.save_label(mr.series_uid, write_label(np.ones(ct.shape, np.uint8), ct), "final", {})
    assert err.value.status_code == 422 and "shape" in err.value.detail
    mr_vol = read_volume(store.get_image_uri(mr.series_uid))
    with pytest.raises(HTTPException) as err:
        store.save_label(mr.series_uid, write_label(np.zeros(mr_vol.shape, np.uint8), mr_vol), "final", {})
    assert err.value.status_code == 422 and "empty" in err.value.detail
    assert server.series_uids("SEG") == before
    # a non-final tag (e.g. the model's own output) stays in the local cache
    store.save_label(mr.series_uid, write_label(np.ones(mr_vol.shape, np.uint8), mr_vol), "original", {})
    assert server.series_uids("SEG") == before
    assert store.get_labeled_images("original") == [mr.series_uid]


def test_newest_seg_wins_and_a_deleted_seg_unlabels(pacs, tmp_path):
    from medplib.data.volumes import read_volume, write_label

    server, mr, ct_uid = pacs
    store = make_store(server, tmp_path / "a")
    ct = read_volume(store.get_image_uri(ct_uid))
    first, second = np.zeros(ct.shape, np.uint8), np.zeros(ct.shape, np.uint8)
    first[10:50, 20:60, 0], second[60:100, 30:90, 0] = 1, 2
    store.save_label(ct_uid, write_label(first, ct), "final", {"label_names": {"liver": 1}})
    time.sleep(0.01)  # SeriesTime has microseconds; keep the two SEGs strictly ordered
    store.save_label(ct_uid, write_label(second, ct), "final", {"label_names": {"spleen": 2}})
    assert ct_uid in store.get_labeled_images()

    other = make_store(server, tmp_path / "b")  # another node, empty cache: reads the newest SEG
    assert np.array_equal(read_volume(other.get_label_uri(ct_uid, "final")).array, second)
    assert other.get_label_info(ct_uid, "final")["label_names"] == {"spleen": 2}

    newest = store.get_label_info(ct_uid, "final")["SeriesInstanceUID"]
    server.delete_series(newest)  # deleted on the PACS: the older SEG is the label again
    other.refresh()
    assert np.array_equal(read_volume(other.get_label_uri(ct_uid, "final")).array, first)
    for seg in [s for s in server.series_uids("SEG") if s != newest]:
        if seg_reference(server, seg) == ct_uid:
            server.delete_series(seg)
    other.refresh()
    assert ct_uid not in other.get_labeled_images() and ct_uid in other.get_unlabeled_images()
    assert all(ct_uid not in pair["image"] for pair in other.datalist())
    assert not Path(other._label_path(ct_uid)).exists()  # the stale cached label is gone too


def seg_reference(server: OrthancServer, seg_uid: str) -> str:
    """The series a SEG on the server references (Orthanc REST, independent of the datastore)."""
    import requests

    hit = requests.post(f"{server.url}/tools/lookup", data=seg_uid, timeout=30).json()[0]
    instance = server.get(f"/series/{hit['ID']}")["Instances"][0]
    tags = server.get(f"/instances/{instance}/simplified-tags")
    return tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"]


def test_unreachable_server_is_a_quick_502_naming_the_step(tmp_path, monkeypatch):
    from fastapi import HTTPException
    from monailabel.config import settings

    from medplib_label.dicomweb import dicomweb_datastore

    from .orthanc_harness import free_port

    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_CACHE_PATH", str(tmp_path))
    store = dicomweb_datastore(f"http://127.0.0.1:{free_port()}/dicom-web/", conf={})  # nothing listens there
    start = time.monotonic()
    with pytest.raises(HTTPException) as err:
        store.list_images()
    assert err.value.status_code == 502 and "QIDO" in err.value.detail
    assert time.monotonic() - start < 10
    assert Path(store._datastore_path).is_relative_to(tmp_path)


def test_logs_carry_no_patient_identifiers_or_pixels(pacs, app, tmp_path, caplog):
    """Every log record of a DICOMweb session (list, info, infer, save) is free of the series' patient data."""
    import logging

    from medplib.data.volumes import read_volume, write_label

    from .app_client import parse_infer

    server, mr, _ = pacs
    client, instance = app
    caplog.set_level(logging.DEBUG)
    assert client.get("/datastore/?output=all").status_code == 200
    assert client.get(f"/datastore/image/info?image={mr.series_uid}").status_code == 200
    res = client.post(f"/infer/medplib?image={mr.series_uid}&output=json",
                      data={"params": json.dumps({"question": "What modality is this?", "slice": 5})})
    assert res.status_code == 200, res.text
    res = client.post(f"/infer/medplib_seg?image={mr.series_uid}", data={"params": json.dumps({"label": "brain"})})
    _, label_img, _ = parse_infer(res, tmp_path)
    image = read_volume(instance.datastore().get_image_uri(mr.series_uid))
    with open(write_label((np.asanyarray(label_img.dataobj) > 0).astype(np.uint8), image), "rb") as fh:
        res = client.put(f"/datastore/label?image={mr.series_uid}&tag=final",
                         data={"params": json.dumps({"label_info": [{"name": "brain", "idx": 1}]})},
                         files={"label": ("final.nii.gz", fh)})
    assert res.status_code == 200, res.text
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert len(caplog.records) > 5, "nothing was logged: the check would be empty"
    assert mr.series_uid in text  # the records of the requests above were captured (ids are not PHI)
    for phi in ("MEDPLIB-TEST-1", "Test^MNI152", "ACC1", "MNI152 T1 (test)"):
        assert phi not in text, f"{phi!r} found in the logs"
    assert "array(" not in text and "tensor(" not in text  # no pixel content either
