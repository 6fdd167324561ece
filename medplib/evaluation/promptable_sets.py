"""Real volumes for the promptable evaluation, built at run time from installed packages (never committed).

Sets (each skipped with a message naming the package when it is missing):
- `sample`: the sample datastore's labelled MNI152 T1 (`make sample-data`), structures from its image info.
- `invesalius`: Debian `invesalius-examples`, `Cranium.inv3` (GPL-2): a real head CT, int16 108x256x256 at
  0.957 x 0.957 x 1.5 mm with InVesalius' threshold masks for bone (>= 226 HU) and head (>= -142 HU). The tar.gz is
  unpacked into a git-ignored cache folder at run time.
- `itk`: Debian `insighttoolkit5-examples`, `KmeansTest_T1UCharRaw.nii.gz`: a real T1 (128x128x62, 2x2x3 mm) with
  ITK's skull strip and 6-class k-means label beside it.
- `pydicom-data`: single MR / CT slices of the `pydicom-data` package, if installed (no labels: listed, not scored).

Every volume is returned slice-first: array [Z, H, W], structures {name: bool [Z, H, W]}.
"""

from __future__ import annotations

import importlib.util
import json
import plistlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from medplib.imaging.preprocess import Window

INVESALIUS = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
ITK_T1 = "KmeansTest_T1UCharRaw.nii.gz"
ITK_KMEANS = "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"
ITK_STRIP = "KmeansTest_T1RawSkullStrip.nii.gz"
SETS = ("sample", "invesalius", "itk", "pydicom-data")


@dataclass
class EvalVolume:
    """One real volume, slice-first, with the structures to prompt for."""

    set: str
    name: str
    array: np.ndarray  # [Z, H, W]
    window: Window | None
    structures: dict[str, np.ndarray]  # name -> bool [Z, H, W]
    source: str
    licence: str
    three_d: tuple[str, ...] = ()  # structures used for the one-box 3D evaluation
    extra: dict = field(default_factory=dict)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a 2D or 3D mask (face connectivity); empty stays empty."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, bool)
    sizes = np.bincount(lab.ravel())[1:]
    return lab == int(np.argmax(sizes)) + 1


def _nifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def sample_volumes(datastore: str | Path, log: Callable[[str], None] = print) -> list[EvalVolume]:
    """The sample datastore's labelled MNI152 T1: axial slices (voxel axis 2), structures from its image info."""
    root = Path(datastore)
    index = root / "datastore_v2.json"
    if not index.is_file():
        log(f"skip set 'sample': no datastore at {root} (run `make sample-data`)")
        return []
    objects = json.loads(index.read_text())["objects"]
    out = []
    for image_id in ("mni152_t1",):
        obj = objects.get(image_id)
        label = root / "labels" / "final" / f"{image_id}.nii.gz"
        if obj is None or not label.is_file():
            log(f"skip {image_id}: not in the datastore or unlabelled")
            continue
        info = obj["image"]["info"]
        image = np.moveaxis(_nifti(root / f"{image_id}.nii.gz").astype(np.float32), 2, 0)
        lab = np.moveaxis(_nifti(label), 2, 0)
        structures = {name: np.isin(lab, values) for name, values in info["structures"].items()}
        out.append(EvalVolume("sample", image_id, image, None, structures, info.get("provenance", image_id),
                              "MNI ICBM152 notice (sample_data/README.md)", three_d=("brain",)))
    return out


