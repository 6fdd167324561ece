"""Filled lasso regions, and slice-sized in-place writes into a segment's internal labelmap (numpy only).

A lasso is sent as the region it encloses (an uploaded ``label`` volume the server reads as a region prompt), not as
its outline: the server draws scribbles as 3-px lines. Answers of the slice scope change one plane of a segment, so
the Slicer module writes that plane into the segment's internal labelmap in place, and keeps the plane it replaced
(raw labelmap values, other segments of a shared layer included) as the undo patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .geometry import point_on_view, ras_to_ijk, slice_axis_from_normal, slice_index, slice_spacing
from .protocol import LassoPrompt, PromptError

__all__ = ["RegionMask", "plane_axes", "polygon_mask", "lasso_region", "internal_offset", "write_plane_inplace",
           "restore_plane_inplace", "read_plane_inplace"]


@dataclass
class RegionMask:
    """A filled region on one slice: ``plane`` (bool, KJI plane order) of slice ``index`` along IJK ``axis`` of a
    volume of IJK shape ``dims``."""

    axis: int
    index: int
    plane: np.ndarray
    dims: tuple[int, int, int]

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.plane))


def plane_axes(axis: int) -> tuple[int, int]:
    """(IJK axis of the plane's rows, of its columns) for a plane taken from a KJI array across IJK ``axis``."""
    rest = [a for a in (2, 1, 0) if a != int(axis)]
    return rest[0], rest[1]


def polygon_mask(shape: Sequence[int], rows: Sequence[float], cols: Sequence[float]) -> np.ndarray:
    """Voxels of a ``shape`` plane whose centre lies inside the closed polygon (even-odd rule) or that its outline
    crosses, so a thin lasso still covers the voxels it was drawn through. Coordinates are voxel indices."""
    h, w = int(shape[0]), int(shape[1])
    r = np.asarray(rows, dtype=np.float64)
    c = np.asarray(cols, dtype=np.float64)
    out = np.zeros((h, w), bool)
    if len(r) == 0:
        return out
    r0, r1 = max(0, int(np.floor(r.min()))), min(h - 1, int(np.ceil(r.max())))
    c0, c1 = max(0, int(np.floor(c.min()))), min(w - 1, int(np.ceil(c.max())))
    if r0 <= r1 and c0 <= c1 and len(r) >= 3:
        gr, gc = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
        inside = np.zeros(gr.shape, bool)
        for a in range(len(r)):  # one vectorised crossing test per edge (bounded by the polygon's box)
            ra, ca, rb, cb = r[a], c[a], r[a - 1], c[a - 1]
            if ra == rb:
                continue
            crosses = (ra > gr) != (rb > gr)
            at = ca + (gr - ra) * (cb - ca) / (rb - ra)
            inside ^= crosses & (gc < at)
        out[r0:r1 + 1, c0:c1 + 1] = inside
    for a in range(len(r)):  # the outline itself, sampled at <= 0.25 voxel steps
        ra, ca, rb, cb = r[a - 1], c[a - 1], r[a], c[a]
        n = max(2, int(np.ceil(4 * max(abs(rb - ra), abs(cb - ca)))) + 1)
        rr = np.floor(np.linspace(ra, rb, n) + 0.5).astype(int)
        cc = np.floor(np.linspace(ca, cb, n) + 0.5).astype(int)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        out[rr[ok], cc[ok]] = True
    return out


def lasso_region(lasso: LassoPrompt, ijk_to_ras, slice_to_ras, parent=None,
                 dims: Optional[Sequence[int]] = None) -> RegionMask:
    """The filled region of a lasso drawn on the view ``slice_to_ras`` (raises :class:`PromptError` when it is
    not on the current slice, has fewer than 3 points, or encloses no voxel of the image)."""
    if dims is None:
        raise ValueError("lasso_region needs the volume's IJK dims")
    dims3 = tuple(int(d) for d in dims)
    axis, _ = slice_axis_from_normal(ijk_to_ras, slice_to_ras, parent)
    index = slice_index(ijk_to_ras, slice_to_ras, parent, dims=dims3)
    pts = [list(p) for p in lasso.ras_points]
    if len(pts) < 3:
        raise PromptError("A lasso needs at least 3 points around the region.")
    spacing = slice_spacing(ijk_to_ras, slice_to_ras, parent)
    if not all(point_on_view(p, slice_to_ras, spacing) for p in pts):
        raise PromptError(f"The lasso is not on the current slice {index}; draw it on this slice.")
    ijk = np.atleast_2d(ras_to_ijk(pts, ijk_to_ras, parent))
    row_axis, col_axis = plane_axes(axis)
    shape = (dims3[row_axis], dims3[col_axis])
    plane = polygon_mask(shape, ijk[:, row_axis], ijk[:, col_axis])
    if not plane.any():
        raise PromptError("The lasso encloses no voxel of the image.")
    return RegionMask(axis=int(axis), index=int(index), plane=plane, dims=dims3)  # type: ignore[arg-type]


def internal_offset(image_to_world, extent: Sequence[int], volume_ijk_to_ras, dims_ijk: Sequence[int],
                    tol: float = 1e-4) -> Optional[tuple[int, int, int]]:
    """Where the volume's voxel (0, 0, 0) sits in a segment's internal labelmap array, when that labelmap has the
    volume's exact voxel grid and covers the whole volume; else None (then the whole segment must be exported and
    re-imported). ``extent``: the labelmap's ``GetExtent()`` (i0, i1, j0, j1, k0, k1)."""
    a = np.asarray(image_to_world, dtype=np.float64)
    b = np.asarray(volume_ijk_to_ras, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(b[:3, :3]))))
    if a.shape != (4, 4) or not np.allclose(a, b, atol=tol * scale):
        return None
    lo = [int(extent[2 * n]) for n in range(3)]
    hi = [int(extent[2 * n + 1]) for n in range(3)]
    if any(lo[n] > 0 or hi[n] < int(dims_ijk[n]) - 1 for n in range(3)):
        return None
    return -lo[0], -lo[1], -lo[2]


