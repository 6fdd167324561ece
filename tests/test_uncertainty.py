"""Uncertainty scoring and the uncertainty active-learning strategy on a real LocalDatastore (sample data copy).

The "model whose uncertainty is known": the real tiny MedPLIB model, served by the app's engine from a saved
checkpoint, runs every step (slice preparation, set_image, generation, mask decoder); `KnownLogitsPredictor` then
replaces the mask logits of each answer by a fixed pattern chosen per image (recognised by its plane shape, which
the test checks is unique per unlabelled image). The expected scores are closed-form binary entropies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from monailabel.datastore.local import LocalDatastore

from medplib.data.conversations import load_slice
from medplib.data.volumes import auto_window, read_volume
from medplib.inference.predictor import MedPLIBPredictor
from medplib_label.engine import EngineSettings, MedPLIBEngine
from medplib_label.trainers.uncertainty import (
    KEY,
    KEY_MODEL,
    KEY_PARAMS,
    KEY_STRUCTURES,
    MedPLIBUncertaintyScoring,
    UncertaintyStrategy,
    answer_uncertainty,
    image_uncertainty,
    mask_entropy,
    slice_indices,
)

from .app_client import monailabel_client

UNLABELLED = ["ct_small", "dipy_aniso_vox", "mr_small", "nibabel_anatomical", "nibabel_epi"]
LABELLED = ["mni152_t1", "mni152_t1_lps_aniso"]
STRUCTURES = ["brain", "white matter"]


def bits(logit: float) -> float:
    """Binary entropy of sigmoid(logit) in bits, written independently of the implementation."""
    p = 1.0 / (1.0 + math.exp(-logit))
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def known_logits(image_id: str, question: str, h: int, w: int) -> np.ndarray:
    """The mask logits [n_seg, h, w] the known model answers for an image."""
    if image_id == "mr_small":
        return np.zeros((1, h, w), np.float32)  # p = 0.5 everywhere: the maximum, 1 bit
    if image_id == "ct_small":
        return np.full((1, h, w), 3.0, np.float32)
    if image_id == "nibabel_epi":
        return np.full((1, h, w), -1.0, np.float32)
    if image_id == "nibabel_anatomical":
        out = np.full((1, h, w), 40.0, np.float32)
        out[:, :20] = 0.0  # 20 uncertain rows out of h
        return out
    if image_id == "dipy_aniso_vox":
        if "brain" in question:
            return np.zeros((0, h, w), np.float32)  # no <SEG>: counted as maximal uncertainty
        return np.full((1, h, w), -60.0, np.float32)
    raise AssertionError(image_id)


def expected_scores(shapes: dict[str, tuple[int, int]]) -> dict[str, float]:
    h_anat = shapes["nibabel_anatomical"][0]
    return {"mr_small": 1.0, "ct_small": bits(3.0), "nibabel_epi": bits(-1.0),
            "nibabel_anatomical": (20 * 1.0 + (h_anat - 20) * bits(40.0)) / h_anat,
            "dipy_aniso_vox": (1.0 + bits(-60.0)) / 2}


def plane_shapes(studies) -> dict[str, tuple[int, int]]:
    ds = LocalDatastore(str(studies), auto_reload=False)
    out = {}
    for image_id in UNLABELLED:
        vol = read_volume(ds.get_image_uri(image_id))
        window = auto_window(vol, ds.get_image_info(image_id).get("modality"))
        shapes = {load_slice(vol, 2, k, window).plane.shape for k in slice_indices(vol.shape[2], 2)}
        assert len(shapes) == 1
        out[image_id] = shapes.pop()
    assert len(set(out.values())) == len(out), f"plane shapes must identify the images: {out}"
    return out


class KnownLogitsPredictor(MedPLIBPredictor):
    """The real predictor; only the mask logits of each answer are replaced by `known_logits`."""

    image_of_shape: dict[tuple[int, int], str] = {}
    asked: list[tuple[str, str]] = []

    def ask(self, question, **kwargs):
        ans = super().ask(question, **kwargs)
        h, w = self.features.original_size
        image_id = self.image_of_shape[(h, w)]
        logits = known_logits(image_id, question, h, w)
        KnownLogitsPredictor.asked.append((image_id, question))
        return dataclasses.replace(ans, mask_logits=logits, masks=logits > 0)


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    from medplib.checkpoints.project import save_pretrained

    model, tok = tiny
    return save_pretrained(model, tok, tmp_path_factory.mktemp("unc") / "tiny-ckpt")


@pytest.fixture()
def known(sample_datastore, checkpoint):
    """(datastore, scoring, shapes) with the known-uncertainty model served from a checkpoint folder."""
    shapes = plane_shapes(sample_datastore)
    KnownLogitsPredictor.image_of_shape = {s: i for i, s in shapes.items()}
    KnownLogitsPredictor.asked = []
    engine = MedPLIBEngine(EngineSettings(model=str(checkpoint), device="cpu", dtype="float32"))
    scoring = MedPLIBUncertaintyScoring(engine, STRUCTURES, n_slices=2, predictor_factory=KnownLogitsPredictor)
    return LocalDatastore(str(sample_datastore), auto_reload=False), scoring, shapes


def stored(studies) -> dict[str, dict]:
    """Image infos as persisted in datastore_v2.json, read by a fresh LocalDatastore."""
    ds = LocalDatastore(str(studies), auto_reload=False)
    return {i: ds.get_image_info(i) for i in ds.list_images()}


def label_image(ds: LocalDatastore, image_id: str) -> None:
    ds.save_label(image_id, ds.get_image_uri(image_id), "final", {})


# ---------------------------------------------------------------------------------------------------- units
def test_entropy_helpers():
    assert mask_entropy(np.zeros((4, 5))) == pytest.approx(1.0)
    assert mask_entropy(np.full((3, 3), 1e4)) == pytest.approx(0.0, abs=1e-12)
    assert mask_entropy(np.full((3, 3), -1e4)) == pytest.approx(0.0, abs=1e-12)
    assert mask_entropy(np.array([[0.0, 2.0], [-2.0, 50.0]])) == pytest.approx((1 + 2 * bits(2.0)) / 4)
    assert answer_uncertainty(np.zeros((0, 7, 9), np.float32)) == 1.0  # no <SEG>
    assert answer_uncertainty(np.stack([np.zeros((2, 2)), np.full((2, 2), 80.0)])) == pytest.approx(0.5)
    assert slice_indices(1, 3) == [0]
    assert slice_indices(25, 3) == [6, 12, 18]
    assert slice_indices(2, 3) == [0, 1]


def test_image_uncertainty_with_a_predictor_callable(tiny, sample_datastore):
    model, tok = tiny
    ds = LocalDatastore(str(sample_datastore), auto_reload=False)
    vol = read_volume(ds.get_image_uri("nibabel_epi"))
    window = auto_window(vol, "MR")
    KnownLogitsPredictor.image_of_shape = {load_slice(vol, 2, 0, window).plane.shape: "nibabel_epi"}
    KnownLogitsPredictor.asked = []
    details = {}
    score = image_uncertainty(lambda: KnownLogitsPredictor(model, tok), vol, window, STRUCTURES, n_slices=3,
                              details=details)
    assert score == pytest.approx(bits(-1.0))
    assert details == {name: pytest.approx(bits(-1.0)) for name in STRUCTURES}
    assert KnownLogitsPredictor.asked == [("nibabel_epi", f"Please segment the {n}.") for n in STRUCTURES] * 3


# ---------------------------------------------------------------------------------------------------- scoring
def test_scoring_stores_known_entropies_and_strategy_returns_most_uncertain(known, sample_datastore):
    ds, scoring, shapes = known
    expected = expected_scores(shapes)
    summary = scoring({"method": "uncertainty"}, ds)
    assert summary["executed"] == 5 and summary["skipped"] == 0 and summary["total"] == 5 and not summary["failed"]
    assert summary["scores"] == {k: pytest.approx(v, abs=1e-6) for k, v in expected.items()}

    raw = json.loads((Path(sample_datastore) / "datastore_v2.json").read_text())["objects"]
    infos = stored(sample_datastore)
    for image_id in UNLABELLED:
        assert raw[image_id]["image"]["info"][KEY] == pytest.approx(expected[image_id], abs=1e-6)
        assert infos[image_id][KEY_MODEL] == scoring.model_version()
        assert infos[image_id][KEY_MODEL].startswith(str(scoring.engine.published_dir()) + "@")
        assert infos[image_id][KEY_PARAMS] == {"structures": STRUCTURES, "n_slices": 2, "axis": 2}
    assert infos["dipy_aniso_vox"][KEY_STRUCTURES] == {"brain": 1.0, "white matter": pytest.approx(0.0, abs=1e-9)}
    for image_id in LABELLED:
        assert KEY not in infos[image_id]  # labelled images are never scored

    strategy = UncertaintyStrategy()
    fresh = LocalDatastore(str(sample_datastore), auto_reload=False)
    fresh.update_image_info("mni152_t1", {KEY: 99.0})  # a labelled image with a huge score is still never served
    ranking = sorted(expected, key=expected.get, reverse=True)
    assert ranking[0] == "mr_small"
    for image_id in ranking:  # label the most uncertain each time: the next one follows the known order
        res = strategy({"strategy": "uncertainty"}, fresh)
        assert res == {"id": image_id, KEY: pytest.approx(expected[image_id], abs=1e-6)}
        label_image(fresh, image_id)
    assert strategy({"strategy": "uncertainty"}, fresh) is None


def test_rescoring_is_bounded_skipped_and_redone_when_the_model_changes(known, sample_datastore):
    ds, scoring, shapes = known
    first = scoring({"max_images": 2}, ds)
    assert first["executed"] == 2 and first["remaining"] == 3
    second = scoring({}, ds)  # the unscored three, the two fresh ones are skipped
    assert second["executed"] == 3 and second["skipped"] == 2 and set(first["scores"]) | set(second["scores"]) == \
        set(UNLABELLED)
    n_asked = len(KnownLogitsPredictor.asked)
    again = scoring({}, ds)
    assert again["executed"] == 0 and again["skipped"] == 5 and len(KnownLogitsPredictor.asked) == n_asked
    before = stored(sample_datastore)

    weights = next(p for p in Path(scoring.engine.published_dir()).iterdir() if p.suffix == ".safetensors")
    mtime = weights.stat().st_mtime + 100
    os.utime(weights, (mtime, mtime))  # training published new weights
    new_version = scoring.model_version()
    assert new_version != before["ct_small"][KEY_MODEL]
    redo = scoring({}, ds)
    assert redo["executed"] == 5 and redo["skipped"] == 0
    after = stored(sample_datastore)
    expected = expected_scores(shapes)
    for image_id in UNLABELLED:
        assert after[image_id][KEY_MODEL] == new_version
        assert after[image_id][KEY] == pytest.approx(expected[image_id], abs=1e-6)
    assert scoring({"n_slices": 1}, ds)["executed"] == 5  # other scoring params: stale as well
    assert scoring({"n_slices": 1}, ds)["executed"] == 0
    assert scoring({"n_slices": 1, "force": True, "max_images": 1}, ds)["executed"] == 1


# ---------------------------------------------------------------------------------------------------- strategy
def test_strategy_ties_go_to_least_recently_served_and_unscored_rank_last(sample_datastore):
    ds = LocalDatastore(str(sample_datastore), auto_reload=False)
    strategy = UncertaintyStrategy()
    req = {"strategy": "uncertainty"}
    assert strategy(req, ds) == {"id": "ct_small", KEY: None}  # nothing scored: least recently served, then id

    def serve(image_id, ts):  # what POST /activelearning/{strategy} records
        ds.update_image_info(image_id, {"strategy": {"uncertainty": {"ts": ts, "client_id": "t"}}})

    now = int(time.time())
    ds.update_image_info("nibabel_epi", {KEY: 0.4})
    ds.update_image_info("mr_small", {KEY: 0.7})
    ds.update_image_info("dipy_aniso_vox", {KEY: 0.7 + 1e-9})  # equal after rounding
    assert strategy(req, ds)["id"] == "dipy_aniso_vox"  # tie, neither served: by id
    serve("dipy_aniso_vox", now)
    assert strategy(req, ds) == {"id": "mr_small", KEY: 0.7}
    serve("mr_small", now + 5)
    assert strategy(req, ds)["id"] == "dipy_aniso_vox"  # served longer ago than mr_small
    assert strategy({"strategy": "other"}, ds)["id"] == "dipy_aniso_vox"  # served-at is per strategy name
    label_image(ds, "dipy_aniso_vox")
    label_image(ds, "mr_small")
    assert strategy(req, ds) == {"id": "nibabel_epi", KEY: 0.4}
    label_image(ds, "nibabel_epi")
    assert strategy(req, ds) == {"id": "ct_small", KEY: None}  # only unscored left
    serve("ct_small", now)
    assert strategy(req, ds)["id"] == "nibabel_anatomical"
    for image_id in ("ct_small", "nibabel_anatomical"):
        label_image(ds, image_id)
    assert strategy(req, ds) is None


def test_strategy_sees_scores_written_by_another_process(sample_datastore):
    """MONAI Label scores in a subprocess: its writes must not be lost by the server's next datastore write."""
    server_ds = LocalDatastore(str(sample_datastore), auto_reload=False)
    worker_ds = LocalDatastore(str(sample_datastore), auto_reload=False)
    time.sleep(0.05)  # distinct mtime for datastore_v2.json
    worker_ds.update_image_info("nibabel_anatomical", {KEY: 0.9})
    res = UncertaintyStrategy()({"strategy": "uncertainty"}, server_ds)
    assert res == {"id": "nibabel_anatomical", KEY: 0.9}
    server_ds.update_image_info("nibabel_anatomical", {"strategy": {"uncertainty": {"ts": 1}}})
    assert stored(sample_datastore)["nibabel_anatomical"][KEY] == 0.9


