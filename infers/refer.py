"""Refer-and-ground helpers for the infer task: boxes out of grounded masks, boxes written in questions, history.

Text boxes (BiRD / MedRegA conventions) are on the model plane: the slice in radiological orientation with
isotropic pixels, i.e. the image the model sees and the `view` the response names. IJK boxes are voxel indices
(inclusive) in the image's own array order, what Slicer needs for ROI nodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medplib.boxes import FORMATS, PixelBox, boxes_to_regions, format_boxes
from medplib.conversation import Turn
from medplib.regions import Box

from medplib_label.geometry import PlaneMapper

from .request import InferParams, bad_request

MAX_HISTORY_TURNS = 6  # older turns are dropped: a long chat must not push the image out of a small context


def history_turns(p: InferParams) -> tuple[list[Turn], int]:
    """The last MAX_HISTORY_TURNS previous turns as conversation turns, and how many older ones were dropped."""
    turns = [Turn(h.question, h.answer) for h in p.history]
    dropped = max(0, len(turns) - MAX_HISTORY_TURNS)
    return turns[dropped:], dropped


def question_boxes(question: str | None, mapper: PlaneMapper) -> tuple[str | None, list[Box]]:
    """Replace every box written in the question (either convention) by a `<region>` marker; returns the new
    question and the boxes as model-plane regions (in order)."""
    if not question or ("<box>" not in question and "),(" not in question.replace(" ", "")):
        return question, []
    try:
        return boxes_to_regions(question, mapper.model_shape)
    except ValueError as exc:
        raise bad_request("question", str(exc)) from None


def slice_boxes(name: str, value: int, slice_mask: np.ndarray, mapper: PlaneMapper,
                min_area: int) -> list[dict[str, Any]]:
    """Boxes of one grounded mask on one slice, one per 8-connected component of >= `min_area` voxels, largest
    first: inclusive IJK corners, and the same component's box on the model plane in both text conventions."""
    from scipy import ndimage

    comps, n = ndimage.label(slice_mask > 0, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    sizes = ndimage.sum_labels(slice_mask > 0, comps, index=np.arange(1, n + 1))
    volume = np.zeros(mapper.shape, np.int32)  # the components on their slice, seen on the model plane
    index = [slice(None)] * 3
    index[mapper.axis] = mapper.index
    volume[tuple(index)] = comps
    plane = mapper.extract_labels(volume)
    out = []
    for cid in np.argsort(-sizes, kind="stable") + 1:
        if sizes[cid - 1] < min_area:
            continue
        entry: dict[str, Any] = {"label": name, "value": value, "voxels": int(sizes[cid - 1]),
                                 "ijk": _ijk_box(_bbox(comps == cid), mapper)}
        if (plane == cid).any():
            pb = _bbox(plane == cid)
            entry["plane"] = pb.as_list()
            for convention in FORMATS:
                entry[convention] = format_boxes(name, [pb], mapper.model_shape, convention)
        out.append(entry)
    return out


def _bbox(mask: np.ndarray) -> PixelBox:
    rows, cols = np.nonzero(mask)
    return PixelBox(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


def _ijk_box(b: PixelBox, mapper: PlaneMapper) -> list[list[int]]:
    """A box on the slice array (rows, cols = the two other axes in order) -> inclusive IJK [min, max]."""
    other = [a for a in range(3) if a != mapper.axis]
    lo, hi = [0, 0, 0], [0, 0, 0]
    lo[mapper.axis] = hi[mapper.axis] = int(mapper.index)
    lo[other[0]], hi[other[0]] = int(b.y1), int(b.y2) - 1
    lo[other[1]], hi[other[1]] = int(b.x1), int(b.x2) - 1
    return [lo, hi]


def box_text(boxes: list[dict[str, Any]], convention: str) -> str:
    """All boxes of a response in one convention, grouped by label: `<ref>name</ref><box>..</box>` each."""
    by_label: dict[str, list[str]] = {}
    for b in boxes:
        if convention in b:
            by_label.setdefault(b["label"], []).append(b[convention])
    if convention == "medrega":  # one <ref> per label, all its boxes in one [[..], [..]] list
        merged = []
        for name, texts in by_label.items():
            inner = ", ".join(t.split("<box>[", 1)[1].rsplit("]</box>", 1)[0] for t in texts)
            merged.append(f"<ref>{name}</ref><box>[{inner}]</box>")
        return " ".join(merged)
    return " ".join(t for texts in by_label.values() for t in texts)


def volume_boxes(name: str, value: int, mask: np.ndarray, min_area: int) -> list[dict[str, Any]]:
    """3D boxes of a volume mask, one per 26-connected component of at least `min_area` voxels."""
    from scipy import ndimage

    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    sizes = ndimage.sum_labels(mask > 0, labels, index=np.arange(1, n + 1))
    out = []
    for idx, sl in enumerate(ndimage.find_objects(labels)):
        if sl is not None and sizes[idx] >= min_area:
            out.append((sizes[idx], {"label": name, "value": value, "voxels": int(sizes[idx]),
                                     "ijk": [[s.start for s in sl], [s.stop - 1 for s in sl]]}))
    return [b for _, b in sorted(out, key=lambda t: -t[0])]
