"""Region prompts (point, box, scribble, mask) rasterised to binary masks on the 2D image, as the original demo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np


@dataclass(frozen=True)
class Point:
    """A point at (row, col) in image pixels; becomes a (2*span+1)^2 square (span 20 in the original)."""

    row: float
    col: float


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in image pixels, x = column and y = row, corners in any order (inclusive)."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Scribble:
    """A free-form stroke: a polyline of (row, col) points drawn with a given width."""

    points: tuple[tuple[float, float], ...]
    width: int = 3


@dataclass(frozen=True, eq=False)
class DatasetMask:
    """A region mask loaded from a dataset (MeCoVQA-R). As the original's dataset does, only its largest
    8-connected component on the CLIP patch grid is kept; a plain array (the demo path) is used whole."""

    mask: np.ndarray


Region = Union[Point, Box, Scribble, DatasetMask, np.ndarray]


def from_dataset(regions: Sequence[Region]) -> list[bool]:
    """Which regions are dataset masks (kept to their largest grid component)."""
    return [isinstance(r, DatasetMask) for r in regions]


def rasterize(region: Region, shape: tuple[int, int], span: int = 20) -> np.ndarray:
    """Return a bool mask of `shape` for one region prompt; raises ValueError if it falls outside the image."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    if isinstance(region, DatasetMask):
        region = np.asarray(region.mask)
    if isinstance(region, np.ndarray):
        if region.shape != (h, w):
            raise ValueError(f"region mask shape {region.shape} != image shape {(h, w)}")
        mask = region > 0
    elif isinstance(region, Point):
        r, c = int(round(region.row)), int(round(region.col))
        _check_inside(r, c, h, w, "point")
        mask[max(r - span, 0): r + span + 1, max(c - span, 0): c + span + 1] = True
    elif isinstance(region, Box):
        c0, c1 = sorted((int(round(region.x1)), int(round(region.x2))))
        r0, r1 = sorted((int(round(region.y1)), int(round(region.y2))))
        _check_inside(r0, c0, h, w, "box corner")
        _check_inside(r1, c1, h, w, "box corner")
        mask[r0:r1 + 1, c0:c1 + 1] = True
    elif isinstance(region, Scribble):
        mask = draw_polyline(region.points, shape, region.width)
    else:
        raise TypeError(f"unsupported region type {type(region).__name__}")
    if not mask.any():
        raise ValueError("region prompt is empty")
    return mask


def region_centre(region: Region, shape: tuple[int, int]) -> tuple[float, float]:
    """(row, col) a region prompt is named at: a point itself, else the centre of its rasterised mask."""
    if isinstance(region, Point):
        return float(region.row), float(region.col)
    rows, cols = np.nonzero(rasterize(region, shape))
    return float(rows.mean()), float(cols.mean())


def draw_polyline(points: Sequence[Sequence[float]], shape: tuple[int, int], width: int = 3) -> np.ndarray:
    """Rasterise a polyline of (row, col) points as a stroke `width` pixels wide (a single point is a dot)."""
    h, w = shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("scribble has no points")
    for r, c in pts:
        _check_inside(int(round(r)), int(round(c)), h, w, "scribble point")
    mask = np.zeros((h, w), dtype=bool)
    radius = max(width, 1) / 2.0
    # Sample each segment at sub-pixel steps and stamp a disc: simple, and exact enough for a stroke.
    samples = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = int(np.ceil(np.abs(b - a).max() * 2)) + 1
        samples.append(a + (b - a) * np.linspace(0.0, 1.0, n)[:, None])
    centres = np.concatenate(samples)
    rr, cc = np.mgrid[-int(np.ceil(radius)):int(np.ceil(radius)) + 1, -int(np.ceil(radius)):int(np.ceil(radius)) + 1]
    disc = (rr ** 2 + cc ** 2) <= max(radius ** 2, 0.25)
    offsets = np.stack([rr[disc], cc[disc]], axis=1)
    for r, c in np.unique(np.round(centres).astype(int), axis=0):
        pr, pc = r + offsets[:, 0], c + offsets[:, 1]
        keep = (pr >= 0) & (pr < h) & (pc >= 0) & (pc < w)
        mask[pr[keep], pc[keep]] = True
    return mask


def _check_inside(r: int, c: int, h: int, w: int, what: str) -> None:
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"{what} (row={r}, col={c}) is outside the image of size {h}x{w}")
