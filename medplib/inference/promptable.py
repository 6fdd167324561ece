"""Promptable segmentation with LiteMedSAM: clicks, a box, scribbles or a mask -> one mask, on any modality.

segment-anything's predictor pattern: `set_image` runs the image encoder once and caches the embedding; each
`predict` then runs only the prompt encoder and the mask decoder (~40 ms on 2 CPU cores). Coordinates are image
pixels: points as (row, col), boxes as (x1, y1, x2, y2) with x = column.

LiteMedSAM was trained with boxes only: a bare click gives an empty mask (measured: 1-click Dice 0.00 on every
set, `docs/promptable.md`). So clicks without a box become boxes (`click_box=True`, the default): the first
positive click(s) are tried inside boxes of `CLICK_SCALES` sizes, decoded as one batch, and the decoder's IoU
head picks one (SAM's rule for an ambiguous click); later clicks grow the box of the previous mask (`mask_input`)
to take in positive clicks. Connected pieces of the mask holding a negative click are removed, and when positive
clicks are given only the pieces holding one are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from medplib.imaging.preprocess import Window, window_to_uint8
from medplib.imaging.regions import draw_polyline
from medplib.model.lite_medsam import lite_pixel_values, lite_postprocess, to_lite_frame
from medplib.model.sam_med2d import SamMed2D

SCRIBBLE_POINTS = 6  # prompt points sampled along each scribble stroke
CLICK_SCALES = (0.05, 0.1, 0.2, 0.35)  # half-sizes of the boxes tried around a first click, x the longest side


@dataclass
class PromptMask:
    """One `predict` result at the original resolution."""

    mask: np.ndarray  # bool [H, W]
    logits: np.ndarray  # float32 [H, W]
    iou: float  # the decoder's own IoU estimate of the chosen mask
    low_res: Tensor  # [1, 1, 256, 256] logits, the next call's `mask_input` for iterative refinement
    candidates: int = 1  # how many masks the decoder proposed (3 for an ambiguous single click)


@dataclass
class SliceEmbedding:
    """What `predict` needs about one image."""

    embedding: Tensor  # [1, 256, 64, 64]
    original_size: tuple[int, int]
    resized: tuple[int, int]  # (h', w') inside the 256 px frame


def slice_input(image: np.ndarray, window: Window | None = None) -> np.ndarray:
    """A 2D scalar slice windowed to uint8 (robust percentiles without a window), or HxWx3 uint8 as is."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return arr
    return window_to_uint8(arr, window)


@torch.no_grad()
def embed_slices(sam: SamMed2D, images: Sequence[np.ndarray], windows: Sequence[Window | None] | None = None,
                 batch: int = 4) -> list[SliceEmbedding]:
    """LiteMedSAM embeddings of several slices, `batch` at a time through the encoder."""
    windows = list(windows) if windows is not None else [None] * len(images)
    device, dtype = sam.pixel_mean.device, next(sam.parameters()).dtype
    out: list[SliceEmbedding] = []
    for start in range(0, len(images), batch):
        prepared = [lite_pixel_values(slice_input(im, w)) for im, w in
                    zip(images[start:start + batch], windows[start:start + batch])]
        pixels = torch.stack([px for px, _ in prepared]).to(device, dtype)
        emb = sam.encode_image(pixels)
        for i, (im, (_, resized)) in enumerate(zip(images[start:start + batch], prepared)):
            out.append(SliceEmbedding(emb[i:i + 1], tuple(np.asarray(im).shape[:2]), resized))
    return out