# ---------------------------------------------------------------------------------------------------- end to end
def test_end_to_end_unmodified_tiny_model_in_process_server(sample_datastore):
    with monailabel_client(sample_datastore, {"model": "tiny", "device": "cpu"}) as (client, app_instance):
        app = app_instance()
        scoring = MedPLIBUncertaintyScoring(app.engine, STRUCTURES, n_slices=1)
        summary = scoring({"method": "uncertainty"}, app.datastore())
        assert summary["executed"] == 5 and not summary["failed"]
        infos = stored(sample_datastore)
        scores = {i: infos[i][KEY] for i in UNLABELLED}
        assert all(0.0 <= s <= 1.0 for s in scores.values()), scores
        assert {infos[i][KEY_MODEL] for i in UNLABELLED} == {scoring.model_version()}  # the untrained preset
        assert all(KEY not in infos[i] for i in LABELLED)

        # Registered the way main.py would (init_strategies); the stock strategies stay available.
        app._strategies["uncertainty"] = UncertaintyStrategy()
        best = min(scores, key=lambda i: (-round(scores[i], 6), i))
        res = client.post("/activelearning/uncertainty", json={"client_id": "test"})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["id"] == best and body[KEY] == pytest.approx(scores[best])
        assert body["path"].endswith(f"{best}.nii.gz")
        assert stored(sample_datastore)[best]["strategy"]["uncertainty"]["client_id"] == "test"
        for stock in ("random", "first"):
            res = client.post(f"/activelearning/{stock}", json={})
            assert res.status_code == 200 and res.json()["id"] in UNLABELLED
