"""Build a MONAI Label local datastore of real medical images shipped inside installed wheels.

Nothing is downloaded: every image comes from package data of nilearn, pydicom, nibabel and
(optionally) dipy. See sample_data/README.md for provenance, licences, labels and the held-out split.

Usage: python sample_data/build_sample_data.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

DEFAULT_OUT = Path(__file__).resolve().parent / "datastore"
# Bump when the content changes, so that an existing datastore is rebuilt instead of reused.
BUILD_VERSION = 1
FINAL = "final"  # monailabel.interfaces.datastore.DefaultLabelTag.FINAL

LABEL_NAMES = {"grey matter": 1, "white matter": 2, "csf": 3}
STRUCTURES = {"brain": [1, 2, 3], "grey matter": [1], "white matter": [2], "csf": [3]}
# A voxel inside the brain mask is labelled only when its winning tissue is at least this likely:
# the three probabilities sum to 1, so this drops only three-way ties at tissue junctions.
MIN_PROB = 0.4
HOLDOUT_FRACTION = 0.2  # central block of the labelled extent, per axis
GUARD_MM = 5.0  # slices this close to the held-out block are used neither for training nor evaluation

MNI_LICENCE = (
    "MNI ICBM152 permissive notice (Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, "
    "MNI, McGill University; use/copy/modify/distribute without fee with the copyright notice), as reproduced "
    "in nibabel's COPYING for the sibling asym_09a template; nilearn's icbm152_2009.rst says 'License: unknown'"
)
PYDICOM_LICENCE = (
    "pydicom test file: pydicom/data/test_files/README.txt says 'I believe there is no restriction on using "
    "any of these files in this manner'; pydicom itself is MIT (pydicom-*.dist-info/licenses/LICENSE)"
)
NIBABEL_LICENCE = "MIT, as stated in nibabel-*.dist-info/licenses/COPYING for 'the nibabel package, including all examples'"
DIPY_LICENCE = "BSD-3-Clause, as stated in dipy-*.dist-info/LICENSE (no separate licence for dipy/data/files)"


@dataclass
class Volume:
    """One datastore image: voxel data (+ optional label) on a shared affine, plus its metadata."""

    id: str
    data: np.ndarray
    affine: np.ndarray
    info: dict[str, Any]
    label: np.ndarray | None = None
    sform_code: int = 1  # 1 = scanner, 4 = MNI152


def _site_relative(path: Path | str) -> str:
    """Path inside the installed package (…/site-packages/<pkg>/...), so metadata is machine independent."""
    parts = Path(path).resolve().parts
    idx = max(i for i, p in enumerate(parts) if p in ("site-packages", "dist-packages"))
    return "/".join(parts[idx + 1 :])


def _geometry(data: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return {
        "shape": [int(s) for s in data.shape],
        "spacing": [round(float(s), 6) for s in spacing],
        "orientation": "".join(nib.aff2axcodes(affine)),
        "dtype": str(data.dtype),
    }


# ---------------------------------------------------------------- MNI152 (nilearn)


def tissue_label(gm: np.ndarray, wm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """1 = grey matter, 2 = white matter, 3 = CSF: argmax of (GM, WM, 1-GM-WM) inside the brain mask."""
    prob = np.stack([gm, wm, np.clip(1.0 - gm - wm, 0.0, 1.0)])
    label = (prob.argmax(axis=0) + 1).astype(np.uint8)
    label[~mask | (prob.max(axis=0) < MIN_PROB)] = 0
    return label


def resample(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape: tuple, order: int) -> np.ndarray:
    """Sample `data` (on src_affine) at the voxel centres of a grid (dst_affine, shape); 0 outside."""
    vox2vox = np.linalg.inv(src_affine) @ dst_affine
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = vox2vox[:3, :3].astype(np.float32) @ grid + vox2vox[:3, 3:].astype(np.float32)
    out = ndimage.map_coordinates(data, coords, order=order, mode="constant", cval=0.0, prefilter=False)
    return out.reshape(shape)


def mni_volumes() -> list[Volume]:
    """The 1 mm MNI152 T1 with its tissue label, and a derived 1x1x2.5 mm copy on a permuted L/S/P grid."""
    from nilearn import datasets
    from nilearn.datasets import struct

    t1_img = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = np.asanyarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    affine = t1_img.affine.copy()
    # nilearn rescales the uint8 file to [0, 1]; keep the file's own integer values (lossless, int16).
    t1 = np.asanyarray(nib.load(struct.MNI152_FILE_PATH).dataobj).astype(np.int16)
    label = tissue_label(gm, wm, mask)
    base = {
        "modality": "MR", "body_part": "brain", "contrast": "T1w", "licence": MNI_LICENCE,
        "label_names": LABEL_NAMES, "structures": STRUCTURES,
        "source": f"nilearn {_version('nilearn')}: {_site_relative(struct.MNI152_FILE_PATH)} "
                  "(+ the _gm_ / _wm_ probability maps beside it, nilearn.datasets.load_mni152_brain_mask)",
        "provenance": "MNI ICBM152 2009a nonlinear symmetric T1 template (skull-stripped), "
                      "McConnell Brain Imaging Centre, Montreal Neurological Institute",
    }
    method = f"argmax(GM, WM, 1-GM-WM) inside nilearn's brain mask, min probability {MIN_PROB}"
    original = Volume("mni152_t1", t1, affine, {**base, "derived": False, "label_method": method}, label, 4)

    # Derived volume over the same field of view: voxel axes point L, S, P (coronal 2.5 mm slices).
    ends = (affine @ np.array([[0, 0, 0, 1], [*(np.array(t1.shape) - 1), 1]]).T)[:3]
    lo, hi = ends.min(axis=1), ends.max(axis=1)  # RAS+ bounding box in mm (the template grid is axis aligned)
    dst_affine = np.array([[-1.0, 0, 0, hi[0]], [0, 0, -2.5, hi[1]], [0, 1.0, 0, lo[2]], [0, 0, 0, 1]])
    shape = (int(round(hi[0] - lo[0])) + 1, int(round(hi[2] - lo[2])) + 1, int((hi[1] - lo[1]) // 2.5) + 1)
    # Average over the 2.5 mm slab first (Gaussian FWHM = slice thickness), as a thick-slice acquisition would.
    smooth = ndimage.gaussian_filter1d(t1.astype(np.float32), sigma=2.5 / 2.355, axis=1)
    aniso = np.rint(resample(smooth, affine, dst_affine, shape, order=1)).astype(np.int16)
    aniso_label = resample(label, affine, dst_affine, shape, order=0).astype(np.uint8)
    derivation = (
        "mni152_t1 smoothed along y (FWHM 2.5 mm) and resampled (trilinear) to 1x1x2.5 mm with voxel axes L,S,P; "
        "label = mni152_t1's label resampled by nearest neighbour"
    )
    aniso_info = {**base, "derived": True, "derivation": derivation, "label_method": method}
    return [original, Volume("mni152_t1_lps_aniso", aniso, dst_affine, aniso_info, aniso_label, 4)]


# ---------------------------------------------------------------- pydicom single slices


def dicom_volume(filename: str, image_id: str, body_part_fallback: str, note: str) -> Volume:
    """A single DICOM slice as an (X, Y, 1) volume with the DICOM geometry converted from LPS to RAS."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file(filename)
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1)
    pixels += float(getattr(ds, "RescaleIntercept", 0) or 0)
    row_cos, col_cos = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    d_row, d_col = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    thickness = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    lps = np.eye(4)
    # Voxel axis 0 = column index (moves along the row cosine), axis 1 = row index (along the column cosine).
    lps[:3, 0] = row_cos * d_col
    lps[:3, 1] = col_cos * d_row
    lps[:3, 2] = np.cross(row_cos, col_cos) * thickness
    lps[:3, 3] = np.array(ds.ImagePositionPatient, float)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    data = np.rint(pixels.T[:, :, None]).astype(np.int16)
    body_part = str(ds.get("BodyPartExamined") or "").strip().lower()
    info = {
        "modality": str(ds.Modality),
        "body_part": body_part or body_part_fallback,
        "body_part_source": "DICOM BodyPartExamined" if body_part else f"not in the DICOM file; {note}",
        "source": f"pydicom {_version('pydicom')}: {_site_relative(path)}",
        "provenance": f"{filename}: downsized from NEMA WG04 sample "
                      f"'{'CT1_UNC' if ds.Modality == 'CT' else 'MR1_UNC'}' (pydicom/data/test_files/README.txt); "
                      f"{ds.get('Manufacturer', '')} {ds.get('ManufacturerModelName', '')}".strip(),
        "licence": PYDICOM_LICENCE,
        "derived": False,
        "units": "HU" if ds.Modality == "CT" else "arbitrary",
    }
    return Volume(image_id, data, affine, info)


