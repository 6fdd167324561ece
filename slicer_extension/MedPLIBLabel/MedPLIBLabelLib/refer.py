"""Refer-and-ground on the Slicer side: boxes from an answer as ROI specs, the chat history a follow-up sends.

Pure Python (numpy only). The Slicer module turns each :class:`RoiSpec` into a ``vtkMRMLMarkupsROINode`` named
after its phrase; ROI axes follow the volume's IJK directions, so a box stays tight on oblique volumes too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Optional

import numpy as np

from .geometry import world_matrix
from .history import ChatHistory

MAX_HISTORY_TURNS = 6  # what the server uses; older turns are not sent
BOX_ATTR = "MedPLIB.Box"  # ROI nodes made from an answer's boxes carry it, valued with their volume's node id


def stale_box_nodes(nodes: Iterable[tuple[Any, Optional[str]]], volume_id: str) -> list:
    """The ROI nodes to remove before showing a new answer's boxes: every box node of this volume (``nodes``:
    ``(node, BOX_ATTR value)`` pairs; "1" is what older versions wrote), so numbered ROIs of an earlier answer
    ("white matter (2)") do not stay behind."""
    return [node for node, owner in nodes if owner in (str(volume_id), "1")]


@dataclass(frozen=True)
class RoiSpec:
    """An ROI for one box: ``name`` (the phrase, numbered when a structure has several boxes), world ``center``,
    ``size`` in mm along ``axes`` (3x3, columns = unit directions in world, always right-handed), and the IJK box
    it came from."""

    name: str
    label: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    axes: np.ndarray
    ijk_min: tuple[int, int, int]
    ijk_max: tuple[int, int, int]

    def object_to_world(self) -> np.ndarray:
        """4x4 matrix: ROI object coordinates (centred, axis-aligned) -> world."""
        m = np.eye(4)
        m[:3, :3] = self.axes
        m[:3, 3] = self.center
        return m


def rois_from_boxes(boxes: Iterable[Mapping[str, Any]], ijk_to_ras_matrix, parent=None) -> list[RoiSpec]:
    """ROI specs for the ``boxes`` of an /infer answer (``{"label", "ijk": [[i,j,k], [i,j,k]]}``, inclusive
    voxel indices). The ROI covers whole voxels: from the first voxel's outer faces to the last one's."""
    m = world_matrix(ijk_to_ras_matrix, parent)
    lin = m[:3, :3]
    lengths = np.linalg.norm(lin, axis=0)
    if np.any(lengths == 0):
        raise ValueError("the volume's IJK to RAS matrix is singular")
    axes = lin / lengths
    if np.linalg.det(axes) < 0:
        # An LPS-style or flipped volume has a left-handed IJK frame; an ROI's frame must be right-handed (else
        # Slicer draws it mirrored). The box is symmetric about its centre, so reversing one axis changes nothing.
        axes = axes.copy()
        axes[:, 2] = -axes[:, 2]
    seen: dict[str, int] = {}
    out = []
    for b in boxes:
        lo, hi = (np.asarray(v, dtype=np.float64) for v in b["ijk"])
        if np.any(hi < lo):
            raise ValueError(f"box {b['ijk']} has max < min")
        centre_ijk = (lo + hi) / 2.0
        centre = lin @ centre_ijk + m[:3, 3]
        size = (hi - lo + 1.0) * lengths
        label = str(b.get("label") or "box")
        seen[label] = seen.get(label, 0) + 1
        name = label if seen[label] == 1 else f"{label} ({seen[label]})"
        out.append(RoiSpec(name, label, tuple(float(x) for x in centre), tuple(float(x) for x in size), axes,
                           tuple(int(x) for x in lo), tuple(int(x) for x in hi)))
    return out


def roi_corners(spec: RoiSpec) -> np.ndarray:
    """The 8 world corners of an ROI (for checks and drawing)."""
    half = np.asarray(spec.size) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    return (signs * half) @ spec.axes.T + np.asarray(spec.center)


def history_params(history: ChatHistory, volume_id: Hashable, max_turns: int = MAX_HISTORY_TURNS,
                   axis: Optional[int] = None, index: Optional[int] = None) -> list[dict[str, str]]:
    """The last answered turns about this volume as the server's ``history`` param (failed turns and reports are
    left out; with ``axis``/``index``, only turns about that slice, since a follow-up refers to what is shown)."""
    turns = [t for t in history.turns(volume_id) if not t.error and t.answer and t.task != "report"]
    if axis is not None and index is not None:
        turns = [t for t in turns if t.axis == axis and t.slice == index]
    return [{"question": t.question, "answer": t.answer} for t in turns[-max_turns:]]
