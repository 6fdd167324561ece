"""Pure RAS <-> IJK geometry for Slicer slice views (numpy only; no slicer/vtk).

Conventions (all matrices are 4x4 numpy arrays supplied by the Slicer adapter):

* ``ijk_to_ras``: the volume's ``GetIJKToRASMatrix`` (column a = RAS direction * spacing of voxel axis a, column 3 =
  origin). It ignores parent transforms.
* ``parent``: optional linear parent transform of the volume (``GetMatrixTransformToWorld``), so that
  ``world = parent @ ijk_to_ras``. Markups world positions (``GetNthControlPointPositionWorld``) are in world space.
* ``slice_to_ras``: a slice node's ``GetSliceToRAS`` (column 0 screen-right, 1 screen-up, 2 normal, 3 plane origin),
  in world coordinates.
* IJK indices are 0-based; Slicer's numpy arrays are KJI, so IJK axis ``a`` is numpy axis ``2 - a``.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

__all__ = ["ObliqueSliceError", "SliceOutsideVolumeError", "world_matrix", "ijk_to_ras", "ras_to_ijk",
           "slice_axis_from_normal", "slice_index", "slice_spacing", "point_on_view", "points_to_ijk",
           "roi_to_ijk", "scribble_to_ijk", "standard_slice_to_ras", "VIEW_ALIASES"]

TOL_DEG = 0.1  # the tolerance vtkMRMLSliceLogic::GetSliceIndexFromOffset uses for "aligned"


class ObliqueSliceError(ValueError):
    """The slice view is rotated relative to the volume axes (no IJK axis within 0.1 degree of its normal)."""

    user_message = ("The slice view is rotated relative to the image. Align it with the volume first (slice view "
                    "menu: 'Rotate to volume plane'), then try again.")


class SliceOutsideVolumeError(ValueError):
    """The slice plane (or a prompt) lies outside the volume."""

    user_message = "The current slice is outside the image volume. Move the slice into the image and try again."


def _m4(m) -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {a.shape}")
    return a


def world_matrix(ijk_to_ras_matrix, parent=None) -> np.ndarray:
    """IJK -> world: ``parent @ ijk_to_ras`` (or ``ijk_to_ras`` without a parent transform)."""
    m = _m4(ijk_to_ras_matrix)
    return m if parent is None else _m4(parent) @ m


def _apply(m4: np.ndarray, pts) -> np.ndarray:
    p = np.asarray(pts, dtype=np.float64)
    single = p.ndim == 1
    p = np.atleast_2d(p)
    if p.shape[-1] != 3:
        raise ValueError(f"expected 3D points, got shape {p.shape}")
    out = p @ m4[:3, :3].T + m4[:3, 3]
    return out[0] if single else out


def ijk_to_ras(ijk, ijk_to_ras_matrix, parent=None) -> np.ndarray:
    """IJK (a point (3,) or points (N,3)) -> RAS world coordinates (float)."""
    return _apply(world_matrix(ijk_to_ras_matrix, parent), ijk)


def ras_to_ijk(ras, ijk_to_ras_matrix, parent=None) -> np.ndarray:
    """RAS world coordinates (a point (3,) or points (N,3)) -> continuous IJK (float; round at the end)."""
    return _apply(np.linalg.inv(world_matrix(ijk_to_ras_matrix, parent)), ras)


def _round(x) -> np.ndarray:
    """Round half up (voxel c - 0.5 belongs to voxel c), robust to float noise at voxel centres."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5 + 1e-9).astype(int)


