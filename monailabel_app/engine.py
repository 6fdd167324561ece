"""One lazily loaded MedPLIB model per server process, shared by the infer tasks, plus small caches.

Loading is lazy because MONAI Label rebuilds the whole app in every train / scoring subprocess: a model loaded
in `__init__` would be loaded again there for nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medplib.checkpoints.build import build_model
from medplib.checkpoints.official import load_official
from medplib.checkpoints.project import DELTA_NAME, WEIGHTS_NAME, from_pretrained
from medplib.data.volumes import Volume, read_volume
from medplib.imaging.preprocess import Window
from medplib.inference.compiled import compile_model
from medplib.inference.predictor import Answer, MedPLIBPredictor
from medplib.model.lora import merge_lora

from .atlas_priors import AtlasPriors
from .batcher import ModelBatcher
from .promptable_engine import PromptableEngine, sam_dtype

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
    feature_cache_mb: int = 256  # slices whose features + image-prefix KV cache are kept (LRU, by memory)
    batching: bool = True  # concurrent slice questions share encoder / LLM / mask-decoder batches
    max_batch: int = 8
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests once the model is free
    compile: str = "none"  # torch.compile: none | llm (decoder layers) | all (+ vision towers, mask decoder)
    seg_state: str = "predicting"  # <SEG> prompt state: predicting | release (`MedPLIBConfig.seg_state`)
    sam_dtype: str = "auto"  # promptable LiteMedSAM: auto (bf16 where native) | float32 | bfloat16
    atlas_prior: str = "auto"  # named structures / point naming from registered atlases: auto | off

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
        self.features = FeatureCache(settings.feature_cache_mb * 2 ** 20)
        self.load_seconds: float | None = None
        self._batcher = None
        # LiteMedSAM (promptable segmentation): its own lazy model, embeddings in the same slice LRU.
        self.sam = PromptableEngine(settings.model_dir, self.device, self.features, self.lock,
                                    sam_dtype(settings.sam_dtype, self.device))
        self.atlas = AtlasPriors(settings.atlas_prior)

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
                self._model.config.seg_state = self.settings.seg_state
                if self.settings.compile != "none":
                    compiled = compile_model(self._model, self.settings.compile)
                    logger.info("torch.compile on %d modules (compiled on first use)", len(compiled))
                self._loaded_from, self._loaded_mtime = source, mtime
                self.features.clear()
                self.load_seconds = time.perf_counter() - t0
            return self._model, self._tokenizer

    def _load(self, folder: Path | None):
        if folder is None:
            model, tok = build_model(self.settings.model)
            return model.to(self.device, self.dtype).eval(), tok
        if (folder / "medplib_config.json").is_file():
            model, tok = from_pretrained(folder, device=self.device, dtype=self.dtype)
            merge_lora(model)  # serving never trains: fold the LoRA factors in (same outputs, ~10 % faster)
            return model, tok
        if (folder / "config.json").is_file():
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
        """The predictor of `key` if its features are cached (refinement clicks must not re-encode)."""
        with self.lock:
            return self.features.get(key)

    def predictor(self, key: tuple, plane: np.ndarray, window: Window) -> tuple[MedPLIBPredictor, bool]:
        """A predictor with `plane` set; re-used (features cached) when `key` was seen recently."""
        model, tok = self.get()
        with self.lock:
            pred = self.features.get(key)
            if pred is not None:
                return pred, True
            pred = MedPLIBPredictor(model, tok, mask_threshold=self.settings.threshold)
            pred.set_image(plane, window)
            self.features.put(key, pred)
            return pred, False

    def ask(self, key: tuple, plane: np.ndarray, window: Window, question: str, **kwargs) -> tuple[Answer, bool]:
        """Answer a greedy question on a slice: batched with other clients' questions when batching is on.

        Returns (answer, whether the slice's features were already cached)."""
        if self.settings.batching and self.settings.max_batch > 1:
            return self.batcher().ask(key, plane, window, question, **kwargs)
        with self.lock:
            pred, cached = self.predictor(key, plane, window)
            return pred.ask(question, **kwargs), cached

    def serving_stats(self) -> dict:
        """The slice cache's and the batcher's counters (the batcher is None until the first batched question)."""
        return {"feature_cache": self.features.stats(),
                "batcher": self._batcher.stats() if self._batcher is not None else None,
                "promptable": self.sam.stats()}

    def batcher(self):
        with self.lock:
            if self._batcher is None:
                self._batcher = ModelBatcher(self, self.settings.max_batch, self.settings.batch_wait_ms / 1e3)
            return self._batcher


class FeatureCache:
    """LRU of per-slice predictors (image features + image-prefix KV cache), bounded by their tensors' bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[MedPLIBPredictor, int]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> MedPLIBPredictor | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: tuple, pred: MedPLIBPredictor) -> None:
        self._items[key] = (pred, pred.memory_bytes())
        self._items.move_to_end(key)
        self.trim()

    def trim(self) -> None:
        """Re-measure (a prefix cache may have been filled since `put`) and drop the least recent entries; the
        newest entry always stays."""
        for key, (pred, _) in self._items.items():
            self._items[key] = (pred, pred.memory_bytes())
        while len(self._items) > 1 and self.bytes > self.max_bytes:
            self._items.popitem(last=False)

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def last(self) -> MedPLIBPredictor | None:
        """The most recently used predictor."""
        return next(reversed(self._items.values()))[0] if self._items else None

    def clear(self) -> None:
        self._items.clear()

    def peek_where(self, predicate) -> list[tuple[tuple, object]]:
        """(key, value) of the entries whose key satisfies `predicate`, without touching the LRU order."""
        return [(k, v) for k, (v, _) in self._items.items() if predicate(k)]

    def drop_where(self, predicate) -> None:
        """Remove the entries whose key satisfies `predicate` (e.g. one model's, after it reloaded)."""
        for key in [k for k in self._items if predicate(k)]:
            del self._items[key]

    def stats(self) -> dict[str, int]:
        return {"entries": len(self), "mib": self.bytes // 2 ** 20, "max_mib": self.max_bytes // 2 ** 20,
                "hits": self.hits, "misses": self.misses}


def _weights_file(folder: Path) -> Path | None:
    for name in (WEIGHTS_NAME, DELTA_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def _weights_mtime(folder: Path) -> float | None:
    weights = _weights_file(folder)
    return weights.stat().st_mtime if weights is not None else None
