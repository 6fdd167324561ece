"""Volume files written by the worker thread, and the geometry check of a returned label (numpy + stdlib only).

Slicer's own writers need MRML, so they run on the main thread (and gzip a CT there for seconds). Instead the main
thread only copies the voxels and the IJK->RAS matrix, and :func:`write_nrrd` writes them in the worker, as an
uncompressed NRRD by default (what the server reads with SimpleITK; the bytes of a KJI array are NRRD's order).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

__all__ = ["NRRD_TYPES", "write_nrrd", "LabelGeometryError", "check_label_geometry", "region_volume"]

NRRD_TYPES = {"uint8": "uint8", "int8": "int8", "uint16": "uint16", "int16": "int16", "uint32": "uint32",
              "int32": "int32", "uint64": "uint64", "int64": "int64", "float32": "float", "float64": "double"}
_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (NRRD's usual space; ITK's)


def _vec(v) -> str:
    return "(" + ",".join(repr(float(x)) for x in v) + ")"


def write_nrrd(path: str, array_kji: np.ndarray, ijk_to_ras, compress: bool = False) -> str:
    """Write a 3D KJI array (Slicer's ``arrayFromVolume`` order) with its IJK->RAS as a NRRD file.

    ``compress``: gzip level 1 (for mostly-empty masks); the default is raw, which costs no CPU. Returns ``path``.
    """
    arr = np.asarray(array_kji)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D KJI array, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    kind = NRRD_TYPES.get(arr.dtype.name)
    if kind is None:
        raise ValueError(f"cannot write voxel type {arr.dtype} as NRRD")
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    lps = _LPS @ m[:3, :]
    k, j, i = arr.shape
    header = ["NRRD0004", f"type: {kind}", "dimension: 3", "space: left-posterior-superior",
              f"sizes: {i} {j} {k}", "space directions: " + " ".join(_vec(lps[:, a]) for a in range(3)),
              "kinds: domain domain domain", "endian: little", f"encoding: {'gzip' if compress else 'raw'}",
              f"space origin: {_vec(lps[:, 3])}"]
    data = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n\n").encode("ascii"))
        flat = data.reshape(-1).view(np.uint8)
        if not compress:
            f.write(memoryview(flat))
        else:
            z = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip stream, as NRRD's "gzip" expects
            step = 1 << 24
            for start in range(0, flat.size, step):
                f.write(z.compress(memoryview(flat[start:start + step])))
            f.write(z.flush())
    return path


def region_volume(plane: np.ndarray, axis: int, index: int, dims_ijk: Sequence[int]) -> np.ndarray:
    """A uint8 KJI volume of IJK shape ``dims_ijk`` that is 1 on ``plane`` (KJI plane order) of slice ``index``
    along IJK ``axis`` and 0 elsewhere: the region mask the server reads as an uploaded ``label``."""
    i, j, k = (int(d) for d in dims_ijk)
    vol = np.zeros((k, j, i), np.uint8)
    sl: list = [slice(None)] * 3
    sl[2 - int(axis)] = int(index)
    target = vol[tuple(sl)]
    if target.shape != np.shape(plane):
        raise ValueError(f"region plane shape {np.shape(plane)} does not match the slice shape {target.shape}")
    vol[tuple(sl)] = np.asarray(plane, dtype=bool)
    return vol


class LabelGeometryError(ValueError):
    """The returned label volume does not lie on the volume's voxel grid (other shape, axes, directions, spacing
    or origin): writing it by array index would put the mask into the wrong voxels."""

    def __init__(self, message: str):
        super().__init__(message)
        self.user_message = ("The server's mask does not match the selected volume's geometry (" + message + "). "
                             "Is this volume the image the server segmented? Upload it again, or fetch it with "
                             "'Next sample'.")


def check_label_geometry(label_ijk_to_ras, label_shape_kji: Sequence[int], volume_ijk_to_ras,
                         volume_shape_kji: Sequence[int], tol_voxel: float = 0.01,
                         tol_axis: float = 1e-3) -> None:
    """Raise :class:`LabelGeometryError` unless the label has the volume's shape and the same IJK->RAS (its voxel
    grid maps onto the volume's within ``tol_voxel`` voxels and ``tol_axis`` in direction/scale, which absorbs the
    float32 rounding of NIfTI headers)."""
    if tuple(int(s) for s in label_shape_kji) != tuple(int(s) for s in volume_shape_kji):
        raise LabelGeometryError(f"shape {tuple(label_shape_kji)} (KJI) instead of {tuple(volume_shape_kji)}")
    lab = np.asarray(label_ijk_to_ras, dtype=np.float64)
    vol = np.asarray(volume_ijk_to_ras, dtype=np.float64)
    try:
        rel = np.linalg.inv(vol) @ lab  # label IJK -> volume IJK: the identity when the grids agree
    except np.linalg.LinAlgError:
        raise LabelGeometryError("the volume's IJK to RAS matrix is singular") from None
    axes_off = float(np.max(np.abs(rel[:3, :3] - np.eye(3))))
    if axes_off > tol_axis:
        raise LabelGeometryError(f"axes, directions or spacing differ (IJK mapping {np.round(rel[:3, :3], 3).tolist()})")
    shift = float(np.max(np.abs(rel[:3, 3])))
    if shift > tol_voxel:
        raise LabelGeometryError(f"its origin is {shift:.2f} voxels away from the volume's")

