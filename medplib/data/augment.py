"""Slice augmentations for training on few brains: pose, resolution / slice thickness, and intensity.

Applied to a prepared slice and its label together, on the model plane. That plane is always shown in the same
patient orientation (`PlaneMapper`), so there are no flips: a flip would swap the patient's left and right. Pose is
a small in-plane turn and scale (a tilted head). Resolution is a blur along one in-plane axis (thick or anisotropic
slices). Intensity works inside the display window: gamma, a smooth bias field, noise.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage

MAX_TURN_DEG = 15.0
SCALE = (0.9, 1.1)
THICK = (1.5, 3.0)  # blur factor along one in-plane axis, applied half of the time
GAMMA_LOG = 0.4
BIAS = 0.3  # peak-to-peak fraction of the multiplicative field
NOISE = 0.04  # max noise sigma, in window units


def _pose(plane: np.ndarray, label: np.ndarray, turn: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Turn by `turn` radians and scale about the centre (output pixel -> input pixel matrix)."""
    c, s = math.cos(turn), math.sin(turn)
    matrix = np.array([[c, -s], [s, c]]) / scale
    centre = (np.asarray(plane.shape, dtype=np.float64) - 1) / 2
    offset = centre - matrix @ centre
    moved = ndimage.affine_transform(plane, matrix, offset, order=1, mode="constant", cval=float(plane.min()))
    moved_label = ndimage.affine_transform(label, matrix, offset, order=0, mode="constant", cval=0)
    return moved.astype(plane.dtype), moved_label.astype(label.dtype)


def _thick(plane: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Average `factor` pixels along `axis` and sample back: what a thicker slice or coarser matrix shows."""
    small = ndimage.zoom(plane, [1.0 / factor if a == axis else 1.0 for a in range(2)], order=1)
    back = ndimage.zoom(small, [plane.shape[a] / small.shape[a] for a in range(2)], order=1)
    out = np.empty_like(plane)
    h, w = min(back.shape[0], plane.shape[0]), min(back.shape[1], plane.shape[1])
    out[...] = plane.min()
    out[:h, :w] = back[:h, :w]
    return out


def _bias_field(shape: tuple[int, int], rng: random.Random, strength: float) -> np.ndarray:
    """A smooth multiplicative field around 1: a random 4x4 grid, upsampled cubically."""
    grid = np.array([[rng.uniform(-1, 1) for _ in range(4)] for _ in range(4)])
    field = ndimage.zoom(grid, (shape[0] / 4, shape[1] / 4), order=3)[: shape[0], : shape[1]]
    pad = [(0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])]
    field = np.pad(field, pad, mode="edge")
    return 1.0 + strength / 2 * field / max(float(np.abs(field).max()), 1e-6)


def augment_plane(rng: random.Random, plane: np.ndarray, label: np.ndarray, low: float,
                  high: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(plane, label, what was drawn): one random pose, resolution and intensity change of a model-plane slice.
    `low`, `high`: the display window's range; intensity changes act on the windowed values."""
    turn = math.radians(rng.uniform(-MAX_TURN_DEG, MAX_TURN_DEG))
    scale = rng.uniform(*SCALE)
    plane, label = _pose(plane.astype(np.float32), label, turn, scale)
    record: dict[str, Any] = {"turn_deg": round(math.degrees(turn), 2), "scale": round(scale, 3)}
    if rng.random() < 0.5:
        axis, factor = rng.randrange(2), rng.uniform(*THICK)
        plane = _thick(plane, axis, factor)
        record["thick"] = {"axis": axis, "factor": round(factor, 2)}
    span = max(high - low, 1e-6)
    w = np.clip((plane - low) / span, 0.0, 1.0)
    gamma = math.exp(rng.uniform(-GAMMA_LOG, GAMMA_LOG))
    sigma = rng.uniform(0.0, NOISE)
    noise_seed = rng.randrange(2 ** 31)
    w = w ** gamma * _bias_field(w.shape, rng, BIAS)
    w = w + np.random.default_rng(noise_seed).normal(0.0, sigma, w.shape) * (w > 0)
    record.update(gamma=round(gamma, 3), bias=BIAS, noise=round(sigma, 4))
    return (low + np.clip(w, 0.0, 1.0) * span).astype(np.float32), label, record


def augment_view(rng: random.Random, view, label_view: np.ndarray):
    """`augment_plane` on a prepared slice (`medplib.data.conversations.SliceView`): (view, label, record)."""
    if view.window is not None:
        low, high = view.window.center - view.window.width / 2, view.window.center + view.window.width / 2
    else:  # displayed by robust percentiles (`window_to_uint8`)
        low, high = (float(v) for v in np.percentile(view.plane, (0.5, 99.5)))
    plane, label, record = augment_plane(rng, view.plane, label_view, low, high)
    return replace(view, plane=plane), label, record