def slice_axis_from_normal(ijk_to_ras_matrix, slice_to_ras, parent=None,
                           tol_deg: float = TOL_DEG) -> tuple[int, int]:
    """(IJK axis parallel to the view normal, sign): sign +1 when the axis points along the normal, else -1.

    Raises :class:`ObliqueSliceError` when no IJK axis is within ``tol_deg`` degrees of the normal.
    """
    w = world_matrix(ijk_to_ras_matrix, parent)[:3, :3]
    n = _m4(slice_to_ras)[:3, 2]
    n_norm = np.linalg.norm(n)
    norms = np.linalg.norm(w, axis=0)
    if n_norm == 0 or np.any(norms == 0):
        raise ValueError("degenerate slice or volume matrix")
    cos = (w / norms).T @ (n / n_norm)
    axis = int(np.argmax(np.abs(cos)))
    angle = float(np.degrees(np.arccos(min(1.0, abs(float(cos[axis]))))))
    if angle > tol_deg:
        raise ObliqueSliceError(f"slice normal {np.round(n / n_norm, 4).tolist()} is {angle:.3f} degrees from the "
                                f"closest volume axis {axis} (tolerance {tol_deg} degrees)")
    return axis, (1 if cos[axis] > 0 else -1)


def slice_spacing(ijk_to_ras_matrix, slice_to_ras, parent=None) -> float:
    """Voxel spacing (mm, world) along the view normal: the distance between two displayed slices."""
    axis, _ = slice_axis_from_normal(ijk_to_ras_matrix, slice_to_ras, parent)
    return float(np.linalg.norm(world_matrix(ijk_to_ras_matrix, parent)[:3, axis]))


def slice_index(ijk_to_ras_matrix, slice_to_ras, parent=None, dims: Optional[Sequence[int]] = None) -> int:
    """0-based index along :func:`slice_axis_from_normal`'s axis of the voxel plane shown (from the plane origin).

    Equals ``vtkMRMLSliceLogic.GetSliceIndexFromOffset(...) - 1`` for aligned views. With ``dims`` (IJK shape),
    raises :class:`SliceOutsideVolumeError` when the plane is outside the volume.
    """
    axis, _ = slice_axis_from_normal(ijk_to_ras_matrix, slice_to_ras, parent)
    origin = _m4(slice_to_ras)[:3, 3]
    idx = int(_round(ras_to_ijk(origin, ijk_to_ras_matrix, parent)[axis]))
    if dims is not None and not 0 <= idx < int(dims[axis]):
        raise SliceOutsideVolumeError(f"slice {idx} is outside 0..{int(dims[axis]) - 1} along IJK axis {axis}")
    return idx


def point_on_view(ras, slice_to_ras, spacing: float) -> bool:
    """Whether a world point lies on the displayed slice: ``|n . (p - o)| < spacing / 2``."""
    s = _m4(slice_to_ras)
    n = s[:3, 2] / np.linalg.norm(s[:3, 2])
    d = float(n @ (np.asarray(ras, dtype=np.float64) - s[:3, 3]))
    return abs(d) < 0.5 * float(spacing)


def _check_dims(ijk: np.ndarray, dims: Optional[Sequence[int]], what: str) -> None:
    if dims is None:
        return
    hi = np.asarray(dims, dtype=int) - 1
    bad = np.any((ijk < 0) | (ijk > hi), axis=-1)
    if np.any(bad):
        first = ijk[bad][0].tolist()
        raise SliceOutsideVolumeError(f"{what} at voxel {first} is outside the image of shape {list(dims)}")


