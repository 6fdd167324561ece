"""Prompts placed in Slicer -> MedPLIB `/infer` params, and the returned label volume -> segment slices.

Wire params (MedPLIB Label server, `infers/request.py`): ``question``, ``label`` (segment name), ``foreground`` /
``background`` ``[[i, j, k], ...]``, ``roi`` ``[i_a, i_b, j_a, j_b, k_a, k_b]``, ``scribble`` ``[[i, j, k], ...]``,
``slice``, ``axis`` (0, 1, 2), ``task`` (auto|vqa|region|ground), ``scope`` (slice|volume), ``window``
``{center, width}``, ``largest_cc``, ``threshold``, ``max_new_tokens``, ``result_extension``. All indices are 0-based
IJK of the image as stored on the server (for a NIfTI image, the NIfTI array order).

Slicer arrays (``arrayFromVolume``, ``arrayFromSegmentBinaryLabelmap``) are KJI: IJK axis ``a`` is numpy axis
``2 - a``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .geometry import ijk_to_ras as _ijk_to_ras
from .geometry import (point_on_view, points_to_ijk, ras_to_ijk, roi_corners_world, roi_to_ijk, scribble_to_ijk,
                       slice_axis_from_normal, slice_index, slice_spacing)

__all__ = ["PointPrompt", "BoxPrompt", "ScribblePrompt", "LassoPrompt", "Prompt", "PromptError",
           "build_infer_params",
           "numpy_axis", "slice_replacement", "read_slice", "write_slice", "masks_from_label",
           "label_outside_slice", "ijk_dims"]

TASKS = ("auto", "vqa", "region", "ground", "report")
SCOPES = ("slice", "volume")


class PromptError(ValueError):
    """A prompt cannot be sent as placed (off the current slice, outside the image, unsupported combination).
    ``user_message`` is meant for the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.user_message = message


@dataclass
class PointPrompt:
    """A click in world (RAS) coordinates; ``positive`` False for a background (exclude) point."""

    ras: Sequence[float]
    positive: bool = True


@dataclass
class BoxPrompt:
    """An axis-aligned box by two opposite world corners (any order)."""

    corner_a: Sequence[float]
    corner_b: Sequence[float]

    @classmethod
    def from_roi(cls, center: Sequence[float], size: Sequence[float], axes=None, ijk_to_ras=None,
                 parent=None) -> "BoxPrompt":
        """The box of a (possibly rotated) Markups ROI: ``center``/``size`` (``GetCenterWorld``/``GetSizeWorld``)
        and the rows of its unit X, Y, Z axes in world (``GetXAxisWorld`` ...; identity when None).

        With the volume's ``ijk_to_ras`` (and ``parent``), the box is the volume-axis-aligned box around the ROI's
        8 corners (their IJK min/max), given back as 2 world corners; without, the RAS-axis-aligned one.
        """
        corners = roi_corners_world(center, size, axes)
        if ijk_to_ras is not None:
            ijk = ras_to_ijk(corners, ijk_to_ras, parent)
            lo, hi = _ijk_to_ras(ijk.min(axis=0), ijk_to_ras, parent), _ijk_to_ras(ijk.max(axis=0), ijk_to_ras, parent)
        else:
            lo, hi = corners.min(axis=0), corners.max(axis=0)
        return cls(corner_a=[float(v) for v in lo], corner_b=[float(v) for v in hi])


@dataclass
class ScribblePrompt:
    """A free-hand stroke: the world points of a polyline drawn on the view."""

    ras_points: Sequence[Sequence[float]] = field(default_factory=list)


@dataclass
class LassoPrompt:
    """A closed curve drawn on the view (world points, not repeating the first): the region it encloses is the
    prompt (see :func:`~.regions.lasso_region`), sent as an uploaded region mask, not as a stroke."""

    ras_points: Sequence[Sequence[float]] = field(default_factory=list)


Prompt = Union[PointPrompt, BoxPrompt, ScribblePrompt, LassoPrompt]


