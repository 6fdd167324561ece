"""Worker functions the Slicer widget runs in a :mod:`~MedPLIBLabelLib.jobs` thread: only client calls and file
I/O (never Qt, VTK or MRML). Temporary files are removed whatever happens.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from .codec import file_extension
from .ui_state import safe_image_id

__all__ = ["fetch_sample", "upload_file", "submit_label", "remove_file"]


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
