"""The prompts placed in the slice views, as plain data: from markups positions to Lib prompts, which view they lie
on, and the prompt summary line. The Slicer module only reads the markups nodes and slice nodes into lists and 4x4
matrices and calls these.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Sequence

from .geometry import ObliqueSliceError, point_on_view, slice_spacing
from .protocol import BoxPrompt, LassoPrompt, PointPrompt, PromptError, ScribblePrompt

__all__ = ["VIEW_NAMES", "prompt_points", "view_order", "choose_view", "roi_is_defined", "stroke_prompt",
           "collect_prompts", "prompt_counts", "prompt_summary"]

VIEW_NAMES = ("Red", "Yellow", "Green")  # Slicer's standard slice views, in the order they are tried


def prompt_points(prompts) -> list[list[float]]:
    """The world points that must lie on the view's slice: every point, the centre of a box, every point of a
    stroke."""
    points: list[list[float]] = []
    for p in prompts or []:
        if isinstance(p, PointPrompt):
            points.append([float(v) for v in p.ras])
        elif isinstance(p, BoxPrompt):
            points.append([(float(a) + float(b)) / 2.0 for a, b in zip(p.corner_a, p.corner_b)])
        elif isinstance(p, (ScribblePrompt, LassoPrompt)):
            points += [[float(v) for v in q] for q in p.ras_points]
    return points


def view_order(names: Sequence[str], preferred: Optional[str] = None) -> list[str]:
    """The order views are tried in: ``preferred`` (when it is one of ``names``), then Red, Yellow, Green, then the
    other views of the layout."""
    names = list(names)
    order = ([preferred] if preferred in names else []) + [n for n in VIEW_NAMES if n in names and n != preferred]
    return order + [n for n in names if n not in order]


def choose_view(points_ras, views: Mapping[str, object], ijk_to_ras, parent=None,
                preferred: Optional[str] = None) -> str:
    """The slice view whose current slice shows every point of ``points_ras`` (world), trying ``preferred`` first.

    ``views``: ``{view name: slice_to_ras 4x4}`` of the layout's slice views. Without points (or without the
    volume's ``ijk_to_ras``), the first view of :func:`view_order` (``preferred`` when it is a view), or "Red" when
    there are no views. Oblique views are skipped. Raises :class:`~.protocol.PromptError` when no view shows all
    the points (the user scrolled away from the slice they drew on).
    """
    order = view_order(list(views), preferred)
    points = [list(p) for p in (points_ras if points_ras is not None else [])]
    if not points or ijk_to_ras is None:
        return order[0] if order else "Red"
    for name in order:
        slice_to_ras = views[name]
        try:
            spacing = slice_spacing(ijk_to_ras, slice_to_ras, parent)
        except ObliqueSliceError:
            continue
        if all(point_on_view(p, slice_to_ras, spacing) for p in points):
            return name
    raise PromptError("The prompts are not all on the current slice of one view (Red, Yellow or Green). "
                      "Scroll back to the slice you drew on, or clear the prompts and draw them again.")


def roi_is_defined(size: Sequence[float]) -> bool:
    """Whether a Markups ROI of this world size has been drawn (at least 2 non-zero sides; a new ROI is 0 x 0 x 0)."""
    return sum(1 for s in size if float(s) > 1e-6) >= 2


def stroke_prompt(points: Sequence[Sequence[float]], closed: bool = False):
    """A scribble (open curve, at least 2 points) or a lasso (``closed``: a :class:`LassoPrompt`, at least 3
    points, sent as the region it encloses) from its control points; None for too few points."""
    points = [list(p) for p in points or []]
    if len(points) < (3 if closed else 2):
        return None
    return LassoPrompt(ras_points=points) if closed else ScribblePrompt(ras_points=points)


def collect_prompts(positive=(), negative=(), roi=None, scribble=(), lasso=(), ijk_to_ras=None,
                    parent=None) -> list:
    """The Lib prompts from the markups, in world coordinates: positive then negative points, the box, then the
    scribble and the lasso.

    ``roi``: ``(center, size, axes)`` of the box ROI, or None (an undrawn ROI, see :func:`roi_is_defined`, is
    ignored). ``ijk_to_ras``/``parent``: the volume's geometry, so that a rotated ROI becomes the volume-axis-aligned
    box around it (:meth:`~.protocol.BoxPrompt.from_roi`).
    """
    prompts: list = [PointPrompt(ras=list(p), positive=True) for p in positive or []]
    prompts += [PointPrompt(ras=list(p), positive=False) for p in negative or []]
    if roi is not None:
        center, size, axes = roi
        if roi_is_defined(size):
            prompts.append(BoxPrompt.from_roi(center, size, axes, ijk_to_ras=ijk_to_ras, parent=parent))
    for points, closed in ((scribble, False), (lasso, True)):
        stroke = stroke_prompt(points, closed=closed)
        if stroke is not None:
            prompts.append(stroke)
    return prompts


def prompt_counts(n_positive: int = 0, n_negative: int = 0, box: bool = False, n_scribble: int = 0,
                  n_lasso: int = 0) -> "OrderedDict[str, int]":
    """``{label: count}`` for the summary line, from the numbers of defined control points (a scribble counts once
    it has 2 points, a lasso once it has 3)."""
    return OrderedDict([("positive point(s)", int(n_positive)), ("negative point(s)", int(n_negative)),
                        ("box", 1 if box else 0), ("scribble", 1 if n_scribble >= 2 else 0),
                        ("lasso", 1 if n_lasso >= 3 else 0)])


def prompt_summary(counts: Mapping[str, int], view: Optional[str] = None) -> str:
    """The Prompts section's summary line, e.g. "Prompts: 2 positive point(s), 1 box on the Yellow view."."""
    parts = [f"{n} {label}" for label, n in counts.items() if n]
    if not parts:
        return "No prompts: the question is about the whole slice."
    where = f" on the {view} view" if view else ""
    return "Prompts: " + ", ".join(parts) + where + "."
