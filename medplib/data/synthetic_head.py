"""A synthetic head around a skull-stripped T1 brain: the augmentation that teaches "the brain" on heads with skull.

The training templates (CAT12, MNI152) are skull-stripped, and the held-out subject showed what that costs: "the
brain" on a head with skull scored below the same brain stripped. Real T1 heads with brain labels do not ship
offline, so the brain is wrapped in T1-like layers, each of a random thickness: cerebrospinal fluid (dark), the
skull's inner and outer tables (dark) around the diploe (marrow, mid-grey) and the scalp (fat, bright), then
blurred and given noise. The brain voxels and the label are unchanged. It is an augmentation, not anatomy: the
datastore info says so (`synthetic_head`).

`add_ct_head` does the same in Hounsfield units, for "the brain" on head CT (no CT with a brain label ships
offline): the T1 brain becomes a pseudo-CT (grey matter brighter than white, CSF near water) and the layers take
textbook CT values: CSF, compact bone tables, diploe, scalp with a fat layer, air. The ranges are textbook
values, not fitted to any CT here (the one real head CT is the held-out test, `medplib.evaluation.ct_head`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

PAD = 10  # voxels added on every side so the head fits on the grid


def add_head(data: np.ndarray, label: np.ndarray, affine: np.ndarray, seed: int = 0,
             pad: int = PAD) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(head T1 int16, label, affine, what was drawn) for a skull-stripped T1 whose brain is `label > 0`."""
    rng = np.random.default_rng(seed)
    data, label, out_affine, dist = _padded(data, label, affine, pad)
    brain = label > 0
    ref = float(np.percentile(data[brain], 95))
    csf, table, diploe, scalp = (rng.uniform(1.5, 3.5), rng.uniform(1.5, 2.5), rng.uniform(2.0, 4.0),
                                 rng.uniform(4.0, 8.0))
    edges = np.cumsum([csf, table, diploe, table, scalp])
    levels = [rng.uniform(0.08, 0.18), rng.uniform(0.03, 0.08), rng.uniform(0.35, 0.55), rng.uniform(0.03, 0.08),
              rng.uniform(0.75, 0.95)]
    shell = np.zeros(data.shape, np.float32)
    _paint_layers(shell, dist, edges, [level * ref for level in levels])
    head = ndimage.gaussian_filter(np.where(brain, data, shell), 0.7)
    head += rng.normal(0.0, 0.015 * ref, head.shape).astype(np.float32) * (dist <= edges[-1])
    head[brain] = data[brain]
    drawn = {"csf_mm": round(csf, 2), "skull_mm": round(2 * table + diploe, 2), "scalp_mm": round(scalp, 2),
             "seed": seed}
    return np.clip(np.rint(head), 0, np.iinfo(np.int16).max).astype(np.int16), label, out_affine, drawn


def add_ct_head(data: np.ndarray, label: np.ndarray, affine: np.ndarray, seed: int = 0,
                pad: int = PAD) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(head pseudo-CT int16 HU, brain label 0/1, affine, what was drawn) for a skull-stripped T1 (brain =
    `label > 0`). Brain HU follow the T1 tissue levels: CSF ~ water, white matter below grey matter."""
    rng = np.random.default_rng(seed)
    data, label, out_affine, dist = _padded(data, label, affine, pad)
    brain = label > 0
    csf_t1, gm_t1, wm_t1 = np.percentile(data[brain], (2.0, 35.0, 85.0))
    csf_hu, gm_hu = rng.uniform(0.0, 12.0), rng.uniform(34.0, 44.0)
    wm_hu = gm_hu - rng.uniform(6.0, 12.0)
    hu = np.full(data.shape, -1000.0, np.float32)
    hu[brain] = np.interp(data[brain], [csf_t1, gm_t1, wm_t1], [csf_hu, gm_hu, wm_hu])
    widths = [rng.uniform(1.0, 3.5), rng.uniform(1.5, 2.5), rng.uniform(2.0, 5.0), rng.uniform(1.5, 2.5),
              rng.uniform(2.0, 4.0), rng.uniform(1.0, 4.0)]
    levels = [csf_hu, rng.uniform(1100, 1900), rng.uniform(300, 800), rng.uniform(1100, 1900),
              rng.uniform(25, 60), rng.uniform(-110, -60)]  # CSF, table, diploe, table, scalp, fat
    inner = _paint_layers(hu, dist, np.cumsum(widths), levels)
    skin = (dist > inner) & (dist <= inner + rng.uniform(1.0, 2.0))
    hu[skin] = rng.uniform(20, 50)
    hu = ndimage.gaussian_filter(hu, rng.uniform(0.5, 0.9))
    noise = rng.uniform(3.0, 7.0)
    hu += rng.normal(0.0, noise, hu.shape).astype(np.float32) * (hu > -900)
    drawn = {"csf_mm": round(widths[0], 2), "skull_mm": round(sum(widths[1:4]), 2),
             "scalp_mm": round(sum(widths[4:]), 2), "grey_white_hu": [round(gm_hu, 1), round(wm_hu, 1)],
             "noise_hu": round(noise, 1), "seed": seed}
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), brain.astype(np.uint8), out_affine, drawn


def _padded(data: np.ndarray, label: np.ndarray, affine: np.ndarray,
            pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data as float32, label, affine, mm outside the brain), all padded by `pad` voxels on every side; the
    affine keeps every voxel at its world position."""
    data = np.pad(data.astype(np.float32), pad)
    label = np.pad(label, pad)
    out_affine = affine.copy()
    out_affine[:3, 3] = affine[:3, 3] - affine[:3, :3] @ np.full(3, float(pad))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return data, label, out_affine, ndimage.distance_transform_edt(label == 0, sampling=spacing)


def _paint_layers(image: np.ndarray, dist: np.ndarray, edges, levels) -> float:
    """Shells outside the brain: between consecutive `edges` (mm) the value of `levels`; returns the outer edge."""
    inner = 0.0
    for outer, level in zip(edges, levels):
        image[(dist > inner) & (dist <= outer)] = level
        inner = float(outer)
    return inner
