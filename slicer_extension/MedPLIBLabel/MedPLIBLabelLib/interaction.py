"""The interactive parts of the widget as plain data and decisions: single-key shortcuts, the Application Settings
values, run-on-placement, which segment an answer goes into, and the interaction modes a server offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

__all__ = ["SHORTCUTS", "shortcut_help", "SETTINGS_DEFAULTS", "settings_value", "RUN_ON_PLACEMENT_KINDS",
           "run_on_placement", "TARGET_MODES", "SegmentTarget", "segment_targets", "available_modes",
           "next_segment_index"]

# key -> (widget method, description). The widget binds each to a QShortcut while the module is shown (and no
# text field has the focus, since a QShortcut on a focused line edit would steal typed letters: Qt gives the
# focused widget's own key handling priority for plain keys).
SHORTCUTS: tuple[tuple[str, str, str], ...] = (
    ("p", "onPlacePositive", "place positive points"),
    ("n", "onPlaceNegative", "place negative points"),
    ("t", "onTogglePolarity", "toggle positive / negative points"),
    ("b", "onPlaceBox", "draw a box"),
    ("s", "onPlaceScribble", "draw a scribble"),
    ("l", "onPlaceLasso", "draw a lasso"),
    ("a", "onAsk", "ask (run the question on this slice)"),
    ("r", "onClearPrompts", "reset: clear the prompts"),
    ("g", "onNextSegment", "select the next segment"),
    ("v", "onToggleVisibility", "show / hide the segmentation"),
    ("Ctrl+Z", "onUndo", "undo the last result"),
)


def shortcut_help() -> str:
    """The shortcut list shown in the module ("P: place positive points; ...")."""
    return "; ".join(f"{key.upper() if len(key) == 1 else key}: {text}" for key, _, text in SHORTCUTS)


# QSettings keys of the Application Settings panel and their defaults.
SETTINGS_DEFAULTS: dict[str, Any] = {
    "MedPLIBLabel/serverUrl": "",
    "MedPLIBLabel/showIn3D": False,
    "MedPLIBLabel/autoFetchNextSample": False,
    "MedPLIBLabel/runOnPlacement": True,
}


def settings_value(key: str, raw: Any) -> Any:
    """A QSettings value as its default's type (QSettings returns "true"/"false" strings on some platforms, None
    for a missing key)."""
    default = SETTINGS_DEFAULTS.get(key)
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        if isinstance(raw, str):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return bool(raw)
    return type(default)(raw) if default is not None else raw


RUN_ON_PLACEMENT_KINDS = ("positive", "negative", "box")  # strokes run once finished (place mode ends)


def run_on_placement(enabled: bool, kind: str, finished_stroke: bool = False, busy: bool = False,
                     connected: bool = True, has_volume: bool = True, question: str = "",
                     segment_name: str = "", mode: str = "ask") -> tuple[bool, str]:
    """Whether a prompt just placed re-runs the question at once, and why not. Clicks and boxes run on placement;
    a scribble or lasso runs when it is finished. It needs a connection, a volume, no running request (the
    placement is then not lost: Ask sends it) and, in the "ask" mode, something to ask (a question or a segment
    name). The "promptable" mode needs no text (the mask comes from the prompts alone); "box3d" never runs on
    placement (propagating through the volume takes seconds: its button runs it)."""
    if not enabled:
        return False, ""
    if kind not in RUN_ON_PLACEMENT_KINDS and not (kind in ("scribble", "lasso") and finished_stroke):
        return False, ""
    if not connected or not has_volume:
        return False, "connect to a server and select a volume to run on placement"
    if busy:
        return False, "a request is running; press Ask when it is done"
    if mode == "box3d":
        return False, "press 'Segment in 3D from these prompts' when the prompts are placed"
    if mode == "promptable":
        return True, ""
    if not (question.strip() or segment_name.strip()):
        return False, "type a question or choose a segment name to run on placement"
    return True, ""


TARGET_MODES = ("named", "selected", "new")  # segment named after the answer / the selected one / a new one


@dataclass(frozen=True)
class SegmentTarget:
    """Where one returned mask goes: ``segment_id`` of an existing segment, or a new segment named ``name``."""

    mask_name: str
    name: str
    segment_id: Optional[str] = None

    @property
    def create(self) -> bool:
        return self.segment_id is None


def segment_targets(mode: str, mask_names: Sequence[str], segments: Mapping[str, str],
                    selected_id: Optional[str] = None) -> list[SegmentTarget]:
    """The segment each mask of an answer is written into. ``segments``: ``{segment id: name}`` of the
    segmentation. "named": the segment of the mask's name (created when missing); "selected": the selected segment
    for the first mask (the others by name; "named" when none is selected); "new": always a new segment (numbered
    when the name is taken)."""
    if mode not in TARGET_MODES:
        raise ValueError(f"target mode must be one of {TARGET_MODES}, got {mode!r}")
    by_name = {name: sid for sid, name in segments.items()}
    taken = set(segments.values())
    out: list[SegmentTarget] = []
    for n, mask in enumerate(mask_names):
        if mode == "selected" and n == 0 and selected_id in segments:
            out.append(SegmentTarget(mask, segments[selected_id], selected_id))  # type: ignore[index]
        elif mode == "new":
            name, k = mask, 2
            while name in taken:
                name, k = f"{mask} ({k})", k + 1
            taken.add(name)
            out.append(SegmentTarget(mask, name, None))
        else:
            out.append(SegmentTarget(mask, mask, by_name.get(mask)))
    return out


def next_segment_index(count: int, current: int) -> int:
    """The segment the "next segment" key selects (wraps; 0 when none is selected)."""
    return 0 if count <= 0 else (int(current) + 1) % int(count) if current >= 0 else 0


# What the module can do with a server. "ask" (question + prompts, MedPLIB) is always there; the promptable and
# 3D modes appear when the server's /info announces them (config.medplib.modes or a model's config "modes": the
# server's medplib_sam announces "promptable", medplib_sam_3d "box3d"; see promptable.mode_model).
MODE_TITLES = {"ask": "Ask MedPLIB (question + prompts)",
               "promptable": "Segment (promptable: clicks, box, scribble, lasso; no question)",
               "box3d": "Segment in 3D from these prompts"}


def available_modes(info: Any) -> list[tuple[str, str]]:
    """``[(mode, title)]`` for the mode combo box, from a :class:`~.results.ServerInfo` (or None)."""
    found: list[str] = ["ask"]
    announced: list[Any] = []
    if info is not None:
        announced += list((getattr(info, "medplib", None) or {}).get("modes") or [])
        for model in (getattr(info, "models", None) or {}).values():
            announced += list((getattr(model, "config", None) or {}).get("modes") or [])
    for mode in announced:
        if isinstance(mode, str) and mode in MODE_TITLES and mode not in found:
            found.append(mode)
    return [(m, MODE_TITLES[m]) for m in found]