def points_to_ijk(ras_points: Iterable[Sequence[float]], ijk_to_ras_matrix, parent=None,
                  dims: Optional[Sequence[int]] = None) -> list[list[int]]:
    """World points -> the IJK voxels that contain them, as ``[[i, j, k], ...]`` (ints)."""
    pts = np.asarray(list(ras_points), dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return []
    ijk = _round(ras_to_ijk(pts, ijk_to_ras_matrix, parent))
    _check_dims(ijk, dims, "point")
    return ijk.tolist()


def roi_to_ijk(ras_corner_a: Sequence[float], ras_corner_b: Sequence[float], ijk_to_ras_matrix, parent=None,
               dims: Optional[Sequence[int]] = None, clip: bool = True) -> list[int]:
    """Two opposite world corners of an axis-aligned box -> ``[i_min, i_max, j_min, j_max, k_min, k_max]``.

    Sorted *after* the IJK conversion (flipped or permuted axes swap corners). Corners are rounded to the
    voxels containing them; with ``dims`` and ``clip``, the box is clipped to the volume (raising when it lies
    entirely outside).
    """
    ijk = _round(ras_to_ijk(np.array([ras_corner_a, ras_corner_b], dtype=np.float64), ijk_to_ras_matrix, parent))
    lo, hi = ijk.min(axis=0), ijk.max(axis=0)
    if dims is not None:
        top = np.asarray(dims, dtype=int) - 1
        if np.any(hi < 0) or np.any(lo > top):
            raise SliceOutsideVolumeError(f"box {lo.tolist()}..{hi.tolist()} is outside the image of shape "
                                          f"{list(dims)}")
        if clip:
            lo, hi = np.clip(lo, 0, top), np.clip(hi, 0, top)
        else:
            _check_dims(np.array([lo, hi]), dims, "box corner")
    return [int(v) for a in range(3) for v in (lo[a], hi[a])]


def roi_corners_world(center: Sequence[float], size: Sequence[float], axes3x3=None) -> np.ndarray:
    """The 8 corners (8,3) of a Markups ROI from ``GetCenterWorld``/``GetSizeWorld`` and the rows of its unit X, Y,
    Z axes in world (``GetXAxisWorld`` ...; identity when None). Use their IJK min/max for a rotated ROI."""
    c = np.asarray(center, dtype=np.float64)
    s = np.asarray(size, dtype=np.float64)
    a = np.eye(3) if axes3x3 is None else np.asarray(axes3x3, dtype=np.float64)
    signs = np.array([[x, y, z] for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)])
    return c + (signs * s) @ a


def scribble_to_ijk(ras_points: Iterable[Sequence[float]], ijk_to_ras_matrix, parent=None,
                    dims: Optional[Sequence[int]] = None, axis: Optional[int] = None,
                    index: Optional[int] = None) -> list[list[int]]:
    """A scribble polyline in world coordinates -> IJK voxels with consecutive duplicates removed.

    With ``axis`` and ``index`` (the view's slice), the coordinate along ``axis`` is snapped to ``index`` (a stroke
    drawn on a view lies on its plane up to float noise).
    """
    pts = points_to_ijk(ras_points, ijk_to_ras_matrix, parent)
    out: list[list[int]] = []
    for p in pts:
        if axis is not None and index is not None:
            p[axis] = int(index)
        if not out or out[-1] != p:
            out.append(p)
    if out:
        _check_dims(np.asarray(out), dims, "scribble point")
    return out


# Slicer's default slice orientations (vtkMRMLSliceNode::Initialize{Axial,Sagittal,Coronal}Matrix):
# (screen-right, screen-up, normal) in RAS.
_STANDARD = {
    "axial": ((-1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "sagittal": ((0, -1, 0), (0, 0, 1), (1, 0, 0)),
    "coronal": ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
}
VIEW_ALIASES = {"axial": "axial", "red": "axial", "sagittal": "sagittal", "yellow": "sagittal",
                "coronal": "coronal", "green": "coronal"}


def standard_slice_to_ras(view: str, offset: float = 0.0, center: Optional[Sequence[float]] = None) -> np.ndarray:
    """SliceToRAS of a default Slicer view ('axial'/'Red', 'sagittal'/'Yellow', 'coronal'/'Green').

    ``offset`` (mm) is the plane's position along the normal (``GetSliceOffset``); ``center`` optionally sets the
    in-plane part of the origin (its normal component is replaced by ``offset``).
    """
    key = VIEW_ALIASES.get(str(view).strip().lower())
    if key is None:
        raise ValueError(f"unknown view {view!r}; use one of {sorted(set(VIEW_ALIASES))}")
    right, up, normal = (np.asarray(v, dtype=np.float64) for v in _STANDARD[key])
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = right, up, normal
    origin = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64).copy()
    origin = origin - normal * (normal @ origin) + normal * float(offset)
    m[:3, 3] = origin
    return m
