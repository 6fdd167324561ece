"""Shared fixtures: tiny MedPLIB models (random, and briefly fitted so answers are meaningful)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# The tiny model's ops are microseconds; OpenMP threads only add contention on a 2-core CI machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the random `tiny` preset."""
    from medplib.checkpoints.build import build_model

    return build_model("tiny", seed=0)


def synthetic_image(h: int = 40, w: int = 70, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).rand(h, w).astype(np.float32)


def structure_masks(h: int = 40, w: int = 70) -> tuple[np.ndarray, np.ndarray]:
    liver = np.zeros((h, w), bool)
    liver[5:20, 10:40] = True
    spleen = np.zeros((h, w), bool)
    spleen[25:38, 50:66] = True
    return liver, spleen


@pytest.fixture(scope="session")
def fitted_tiny():
    """A tiny model fitted for ~150 steps on a few conversations, so that its answers depend on the input.

    Returns (model, tokenizer, image, {"liver": mask, "spleen": mask}, final loss).
    """
    from medplib.checkpoints.build import build_model
    from medplib.imaging.regions import Point
    from medplib.model.losses import compute_loss
    from medplib.training.samples import make_sample

    model, tok = build_model("tiny", seed=1)
    img = synthetic_image()
    liver, spleen = structure_masks()
    cfg = model.config
    samples = [
        make_sample(cfg, tok, img, "What is this?", "left", regions=[Point(8, 8)]),
        make_sample(cfg, tok, img, "What is this?", "right", regions=[Point(32, 62)]),
        make_sample(cfg, tok, img, "Please segment the liver.", "Sure, it is <SEG>.", masks=[liver]),
        make_sample(cfg, tok, img, "Segment the liver and the spleen.", "<SEG> and <SEG>.", masks=[liver, spleen]),
        make_sample(cfg, tok, img, "What modality is this?", "CT"),
    ]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    loss = None
    for _ in range(150):
        out = compute_loss(model, samples)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        loss = float(out["loss"].detach())
    model.eval()
    return model, tok, img, {"liver": liver, "spleen": spleen}, loss


@pytest.fixture(scope="session")
def fitted_tiny_dir(fitted_tiny, tmp_path_factory):
    """The fitted tiny model saved as a project checkpoint (what `--conf model <dir>` serves)."""
    from medplib.checkpoints.project import save_pretrained

    model, tok, *_ = fitted_tiny
    return save_pretrained(model, tok, tmp_path_factory.mktemp("ckpt") / "tiny-fitted")


@pytest.fixture(scope="session")
def sample_datastore_master(tmp_path_factory):
    """The real sample datastore, built once per test session (never the repo's copy)."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "sample_data" / "build_sample_data.py"
    spec = importlib.util.spec_from_file_location("build_sample_data", script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_sample_data", mod)  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod.build(tmp_path_factory.mktemp("studies") / "datastore")


@pytest.fixture()
def sample_datastore(sample_datastore_master, tmp_path):
    """A private copy of the sample datastore for a test that may modify it."""
    import shutil

    return shutil.copytree(sample_datastore_master, tmp_path / "datastore")


@pytest.fixture(scope="module")
def studies(sample_datastore_master, tmp_path_factory):
    """A module-private copy of the sample datastore for a module's real server (it may write to it)."""
    import shutil
    from pathlib import Path

    return Path(shutil.copytree(sample_datastore_master, tmp_path_factory.mktemp("served") / "datastore"))


@pytest.fixture(scope="module")
def server(studies, fitted_tiny_dir):
    """A real `monailabel start_server` (medplib_label.server:app) serving the fitted tiny model on CPU, so its
    answers are the fitted ones on any machine. Modules may override `server` with their own."""
    from .app_client import APP_DIR
    from .server_harness import start_server

    with start_server(APP_DIR, studies, {"model": str(fitted_tiny_dir), "device": "cpu"}) as srv:
        yield srv
        assert srv.alive(), f"the server died during the tests; log tail:\n{srv.log_tail()}"