class PromptablePredictor:
    """Cache one slice's embedding, then turn any number of prompts into masks."""

    def __init__(self, sam: SamMed2D, threshold: float = 0.0, scribble_mode: str = "points", click_box: bool = True):
        if scribble_mode not in ("points", "mask"):
            raise ValueError(f"scribble_mode must be 'points' or 'mask', got {scribble_mode!r}")
        self.sam = sam.eval()
        self.threshold = threshold  # on logits: 0 = probability 0.5, as SAM / MedSAM
        self.scribble_mode = scribble_mode
        self.click_box = click_box  # clicks without a box -> boxes (LiteMedSAM ignores bare clicks)
        self.features: SliceEmbedding | None = None

    def set_image(self, image: np.ndarray, window: Window | None = None) -> None:
        self.features = embed_slices(self.sam, [image], [window])[0]

    def set_embedding(self, features: SliceEmbedding) -> None:
        self.features = features

    @torch.no_grad()
    def predict(self, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                box: Sequence[float] | None = None, scribbles: Sequence[Sequence[Sequence[float]]] = (),
                scribble_labels: Sequence[int] | None = None, mask_input: Tensor | None = None,
                text_embeds: Tensor | None = None, multimask: bool | None = None) -> PromptMask:
        """One mask from any mix of prompts.

        points [N, 2] (row, col) with labels 1 (include) / 0 (exclude); box (x1, y1, x2, y2); scribbles: strokes
        of (row, col) points, each positive unless `scribble_labels` says 0 (sent as points along the stroke, or
        as a mask prompt with `scribble_mode="mask"`); mask_input: the previous call's `low_res` (refinement);
        text_embeds [n, 1, 256]: MedPLIB `<SEG>` prompts added to the sparse tokens. `multimask` defaults to
        SAM's rule: three candidates for a lone click (ambiguous), the best by predicted IoU is returned.
        """
        feats = self._require()
        pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
        labels = np.ones(len(pts), np.int64) if point_labels is None else np.asarray(point_labels, np.int64)
        if len(labels) != len(pts):
            raise ValueError(f"{len(pts)} points but {len(labels)} point labels")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point labels must be 1 (include) or 0 (exclude), got {sorted(set(labels.tolist()))}")
        scribble_labels = [1] * len(scribbles) if scribble_labels is None else list(scribble_labels)
        if len(scribble_labels) != len(scribbles):
            raise ValueError(f"{len(scribbles)} scribbles but {len(scribble_labels)} scribble labels")
        if scribbles and self.scribble_mode == "points":
            for stroke, lab in zip(scribbles, scribble_labels):
                sampled = sample_stroke(stroke)
                pts, labels = np.concatenate([pts, sampled]), np.concatenate([labels, np.full(len(sampled), lab)])
        elif scribbles:  # drawn over a given mask_input, not instead of it
            mask_input = self._scribble_mask(scribbles, scribble_labels, mask_input)
        if box is None and not len(pts) and mask_input is None and text_embeds is None:
            raise ValueError("no prompt: give points, a box, a scribble, a mask or a <SEG> embedding")
        if multimask is None:
            multimask = box is None and len(pts) == 1 and mask_input is None and text_embeds is None
        device = feats.embedding.device
        if mask_input is not None:
            mask_input = _as_mask_input(mask_input).to(device)
        boxes: list | None = None if box is None else [box]
        if box is None and self.click_box and (labels == 1).any() and text_embeds is None:
            boxes = self._click_boxes(pts, labels, mask_input)
            multimask = False
        sam_points = sam_box = None
        if len(pts):
            xy = to_lite_frame(pts[:, ::-1], feats.original_size)
            sam_points = (torch.from_numpy(xy)[None].to(device), torch.from_numpy(labels)[None].to(device))
        if boxes is not None:
            frames = []
            for x1, y1, x2, y2 in ((float(v) for v in b) for b in boxes):
                corners = np.array([[min(x1, x2), min(y1, y2)], [max(x1, x2), max(y1, y2)]], np.float32)
                frames.append(to_lite_frame(corners, feats.original_size).reshape(4))
            sam_box = torch.from_numpy(np.stack(frames)).to(device)
        low, iou = self.sam.decode(feats.embedding, text_embeds=text_embeds, points=sam_points, boxes=sam_box,
                                   mask_input=mask_input, multimask_output=multimask)
        if low.shape[0] > 1:  # several candidate boxes: the IoU head chooses
            pick = int(iou[:, 0].argmax())
            low, iou, candidates = low[pick:pick + 1], iou[pick:pick + 1], low.shape[0]
        else:
            candidates = int(iou.shape[1])
        best = int(iou[0].argmax()) if multimask else 0
        low = low[:, best:best + 1].float()
        full = lite_postprocess(low, feats.resized, feats.original_size)[0, 0].cpu().numpy()
        mask = full > self.threshold
        if len(pts) and self.click_box and text_embeds is None:
            mask = self._follow_clicks(mask, pts, labels)
            if box is None:
                mask = _keep_clicked(mask, pts, labels)
            full = np.where(mask, np.maximum(full, 1.0), np.minimum(full, -1.0))  # logits agree with the mask
        return PromptMask(mask, full.astype(np.float32), float(iou[0, best]), _as_mask_input(low), candidates)

    def _follow_clicks(self, mask: np.ndarray, pts: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Make the mask obey every click, in order: a positive click outside it adds the object under the click,
        a negative click inside it removes the object under the click (the part nearer to it than to any positive
        click). LiteMedSAM was trained on boxes and ignores bare point prompts, so each correcting click is turned
        into its own box prompt; without this, later clicks of a refinement series made the mask worse."""
        mask = mask.copy()
        pos = pts[labels == 1]
        for (r, c), lab in zip(pts, labels):
            inside = _at(mask, r, c)
            if lab == 1 and not inside:
                mask |= self._object_at(r, c)
            elif lab == 0 and inside:
                piece = self._object_at(r, c)
                if len(pos):
                    rows, cols = np.indices(mask.shape)
                    d_neg = (rows - r) ** 2 + (cols - c) ** 2
                    d_pos = np.min([(rows - pr) ** 2 + (cols - pc) ** 2 for pr, pc in pos], axis=0)
                    piece &= d_neg < d_pos
                mask &= ~piece
                if not piece.any() or _at(mask, r, c):  # nothing found there: at least the click's own pixel goes
                    mask[_pixel(mask.shape, r, c)] = False
        return mask

    def _object_at(self, r: float, c: float) -> np.ndarray:
        """The object under one click: candidate boxes around it at `CLICK_SCALES`, the IoU head picks, and the
        predicted piece that holds the click (empty if none does)."""
        feats = self._require()
        h, w = feats.original_size
        frames = []
        for scale in CLICK_SCALES:
            half = scale * max(h, w)
            corners = np.array([[max(c - half, 0.0), max(r - half, 0.0)],
                                [min(c + half, w - 1.0), min(r + half, h - 1.0)]], np.float32)
            frames.append(to_lite_frame(corners, feats.original_size).reshape(4))
        boxes = torch.from_numpy(np.stack(frames)).to(feats.embedding.device)
        low, iou = self.sam.decode(feats.embedding, boxes=boxes, multimask_output=False)
        pick = int(iou[:, 0].argmax())
        full = lite_postprocess(low[pick:pick + 1, :1].float(), feats.resized, feats.original_size)[0, 0].cpu().numpy()
        comp, _ = ndimage.label(full > self.threshold)
        at = comp[_pixel((h, w), r, c)]
        return comp == at if at else np.zeros((h, w), bool)

    def _click_boxes(self, pts: np.ndarray, labels: np.ndarray, mask_input: Tensor | None) -> list:
        """Boxes for clicks alone: around the positive clicks at several sizes, or the previous mask's box grown
        to take in the positive clicks."""
        feats = self._require()
        h, w = feats.original_size
        pos = pts[labels == 1]
        r0, c0 = pos.min(axis=0)
        r1, c1 = pos.max(axis=0)
        if mask_input is not None:
            prev = lite_postprocess(mask_input.float(), feats.resized, feats.original_size)[0, 0].cpu().numpy() > 0
            if prev.any():
                x1, y1, x2, y2 = mask_box(prev)
                return [_exclude((min(x1, c0), min(y1, r0), max(x2, c1), max(y2, r1)), pts, labels)]
        out = []
        for scale in CLICK_SCALES:
            half = scale * max(h, w)
            box = (max(c0 - half, 0.0), max(r0 - half, 0.0), min(c1 + half, w - 1.0), min(r1 + half, h - 1.0))
            out.append(_exclude(box, pts, labels))
        return out

    def _scribble_mask(self, scribbles, scribble_labels, base: Tensor | None = None) -> Tensor:
        """Scribbles as a dense mask prompt: strokes drawn +/- `MASK_LOGIT` on the 256 px frame, over `base` (a
        previous `low_res`) or 0 elsewhere."""
        feats = self._require()
        h, w = feats.original_size
        canvas, drawn = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
        for stroke, lab in zip(scribbles, scribble_labels):
            line = draw_polyline(stroke, (h, w), width=max(3, round(max(h, w) / 85)))
            canvas[line], drawn[line] = (MASK_LOGIT if lab else -MASK_LOGIT), 1.0
        nh, nw = feats.resized
        small = torch.nn.functional.interpolate(torch.from_numpy(np.stack([canvas, drawn]))[None], (nh, nw),
                                                mode="nearest")[0]
        frame = torch.zeros(1, 1, 256, 256) if base is None else _as_mask_input(base).detach().float().cpu().clone()
        region = frame[0, 0, :nh, :nw]
        region[small[1] > 0] = small[0][small[1] > 0]
        return frame.to(feats.embedding.device)

    def _require(self) -> SliceEmbedding:
        if self.features is None:
            raise RuntimeError("call set_image() before predict()")
        return self.features


MASK_LOGIT = 8.0  # the strength a drawn scribble has as a mask prompt


def _as_mask_input(low: Tensor) -> Tensor:
    """The decoder's 256 px logits as the prompt encoder's mask input (SAM takes them at 4x the embedding)."""
    return low if low.dim() == 4 else low[None]


def _exclude(box, pts: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """Move the box side nearest to each negative click inside it past the click, unless that loses a positive."""
    x1, y1, x2, y2 = box
    pos = pts[labels == 1]
    for r, c in pts[labels == 0]:
        if not (x1 < c < x2 and y1 < r < y2):
            continue
        options = sorted([(c - x1, "x1"), (x2 - c, "x2"), (r - y1, "y1"), (y2 - r, "y2")])
        for _, side in options:
            if side == "x1" and (pos[:, 1] > c).all():
                x1 = c + 1
            elif side == "x2" and (pos[:, 1] < c).all():
                x2 = c - 1
            elif side == "y1" and (pos[:, 0] > r).all():
                y1 = r + 1
            elif side == "y2" and (pos[:, 0] < r).all():
                y2 = r - 1
            else:
                continue
            break
    return float(x1), float(y1), float(x2), float(y2)


def _pixel(shape: tuple[int, int], r: float, c: float) -> tuple[int, int]:
    """The (row, col) index of a click, clamped into the image."""
    return min(max(int(round(r)), 0), shape[0] - 1), min(max(int(round(c)), 0), shape[1] - 1)


def _at(mask: np.ndarray, r: float, c: float) -> bool:
    return bool(mask[_pixel(mask.shape, r, c)])


def _keep_clicked(mask: np.ndarray, pts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Drop the mask's connected pieces under a negative click; with positive clicks keep only their pieces."""
    comp, n = ndimage.label(mask)
    if n == 0:
        return mask
    h, w = mask.shape
    at = [(int(comp[min(max(int(round(r)), 0), h - 1), min(max(int(round(c)), 0), w - 1)]), lab)
          for (r, c), lab in zip(pts, labels)]
    keep = {i for i, lab in at if lab == 1 and i}
    drop = {i for i, lab in at if lab == 0 and i} - keep  # a piece holding both kinds of click stays
    ids = keep if keep else set(range(1, n + 1)) - drop
    return np.isin(comp, sorted(ids))


def sample_stroke(stroke: Sequence[Sequence[float]], n: int = SCRIBBLE_POINTS) -> np.ndarray:
    """`n` points evenly spaced by arc length along a polyline of (row, col) points."""
    pts = np.asarray(stroke, np.float32).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("scribble has no points")
    if len(pts) == 1:
        return pts
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] == 0:
        return pts[:1]
    at = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(at, arc, pts[:, 0]), np.interp(at, arc, pts[:, 1])], axis=1).astype(np.float32)


def mask_box(mask: np.ndarray, margin: float = 0.0) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) of a mask's foreground, grown by `margin` px and clipped to the image; None if empty."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    h, w = mask.shape
    return (max(cols.min() - margin, 0.0), max(rows.min() - margin, 0.0),
            min(cols.max() + margin, w - 1.0), min(rows.max() + margin, h - 1.0))
