"""Promptable segmentation (the server's LiteMedSAM models) as plain data: which model serves a mode, the wire
params of a click / box / scribble / lasso request without a question, the segment a mask goes into, the interaction
session that makes each new click replace the previous mask of the same interaction, and the 3D coverage line.

Server models (``/info`` ``models.<name>.config.modes``): ``medplib_sam`` announces ``"promptable"`` (one slice),
``medplib_sam_3d`` announces ``"box3d"`` (the same prompts propagated through the volume). Wire params:
``label`` (segment name; ``label_name`` when a lasso region is uploaded as the ``label`` file), ``foreground`` /
``background`` ``[[i, j, k]]``, ``roi`` ``[i_a, i_b, j_a, j_b, k_a, k_b]``, ``scribble`` ``[[i, j, k], ...]``,
``slice``, ``axis``, ``window``, optional ``sam_threshold`` and (3D) ``max_slices``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .protocol import PromptError, build_infer_params, numpy_axis

__all__ = ["PROMPTABLE_MODES", "DEFAULT_MODELS", "DEFAULT_SEGMENT", "mode_model", "promptable_segment_name",
           "build_promptable_params", "Coverage", "parse_coverage", "promptable_status", "InteractionSession",
           "covered_planes"]

PROMPTABLE_MODES = ("promptable", "box3d")
DEFAULT_MODELS = {"promptable": "medplib_sam", "box3d": "medplib_sam_3d"}
DEFAULT_SEGMENT = "target"
_PROMPT_KEYS = ("foreground", "background", "roi", "scribble")


def mode_model(info: Any, mode: str) -> Optional[str]:
    """The model that serves ``mode``: the one whose ``/info`` ``config.modes`` announces it (the default name
    first when several do); None when the server announces none."""
    models = getattr(info, "models", None) or {}
    names = [name for name, model in models.items()
             if mode in ((getattr(model, "config", None) or {}).get("modes") or [])]
    if not names:
        return None
    preferred = DEFAULT_MODELS.get(mode)
    return preferred if preferred in names else sorted(names)[0]


def promptable_segment_name(typed: str = "", selected_name: Optional[str] = None) -> str:
    """The segment a promptable mask is named after: the typed / chosen segment name, else the selected segment's
    name, else "target" (the server never needs a name; it only names the segment)."""
    return (typed or "").strip() or (selected_name or "").strip() or DEFAULT_SEGMENT


def build_promptable_params(prompts: Sequence[Any], ijk_to_ras, slice_to_ras, parent=None,
                            dims: Optional[Sequence[int]] = None, segment_name: str = DEFAULT_SEGMENT,
                            window: Any = None, volume: bool = False, has_region: bool = False,
                            sam_threshold: Optional[float] = None, max_slices: Optional[int] = None) -> dict:
    """Params of ``medplib_sam`` (``volume`` False) or ``medplib_sam_3d`` (True) for the prompts on the view
    ``slice_to_ras``: no question, no task/scope. The prompts are validated and mapped exactly as for a MedPLIB
    question (off-slice points, a box not crossing the slice, more than one box / scribble / lasso: PromptError).
    ``has_region``: a lasso's filled region goes along as the uploaded ``label`` file (the client then sends the
    segment name as ``label_name``). Raises PromptError when there is nothing to segment from."""
    params = build_infer_params(None, prompts, ijk_to_ras, slice_to_ras, parent, task="auto", scope="slice",
                                segment_name=segment_name or DEFAULT_SEGMENT, window=window, dims=dims)
    params.pop("task", None)
    params.pop("scope", None)
    if not has_region and not any(k in params for k in _PROMPT_KEYS):
        raise PromptError("Place a click, a box, a scribble or a lasso on the slice to segment from.")
    if sam_threshold is not None:
        if not 0.0 < float(sam_threshold) < 1.0:
            raise PromptError(f"The mask threshold must be between 0 and 1 (got {sam_threshold}).")
        params["sam_threshold"] = float(sam_threshold)
    if volume and max_slices is not None:
        if int(max_slices) < 0:
            raise PromptError("max_slices must be 0 (no limit) or more.")
        params["max_slices"] = int(max_slices)
    return params


@dataclass(frozen=True)
class Coverage:
    """``slices_covered`` and ``stopped`` of a 3D answer: how many slices the mask covers (``first``..``last``,
    prompted on ``start``) and why propagation stopped upwards and downwards."""

    count: int
    first: Optional[int]
    last: Optional[int]
    start: Optional[int]
    stopped: dict = field(default_factory=dict)

    def text(self) -> str:
        if not self.count:
            where = f" (prompted slice {self.start})" if self.start is not None else ""
            return f"3D: no slice covered{where}" + self._why()
        span = f"slices {self.first}-{self.last}" if self.first != self.last else f"slice {self.first}"
        start = f", started on {self.start}" if self.start is not None else ""
        return f"3D: {self.count} slice(s) covered ({span}{start})" + self._why()

    def _why(self) -> str:
        parts = [f"{d}: {self.stopped[d]}" for d in ("up", "down") if self.stopped.get(d)]
        parts += [f"{d}: {v}" for d, v in self.stopped.items() if d not in ("up", "down") and v]
        return "; stopped " + ", ".join(parts) + "." if parts else "."


def _int(value: Any) -> Optional[int]:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def parse_coverage(params: Optional[Mapping[str, Any]]) -> Optional[Coverage]:
    """The :class:`Coverage` of a 3D answer's params (``InferResult.params``); None when it has none."""
    covered = (params or {}).get("slices_covered")
    if not isinstance(covered, Mapping):
        return None
    stopped = (params or {}).get("stopped")
    return Coverage(count=_int(covered.get("count")) or 0, first=_int(covered.get("first")),
                    last=_int(covered.get("last")), start=_int(covered.get("start")),
                    stopped={str(k): str(v) for k, v in dict(stopped).items()} if isinstance(stopped, Mapping) else {})


