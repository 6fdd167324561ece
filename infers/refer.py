"""Refer-and-ground helpers for the infer task: boxes out of grounded masks, boxes written in questions, history.

Text boxes (BiRD / MedRegA conventions) are on the model plane: the slice in radiological orientation with
isotropic pixels, i.e. the image the model sees and the `view` the response names. IJK boxes are voxel indices
(inclusive) in the image's own array order, what Slicer needs for ROI nodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medplib.data.planes import PlaneMapper
from medplib.imaging.boxes import FORMATS, PixelBox, boxes_to_regions, components, format_boxes, slices_box
from medplib.imaging.regions import Box
from medplib.model.conversation import Turn

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

    comps, found = components(slice_mask, min_area)
    if not found:
        return []
    on_plane = ndimage.find_objects(mapper.slice_labels_to_plane(comps), max_label=int(comps.max()))
    out = []
    for cid, size, sl in found:
        entry: dict[str, Any] = {"label": name, "value": value, "voxels": size, "ijk": _ijk_box(sl, mapper)}
        if on_plane[cid - 1] is not None:  # a one-voxel component may vanish when the slice is downsampled
            pb = slices_box(on_plane[cid - 1])
            entry["plane"] = pb.as_list()
            for convention in FORMATS:
                entry[convention] = format_boxes(name, [pb], mapper.model_shape, convention)
        out.append(entry)
    return out


def _ijk_box(sl: tuple, mapper: PlaneMapper) -> list[list[int]]:
    """Bounding slices on the slice array (the two other axes in IJK order) -> inclusive IJK [min, max]."""
    other = [a for a in range(3) if a != mapper.axis]
    lo, hi = [0, 0, 0], [0, 0, 0]
    lo[mapper.axis] = hi[mapper.axis] = int(mapper.index)
    for axis, s in zip(other, sl):
        lo[axis], hi[axis] = int(s.start), int(s.stop) - 1
    return [lo, hi]


def box_text(boxes: list[dict[str, Any]], convention: str, shape: tuple[int, int],
             names: dict[str, str] | None = None) -> str:
    """The boxes of a response (those with a model-plane box) in one text convention. MedRegA: one `<ref>` per
    structure holding all its boxes; BiRD: one `<ref>..</ref><box>..</box>` per box. `names` renames phrases."""
    grouped: dict[str, list[PixelBox]] = {}
    for b in boxes:
        if "plane" in b:
            grouped.setdefault(b["label"], []).append(PixelBox(*b["plane"]))
    groups = [(names.get(n, n) if names else n, bs) for n, bs in grouped.items()]
    if convention == "medrega":
        return " ".join(format_boxes(n, bs, shape, convention) for n, bs in groups)
    return " ".join(format_boxes(n, [b], shape, convention) for n, bs in groups for b in bs)


def volume_boxes(name: str, value: int, mask: np.ndarray, min_area: int) -> list[dict[str, Any]]:
    """3D boxes of a volume mask, one per 26-connected component of at least `min_area` voxels, largest first."""
    return [{"label": name, "value": value, "voxels": size, "ijk": [[s.start for s in sl], [s.stop - 1 for s in sl]]}
            for _, size, sl in components(mask, min_area)[1]]
