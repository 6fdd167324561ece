"""Work users leave in a local datastore besides the sample images (not a test module).

Two kinds of entries that the MONAI Label client cannot create, written into `datastore_v2.json` while no server
runs on the folder:

- an image with no metadata at all: `{"image": {"ext": ".nii.gz"}}` (no `info`, no `labels`), which MONAI Label's
  `LocalDatastore` accepts as is;
- a series cached from DICOMweb, shaped exactly as `MedPLIBDICOMwebDatastore` records one: its id is the
  SeriesInstanceUID, the NIfTI comes from the same DICOM -> NIfTI reader (`_read_series`), and `info` is the QIDO
  attributes `_flat` extracts plus what `_image_info` adds (`source: dicomweb`, `modality`) and `_register`'s `ts`
  and `name`. No `shape`, `spacing` or `body_part`. (A real PACS is not needed for that: the QIDO attributes are
  read from the DICOM header with the datastore's own `_flat`.)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


def _edit_index(store: Path, image_id: str, obj: dict) -> None:
    index = Path(store) / "datastore_v2.json"
    data = json.loads(index.read_text())
    data["objects"][image_id] = obj
    index.write_text(json.dumps(data, indent=2))


def add_bare_image(store: Path, image_id: str, src: Path) -> str:
    """Copy a NIfTI into the datastore under `image_id` with no metadata at all in the index."""
    shutil.copyfile(src, Path(store) / f"{image_id}.nii.gz")
    _edit_index(store, image_id, {"image": {"ext": ".nii.gz"}})
    return image_id


def add_dicomweb_series(store: Path, work_dir: Path) -> str:
    """pydicom's CT_small.dcm as a DICOMweb-cached series (see the module doc); returns its id."""
    import pydicom
    import SimpleITK as sitk
    from pydicom.data import get_testdata_file

    from medplib_label.dicomweb import MedPLIBDICOMwebDatastore, _flat

    src = get_testdata_file("CT_small.dcm")
    header = pydicom.dcmread(src, stop_before_pixels=True)
    meta = _flat(header.to_json_dict())
    uid = meta["SeriesInstanceUID"]
    dicom_dir = Path(work_dir) / uid
    dicom_dir.mkdir(parents=True)
    shutil.copyfile(src, dicom_dir / "instance.dcm")
    sitk.WriteImage(MedPLIBDICOMwebDatastore._read_series(str(dicom_dir), uid), str(Path(store) / f"{uid}.nii.gz"))
    info = dict(MedPLIBDICOMwebDatastore._image_info(None, meta), ts=int(time.time()), name=f"{uid}.nii.gz")
    _edit_index(store, uid, {"image": {"ext": ".nii.gz", "info": info}, "labels": {}})
    return uid


def snapshot(store: Path, keep: set[str], index_ids: set[str]) -> tuple[dict[str, bytes], dict[str, dict]]:
    """(bytes of every file whose path relative to `store` is in `keep`, index entries of `index_ids`)."""
    store = Path(store)
    files = {rel: (store / rel).read_bytes() for rel in sorted(keep)}
    objects = json.loads((store / "datastore_v2.json").read_text())["objects"]
    return files, {k: objects.get(k) for k in sorted(index_ids)}
