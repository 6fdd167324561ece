"""Schema of the `/infer` params of the MedPLIB tasks: every field validated, errors name the field (HTTP 422)."""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

MAX_QUESTION_CHARS = 2000
Triple = list[float]


class WindowParam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    center: float
    width: float = Field(gt=0)

    @field_validator("center", "width")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


def _clean_text(v: str | None) -> str | None:
    if v is None:
        return v
    if any((ord(ch) < 32 and ch not in "\n\t") or ord(ch) == 127 for ch in v):
        raise ValueError("must not contain control characters")
    return v.strip() or None


class HistoryTurn(BaseModel):
    """One earlier exchange of a chat about this slice (rendered before the new question)."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    answer: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)

    @field_validator("question", "answer")
    @classmethod
    def _text(cls, v: str) -> str:
        v = _clean_text(v)
        if v is None:
            raise ValueError("must not be blank")
        return v


class InferParams(BaseModel):
    """The keys this app reads; anything else a client sends (client_id, device, ...) is ignored."""

    model_config = ConfigDict(extra="ignore")

    question: str | None = Field(default=None, max_length=MAX_QUESTION_CHARS)
    label: str | None = Field(default=None, max_length=4096)  # segment name, or the path of an uploaded label file
    label_name: str | None = Field(default=None, max_length=200)  # segment name when `label` is a file
    foreground: list[Triple] = Field(default_factory=list, max_length=256)
    background: list[Triple] = Field(default_factory=list, max_length=256)
    roi: list[float] | None = None
    scribble: list[Triple] | None = Field(default=None, max_length=4096)
    slice: int | None = None
    axis: int = 2
    task: Literal["auto", "vqa", "region", "ground", "report"] = "auto"
    scope: Literal["slice", "volume"] = "slice"
    window: WindowParam | None = None
    largest_cc: bool = False
    refine: bool = False  # re-decode the last grounded mask on this slice with the clicks / roi (no LLM)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    max_new_tokens: int | None = Field(default=None, ge=1, le=2048)
    result_extension: Literal[".nii.gz", ".nrrd", ".nii"] = ".nii.gz"
    history: list[HistoryTurn] = Field(default_factory=list, max_length=64)  # the last 6 are used
    box_format: Literal["medrega", "bird"] = "medrega"  # convention of `box_text` (both are always in `boxes`)
    min_box_area: int = Field(default=10, ge=1, le=10_000_000)  # voxels; smaller components get no box
    labels: list[str] | None = Field(default=None, max_length=64)  # structures a report grounds (default: app's)
    # Promptable segmentation (LiteMedSAM): mask threshold on its probability, and how far 3D propagation may go.
    sam_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    max_slices: int | None = Field(default=None, ge=0, le=100_000)  # per direction, from the prompted slice

    @field_validator("question", "label", "label_name")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return _clean_text(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        cleaned = [_clean_text(x) for x in v]
        if any(x is None or len(x) > 200 for x in cleaned):
            raise ValueError("each label must be a non-blank name of at most 200 characters")
        return list(dict.fromkeys(cleaned)) or None

    @field_validator("foreground", "background", "scribble")
    @classmethod
    def _points(cls, v: list[Triple] | None, info: ValidationInfo) -> list[Triple] | None:
        if info.field_name == "scribble" and v is not None and len(v) == 0:
            # No clicks is a valid "no points"; an empty stroke is a client bug, not "no scribble".
            raise ValueError("an empty scribble has no points: send at least one [i, j, k], or leave it out")
        for p in v or []:
            if len(p) != 3 or not all(math.isfinite(x) for x in p):
                raise ValueError("each point must be [i, j, k] with finite numbers")
        return v

    @field_validator("roi")
    @classmethod
    def _roi(cls, v: list[float] | None) -> list[float] | None:
        if v is None or len(v) == 0:
            return None
        if len(v) != 6 or not all(math.isfinite(x) for x in v):
            raise ValueError("roi must be [i_a, i_b, j_a, j_b, k_a, k_b]")
        return v

    @field_validator("axis")
    @classmethod
    def _axis(cls, v: int) -> int:
        if v not in (0, 1, 2):
            raise ValueError("axis must be 0, 1 or 2")
        return v


def parse_params(request: dict[str, Any], defaults: dict[str, Any]) -> InferParams:
    """Merge config defaults (MONAI Label does not do it for a plain InferTask) and validate."""
    merged = {k: (v[0] if isinstance(v, list) and k in ("task", "scope", "result_extension", "box_format") else v)
              for k, v in defaults.items()}
    for key, value in request.items():
        if value is None or value == "":
            continue  # Slicer sends every config key, empty strings included
        merged[key] = value
    # Slicer sends string config values; accept "2" for axis, "true" for largest_cc, etc.
    try:
        return InferParams.model_validate(merged)
    except ValidationError as exc:
        raise HTTPException(status_code=422, detail=_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"]) or "params"
        parts.append(f"{field}: {err['msg']}")
    return "invalid infer params: " + "; ".join(parts)


def bad_request(field: str, message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=f"{field}: {message}")
