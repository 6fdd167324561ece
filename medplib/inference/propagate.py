"""One box (or clicks, or a scribble) on one slice -> a 3D mask, propagated slice by slice with LiteMedSAM.

From the prompted slice the mask travels in both directions; each next slice is prompted with the previous
mask's box, grown by a small margin. LiteMedSAM was trained on boxes only: adding a click at the mask's interior
or the previous logits as a mask prompt made the masks worse when measured (Dice 0.98 -> 0.86 on a synthetic
ellipsoid), so neither is sent. Propagation stops where the object ends, judged from signals measured per step
(`StopRule`): the decoder's IoU estimate, how similar the image features under the new mask are to those under
the previous one (the clearest signal: cosine 0.96-0.99 inside an object, ~0.6 one slice past its end), the area
change and the overlap with the previous mask. Slices go through the image encoder `batch` at a time, ahead of
the front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medplib.imaging.preprocess import Window
from medplib.inference.promptable import PromptablePredictor, PromptMask, SliceEmbedding, embed_slices, mask_box


@dataclass(frozen=True)
class StopRule:
    """When a propagated slice no longer shows the object (each threshold measured in `bench/propagation.py`)."""

    # Chosen in bench/propagation.py (leave-one-volume-out over a synthetic ellipsoid, the ITK T1 brain, the MNI
    # brain and the head CT): the feature cosine is the signal that generalises; the decoder's IoU estimate and the
    # overlap stopped real brains half-way (ITK brain 3D Dice 0.05 with min_iou 0.75), so they are off by default.
    min_iou: float = 0.0  # the decoder's own IoU estimate of the new mask
    min_similarity: float = 0.85  # cosine of the mean image features under the new and the previous mask
    min_area_ratio: float = 0.0  # new area / previous area: a collapse means the object ended
    max_area_ratio: float = 2.0  # a sudden growth means the mask leaked into a neighbour
    min_overlap: float = -1.0  # Dice of the new mask with the previous one (in-plane drift)
    min_area: int = 8  # pixels


@dataclass
class Propagation:
    """The 3D result: one mask per slice covered, and why each direction stopped."""

    masks: dict[int, np.ndarray]
    start: int
    stopped: dict[str, str] = field(default_factory=dict)  # direction -> where and why it stopped
    ious: dict[int, float] = field(default_factory=dict)
    encoded: int = 0  # slices that went through the image encoder

    @property
    def slices(self) -> list[int]:
        return sorted(self.masks)

    def volume(self, n_slices: int, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros((n_slices, *shape), bool)
        for k, m in self.masks.items():
            out[k] = m
        return out


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(row, col) of the mask pixel farthest from its border (a click there is inside the object)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(r), float(c)


def mask_feature(features: SliceEmbedding, mask: np.ndarray) -> torch.Tensor | None:
    """Mean LiteMedSAM image feature under a mask (area-weighted on the 64 x 64 grid); None if it is empty."""
    emb = features.embedding[0].float()
    nh, nw = features.resized
    frame = torch.zeros(1, 1, 256, 256, device=emb.device)
    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None].to(emb.device)
    frame[..., :nh, :nw] = F.interpolate(m, (nh, nw), mode="area")
    weight = F.interpolate(frame, emb.shape[-2:], mode="area")[0, 0]
    total = float(weight.sum())
    return None if total < 1e-6 else (emb * weight).sum(dim=(1, 2)) / total


def encoder_batch(device: torch.device) -> int:
    """Slices per image-encoder call: 4 on a GPU; 1 on a CPU, where batching was slower (bench/promptable_bench.py:
    0.90 slices/s at batch 1 vs 0.69 at batch 4 on 2 threads)."""
    return 4 if device.type == "cuda" else 1


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


class SliceEncoder:
    """Embeddings of a stack's slices on demand, computed `batch` at a time ahead of the propagation front."""

    def __init__(self, predictor: PromptablePredictor, get_slice: Callable[[int], np.ndarray], n_slices: int,
                 window: Window | None = None, batch: int | None = None,
                 cache: dict[int, SliceEmbedding] | None = None):
        if batch is None:
            batch = encoder_batch(next(predictor.sam.parameters()).device)
        self.predictor, self.get_slice, self.n, self.window, self.batch = predictor, get_slice, n_slices, window, batch
        self.cache: dict[int, SliceEmbedding] = {} if cache is None else cache  # shared by several propagations
        self.encoded = 0

    def get(self, k: int, step: int) -> SliceEmbedding:
        if k not in self.cache:
            ahead = [j for j in range(k, k + step * self.batch, step) if 0 <= j < self.n and j not in self.cache]
            feats = embed_slices(self.predictor.sam, [self.get_slice(j) for j in ahead], [self.window] * len(ahead),
                                 batch=self.batch)
            self.cache.update(zip(ahead, feats))
            self.encoded += len(ahead)
        return self.cache[k]


