"""What the MedPLIB Label server answers, parsed: `/info` (:class:`ServerInfo`, :class:`ModelInfo`) and `/infer`
(:class:`InferResult`). Pure data classes (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["ModelInfo", "ServerInfo", "InferResult", "BACKGROUND_NAMES", "clean_label_names"]

BACKGROUND_NAMES = {"background", "bg", "_background_", "背景"}


def clean_label_names(label_names: Optional[Mapping[str, Any]]) -> dict[str, int]:
    """``{name: value}`` without the background: value 0 (every unlabelled voxel) or a background name would
    otherwise become a segment covering the whole slice."""
    out: dict[str, int] = {}
    for name, value in dict(label_names or {}).items():
        try:
            v = int(value)
        except (TypeError, ValueError):
            continue
        if v <= 0 or str(name).strip().lower() in BACKGROUND_NAMES:
            continue
        out[str(name)] = v
    return out


@dataclass
class ModelInfo:
    """One `/info` model: ``type`` (deepgrow, segmentation ...), ``dimension`` (2 slice-wise, 3 volume)."""

    name: str
    type: str = ""
    dimension: int = 0
    description: str = ""
    labels: Any = None
    config: dict = field(default_factory=dict)
    model: str = ""  # the checkpoint the server serves

    @classmethod
    def from_info(cls, name: str, d: Mapping[str, Any]) -> "ModelInfo":
        return cls(name=name, type=str(d.get("type", "")), dimension=int(d.get("dimension") or 0),
                   description=str(d.get("description", "")), labels=d.get("labels"),
                   config=dict(d.get("config") or {}), model=str(d.get("model", "")))


@dataclass
class ServerInfo:
    """The parsed `/info/` of a MedPLIB Label server."""

    url: str
    name: str
    version: str
    description: str
    labels: dict[str, int]
    models: dict[str, ModelInfo]
    trainers: list[str]
    strategies: list[str]
    medplib: dict  # config.medplib: model, device, dtype, threshold ...
    datastore: dict
    raw: dict

    @classmethod
    def from_info(cls, url: str, info: Mapping[str, Any]) -> "ServerInfo":
        labels = info.get("labels") or {}
        if isinstance(labels, (list, tuple)):
            labels = {str(n): i + 1 for i, n in enumerate(labels)}
        labels = clean_label_names(labels)  # no "background" structure to ask for, colour or submit
        return cls(url=url, name=str(info.get("name", "")), version=str(info.get("version", "")),
                   description=str(info.get("description", "")), labels=dict(labels),
                   models={k: ModelInfo.from_info(k, v or {}) for k, v in (info.get("models") or {}).items()},
                   trainers=list(info.get("trainers") or {}), strategies=list(info.get("strategies") or {}),
                   medplib=dict((info.get("config") or {}).get("medplib") or {}),
                   datastore=dict(info.get("datastore") or {}), raw=dict(info))

    @property
    def is_medplib(self) -> bool:
        return "medplib" in self.name.lower() or bool(self.medplib)

    def summary(self) -> str:
        """Short text for a status label, e.g. "MedPLIB Label 0.1.0: medplib (deepgrow, 2D), ..."."""
        models = ", ".join(f"{m.name} ({m.type}, {m.dimension}D)" for m in self.models.values()) or "no models"
        return f"{self.name} {self.version}: {models}"

    def status_line(self) -> str:
        """The "Connected: ..." line of the Server section (with the model's device when the server reports it)."""
        device = self.medplib.get("device") if isinstance(self.medplib, dict) else None
        return f"Connected: {self.summary()}" + (f"; device {device}" if device else "")


@dataclass
class InferResult:
    """An `/infer` answer. ``label_path``: the returned label volume (image geometry) or None (text only).
    ``latency_ms``: the server's total; ``timings``: its per-stage dict; ``round_trip_ms``: measured here."""

    params: dict
    answer: str = ""
    label_path: Optional[str] = None
    label_names: dict[str, int] = field(default_factory=dict)
    seg_count: int = 0
    slice: Optional[int] = None
    axis: Optional[int] = None
    latency_ms: Optional[float] = None
    task: str = ""
    question: Optional[str] = None
    view: str = ""
    scope: str = "slice"
    model: str = ""
    timings: dict = field(default_factory=dict)
    round_trip_ms: float = 0.0
    boxes: list = field(default_factory=list)  # {"label", "ijk": [[min], [max]], "bird", "medrega", ...}
    box_text: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], label_path: Optional[str], round_trip_ms: float = 0.0):
        p = dict(params or {})
        lat = p.get("latency_ms")
        timings = dict(lat) if isinstance(lat, Mapping) else {}
        total = timings.get("total") if timings else (lat if isinstance(lat, (int, float)) else None)
        return cls(params=p, answer=str(p.get("answer") or ""), label_path=label_path,
                   label_names=clean_label_names(p.get("label_names")),
                   seg_count=int(p.get("seg_count") or 0), slice=p.get("slice"), axis=p.get("axis"),
                   latency_ms=None if total is None else float(total), task=str(p.get("task") or ""),
                   question=p.get("question"), view=str(p.get("view") or ""), scope=str(p.get("scope") or "slice"),
                   model=str(p.get("model") or ""), timings=timings, round_trip_ms=round_trip_ms,
                   boxes=[b for b in (p.get("boxes") or []) if isinstance(b, Mapping) and "ijk" in b],
                   box_text=str(p.get("box_text") or ""))

    @property
    def source_note(self) -> str:
        """Where the mask or answer came from when it was not the model's own: "" for the model, e.g.
        "from 7 registered atlases" (the server's atlas prior) or "mask from the box (LiteMedSAM)"."""
        prior = self.params.get("atlas_prior") or {}
        if self.scope == "volume":
            slices = self.params.get("slices") or {}
            prior = next((s.get("atlas_prior") for s in slices.values() if isinstance(s, Mapping)
                          and s.get("mask_source") == "atlas_prior"), prior)
        if isinstance(prior, Mapping) and prior.get("used"):
            return f"from {len(prior.get('atlases') or [])} registered atlases"
        if self.params.get("mask_source") == "promptable":
            return "mask from the box (LiteMedSAM)"
        return ""

    @property
    def has_masks(self) -> bool:
        """Whether the answer carries masks to write into segments. A text-only answer (``seg_count`` 0) still
        comes with an all-zero label volume and ``label_names``: applying it would wipe the named segment's slice,
        so it must not touch the segments."""
        return bool(self.label_path) and bool(self.label_names) and self.seg_count > 0
