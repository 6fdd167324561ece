"""A LocalDatastore that refuses bad files and unsafe names, and saves labels atomically.

Nothing a client uploads reaches the datastore before it has been read as an image (and, for labels, found to
have the image's geometry); a label is written to a temp file in the same folder, fsynced and renamed, so a
process killed mid-save leaves the previous label intact.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from typing import Any, Dict

import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException

from medplib.data.volumes import read_volume

logger = logging.getLogger(__name__)

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(field: str, value: str | None) -> None:
    """Ids, tags and names become file names: no separators, no '..', no control characters."""
    if value is None or value == "":
        return
    if not SAFE_ID.match(value) or ".." in value:
        raise HTTPException(status_code=422, detail=f"{field}: {value[:60]!r} is not a valid identifier "
                                                    "(letters, digits, '.', '_', '-'; no path separators)")


class SafeLocalDatastore(LocalDatastore):
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        check_id("image", image_id)
        try:
            read_volume(image_filename)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=f"file: {exc}") from None
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_id("image", image_id)
        check_id("tag", label_tag)
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        self._check_label(image_id, label_filename)
        _, label_ext = self._to_id(os.path.basename(label_filename))
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, label_ext)
        dest = os.path.join(label_path, name)
        with FileLock(self._lock_file):
            os.makedirs(label_path, exist_ok=True)
            _atomic_copy(label_filename, dest)
            label_info = dict(label_info or {})
            label_info["ts"] = int(time.time())
            label_info["name"] = name
            obj.labels[label_tag] = DataModel(info=label_info, ext=label_ext)
            self._update_datastore_file(lock=False)
        return image_id

    def _check_label(self, image_id: str, label_filename: str) -> None:
        check_label_fits(self.get_image_uri(image_id), label_filename)


def check_label_fits(image_path: str, label_path: str, max_value: int = 65535):
    """(label, image) volumes; HTTP 422 naming `label` when it is unreadable or does not fit the image's grid."""
    try:
        label = read_volume(label_path)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=f"label: {exc}") from None
    image = read_volume(image_path)
    if label.shape != image.shape:
        raise HTTPException(status_code=422, detail=f"label: shape {list(label.shape)} does not match the "
                                                    f"image's {list(image.shape)}")
    if not (np.allclose(label.spacing, image.spacing, rtol=1e-3, atol=1e-4)
            and np.allclose(label.origin, image.origin, atol=1e-2)
            and np.allclose(label.direction, image.direction, atol=1e-3)):
        raise HTTPException(status_code=422, detail="label: its spacing, origin or direction does not match "
                                                    "the image's")
    arr = label.array
    if not np.array_equal(arr, np.round(arr)) or arr.min() < 0 or arr.max() > max_value:
        raise HTTPException(status_code=422, detail=f"label: values must be integers in 0..{max_value}")
    return label, image


def _atomic_copy(src: str, dest: str) -> None:
    folder = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".saving-", suffix=".tmp")  # never matches *.nii.gz
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
