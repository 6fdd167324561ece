"""Segmentation metrics with the official MedPLIB rules (per-sample IoU; Dice = 2*IoU / (1 + IoU))."""

from __future__ import annotations

import numpy as np


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
