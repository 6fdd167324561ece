"""Reading datastore images and writing label volumes with the same geometry (SimpleITK, IJK array order)."""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medplib.imaging.preprocess import Window

MAX_VOXELS = 1024 ** 3 // 2  # refuse absurd volumes before allocating them


@dataclass
class Volume:
    """A scalar volume as an IJK-indexed array plus its geometry (LPS direction, as SimpleITK)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    direction: np.ndarray  # 3x3, column a = direction of voxel axis a
    origin: tuple[float, float, float]
    reference: sitk.Image  # geometry carrier for writing labels

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]


def _check_gzip(path: str) -> None:
    """SimpleITK happily reads a truncated .gz (the rest of the volume silently zero): check the stream."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{os.path.basename(path)} is a truncated or corrupt gzip file ({exc})") from None


def read_volume(path: str) -> Volume:
    """Read NIfTI / NRRD / DICOM (a file or a series folder); a 2D image becomes a one-slice volume."""
    if path.endswith(".gz") and os.path.isfile(path):
        _check_gzip(path)
    try:
        if os.path.isdir(path):
            reader = sitk.ImageSeriesReader()
            names = reader.GetGDCMSeriesFileNames(path)
            if not names:
                raise ValueError(f"no DICOM series in {path}")
            reader.SetFileNames(names)
            image = reader.Execute()
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            n = int(np.prod(reader.GetSize()))
            if n > MAX_VOXELS:
                raise ValueError(f"image has {n} voxels, more than the limit {MAX_VOXELS}")
            image = reader.Execute()
    except RuntimeError as exc:  # SimpleITK raises RuntimeError for unreadable/corrupt files
        raise ValueError(f"cannot read image {os.path.basename(path)}: {str(exc).splitlines()[0]}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        # RGB inputs (e.g. a PNG) are reduced to luminance; the model replicates grey to RGB anyway.
        image = sitk.VectorIndexSelectionCast(image, 0) if image.GetNumberOfComponentsPerPixel() > 1 else image
    if image.GetDimension() == 2:
        image = sitk.JoinSeries([image])
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 2D or 3D image, got {image.GetDimension()}D")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # KJI -> IJK (Slicer's and MONAI's order)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return Volume(array=array, spacing=tuple(image.GetSpacing()), direction=direction,
                  origin=tuple(image.GetOrigin()), reference=image)


def write_label(label_ijk: np.ndarray, ref: Volume, extension: str = ".nii.gz") -> str:
    """Write a uint8 label with the reference geometry to a temp file (MONAI Label deletes it after sending)."""
    if label_ijk.shape != ref.shape:
        raise ValueError(f"label shape {label_ijk.shape} != image shape {ref.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(label_ijk.astype(np.uint8).transpose(2, 1, 0)))
    image.CopyInformation(ref.reference)
    fd, path = tempfile.mkstemp(suffix=extension, prefix="medplib_")
    os.close(fd)
    sitk.WriteImage(image, path, useCompression=True)
    return path


def read_label_like(path: str, ref: Volume) -> np.ndarray:
    """Read an uploaded label (e.g. a scribble) that must match the image geometry."""
    vol = read_volume(path)
    if vol.shape != ref.shape:
        raise ValueError(f"label shape {vol.shape} does not match image shape {ref.shape}")
    return vol.array


def auto_window(vol: Volume, modality: str | None) -> Window:
    """A window per image from robust volume percentiles (the same for every slice, so volume masks agree).

    CT keeps a slightly wider tail so bone and air stay distinct; other modalities clip 0.5 % on each side.
    """
    arr = vol.array
    step = max(1, arr.size // 2_000_000)  # a strided sample is plenty for percentiles
    sample = arr.reshape(-1)[::step].astype(np.float32)
    is_ct = (modality or "").upper() == "CT" or (modality is None and sample.min() < -500)
    lo, hi = np.percentile(sample, (0.1, 99.9) if is_ct else (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return Window(center=float((lo + hi) / 2), width=float(hi - lo))