# ---------------------------------------------------------------- NIfTI files shipped in nibabel / dipy


def nifti_volume(path: Path, image_id: str, dist: str, info: dict[str, Any]) -> Volume:
    """A NIfTI shipped in a wheel, rewritten with a fresh header (first volume of a 4D series)."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    data = data.astype(np.int16)  # all chosen files are integer-valued int16 on disk
    info = {**info, "source": f"{dist} {_version(dist)}: {_site_relative(path)}", "derived": False}
    return Volume(image_id, data, img.affine.copy(), info)


def other_volumes() -> list[Volume]:
    """nibabel test volumes and, when dipy is installed, its anisotropic-voxel brain volume."""
    from nibabel.testing import data_path

    vols = [
        nifti_volume(Path(data_path) / "anatomical.nii", "nibabel_anatomical", "nibabel", {
            "modality": "MR", "body_part": "brain", "licence": NIBABEL_LICENCE,
            "provenance": "nibabel test file; header descrip 'spm - 3D normalized' (SPM-normalised structural crop); "
                          "origin not documented in nibabel"}),
        nifti_volume(Path(data_path) / "example4d.nii.gz", "nibabel_epi", "nibabel", {
            "modality": "MR", "body_part": "head", "contrast": "EPI (fMRI), volume 0 of 2", "licence": NIBABEL_LICENCE,
            "provenance": "nibabel test file example4d.nii.gz; header descrip 'FSL3.3 v2.25'; origin not documented"}),
    ]
    try:
        from dipy.data import get_fnames
    except ImportError:  # dipy is optional: the datastore is still complete without it
        logging.getLogger(__name__).info("dipy not installed: skipping dipy_aniso_vox")
        return vols
    vols.append(
        nifti_volume(Path(get_fnames(name="aniso_vox")), "dipy_aniso_vox", "dipy", {
            "modality": "MR", "body_part": "head", "contrast": "T2-like / b0 EPI (bright CSF)", "licence": DIPY_LICENCE,
            "provenance": "dipy test/example data 'aniso_vox' ('volume with anisotropic voxel size', "
                          "dipy.data.get_fnames docstring); acquisition details not documented"}))
    return vols


def collect() -> list[Volume]:
    """All volumes, in datastore order."""
    return [
        *mni_volumes(),
        dicom_volume("CT_small.dcm", "ct_small", "chest", "visually a thoracic vertebra in a contrast-enhanced helical CT"),
        dicom_volume("MR_small.dcm", "mr_small", "unknown", "20 mm field of view; region not identifiable"),
        *other_volumes(),
    ]


# ---------------------------------------------------------------- held-out split


def holdout_split(volumes: list[Volume]) -> dict[str, Any]:
    """Per-axis held-out slice blocks for the MNI volumes, defined in world mm so both grids agree.

    The block is centred on the labelled extent: on the left-right axis of this symmetric template
    that keeps each held-out slice's mirror image out of training too.
    """
    ref = next(v for v in volumes if v.id == "mni152_t1")
    spacing = np.sqrt((ref.affine[:3, :3] ** 2).sum(axis=0))
    blocks: dict[int, tuple[float, float]] = {}  # world axis -> held-out interval (mm)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(ref.label.any(axis=other))
        n = int(round(HOLDOUT_FRACTION * (idx[-1] - idx[0] + 1)))
        start = int(round((idx[0] + idx[-1]) / 2 - n / 2))
        world_axis = int(np.argmax(np.abs(ref.affine[:3, axis])))
        ends = [ref.affine[world_axis, axis] * i + ref.affine[world_axis, 3] for i in (start, start + n - 1)]
        blocks[world_axis] = (min(ends) - spacing[axis] / 2, max(ends) + spacing[axis] / 2)

    images: dict[str, Any] = {}
    for vol in volumes:
        if vol.label is None:
            continue
        axes = {}
        for axis in range(3):
            world_axis = int(np.argmax(np.abs(vol.affine[:3, axis])))
            lo, hi = blocks[world_axis]
            centre = vol.affine[world_axis, axis] * np.arange(vol.data.shape[axis]) + vol.affine[world_axis, 3]
            held = (centre >= lo) & (centre <= hi)
            guard = ~held & (centre >= lo - GUARD_MM) & (centre <= hi + GUARD_MM)
            axes[str(axis)] = {
                "world_axis": "xyz"[world_axis],
                "held_out_mm": [round(lo, 3), round(hi, 3)],
                "held_out": np.flatnonzero(held).tolist(),
                "guard": np.flatnonzero(guard).tolist(),
            }
        images[vol.id] = {"axes": axes}
    return {
        "version": BUILD_VERSION,
        "rule": (
            f"Per voxel axis: slices whose centre lies in the central {HOLDOUT_FRACTION:.0%} of mni152_t1's labelled "
            f"extent along that world axis are held out (evaluation only); slices within {GUARD_MM} mm of that block "
            "are 'guard' (neither trained nor evaluated on). Everything else may be trained on. "
            "Coordinates are RAS+ world mm; the derived volume uses the same world intervals."
        ),
        "images": images,
    }


# ---------------------------------------------------------------- datastore


def _nifti(data: np.ndarray, affine: np.ndarray, descrip: str, code: int) -> nib.Nifti1Image:
    """A NIfTI with a fresh, deterministic header (no software/time stamps)."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = descrip[:79].encode()
    return img


