"""Segmentation metrics with the official MedPLIB rules (per-sample IoU; Dice = 2*IoU / (1 + IoU))."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def iou(pred: np.ndarray | None, target: np.ndarray) -> float:
    """Binary IoU. A missing prediction counts 0; both empty counts 1 (nothing to find, nothing found).

    The original crashes on the both-empty case (it calls .item() on an int); 1.0 is the usual convention.
    """
    t = np.asarray(target) > 0
    if pred is None:
        return 0.0
    p = np.asarray(pred) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
    union = np.logical_or(p, t).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, t).sum() / union)


def dice_from_iou(value: float) -> float:
    return 2.0 * value / (1.0 + value)


def dice(pred: np.ndarray | None, target: np.ndarray) -> float:
    """Dice computed as the original does, from the per-sample IoU."""
    return dice_from_iou(iou(pred, target))


def largest_error_region(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The largest connected error of a prediction (SAM-Med2D's click simulation): (region, 1) where the object
    was missed, (region, 0) where it was falsely covered; None when the prediction is exact."""
    best, best_size = None, 0
    for region, label in ((truth & ~pred, 1), (pred & ~truth, 0)):
        lab, n = ndimage.label(region)
        if n:
            sizes = np.bincount(lab.ravel())[1:]
            i = int(np.argmax(sizes))
            if sizes[i] > best_size:
                best, best_size = (lab == i + 1, label), int(sizes[i])
    return best
