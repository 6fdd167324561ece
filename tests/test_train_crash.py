"""A training run that dies (a real SIGKILL of MONAI Label's training subprocess, or an exception inside the loop)
leaves the published model in place, the server serving it, and /info saying the run failed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import httpx
import pytest

from medplib.checkpoints.project import save_pretrained
from medplib.training.trainer import TrainConfig, Trainer

from .app_client import APP_DIR
from .server_harness import start_server


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait(fn, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_training_keeps_the_published_model(sample_datastore, fitted_tiny, tmp_path):
    model, tok, *_ = fitted_tiny
    model_dir = tmp_path / "model"
    published = save_pretrained(model, tok, model_dir / "tiny") / "model.safetensors"
    digest = _sha(published)
    conf = {"model": "tiny", "model_dir": str(model_dir), "device": "cpu"}
    with start_server(APP_DIR, sample_datastore, conf) as srv:
        http = httpx.Client(base_url=srv.url, timeout=120)
        ask = {"params": json.dumps({"question": "What modality is this?", "slice": 90})}
        assert http.post("/infer/medplib?image=mni152_t1&output=json", data=ask).json()["model"] == str(
            model_dir / "tiny")
        params = {"name": "crash", "stage": "vqa", "epochs": 1, "max_steps_per_epoch": 500, "slice_step": 20,
                  "val_slice_step": 60, "val_samples": 2, "lora_r": 2}
        assert http.post("/train/medplib", json=params).status_code == 200

        def running():
            st = http.get("/info/").json().get("train_stats", {}).get("medplib", {})
            return st if st.get("status") == "RUNNING" and st.get("name") == "crash" else None

        pid = _wait(running, 240, "the training run to start")["pid"]
        assert pid != srv.pid
        time.sleep(2)  # let it take a few steps
        os.kill(pid, signal.SIGKILL)

        def failed():
            st = http.get("/info/").json()["train_stats"]["medplib"]
            return st if st.get("status") == "FAILED" else None

        st = _wait(failed, 60, "/info to report the killed run")
        assert "killed or crashed" in st["error"] and "published model was kept" in st["error"]
        assert _sha(published) == digest
        r = http.post("/infer/medplib?image=mni152_t1&output=json", data=ask)
        assert r.status_code == 200 and r.json()["model"] == str(model_dir / "tiny")
        assert srv.alive()


def test_exception_in_training_marks_failed_and_keeps_published(sample_datastore, fitted_tiny, tmp_path,
                                                                monkeypatch):
    from monailabel.datastore.local import LocalDatastore

    from medplib.training.run import RunPaths, run_training

    model, tok, *_ = fitted_tiny
    paths = RunPaths(tmp_path / "model", "boom", "tiny")
    published = save_pretrained(model, tok, paths.published) / "model.safetensors"
    digest = _sha(published)

    def explode(self, *args, **kwargs):  # fault injection: stands for any failure inside a training step
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(Trainer, "_epoch", explode)
    cfg = TrainConfig(stage="vqa", max_steps_per_epoch=2, val_samples=2)
    with pytest.raises(RuntimeError, match="injected"):
        run_training(LocalDatastore(str(sample_datastore), auto_reload=False), "tiny", paths, cfg, slice_step=60,
                     val_slice_step=60, progress=False)
    stats = json.loads(paths.stats_file.read_text())
    assert stats["status"] == "FAILED" and "injected" in stats["error"]
    assert _sha(published) == digest
