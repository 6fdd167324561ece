"""Worker functions the Slicer widget runs in a :mod:`~MedPLIBLabelLib.jobs` thread: only client calls and file
I/O (never Qt, VTK or MRML). Temporary files are removed whatever happens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

import numpy as np

from .codec import file_extension
from .ui_state import safe_image_id
from .volume_io import region_volume, write_nrrd

__all__ = ["fetch_sample", "upload_file", "submit_label", "remove_file", "upload_volume_array",
           "submit_label_array", "infer_with_region", "discard_result", "make_temp_dir", "remove_temp_dir"]


def make_temp_dir(base: Optional[str] = None) -> str:
    """The module's own folder for downloads, uploads and result files, under ``base`` (Slicer's
    ``slicer.app.temporaryPath``); removed on exit by :func:`remove_temp_dir`."""
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="MedPLIBLabel-", dir=base or None)


def remove_temp_dir(path: Optional[str]) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def discard_result(result: Any) -> None:
    """Delete the files of a job result nobody will use (a cancelled answer's label, a cancelled download)."""
    label_path = getattr(result, "label_path", None)
    if label_path:
        remove_file(label_path)
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        remove_file(result[1])


def remove_file(path: Optional[str]) -> None:
    """Delete a temporary file; missing files and OS errors are ignored."""
    try:
        if path and os.path.exists(path):
            os.remove(path)
    except OSError:
        pass


def fetch_sample(client, strategy: str, tmpdir: str) -> Optional[tuple[dict, str]]:
    """The next image to label (``client.next_sample``), downloaded into ``tmpdir``: ``(info, path)``, or None when
    the server has no more."""
    info = client.next_sample(strategy)
    if not info:
        return None
    name = safe_image_id(info["id"], fallback="sample")
    path = os.path.join(tmpdir, name + file_extension(info.get("path") or info.get("name") or ""))
    client.download_image(str(info["id"]), path)
    return info, path


def upload_file(client, path: str, image_id: str) -> str:
    """Upload a written volume as ``image_id``; returns the id the server stored it under. Removes ``path``."""
    try:
        return client.upload_image(path, image_id)
    finally:
        remove_file(path)


def submit_label(client, image_id: str, path: str, label_names: Mapping[str, int]) -> Any:
    """Store a written label volume as the image's final label. Removes ``path``."""
    try:
        return client.save_label(image_id, path, label_names)
    finally:
        remove_file(path)


def upload_volume_array(client, array_kji: np.ndarray, ijk_to_ras, image_id: str, tmpdir: str) -> str:
    """Write the voxels (a copy taken on the main thread) as an uncompressed NRRD here, in the worker, and upload
    them as ``image_id``; returns the server's id. The file is removed whatever happens."""
    path = os.path.join(tmpdir, safe_image_id(image_id) + ".nrrd")
    try:
        write_nrrd(path, array_kji, ijk_to_ras)
        return client.upload_image(path, image_id)
    finally:
        remove_file(path)


def submit_label_array(client, image_id: str, label_kji: np.ndarray, ijk_to_ras, label_names: Mapping[str, int],
                       tmpdir: str) -> Any:
    """Write the label (built on the main thread) as a gzip NRRD in the worker and store it as the final label."""
    path = os.path.join(tmpdir, safe_image_id(image_id) + "_label.nrrd")
    write_nrrd(path, label_kji, ijk_to_ras, compress=True)  # labels are mostly zeros: gzip level 1 is cheap
    return submit_label(client, image_id, path, label_names)


def infer_with_region(client, model: str, image_id: str, params: Mapping[str, Any], region=None,
                      ijk_to_ras=None, tmpdir: Optional[str] = None, timeout: Optional[float] = None):
    """``client.infer`` with the filled lasso ``region`` (:class:`~.regions.RegionMask`) uploaded as the ``label``
    volume the server reads as a region prompt; the result file lands in ``tmpdir``."""
    if region is None:
        return client.infer(model, image_id, params, result_dir=tmpdir, timeout=timeout)
    fd, path = tempfile.mkstemp(suffix=".nrrd", prefix="lasso_", dir=tmpdir)
    os.close(fd)
    try:
        write_nrrd(path, region_volume(region.plane, region.axis, region.index, region.dims), ijk_to_ras,
                   compress=True)
        return client.infer(model, image_id, params, label_file=path, result_dir=tmpdir, timeout=timeout)
    finally:
        remove_file(path)
