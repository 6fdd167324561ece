"""The serving layer (`medplib_label.server:app`): non-blocking /infer, bounded queue, failures isolated."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import pytest

from .app_client import APP_DIR, monailabel_client, parse_infer
from .server_harness import start_server

SLOW = {"label": "brain", "scope": "volume", "axis": 0}  # every sagittal slice of mni152_t1: seconds of work


@pytest.fixture(scope="module")
def real_server(sample_datastore_master, fitted_tiny_dir, tmp_path_factory):
    studies = shutil.copytree(sample_datastore_master, tmp_path_factory.mktemp("srv") / "datastore")
    with start_server(APP_DIR, studies, {"model": str(fitted_tiny_dir), "device": "cpu"},
                      env={"MEDPLIB_MAX_QUEUE": "2"}) as srv:
        yield srv


def _post(url, params, image="mni152_t1", timeout=300):
    return httpx.post(f"{url}/infer/medplib?image={image}&output=json", data={"params": json.dumps(params)},
                      timeout=timeout)


def test_info_answers_while_an_infer_runs(real_server):
    url = real_server.url
    _post(url, {"label": "brain", "slice": 10})  # load the model first
    done = threading.Event()
    result = {}

    def slow():
        result["r"] = _post(url, SLOW)
        done.set()

    worker = threading.Thread(target=slow)
    worker.start()
    while httpx.get(f"{url}/medplib/queue").json()["depth"] == 0 and not done.is_set():
        time.sleep(0.05)
    info = httpx.get(f"{url}/info/", timeout=30)
    answered_during = not done.is_set()
    worker.join()
    assert info.status_code == 200 and answered_during, "the event loop must stay free during an infer"
    assert result["r"].status_code == 200 and result["r"].json()["scope"] == "volume"


def test_full_queue_answers_503_with_retry_after(real_server):
    url = real_server.url
    responses = []
    threads = [threading.Thread(target=lambda: responses.append(_post(url, SLOW))) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 503 in codes, codes  # max 2 in flight: the rest are turned away
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "2" and "busy" in busy.json()["detail"]
    assert _post(url, {"label": "brain", "slice": 10}).status_code == 200  # and the server serves on


def test_model_failure_fails_only_that_request(sample_datastore, fitted_tiny_dir, tmp_path, monkeypatch):
    with monailabel_client(sample_datastore, {"model": str(fitted_tiny_dir)}) as (client, instance):
        import medplib_label.batcher as batcher

        engine = instance().engine
        assert engine.settings.batching  # slice questions go through the model batcher's thread

        def out_of_memory(*args, **kwargs):
            # Stands in for a CUDA OOM inside the model (no GPU here); the handler must not care which.
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        with monkeypatch.context() as patch:
            patch.setattr(batcher, "ask_batch", out_of_memory)
            r = client.post("/infer/medplib?image=mni152_t1", data={"params": json.dumps({"label": "brain"})})
        assert r.status_code == 503 and "out of memory" in r.json()["detail"]
        res, label, _ = parse_infer(client.post("/infer/medplib?image=mni152_t1",
                                                data={"params": json.dumps({"label": "brain"})}), tmp_path)
        assert res["task"] == "ground" and label is not None


def test_unknown_model_image_and_bad_json_are_4xx(sample_datastore, fitted_tiny_dir):
    with monailabel_client(sample_datastore, {"model": str(fitted_tiny_dir)}) as (client, _):
        r = client.post("/infer/nosuchmodel?image=mni152_t1", data={"params": "{}"})
        assert r.status_code == 404 and "nosuchmodel" in r.json()["detail"]
        r = client.post("/infer/medplib?image=no_such_scan", data={"params": "{}"})
        assert r.status_code == 404 and "no_such_scan" in r.json()["detail"]
        r = client.post("/infer/medplib?image=mni152_t1", data={"params": json.dumps({"foreground": [[1, 2, 900]]})})
        assert r.status_code == 422 and r.json()["detail"].startswith("foreground[0]")
        r = client.post("/infer/medplib?image=mni152_t1", data={"params": "{not json"})
        assert r.status_code == 422 and "params" in r.json()["detail"]
