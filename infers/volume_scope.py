"""`scope=volume`: ground one text on every slice along an axis, then clean up in 3D."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medplib.preprocess import Window, window_to_uint8

from medplib_label.engine import MedPLIBEngine
from medplib_label.geometry import PlaneMapper
from medplib_label.volume_io import Volume

MIN_TISSUE_FRACTION = 0.005  # slices with less visible tissue than this are skipped (air only)


def has_tissue(plane: np.ndarray, window: Window) -> bool:
    return float((window_to_uint8(plane, window) > 10).mean()) >= MIN_TISSUE_FRACTION


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def ground_volume(engine: MedPLIBEngine, image_key: str, vol: Volume, axis: int, window: Window, question: str,
                  threshold: float, max_new_tokens: int | None, keep_largest: bool) -> tuple[np.ndarray, dict]:
    """Union of every <SEG> mask of every slice, each slice grounded exactly as the slice path does."""
    label = np.zeros(vol.shape, bool)
    logit_thr = float(np.log(threshold / (1 - threshold))) if 0 < threshold < 1 else 0.0
    skipped, with_mask, answer = 0, 0, ""
    for k in range(vol.shape[axis]):
        mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, axis, k)
        plane = mapper.extract(vol.array)
        if not has_tissue(plane, window):
            skipped += 1
            continue
        with engine.lock:
            pred, _ = engine.predictor((image_key, vol.shape, axis, k, window), plane, window)
            ans = pred.ask(question, max_new_tokens=max_new_tokens)
        answer = answer or ans.text
        hit = False
        for i in range(ans.seg_count):
            mask2d = mapper.plane_to_slice(ans.mask_logits[i], logits=True) > logit_thr
            index = [slice(None)] * 3
            index[axis] = k
            label[tuple(index)] |= mask2d
            hit = hit or bool(mask2d.any())
        with_mask += int(hit)
    if keep_largest and label.any():
        label = largest_component(label)
    stats = {"answer": answer, "slices_total": vol.shape[axis], "slices_skipped": skipped,
             "slices_with_mask": with_mask}
    return label.astype(np.uint8), stats