def _plane_slices(axis: int, index: int, offset: Sequence[int], dims_ijk: Sequence[int]) -> tuple:
    """numpy index of the volume's plane ``index`` inside the internal labelmap's KJI array."""
    sl = []
    for ijk_axis in (2, 1, 0):  # KJI order
        o, n = int(offset[ijk_axis]), int(dims_ijk[ijk_axis])
        sl.append(o + int(index) if ijk_axis == int(axis) else slice(o, o + n))
    return tuple(sl)


def write_plane_inplace(internal_kji: np.ndarray, mask: np.ndarray, label_value: int, axis: int, index: int,
                        offset: Sequence[int], dims_ijk: Sequence[int]) -> np.ndarray:
    """Make plane ``index`` of the segment ``mask`` in its internal labelmap (voxels in the mask get
    ``label_value``; the segment's other voxels of that plane become 0; other segments' values outside the mask
    are kept). Returns the plane's previous raw values: the undo patch for :func:`restore_plane_inplace`."""
    sl = _plane_slices(axis, index, offset, dims_ijk)
    target = internal_kji[sl]
    m = np.asarray(mask, dtype=bool)
    if target.shape != m.shape:
        raise ValueError(f"mask shape {m.shape} does not match the slice shape {target.shape}")
    previous = target.copy()
    target[(target == label_value) & ~m] = 0
    target[m] = label_value
    return previous


def restore_plane_inplace(internal_kji: np.ndarray, previous: np.ndarray, axis: int, index: int,
                          offset: Sequence[int], dims_ijk: Sequence[int]) -> None:
    """Put back a plane saved by :func:`write_plane_inplace`."""
    sl = _plane_slices(axis, index, offset, dims_ijk)
    internal_kji[sl] = np.asarray(previous).astype(internal_kji.dtype, copy=False)


def read_plane_inplace(internal_kji: np.ndarray, label_value: int, axis: int, index: int, offset: Sequence[int],
                       dims_ijk: Sequence[int]) -> np.ndarray:
    """The segment's plane ``index`` (bool: voxels holding ``label_value``) in its internal labelmap."""
    return np.asarray(internal_kji[_plane_slices(axis, index, offset, dims_ijk)]) == int(label_value)