def propagate(predictor: PromptablePredictor, get_slice: Callable[[int], np.ndarray], n_slices: int, start: int,
              first: PromptMask, window: Window | None = None, rule: StopRule = StopRule(), margin: float = 0.05,
              batch: int | None = None, max_slices: int | None = None, naive: bool = False,
              cache: dict[int, SliceEmbedding] | None = None, trace: list[dict] | None = None) -> Propagation:
    """Propagate `first` (the mask on slice `start`) through the stack in both directions.

    margin: the previous box is grown by this fraction of its size (at least 3 px) on every side.
    batch: slices per encoder call (default: `encoder_batch` of the model's device).
    naive: the baseline the issue names (next box = last mask's box + 3 px, stop under 5 px; no other signal).
    cache: slice -> embedding, filled and reused (e.g. by a naive and a ruled run over the same stack).
    trace: if given, one dict of the measured signals per propagated slice is appended (`bench/propagation.py`).
    """
    if first.mask.sum() == 0:
        raise ValueError("the first slice's mask is empty: nothing to propagate")
    result = Propagation({start: first.mask}, start, ious={start: first.iou})
    encoder = SliceEncoder(predictor, get_slice, n_slices, window, batch, cache)
    limit = max_slices if max_slices is not None else n_slices
    for step, name in ((1, "up"), (-1, "down")):
        prev, k = first.mask, start + step
        prev_feature = None if naive else mask_feature(encoder.get(start, step), first.mask)
        reason = "end of the volume"
        while 0 <= k < n_slices and abs(k - start) <= limit:
            features = encoder.get(k, step)
            predictor.set_embedding(features)
            if naive:
                out = predictor.predict(box=mask_box(prev, 3.0))
                if trace is not None:
                    trace.append({"slice": k, "direction": name, "iou": out.iou, "area": int(out.mask.sum()),
                                  "prev_area": int(prev.sum()), "overlap": dice(out.mask, prev), "mask": out.mask})
                if out.mask.sum() < 5:
                    reason = "area under 5 px"
                    break
            else:
                x1, y1, x2, y2 = mask_box(prev)
                out = predictor.predict(box=mask_box(prev, max(3.0, margin * max(x2 - x1, y2 - y1))))
                feature = mask_feature(features, out.mask)
                similarity = 0.0 if feature is None or prev_feature is None else \
                    float(F.cosine_similarity(feature, prev_feature, dim=0))
                area, overlap = int(out.mask.sum()), dice(out.mask, prev)
                if trace is not None:
                    trace.append({"slice": k, "direction": name, "iou": out.iou, "similarity": similarity,
                                  "area": area, "prev_area": int(prev.sum()), "overlap": overlap, "mask": out.mask})
                why = _stop_reason(out, area, int(prev.sum()), overlap, similarity, rule)
                if why:
                    reason = why
                    break
                prev_feature = feature
            result.masks[k], result.ious[k] = out.mask, out.iou
            prev, k = out.mask, k + step
        result.stopped[name] = f"slice {k}: {reason}"
    result.encoded = encoder.encoded
    return result


def _stop_reason(out: PromptMask, area: int, prev_area: int, overlap: float, similarity: float,
                 rule: StopRule) -> str | None:
    if area < rule.min_area:
        return f"area {area} px < {rule.min_area}"
    if out.iou < rule.min_iou:
        return f"predicted IoU {out.iou:.2f} < {rule.min_iou}"
    if similarity < rule.min_similarity:
        return f"image features under the mask changed (cosine {similarity:.2f} < {rule.min_similarity})"
    ratio = area / max(prev_area, 1)
    if ratio < rule.min_area_ratio:
        return f"area fell to {ratio:.2f} of the previous slice"
    if ratio > rule.max_area_ratio:
        return f"area grew {ratio:.2f}x"
    if overlap < rule.min_overlap:
        return f"overlap {overlap:.2f} with the previous slice"
    return None


def volume_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return dice(np.asarray(pred, bool), np.asarray(truth, bool))


def first_slice_mask(predictor: PromptablePredictor, image: np.ndarray, window: Window | None,
                     box: Sequence[float] | None = None, points: np.ndarray | None = None,
                     point_labels: np.ndarray | None = None,
                     scribbles: Sequence[Sequence[Sequence[float]]] = ()) -> PromptMask:
    """The mask on the prompted slice, from whatever the user drew there."""
    predictor.set_image(image, window)
    return predictor.predict(points=points, point_labels=point_labels, box=box, scribbles=scribbles)