def invesalius_volume(cache: str | Path, log: Callable[[str], None] = print) -> list[EvalVolume]:
    """Cranium.inv3 unpacked into `cache` (once): the CT and the largest 3D component of each threshold mask."""
    if not INVESALIUS.is_file():
        log(f"skip set 'invesalius': {INVESALIUS} missing (apt-get install -y invesalius-examples)")
        return []
    folder = Path(cache) / "invesalius_cranium"
    if not (folder / "matrix.dat").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(INVESALIUS, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name.endswith((".dat", ".plist")) and not name.startswith("surface"):
                    (folder / name).write_bytes(tar.extractfile(member).read())
    main = plistlib.loads((folder / "main.plist").read_bytes())
    shape = tuple(main["matrix"]["shape"])
    ct = np.fromfile(folder / main["matrix"]["filename"], dtype=main["matrix"]["dtype"]).reshape(shape)
    structures = {}
    for key, plist_name in sorted(main["masks"].items()):
        meta = plistlib.loads((folder / plist_name).read_bytes())
        m_shape = tuple(meta["mask_shape"])  # InVesalius keeps one extra leading plane / row / column
        raw = np.fromfile(folder / meta["mask_file"], np.uint8).reshape(m_shape)[1:, 1:, 1:] > 1
        lo = meta["threshold_range"][0]
        name = "bone" if lo >= 200 else "head"
        structures[name] = largest_component(raw)
    window = Window(float(main["window_level"]), float(main["window_width"]))
    return [EvalVolume("invesalius", "cranium_ct", ct.astype(np.float32), window, structures,
                       f"invesalius-examples {INVESALIUS} ({main.get('name', '')}, spacing {main['spacing']})",
                       "GPL-2 (Debian invesalius-examples)", three_d=("head",),
                       extra={"spacing": [float(v) for v in main["spacing"]]})]  # x (column), y (row), z (slice)


def itk_volume(log: Callable[[str], None] = print) -> list[EvalVolume]:
    """ITK's T1 with its skull strip (brain) and the k-means label's classes 1..6 (largest 3D component each)."""
    if not (ITK_DATA / ITK_T1).is_file():
        log(f"skip set 'itk': {ITK_DATA / ITK_T1} missing (apt-get install -y insighttoolkit5-examples)")
        return []
    t1 = np.moveaxis(_nifti(ITK_DATA / ITK_T1).astype(np.float32), 2, 0)
    structures = {"brain": largest_component(np.moveaxis(_nifti(ITK_DATA / ITK_STRIP), 2, 0) > 0)}
    kmeans = np.moveaxis(_nifti(ITK_DATA / ITK_KMEANS), 2, 0)
    for value in range(1, 7):
        comp = largest_component(kmeans == value)
        if 2000 <= comp.sum() <= 0.3 * comp.size:  # not scattered specks, not the background class
            structures[f"kmeans class {value}"] = comp
    return [EvalVolume("itk", "kmeans_t1", t1, None, structures,
                       f"insighttoolkit5-examples {ITK_DATA / ITK_T1} (+ {ITK_STRIP}, {ITK_KMEANS})",
                       "Apache-2.0 (ITK)", three_d=("brain",))]


def pydicom_data_slices(log: Callable[[str], None] = print) -> list[EvalVolume]:
    """pydicom-data's slices have no labels: the set is only reported (present or missing)."""
    if importlib.util.find_spec("pydicom_data") is None:
        log("skip set 'pydicom-data': package pydicom-data is not installed (it has no Debian package here)")
    else:
        log("set 'pydicom-data': installed, but its slices have no labels to score against; not scored")
    return []


def build_sets(names: tuple[str, ...] | list[str] = SETS, datastore: str | Path = "sample_data/datastore",
               cache: str | Path = "eval_out/promptable_data", log: Callable[[str], None] = print) -> list[EvalVolume]:
    """The named sets' volumes; a missing package skips its set with a message."""
    unknown = set(names) - set(SETS)
    if unknown:
        raise ValueError(f"unknown sets {sorted(unknown)}; choose from {SETS}")
    out: list[EvalVolume] = []
    for name in names:
        if name == "sample":
            out += sample_volumes(datastore, log)
        elif name == "invesalius":
            out += invesalius_volume(cache, log)
        elif name == "itk":
            out += itk_volume(log)
        else:
            out += pydicom_data_slices(log)
    return out


def synthetic_ellipsoid(n_slices: int = 40, size: int = 96, radii: tuple[float, float, float] = (8.0, 22.0, 16.0),
                        seed: int = 0) -> EvalVolume:
    """A bright ellipsoid in Gaussian noise: the object ends inside the stack, so a propagation must stop."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n_slices, :size, :size].astype(np.float32)
    cz, cy, cx = n_slices / 2, size / 2, size / 2
    truth = ((z - cz) / radii[0]) ** 2 + ((y - cy) / radii[1]) ** 2 + ((x - cx) / radii[2]) ** 2 <= 1.0
    vol = rng.normal(0.0, 0.15, truth.shape).astype(np.float32) + truth.astype(np.float32)
    return EvalVolume("synthetic", "ellipsoid", vol, Window(0.5, 2.0), {"ellipsoid": truth},
                      "synthetic (seeded)", "-", three_d=("ellipsoid",))
