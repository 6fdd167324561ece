"""Boxes from masks, the two published box text conventions, and box metrics (BiRD, MedRegA).

Pixel boxes use edge coordinates: `x1, y1` is the top-left corner of the first pixel, `x2, y2` the bottom-right
corner of the last (so a one-pixel box is 1 wide), x = column. Text conventions normalise edges to a grid:
  * BiRD (Qwen-VL style): `<ref>phrase</ref><box>(x1,y1),(x2,y2)</box>`, integers on 0..1000;
  * MedRegA: `<ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>`, integers on 0..999, several boxes as `[[..], [..]]`.
Pixel -> grid -> pixel is exact for images up to the grid size (1000 / 999 px); larger images lose what the grid
cannot hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from medplib.imaging.regions import Box

FORMATS = ("bird", "medrega")
SCALE = {"bird": 1000, "medrega": 999}
_BIRD_BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_MEDREGA_BOX = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")
_REF_BOX = re.compile(r"(?:<ref>(.*?)</ref>\s*)?((?:<box>.*?</box>\s*)+)", re.DOTALL)
_BOX_TAG = re.compile(r"<box>(.*?)</box>", re.DOTALL)


@dataclass(frozen=True)
class PixelBox:
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(self.x2 - self.x1, 0.0) * max(self.y2 - self.y1, 0.0)

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class TextBox:
    """A box found in text: its phrase (None when the text gave no `<ref>`), pixel box and convention."""

    phrase: str | None
    box: PixelBox
    convention: str
    span: tuple[int, int]  # where the whole `<ref>..</ref><box>..</box>` group sits in the text


def components(mask: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, list[tuple[int, int, tuple]]]:
    """Fully connected components (8-connected in 2D, 26 in 3D): the label image and, largest first, each
    component of at least `min_area` pixels as (label, size, bounding slices)."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if n == 0:
        return labels, []
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    found = [(i + 1, int(sizes[i]), sl) for i, sl in enumerate(ndimage.find_objects(labels))
             if sl is not None and sizes[i] >= min_area]
    return labels, sorted(found, key=lambda c: -c[1])


def slices_box(sl: tuple) -> PixelBox:
    """The edge box of 2D bounding slices (rows, cols)."""
    return PixelBox(float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))


def mask_boxes(mask: np.ndarray, min_area: int = 10) -> list[PixelBox]:
    """One box per 8-connected component of at least `min_area` pixels, largest component first."""
    return [slices_box(sl) for _, _, sl in components(mask, min_area)[1]]


def to_grid(box: PixelBox, shape: tuple[int, int], convention: str) -> list[int]:
    h, w = shape
    s = SCALE[convention]
    return [int(round(box.x1 / w * s)), int(round(box.y1 / h * s)), int(round(box.x2 / w * s)),
            int(round(box.y2 / h * s))]


def from_grid(values: Sequence[float], shape: tuple[int, int], convention: str) -> PixelBox:
    h, w = shape
    s = SCALE[convention]
    x1, y1, x2, y2 = (float(v) for v in values)
    return PixelBox(float(round(x1 * w / s)), float(round(y1 * h / s)), float(round(x2 * w / s)),
                    float(round(y2 * h / s)))


def format_boxes(phrase: str, boxes: Iterable[PixelBox], shape: tuple[int, int], convention: str) -> str:
    """`<ref>phrase</ref><box>..</box>` in the chosen convention ('' when there is no box)."""
    grids = [to_grid(b, shape, convention) for b in boxes]
    if not grids:
        return ""
    if convention == "bird":
        body = "".join(f"<box>({g[0]},{g[1]}),({g[2]},{g[3]})</box>" for g in grids)
    elif convention == "medrega":
        body = "<box>[" + ", ".join(f"[{g[0]}, {g[1]}, {g[2]}, {g[3]}]" for g in grids) + "]</box>"
    else:
        raise ValueError(f"box_format must be one of {FORMATS}, got {convention!r}")
    return f"<ref>{phrase}</ref>{body}"