def promptable_status(params: Optional[Mapping[str, Any]], written: Optional[Mapping[str, int]] = None) -> str:
    """The status line after a promptable answer: voxels written, the decoder's IoU estimate, whether the slice's
    embedding was cached, the latency; for 3D the coverage and why it stopped."""
    p = dict(params or {})
    names = ", ".join(f"{name}: {n} voxels" for name, n in (written or {}).items()) or "empty mask"
    bits = [names]
    if p.get("iou_prediction") is not None:
        bits.append(f"IoU estimate {float(p['iou_prediction']):.2f}")
    if p.get("embedding_cached") is not None:
        bits.append("cached slice" if p["embedding_cached"] else "slice encoded")
    lat = p.get("latency_ms")
    total = lat.get("total") if isinstance(lat, Mapping) else lat
    if isinstance(total, (int, float)):
        bits.append(f"{float(total):.0f} ms")
    line = "Segmented (" + "; ".join(bits) + ")."
    coverage = parse_coverage(p)
    return line if coverage is None else line[:-1] + ". " + coverage.text()


class InteractionSession:
    """One promptable interaction: the prompts placed on one slice for one segment. Each new click or box sends
    all the prompts again; the new mask replaces the previous mask of this interaction, and the segment's content
    from before the interaction (``base``) is kept. Ends (:meth:`reset`) when the prompts are cleared; another
    key (volume, segmentation, segment, axis, slice) starts a new one."""

    def __init__(self) -> None:
        self.key: Optional[tuple] = None
        self.base: Optional[np.ndarray] = None
        self.steps = 0

    def reset(self) -> None:
        self.key, self.base, self.steps = None, None, 0

    @property
    def active(self) -> bool:
        return self.key is not None

    def plane(self, key: tuple, current: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The plane to write for ``mask``: ``base | mask``. ``current``: the segment's plane now (bool); it
        becomes the base when ``key`` starts a new interaction."""
        mask = np.asarray(mask, dtype=bool)
        if key != self.key or self.base is None or self.base.shape != mask.shape:
            self.key, self.base, self.steps = key, np.array(current, dtype=bool, copy=True), 0
        self.steps += 1
        return self.base | mask


def covered_planes(mask_kji: np.ndarray, axis: int) -> list[int]:
    """Indices along IJK ``axis`` of the planes where a 3D KJI mask has voxels (the slices a 3D answer touches)."""
    arr = np.asarray(mask_kji)
    other = tuple(a for a in range(3) if a != numpy_axis(axis))
    return [int(j) for j in np.nonzero(arr.any(axis=other))[0]]