def expected_ids() -> list[str]:
    """Ids this environment can build (dipy_aniso_vox only when dipy is installed)."""
    ids = ["mni152_t1", "mni152_t1_lps_aniso", "ct_small", "mr_small", "nibabel_anatomical", "nibabel_epi"]
    try:
        import dipy  # noqa: F401

        ids.append("dipy_aniso_vox")
    except ImportError:
        pass
    return ids


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _objects(store: dict | None) -> dict[str, Any]:
    objects = (store or {}).get("objects")
    return objects if isinstance(objects, dict) else {}


def _image_info(obj: Any) -> dict[str, Any]:
    """An object's image info; {} for an entry without one (an image added by hand or by another tool)."""
    image = obj.get("image") if isinstance(obj, dict) else None
    info = image.get("info") if isinstance(image, dict) else None
    return info if isinstance(info, dict) else {}


def _labels(obj: Any) -> dict[str, Any]:
    labels = obj.get("labels") if isinstance(obj, dict) else None
    return labels if isinstance(labels, dict) else {}


def is_sample_image(obj: Any) -> bool:
    """True for an image this builder wrote (its info carries `sample_data_version`); anything else in the
    datastore (uploads, DICOMweb-cached series, files dropped in by hand) belongs to its users."""
    return "sample_data_version" in _image_info(obj)


