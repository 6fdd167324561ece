"""Dynamic batching through the real MONAI Label server (issue #6 P5): concurrent clients' slice questions are
answered in shared batches by one model copy, each client getting the answer it gets alone."""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import pytest

from .app_client import APP_DIR
from .server_harness import start_server

REQUESTS = [{"label": "brain", "slice": 60 + 7 * i} if i % 2 == 0 else
            {"question": "What modality is this image?", "slice": 60 + 7 * i} for i in range(6)]


@pytest.fixture(scope="module")
def batching_server(sample_datastore_master, fitted_tiny_dir, tmp_path_factory):
    studies = shutil.copytree(sample_datastore_master, tmp_path_factory.mktemp("batch") / "datastore")
    # a long batch window, so that the concurrent requests below surely meet in one batch
    conf = {"model": str(fitted_tiny_dir), "device": "cpu", "batch_wait_ms": "1500", "max_batch": "8"}
    with start_server(APP_DIR, studies, conf) as srv:
        yield srv.url


def _infer(url: str, params: dict) -> dict:
    r = httpx.post(f"{url}/infer/medplib?image=mni152_t1&output=json", data={"params": json.dumps(params)},
                   timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def _comparable(result: dict) -> tuple:
    return (result["answer"], result["task"], result["seg_count"], json.dumps(result["boxes"], sort_keys=True),
            [round(v, 3) for v in result["iou_predictions"]])


def test_concurrent_requests_are_batched_and_equal_to_sequential(batching_server):
    url = batching_server
    _infer(url, {"label": "brain", "slice": 10})  # loads the model
    before = httpx.get(f"{url}/medplib/queue").json()["batcher"]
    results: dict[int, dict] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _infer(url, REQUESTS[i])))
               for i in range(len(REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = httpx.get(f"{url}/medplib/queue").json()
    assert status["batcher"]["largest_batch"] >= 3, status  # several clients shared a batch
    assert status["batcher"]["requests"] - before["requests"] == len(REQUESTS)
    assert not any(results[i]["features_cached"] for i in range(len(REQUESTS)))  # encoded in the batch
    # The same questions one at a time (now from the feature cache, batch of one): the same answers.
    for i, params in enumerate(REQUESTS):
        alone = _infer(url, params)
        assert alone["features_cached"]
        assert _comparable(alone) == _comparable(results[i]), params
    assert {r["task"] for r in results.values()} == {"ground", "vqa"}
    assert status["feature_cache"]["entries"] >= len(REQUESTS) + 1


def test_feature_cache_is_bounded_by_memory(sample_datastore_master, fitted_tiny_dir, tmp_path):
    """With no budget only the newest slice stays cached; an evicted slice is encoded again."""
    studies = shutil.copytree(sample_datastore_master, tmp_path / "datastore")
    conf = {"model": str(fitted_tiny_dir), "device": "cpu", "feature_cache_mb": "0"}
    with start_server(APP_DIR, studies, conf) as srv:
        for k in (40, 41, 42, 43):
            _infer(srv.url, {"label": "brain", "slice": k})
        cache = httpx.get(f"{srv.url}/medplib/queue").json()["feature_cache"]
        assert cache["entries"] == 1 and cache["max_mib"] == 0
        assert _infer(srv.url, {"label": "brain", "slice": 43})["features_cached"]
        assert not _infer(srv.url, {"label": "brain", "slice": 40})["features_cached"]


def test_feature_cache_lru_by_bytes(fitted_tiny):
    """The LRU keeps as many slices as their measured bytes allow, dropping the least recently used."""
    import numpy as np

    from medplib.inference.predictor import MedPLIBPredictor
    from medplib_label.engine import FeatureCache

    model, tok, img, _, _ = fitted_tiny
    preds = []
    for k in range(4):
        pred = MedPLIBPredictor(model, tok)
        pred.set_image(np.roll(img, k, axis=0))
        pred.ask("What modality is this?")  # fills the image-prefix KV cache, which counts too
        preds.append(pred)
    size = preds[0].memory_bytes()
    assert size > sum(t.numel() * 4 for t in (preds[0].features.image_tokens, preds[0].features.sam_embedding))
    cache = FeatureCache(int(2.5 * size))
    cache.put("a", preds[0])
    cache.put("b", preds[1])
    assert cache.get("a") is preds[0]  # "a" is now the most recent
    cache.put("c", preds[2])  # over budget: "b", the least recent, goes
    assert cache.get("b") is None and cache.get("a") is preds[0] and cache.get("c") is preds[2]
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes and cache.last() is preds[2]