def numpy_axis(ijk_axis: int) -> int:
    """Slicer's arrays are KJI: IJK axis ``a`` is numpy axis ``2 - a``."""
    if ijk_axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {ijk_axis}")
    return 2 - int(ijk_axis)


def _window(window: Any) -> Optional[dict]:
    if window is None:
        return None
    if isinstance(window, Mapping):
        center, width = window["center"], window["width"]
    else:
        center, width = window
    center, width = float(center), float(width)
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise PromptError(f"window/level must be finite with a positive width (got level {center}, width {width})")
    return {"center": center, "width": width}


def build_infer_params(question: Optional[str], prompts: Sequence[Prompt], ijk_to_ras, slice_to_ras, parent=None,
                       task: str = "auto", scope: str = "slice", segment_name: Optional[str] = None,
                       window: Any = None, dims: Optional[Sequence[int]] = None, off_slice: str = "error",
                       history: Optional[Sequence[Mapping[str, str]]] = None, **extra: Any) -> dict:
    """Server params for the prompts placed on the view ``slice_to_ras`` of a volume.

    ``axis``/``slice`` come from the view (raises :class:`~.geometry.ObliqueSliceError` for an oblique view);
    prompts become 0-based IJK voxels. ``dims``: the IJK shape, to reject prompts outside the image. A box is
    flattened onto the current slice along the view axis when it touches it. ``off_slice``: what to do with a
    point or scribble that is not on the current slice: "error" (raise :class:`PromptError`) or "drop".
    ``window``: ``{"center", "width"}`` or ``(center, width)``. ``history``: earlier ``{"question", "answer"}``
    turns (see :func:`~.refer.history_params`), sent for follow-up questions. ``extra`` keys (``max_new_tokens``,
    ``threshold``, ``largest_cc``, ``result_extension``, ...) are passed through unless None.
    """
    if task not in TASKS:
        raise PromptError(f"task must be one of {', '.join(TASKS)} (got {task!r})")
    if scope not in SCOPES:
        raise PromptError(f"scope must be one of {', '.join(SCOPES)} (got {scope!r})")
    if off_slice not in ("error", "drop"):
        raise ValueError("off_slice must be 'error' or 'drop'")
    axis, _sign = slice_axis_from_normal(ijk_to_ras, slice_to_ras, parent)
    index = slice_index(ijk_to_ras, slice_to_ras, parent, dims=dims)
    spacing = slice_spacing(ijk_to_ras, slice_to_ras, parent)
    question = (question or "").strip() or None
    params: dict[str, Any] = {"task": task, "scope": scope, "axis": axis}
    if scope == "slice":
        params["slice"] = index
    if question:
        params["question"] = question
    if segment_name:
        params["label"] = str(segment_name)
    w = _window(window)
    if w:
        params["window"] = w
    if history:
        params["history"] = [{"question": str(t["question"]), "answer": str(t["answer"])} for t in history]

    prompts = list(prompts or [])
    if prompts and scope == "volume":
        raise PromptError("Points, boxes and scribbles work on one slice: use the 'slice' scope, or remove the "
                          "prompts to segment the whole volume from the text.")
    foreground: list[list[int]] = []
    background: list[list[int]] = []
    boxes = [p for p in prompts if isinstance(p, BoxPrompt)]
    scribbles = [p for p in prompts if isinstance(p, ScribblePrompt)]
    if len(boxes) > 1:
        raise PromptError("Only one box can be sent per question; remove the extra boxes.")
    if len(scribbles) > 1:
        raise PromptError("Only one scribble stroke can be sent per question; erase the extra strokes.")
    if len([p for p in prompts if isinstance(p, LassoPrompt)]) > 1:
        raise PromptError("Only one lasso can be sent per question; erase the extra lassos.")
    # A lasso is not a param: the widget uploads its filled region (regions.lasso_region) with the request.

    for n, p in enumerate(q for q in prompts if isinstance(q, PointPrompt)):
        if not point_on_view(p.ras, slice_to_ras, spacing):
            if off_slice == "drop":
                continue
            raise PromptError(f"Point {n + 1} is not on the current slice {index}; move to its slice or "
                              "remove it.")
        ijk = points_to_ijk([p.ras], ijk_to_ras, parent, dims=dims)[0]
        ijk[axis] = index
        (foreground if p.positive else background).append(ijk)
    if foreground:
        params["foreground"] = foreground
    if background:
        params["background"] = background

    if boxes:
        roi = roi_to_ijk(boxes[0].corner_a, boxes[0].corner_b, ijk_to_ras, parent, dims=dims)
        lo, hi = roi[2 * axis], roi[2 * axis + 1]
        if scope == "slice":
            if not lo <= index <= hi:
                raise PromptError(f"The box does not cross the current slice {index}; draw it on this slice.")
            roi[2 * axis] = roi[2 * axis + 1] = index
        params["roi"] = roi

    if scribbles:
        pts = list(scribbles[0].ras_points)
        on = [p for p in pts if point_on_view(p, slice_to_ras, spacing)]
        if len(on) != len(pts) and off_slice == "error":
            raise PromptError(f"The scribble is not on the current slice {index}; draw it on this slice.")
        ijk = scribble_to_ijk(on, ijk_to_ras, parent, dims=dims, axis=axis, index=index)
        if ijk:
            params["scribble"] = ijk

    for key, value in extra.items():
        if value is not None:
            params[key] = value
    return params