def is_sample_label(obj: Any, tag: str) -> bool:
    """True for the final label this builder saved on one of its images; a label a user saved (any tag, or a
    final label that replaced ours) is theirs."""
    label = _labels(obj).get(tag)
    if tag != FINAL or not is_sample_image(obj) or not isinstance(label, dict):
        return False
    info = label.get("info") if isinstance(label.get("info"), dict) else {}
    return (set(info) <= {"label_names", "structures", "ts", "name"} and info.get("label_names") == LABEL_NAMES
            and info.get("structures") == STRUCTURES)


def is_complete(out_dir: Path) -> bool:
    """True if out_dir holds a datastore of this BUILD_VERSION with every expected file present.

    Only the builder's own images and labels are checked: an expected id that a user's image occupies counts as
    present (it is never overwritten), and images or labels users added are ignored.
    """
    store = _read_json(out_dir / "datastore_v2.json")
    splits = _read_json(out_dir / "splits.json")
    if store is None or splits is None:
        return False
    objects = _objects(store)
    for image_id in expected_ids():
        obj = objects.get(image_id)
        if not obj:
            return False
        if not is_sample_image(obj):
            continue  # a user's image under one of our ids: theirs, left alone
        if _image_info(obj).get("sample_data_version") != BUILD_VERSION:
            return False
        if not (out_dir / f"{image_id}{obj['image'].get('ext', '')}").is_file():
            return False
        if is_sample_label(obj, FINAL):
            label = obj["labels"][FINAL]
            if not (out_dir / "labels" / FINAL / f"{image_id}{label.get('ext', '')}").is_file():
                return False
    return splits.get("version") == BUILD_VERSION


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _merge_into(staging: Path, out_dir: Path, existing: dict) -> None:
    """Move the freshly built sample files from staging into an existing datastore, leaving everything else
    in it as it is (users' images, their labels of any tag, a final label a user saved over ours, files the
    index does not know). The index is rewritten last, so an interrupted merge is redone by the next run."""
    built = _objects(_read_json(staging / "datastore_v2.json"))
    objects = _objects(existing)
    for image_id, new in built.items():
        old = objects.get(image_id)
        os.replace(staging / f"{image_id}{new['image']['ext']}", out_dir / f"{image_id}{new['image']['ext']}")
        labels = {tag: lab for tag, lab in _labels(old).items() if not is_sample_label(old, tag)}
        ours = _labels(new).get(FINAL)
        if ours and FINAL not in labels:
            (out_dir / "labels" / FINAL).mkdir(parents=True, exist_ok=True)
            name = f"{image_id}{ours['ext']}"
            os.replace(staging / "labels" / FINAL / name, out_dir / "labels" / FINAL / name)
            labels[FINAL] = ours
        objects[image_id] = {**new, "labels": labels}
    os.replace(staging / "splits.json", out_dir / "splits.json")
    merged = {**existing, "objects": objects}
    _write_atomic(out_dir / "datastore_v2.json", json.dumps(merged, indent=2, default=str))