def parse_boxes(text: str, shape: tuple[int, int]) -> list[TextBox]:
    """Every box written in either convention, with its phrase; BiRD's bare `(x1,y1),(x2,y2)` is accepted too.

    A box whose corners are out of order or outside the grid raises ValueError naming it.
    """
    found: list[TextBox] = []
    covered: list[tuple[int, int]] = []
    for m in _REF_BOX.finditer(text):
        phrase = m.group(1).strip() if m.group(1) is not None else None
        for tag in _BOX_TAG.finditer(m.group(2)):
            found += _boxes_in(tag.group(1), phrase, shape, (m.start(), m.end()))
        covered.append((m.start(), m.end()))
    for m in _BIRD_BOX.finditer(text):  # BiRD's evaluation fallback: coordinates without <box> tags
        if not any(a <= m.start() < b for a, b in covered):
            found += _boxes_in(m.group(0), None, shape, (m.start(), m.end()))
    return found


def _boxes_in(body: str, phrase: str | None, shape, span) -> list[TextBox]:
    bird = _BIRD_BOX.findall(body)
    convention, groups = ("bird", bird) if bird else ("medrega", _MEDREGA_BOX.findall(body))
    if not groups:
        raise ValueError(f"box text {body!r} is neither (x1,y1),(x2,y2) nor [[x1, y1, x2, y2]]")
    out = []
    for g in groups:
        v = [int(x) for x in g]
        if v[2] <= v[0] or v[3] <= v[1] or max(v) > SCALE[convention]:
            raise ValueError(f"box {v} must have x1 < x2, y1 < y2 on the 0..{SCALE[convention]} grid")
        out.append(TextBox(phrase, from_grid(v, shape, convention), convention, span))
    return out


def boxes_to_regions(text: str, shape: tuple[int, int]) -> tuple[str, list]:
    """Replace each `<ref>..</ref><box>..</box>` group (or bare BiRD box) in a question by a `<region>` marker;
    returns the new text and one inclusive `regions.Box` per group, in order. Raises ValueError on bad boxes."""
    found = parse_boxes(text, shape)
    spans = sorted({tb.span for tb in found})
    if len(spans) != len(found):
        raise ValueError("write one box per <ref>..</ref> group in a question")
    pieces, last = [], 0
    for start, end in spans:
        pieces += [text[last:start], "<region></region>"]
        last = end
    pieces.append(text[last:])
    regions = []
    for tb in sorted(found, key=lambda t: t.span):
        b = tb.box
        x2, y2 = min(b.x2, shape[1]) - 1, min(b.y2, shape[0]) - 1
        if x2 < b.x1 or y2 < b.y1:
            raise ValueError(f"box {b.as_list()} has no pixel on the {shape[1]}x{shape[0]} image")
        regions.append(Box(b.x1, b.y1, x2, y2))
    return "".join(pieces), regions


# ---------------------------------------------------------------------- metrics
def box_iou(a: PixelBox, b: PixelBox) -> float:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def recall_at(pred: Sequence[PixelBox], gt: Sequence[PixelBox], thr: float = 0.5) -> float:
    """BiRD's grounding score for one sample: 1 if the first predicted box overlaps a truth box with IoU > thr."""
    if not gt:
        return float(not pred)
    return float(bool(pred) and max(box_iou(pred[0], g) for g in gt) > thr)


def hungarian_accuracy(pred: Sequence[PixelBox], gt: Sequence[PixelBox], thr: float) -> float:
    """MedRegA-style: boxes matched one-to-one by IoU (Hungarian); matched pairs with IoU >= thr over
    max(#pred, #truth), so missed and extra boxes both count against the sample."""
    from scipy.optimize import linear_sum_assignment

    if not pred and not gt:
        return 1.0
    if not pred or not gt:
        return 0.0
    iou = np.array([[box_iou(p, g) for g in gt] for p in pred])
    rows, cols = linear_sum_assignment(-iou)
    hits = sum(1 for r, c in zip(rows, cols) if iou[r, c] >= thr)
    return hits / max(len(pred), len(gt))


def box_scores(pred: Sequence[PixelBox], gt: Sequence[PixelBox]) -> dict[str, float]:
    """BiRD's Recall@0.5 and MedRegA's Acc@0.25/0.5/0.75 (Hungarian) for one sample."""
    return {"recall50": recall_at(pred, gt, 0.5), **{f"acc{int(t * 100)}": hungarian_accuracy(pred, gt, t)
                                                       for t in (0.25, 0.5, 0.75)}}