def read_slice(array_kji: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A copy of the 2D plane ``index`` along IJK ``axis`` of a KJI array."""
    return np.take(np.asarray(array_kji), int(index), axis=numpy_axis(axis)).copy()


def write_slice(array_kji: np.ndarray, plane: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Replace plane ``index`` along IJK ``axis`` of ``array_kji`` in place; return the previous plane (for undo)."""
    sl: list[Any] = [slice(None)] * 3
    sl[numpy_axis(axis)] = int(index)
    target = array_kji[tuple(sl)]
    if target.shape != np.shape(plane):
        raise ValueError(f"plane shape {np.shape(plane)} does not match the slice shape {target.shape}")
    previous = target.copy()
    array_kji[tuple(sl)] = np.asarray(plane).astype(array_kji.dtype, copy=False)
    return previous


def slice_replacement(label_array_kji: np.ndarray, axis: int, index: int,
                      value: Optional[int] = None) -> np.ndarray:
    """The 2D mask (bool, KJI plane order) to write into a segment's plane ``index`` along IJK ``axis``.

    ``label_array_kji``: the returned label volume as Slicer loads it (KJI). ``value``: keep only that label value
    (one segment per ``label_names`` entry); None keeps every non-zero voxel.
    """
    plane = read_slice(label_array_kji, axis, index)
    return plane > 0 if value is None else plane == int(value)


def masks_from_label(label_array_kji: np.ndarray, label_names: Mapping[str, int], axis: int, index: int,
                     scope: str = "slice") -> dict[str, np.ndarray]:
    """``{segment name: mask}`` from a returned label volume: 2D planes for the slice scope, 3D KJI bool
    volumes for the volume scope."""
    out = {}
    for name, value in label_names.items():
        if int(value) <= 0:
            continue  # 0 is every unlabelled voxel (a "background" entry), never a structure
        if scope == "slice":
            out[name] = slice_replacement(label_array_kji, axis, index, value)
        else:
            out[name] = np.asarray(label_array_kji) == int(value)
    return out


def label_outside_slice(label_array_kji: np.ndarray, axis: int, index: int) -> bool:
    """True when the label volume has a non-zero voxel outside plane ``index`` of IJK ``axis`` (a slice-scope
    answer must not)."""
    arr = np.asarray(label_array_kji)
    nz = np.nonzero(arr)[numpy_axis(axis)]
    return bool(np.any(nz != int(index)))


def ijk_dims(array_kji_shape: Sequence[int]) -> tuple[int, int, int]:
    """IJK dims from a KJI numpy shape."""
    k, j, i = (int(s) for s in array_kji_shape)
    return i, j, k