def build(out_dir: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Build the datastore into out_dir (skipped when already complete unless force); returns out_dir.

    Rebuilding an existing datastore replaces only the builder's own images and labels: anything users
    added (uploads, labels they saved, DICOMweb-cached series, entries without metadata) is kept as it is.
    """
    out_dir = Path(out_dir).resolve()
    if not force and is_complete(out_dir):
        return out_dir
    # Imported late: monailabel pulls in torch, which is slow and not needed to skip a complete build.
    from monailabel.datastore.local import LocalDatastore
    index = out_dir / "datastore_v2.json"
    if out_dir.exists() and any(out_dir.iterdir()) and not index.exists():
        raise FileExistsError(f"{out_dir} is not empty and is not a datastore; refusing to overwrite it")
    existing = _read_json(index) if index.exists() else None
    if index.exists() and existing is None:
        raise FileExistsError(f"{index} is not a readable datastore index; refusing to overwrite it")
    theirs = {k for k, obj in _objects(existing).items() if not is_sample_image(obj)}

    everything = collect()
    volumes = [vol for vol in everything if vol.id not in theirs]  # never overwrite a user's image
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and move in at the end, so an interrupted build never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the datastore is an ordinary shared folder
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = LocalDatastore(str(staging), extensions=("*.nii.gz", "*.nii"), auto_reload=False)
            store.set_name("medplib-sample-data")
            store.set_description("Real images from installed wheels (see sample_data/README.md)")
            for vol in volumes:
                info = {**vol.info, **_geometry(vol.data, vol.affine), "labelled": vol.label is not None,
                        "sample_data_version": BUILD_VERSION}
                src = Path(tmp) / f"{vol.id}.nii.gz"
                nib.save(_nifti(vol.data, vol.affine, f"medplib sample_data {vol.id}", vol.sform_code), src)
                store.add_image(vol.id, str(src), dict(info))
                if vol.label is not None:
                    lab = Path(tmp) / f"{vol.id}_label.nii.gz"
                    nib.save(_nifti(vol.label, vol.affine, f"medplib sample_data {vol.id} label", vol.sform_code), lab)
                    store.save_label(vol.id, str(lab), FINAL, {"label_names": LABEL_NAMES, "structures": STRUCTURES})
                # add_image stamps its own keys (ts, name); re-apply ours through the documented API.
                store.update_image_info(vol.id, info)
        splits = holdout_split(everything)
        splits["images"] = {k: v for k, v in splits["images"].items() if k not in theirs}
        (staging / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
        (staging / ".lock").unlink(missing_ok=True)  # filelock leaves it behind; the server recreates it
        if existing is not None:
            _merge_into(staging, out_dir, existing)
        else:
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked above)
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _dims(values: Any) -> str:
    try:
        return "x".join(f"{float(v):g}" for v in values) or "?"
    except (TypeError, ValueError):
        return "?"


def _header_geometry(path: Path) -> tuple[Any, Any]:
    """(shape, spacing) from a NIfTI header, for images whose info has none; (None, None) if unreadable."""
    try:
        header = nib.load(str(path)).header
        return header.get_data_shape(), header.get_zooms()[: len(header.get_data_shape())]
    except Exception:
        return None, None


def summary(out_dir: Path) -> str:
    """One line per image: id, modality, shape, spacing, labelled (a final label). Images the builder did not
    write may have no metadata at all: their geometry is read from the file's header, anything unknown says so."""
    out_dir = Path(out_dir)
    objects = _objects(_read_json(out_dir / "datastore_v2.json"))
    lines = [f"{'id':22} {'mod':7} {'shape':16} {'spacing':22} labelled"]
    for image_id, obj in objects.items():
        info = _image_info(obj)
        modality = str(info.get("modality") or info.get("Modality") or "unknown")
        shape, spacing = info.get("shape"), info.get("spacing")
        if shape is None or spacing is None:
            image = obj.get("image") if isinstance(obj, dict) else None
            ext = image.get("ext") if isinstance(image, dict) else None
            shape, spacing = _header_geometry(out_dir / f"{image_id}{ext or ''}")
        lines.append(f"{image_id:22} {modality:7} {_dims(shape):16} {_dims(spacing):22} "
                     f"{'yes' if _labels(obj).get(FINAL) else 'no'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"datastore folder (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the datastore is complete")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    skipped = not args.force and is_complete(args.out.resolve())
    out = build(args.out, force=args.force)
    print(f"{'Datastore already complete, skipped' if skipped else 'Built datastore'}: {out}")
    print(summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
