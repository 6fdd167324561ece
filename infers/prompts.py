"""Turn validated IJK prompts into plane-space prompts for the predictor, and choose the task."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np

from medplib.data.planes import PlaneMapper
from medplib.data.vocabulary import resolve as resolve_structure
from medplib.imaging.regions import Box, Point, Region, Scribble
from medplib.model.bilingual import is_grounding_request_zh
from medplib.model.conversation import grounding_question, is_grounding_request

from .request import InferParams, bad_request


@dataclass
class PlanePrompts:
    regions: list[Region] = field(default_factory=list)  # pooled into the question (region VQA)
    points: np.ndarray | None = None  # native SAM prompts (grounding refinement), (row, col)
    point_labels: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 (x = column)
    used: dict = field(default_factory=dict)  # what was used, for the response

    @property
    def has_region(self) -> bool:
        return bool(self.regions)


def choose_slice(p: InferParams, shape: tuple[int, int, int]) -> int:
    """The slice index: `slice`, else that of the first prompt, else the middle slice."""
    axis = p.axis
    points = p.foreground + p.background
    if p.slice is not None and axis != 2 and points and all(round(q[2]) == p.slice for q in points) \
            and not all(round(q[axis]) == p.slice for q in points):
        # The stock Slicer plugin always sends `slice` as the K index; with another axis, the clicks say which.
        k = int(round(points[0][axis]))
    elif p.slice is not None and axis != 2 and p.roi is not None and not points \
            and not _within(p.slice, p.roi[2 * axis:2 * axis + 2]) and _within(p.slice, p.roi[4:6]):
        # The same for a ROI alone: `slice` is its K, the ROI's extent along `axis` gives the slice.
        k = int(round((p.roi[2 * axis] + p.roi[2 * axis + 1]) / 2))
    elif p.slice is not None:
        k = p.slice
    elif p.foreground:
        k = int(round(p.foreground[0][axis]))
        if not 0 <= k < shape[axis]:
            raise bad_request("foreground[0]", f"{p.foreground[0]} is outside the image of shape {list(shape)}")
    elif p.roi is not None:
        k = int(round((p.roi[2 * axis] + p.roi[2 * axis + 1]) / 2))
    elif p.scribble:
        k = int(round(p.scribble[0][axis]))
    else:
        k = shape[axis] // 2
    if not 0 <= k < shape[axis]:
        raise bad_request("slice", f"{k} is outside 0..{shape[axis] - 1} along axis {axis}")
    return k


def _within(index: float, bounds) -> bool:
    return min(bounds) - 0.5 <= index <= max(bounds) + 0.5


def _check_point(name: str, idx: int, ijk, mapper: PlaneMapper) -> None:
    for a in range(3):
        if not -0.5 <= ijk[a] < mapper.shape[a] - 0.5:
            raise bad_request(f"{name}[{idx}]", f"{list(ijk)} is outside the image of shape {list(mapper.shape)}")
    if not mapper.on_slice(ijk):
        raise bad_request(f"{name}[{idx}]", f"{list(ijk)} is not on slice {mapper.index} of axis {mapper.axis}")


def build_prompts(p: InferParams, mapper: PlaneMapper, scribble_mask: np.ndarray | None) -> PlanePrompts:
    """Map every prompt to model-plane pixels; each foreground point, the roi and the scribble is one region."""
    out = PlanePrompts()
    for name, pts in (("foreground", p.foreground), ("background", p.background)):
        for i, ijk in enumerate(pts):
            _check_point(name, i, ijk, mapper)
    fg = [mapper.to_plane(ijk) for ijk in p.foreground]
    bg = [mapper.to_plane(ijk) for ijk in p.background]
    out.regions.extend(Point(r, c) for r, c in fg)
    if fg or bg:
        out.points = np.array(fg + bg, dtype=np.float32)
        out.point_labels = np.array([1] * len(fg) + [0] * len(bg))
    if p.roi is not None:
        lo = [min(p.roi[2 * a], p.roi[2 * a + 1]) for a in range(3)]
        hi = [max(p.roi[2 * a], p.roi[2 * a + 1]) for a in range(3)]
        _check_point("roi", 0, lo, _slab(mapper, lo))
        _check_point("roi", 1, hi, _slab(mapper, hi))
        if not lo[mapper.axis] - 0.5 <= mapper.index <= hi[mapper.axis] + 0.5:
            raise bad_request("roi", f"does not contain slice {mapper.index} of axis {mapper.axis}")
        corners = [mapper.to_plane(_with_slice(c, mapper)) for c in (lo, hi)]
        (r1, c1), (r2, c2) = corners
        if abs(r2 - r1) < 1e-6 or abs(c2 - c1) < 1e-6:
            raise bad_request("roi", "has zero area on the slice")
        out.box = (min(c1, c2), min(r1, r2), max(c1, c2), max(r1, r2))
        out.regions.append(Box(*out.box))
    if p.scribble:
        for i, ijk in enumerate(p.scribble):
            _check_point("scribble", i, ijk, mapper)
        out.regions.append(Scribble(tuple(mapper.to_plane(ijk) for ijk in p.scribble),
                                    width=max(3, int(round(3 * max(mapper.row_scale, mapper.col_scale))))))
    if scribble_mask is not None:
        plane = mapper.extract(scribble_mask.astype(np.float32)) > 0.5
        if not plane.any():
            raise bad_request("label", f"the uploaded scribble has no voxel on slice {mapper.index}")
        out.regions.append(plane)
    out.used = {"foreground": len(fg), "background": len(bg), "roi": p.roi is not None,
                "scribble": bool(p.scribble) or scribble_mask is not None, "regions": len(out.regions)}
    return out


def _slab(mapper: PlaneMapper, point) -> PlaneMapper:
    """A mapper that accepts any slice index (ROI corners may lie on other slices)."""
    return dataclasses.replace(mapper, index=int(round(point[mapper.axis])))


def _with_slice(point, mapper: PlaneMapper) -> list[float]:
    q = list(point)
    q[mapper.axis] = mapper.index
    return q


_LOCATE_RE = re.compile(r"\b(where|locate|localise|localize|find|highlight)\b|(在哪|哪里|位置|找出)", re.IGNORECASE)


def wants_mask(question: str) -> bool:
    """A segmentation request, in English or Chinese; or a vocabulary structure asked to be located."""
    return is_grounding_request(question) or is_grounding_request_zh(question) or names_a_target(question)


def names_a_target(question: str) -> bool:
    """"Where is the left hippocampus?", "左侧海马在哪里？": a named brain structure to locate is a grounding target."""
    return bool(_LOCATE_RE.search(question)) and resolve_structure(question) is not None


def resolve_task(p: InferParams, prompts: PlanePrompts, segment: str | None) -> tuple[str, str]:
    """(task, question sent to the model) following the `auto` rules of the app."""
    question = p.question
    task = p.task
    if task == "auto":
        if question and prompts.has_region and not wants_mask(question):
            task = "region"
        elif (question and wants_mask(question)) or (not question and segment):
            task = "ground"
        elif question:
            task = "vqa"
        else:
            raise bad_request("question", "give a question, or a label (segment name) to segment")
    if task == "ground" and not question:
        if not segment:
            raise bad_request("label", "grounding needs a question or a label (segment name)")
        question = grounding_question(segment)
    if task in ("vqa", "region") and not question:
        raise bad_request("question", f"task '{task}' needs a question")
    if task == "region" and not prompts.has_region:
        raise bad_request("foreground", "task 'region' needs a point, roi or scribble on the slice")
    return task, question
