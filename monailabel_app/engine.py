"""One lazily loaded MedPLIB model per server process, shared by the infer tasks, plus small caches.

Loading is lazy because MONAI Label rebuilds the whole app in every train / scoring subprocess: a model loaded
in `__init__` would be loaded again there for nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medplib.loading import DELTA_NAME, WEIGHTS_NAME, build_model, from_pretrained
from medplib.predictor import MedPLIBPredictor
from medplib.preprocess import Window

from .volume_io import Volume, read_volume

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """The `--conf` options of the app that concern the model."""

    model: str = "small"  # preset name, a project checkpoint folder or an official MedPLIB folder
    model_dir: str = "model"  # where trained checkpoints are published (<model_dir>/<preset>/)
    device: str = "auto"
    dtype: str = "auto"
    threshold: float = 0.1
    max_new_tokens: int = 64
    clip_path: str | None = None  # official layout only
    sam_path: str | None = None

    def to_info(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}") from None


class MedPLIBEngine:
    """Holds the model, reloads it when a newer checkpoint is published, and caches the last image/slice."""

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(settings.dtype, self.device)
        self.lock = threading.RLock()  # one request uses the model at a time
        self._model = None
        self._tokenizer = None
        self._loaded_from: str | None = None
        self._loaded_mtime: float | None = None
        self._volume: tuple[tuple[str, float], Volume] | None = None
        self._windows: dict[tuple, object] = {}
        self._predictor: MedPLIBPredictor | None = None
        self._predictor_key: tuple | None = None
        self.load_seconds: float | None = None

    # ------------------------------------------------------------------ model
    def published_dir(self) -> Path | None:
        """Checkpoint folder to serve: an explicit path, or the trainer's published folder for a preset."""
        spec = self.settings.model
        if os.path.isdir(spec):
            return Path(spec)
        published = Path(self.settings.model_dir) / spec
        return published if _weights_file(published) is not None else None

    def model_name(self) -> str:
        folder = self.published_dir()
        return str(folder) if folder else f"{self.settings.model} (untrained preset)"

    def get(self):
        """(model, tokenizer), loading on first use and again whenever the published weights change."""
        with self.lock:
            folder = self.published_dir()
            mtime = _weights_mtime(folder) if folder else None
            source = str(folder) if folder else f"preset:{self.settings.model}"
            if self._model is None or source != self._loaded_from or mtime != self._loaded_mtime:
                t0 = time.perf_counter()
                logger.info("loading MedPLIB model from %s on %s (%s)", source, self.device, self.dtype)
                self._model, self._tokenizer = self._load(folder)
                self._loaded_from, self._loaded_mtime = source, mtime
                self._predictor, self._predictor_key = None, None
                self.load_seconds = time.perf_counter() - t0
            return self._model, self._tokenizer

    def _load(self, folder: Path | None):
        if folder is None:
            model, tok = build_model(self.settings.model)
            return model.to(self.device, self.dtype).eval(), tok
        if (folder / "medplib_config.json").is_file():
            return from_pretrained(folder, device=self.device, dtype=self.dtype)
        if (folder / "config.json").is_file():
            from medplib.official import load_official

            return load_official(folder, self.settings.clip_path, self.settings.sam_path, device=self.device,
                                 dtype=self.dtype)
        raise FileNotFoundError(f"{folder} is neither a MedPLIB project checkpoint nor an official release folder")

    # ------------------------------------------------------------------ caches
    def volume(self, path: str) -> Volume:
        """Read an image once per (path, mtime): interactive clicks re-use the decoded array."""
        key = (path, os.path.getmtime(path))
        with self.lock:
            if self._volume is None or self._volume[0] != key:
                self._volume = (key, read_volume(path))
            return self._volume[1]

    def cached_window(self, path: str, compute):
        """The automatic window of an image, computed once per (path, mtime)."""
        key = (path, os.path.getmtime(path))
        with self.lock:
            if key not in self._windows:
                self._windows = {key: compute()}  # only the current image's window is kept
            return self._windows[key]

    def cached_predictor(self, key: tuple) -> MedPLIBPredictor | None:
        """The predictor of `key` if it is the cached one (refinement clicks must not re-encode)."""
        with self.lock:
            return self._predictor if self._predictor_key == key else None

    def predictor(self, key: tuple, plane: np.ndarray, window: Window) -> tuple[MedPLIBPredictor, bool]:
        """A predictor with `plane` set; re-used (features cached) when `key` matches the previous call."""
        model, tok = self.get()
        with self.lock:
            if self._predictor is not None and self._predictor_key == key:
                return self._predictor, True
            pred = MedPLIBPredictor(model, tok, mask_threshold=self.settings.threshold)
            pred.set_image(plane, window)
            self._predictor, self._predictor_key = pred, key
            return pred, False


def _weights_file(folder: Path) -> Path | None:
    for name in (WEIGHTS_NAME, DELTA_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def _weights_mtime(folder: Path) -> float | None:
    weights = _weights_file(folder)
    return weights.stat().st_mtime if weights is not None else None
