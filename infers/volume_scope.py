"""`scope=volume`: ground one text on every slice along an axis, then clean up in 3D."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medplib.data.planes import PlaneMapper
from medplib.data.volumes import Volume
from medplib.imaging.preprocess import Window, logit, prepare_rgb, window_to_uint8
from medplib.inference.batch_ground import ground_batch
from medplib.inference.predictor import MedPLIBPredictor
from medplib_label.engine import MedPLIBEngine

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


def ground_volume(engine: MedPLIBEngine, vol: Volume, axis: int, window: Window, question: str,
                  threshold: float, max_new_tokens: int | None, keep_largest: bool,
                  batch_size: int = 8) -> tuple[np.ndarray, dict]:
    """Union of every <SEG> mask of every slice with tissue.

    Slices go through the model in batches with the answer forced to the grounding template (one LLM forward per
    batch). Where the model would not itself have answered with the template, that slice falls back to the
    interactive path (generation), so the masks are those of per-slice calls either way.
    """
    model, tok = engine.get()
    label = np.zeros(vol.shape, bool)
    logit_thr = logit(threshold)
    todo: list[tuple[int, PlaneMapper, np.ndarray]] = []
    skipped = 0
    for k in range(vol.shape[axis]):
        mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, axis, k)
        plane = mapper.extract(vol.array)
        if has_tissue(plane, window):
            todo.append((k, mapper, plane))
        else:
            skipped += 1
    with_mask, forced, fallback, answer = 0, 0, 0, ""
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        rgbs = [prepare_rgb(plane, window) for _, _, plane in chunk]
        with engine.lock:
            result = ground_batch(model, tok, rgbs, question)
        for (k, mapper, plane), logits, ok in zip(chunk, result.logits, result.forced_ok):
            if ok:
                forced += 1
                masks = [logits]
                answer = answer or "Sure, it is ."
            else:
                fallback += 1
                with engine.lock:
                    pred = MedPLIBPredictor(model, tok, mask_threshold=threshold)
                    pred.set_image(plane, window)
                    ans = pred.ask(question, max_new_tokens=max_new_tokens)
                answer = answer or ans.text
                masks = list(ans.mask_logits)
            hit = False
            for m in masks:
                mask2d = mapper.plane_to_slice(m, logits=True) > logit_thr
                mapper.slice_view(label)[...] |= mask2d
                hit = hit or bool(mask2d.any())
            with_mask += int(hit)
    if keep_largest and label.any():
        label = largest_component(label)
    stats = {"answer": answer, "slices_total": vol.shape[axis], "slices_skipped": skipped,
             "slices_with_mask": with_mask, "slices_forced": forced, "slices_generated": fallback}
    return label.astype(np.uint8), stats
