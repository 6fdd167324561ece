"""The widget's decisions and texts as plain functions: which buttons are enabled, status lines, image ids, the server
address history, the order of models, the question shown in the chat. The Slicer widget only copies the results
into its Qt controls.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterable, Optional, Sequence

__all__ = ["DEFAULT_URL", "CLIENT_TIMEOUT_S", "SLICE_TIMEOUT_S", "VOLUME_TIMEOUT_S", "SAFE_ID", "is_safe_id",
           "safe_image_id", "new_image_id", "training_status_text", "training_running", "user_message",
           "button_states", "image_id_text", "url_choices", "url_history_after_connect", "sort_model_names",
           "pick_trainer", "shown_question", "reload_order", "LIB_MODULE_ORDER"]

DEFAULT_URL = "http://127.0.0.1:8000"
CLIENT_TIMEOUT_S = 30.0  # connect / info / datastore calls (per socket operation)
SLICE_TIMEOUT_S = 300.0  # one slice (the first request also loads the model)
VOLUME_TIMEOUT_S = 1800.0  # every slice of a volume

# The server's datastore id rule (monailabel_app/datastore.py SAFE_ID, and no "..").
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_ID = 128


def is_safe_id(value: str) -> bool:
    """Whether the server accepts ``value`` as an image id (or tag)."""
    return bool(SAFE_ID.match(str(value))) and ".." not in str(value)


def safe_image_id(name: Any, fallback: str = "volume", max_len: int = MAX_ID) -> str:
    """A server-safe id from a volume name: other characters than letters, digits, '.', '_', '-' become '_', runs
    of dots become one, it starts and ends with a letter or digit, at most ``max_len`` (<= 128) characters;
    ``fallback`` (made safe the same way) when nothing is left."""
    max_len = max(1, min(int(max_len), MAX_ID))

    def clean(value: Any) -> str:
        s = re.sub(r"[^A-Za-z0-9._-]", "_", "" if value is None else str(value))
        return re.sub(r"\.{2,}", ".", s).strip("._-")[:max_len].rstrip("._-")

    return clean(name) or clean(fallback) or "volume"[:max_len]


def new_image_id(volume_name: Any, stamp: Optional[str] = None, prefix: str = "slicer_") -> str:
    """The id a local volume is uploaded under: ``slicer_<name, 40 characters at most>_<YYYYmmdd_HHMMSS>``."""
    stamp = time.strftime("%Y%m%d_%H%M%S") if stamp is None else str(stamp)
    return safe_image_id(f"{prefix}{safe_image_id(volume_name)[:40]}_{stamp}")


def training_status_text(status) -> str:
    """One line for the training status label from GET /train/ (a task dict, a list of them, or None)."""
    if not status:
        return "Training: none run yet"
    if isinstance(status, list):
        status = status[-1] if status else {}
    state = str(status.get("status", "unknown")).upper()
    details = status.get("details") or []
    last = str(details[-1]).strip() if details else ""
    return f"Training: {state}" + (f" - {last[:200]}" if last else "")


def training_running(status) -> bool:
    """Whether to keep polling the training status."""
    return training_status_text(status).startswith("Training: RUNNING")


def user_message(exc: BaseException) -> str:
    """The plain-English message of a Lib error (``user_message``), else the exception text."""
    return getattr(exc, "user_message", "") or str(exc) or type(exc).__name__


def button_states(connected: bool, busy: bool, has_volume: bool, has_model: bool, can_undo: bool,
                  has_segmentation: bool, can_3d: bool = False) -> dict[str, bool]:
    """``{widget name in MedPLIBLabel.ui: enabled}`` for the widget's buttons. ``can_3d``: the server announces
    the "box3d" mode (its promptable 3D model)."""
    ready = connected and not busy
    return {
        "segment3DButton": ready and has_volume and can_3d,
        "testConnectionButton": not busy,
        "nextSampleButton": ready,
        "uploadVolumeButton": ready and has_volume,
        "askButton": ready and has_model and has_volume,
        "segmentVolumeButton": ready and has_model and has_volume,
        "reportButton": ready and has_model and has_volume,
        "undoButton": can_undo and not busy,
        "submitLabelButton": ready and has_volume and has_segmentation,
        "trainButton": ready,
        "stopTrainButton": ready,
        "refreshTrainingButton": connected,
        "cancelButton": busy,
    }


def image_id_text(image_id: Optional[str], has_volume: bool) -> str:
    """The "Image id" line of the Volume section."""
    if image_id:
        return image_id
    return "not on the server yet (uploaded on the first question)" if has_volume else "-"


def _history(history: Any) -> list[str]:
    if isinstance(history, (list, tuple)):
        history = ";".join(str(u) for u in history)
    return [u for u in str(history or "").split(";") if u]


def url_choices(current: Any, history: Any, default: str) -> list[str]:
    """The server combo box's items: the saved current address (else ``default``), then the rest of the history."""
    current = str(current or "") or default
    return [current] + [u for u in _history(history) if u != current]


def url_history_after_connect(url: str, history: Any, keep: int = 10) -> str:
    """The saved history (";"-separated) after connecting to ``url``: it goes first, ``keep`` addresses at most."""
    rest = [u for u in _history(history) if u != url]
    return ";".join([url] + rest[:max(0, keep - 1)])


def sort_model_names(names: Iterable[str]) -> list[str]:
    """Model names for the combo box: "medplib" first, then other MedPLIB models, then the rest (alphabetical)."""
    return sorted(names, key=lambda n: (n != "medplib", "medplib" not in n.lower(), n))


def pick_trainer(trainers: Optional[Sequence[str]], model: str) -> str:
    """The trainer to start: the selected model's when the server has one of that name, else its first."""
    trainers = list(trainers or [])
    return model if model in trainers else (trainers[0] if trainers else "medplib")


def shown_question(question: str, segment_name: str = "", scope: str = "slice", n_prompts: int = 0) -> str:
    """The question as the chat shows it."""
    shown = question or (f"Segment the {segment_name}" if segment_name else "(describe the slice)")
    if scope == "volume":
        shown += " [whole volume]"
    elif n_prompts:
        shown += f" [{n_prompts} prompt(s)]"
    return shown


# Modules of MedPLIBLabelLib, dependencies first (tests/test_slicer_module_static.py checks every file is listed).
LIB_MODULE_ORDER = ("errors", "codec", "geometry", "protocol", "results", "labels", "prompts", "ui_state", "jobs",
                    "history", "refer", "volume_io", "regions", "interaction", "promptable", "client", "tasks")


def reload_order(loaded: Iterable[str], lib: str = "MedPLIBLabelLib", slicer_pkg: str = "MedPLIBLabelSlicer",
                 slicer_order: Sequence[str] = ("parameters", "interaction", "logic", "server_sections",
                                                "promptable", "selftest")) -> list[str]:
    """The loaded modules (``sys.modules`` names) to reload for the developer "Reload", dependencies first: the
    Lib's modules, the Lib package, then the Slicer-side package's modules and the package."""
    loaded = set(loaded)

    def ordered(pkg: str, order: Sequence[str]) -> list[str]:
        subs = [n for n in loaded if n.startswith(pkg + ".")]
        rank = {name: i for i, name in enumerate(order)}
        subs.sort(key=lambda n: (rank.get(n.split(".", 1)[1], len(order)), n))
        return subs + ([pkg] if pkg in loaded else [])

    return ordered(lib, LIB_MODULE_ORDER) + ordered(slicer_pkg, slicer_order)
