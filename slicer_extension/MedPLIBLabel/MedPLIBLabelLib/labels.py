"""Segments <-> label values: the colours of new segments, and the one label volume "Submit label" sends (segment
names mapped to the server's label values). Numpy only; the Slicer module exports each segment as a KJI 0/1 array.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["SEGMENT_COLORS", "segment_color", "pick_segment_color", "label_values", "segments_to_label"]

SEGMENT_COLORS = [(0.90, 0.49, 0.13), (0.16, 0.67, 0.35), (0.20, 0.47, 0.85), (0.85, 0.20, 0.35),
                  (0.62, 0.36, 0.80), (0.95, 0.80, 0.20), (0.15, 0.75, 0.80), (0.55, 0.55, 0.55)]


def segment_color(value: Optional[int]) -> tuple[float, float, float]:
    """The colour of a new segment for the answer's label ``value`` (1 -> the first colour; cycles)."""
    v = 1 if value is None else int(value)
    return SEGMENT_COLORS[(v - 1) % len(SEGMENT_COLORS)]


def _close(a: Sequence[float], b: Sequence[float], tol: float = 0.02) -> bool:
    return all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))


def pick_segment_color(name: str, server_labels: Optional[Mapping[str, int]] = None,
                       used: Iterable[Sequence[float]] = ()) -> tuple[float, float, float]:
    """The colour of a new segment ``name``: the colour of its stable value among the server's ``/info`` labels
    (the same structure always gets the same colour), else the first palette colour no existing segment uses
    (``used``: their RGB colours), else the palette cycled by the number of segments. Never the per-answer value,
    which is 1 for every single-mask answer."""
    used = [tuple(c) for c in used]
    value = dict(server_labels or {}).get(str(name))
    if value is not None and int(value) > 0:
        color = segment_color(int(value))
        if not any(_close(color, u) for u in used):
            return color
    for color in SEGMENT_COLORS:
        if not any(_close(color, u) for u in used):
            return color
    return SEGMENT_COLORS[len(used) % len(SEGMENT_COLORS)]


def label_values(segment_names: Iterable[str], server_labels: Optional[Mapping[str, int]] = None) -> dict[str, int]:
    """``{segment name: label value}`` for "Submit label": the server's value where the name is one of its labels,
    else the next free value above all of the server's values, in segment order. Segments sharing a name share a
    value. Raises ValueError when there are no segments."""
    names = [str(n) for n in segment_names]
    if not names:
        raise ValueError("The segmentation has no segments to submit.")
    server = {str(k): int(v) for k, v in dict(server_labels or {}).items()}
    next_value = max(list(server.values()) + [0]) + 1
    out: dict[str, int] = {}
    for name in names:
        if name in out:
            continue
        value = server.get(name)
        if value is None:
            value, next_value = next_value, next_value + 1
        out[name] = int(value)
    return out


def segments_to_label(masks: Iterable[tuple[str, np.ndarray]], values: Mapping[str, int],
                      shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """One label array from ``(segment name, mask)`` pairs (KJI arrays, non-zero = inside; any iterable, consumed
    one at a time so a generator keeps one segment in memory): each segment's voxels get ``values[name]``; where
    segments overlap, the later one wins. uint8 while every value of ``values`` fits, else uint16. ``shape``: the
    volume's (else the first mask's); every mask must have it."""
    it = iter(masks)
    first = None
    if shape is None:
        first = next(it, None)
        if first is None:
            raise ValueError("segments_to_label needs a shape or at least one mask")
        shape = np.shape(first[1])
    vals = [int(v) for v in values.values()]
    top = max(vals + [0])
    if top > np.iinfo(np.uint16).max or min(vals + [0]) < 0:
        raise ValueError(f"label values must be 0..65535, got {sorted(vals)}")
    label = np.zeros(tuple(int(s) for s in shape), np.uint8 if top <= 255 else np.uint16)
    for name, mask in _chain(first, it):
        mask = np.asarray(mask)
        if mask.shape != label.shape:
            raise ValueError(f"segment {name!r} has shape {mask.shape}, the volume {label.shape}")
        label[mask > 0] = int(values[name])
    return label


def _chain(first, rest):
    if first is not None:
        yield first
    yield from rest
