"""Evaluation library and CLI (`medplib.evaluation.evaluate`): official metric rules on a hand-made MeCoVQA-format set,
the real tiny model end to end, and the sample datastore's held-out split."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from medplib.evaluation.evaluate import evaluate_heldout, evaluate_mecovqa, main, write_report
from medplib.evaluation.scoring import bleu, closed_match, load_training_log, modality_of, normalize_answer, token_f1
from medplib.imaging.regions import DatasetMask

H, W = 40, 60  # non-square on purpose: IoU is computed at the original resolution
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CT = "images/ct_00--AbdomenCT--case1--z_0001.png"
MR = "images/mr_00--BrainMR--case2--x_0010.png"


def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def logits_of(mask: np.ndarray, inside: float = 4.0, outside: float = -5.0) -> np.ndarray:
    return np.where(mask, inside, outside).astype(np.float32)


# Ground truths and the stub's fixed predictions (all 40x60).
LIVER_GT, LIVER_PRED = box(10, 20, 10, 30), box(10, 20, 20, 40)  # overlap 100, union 300 -> IoU 1/3, Dice 1/2
SPLEEN_GT = box(25, 35, 5, 15)  # the stub emits no <SEG> for it -> IoU 0
TUMOUR_GT = box(5, 15, 40, 50)
# Tumour logits: +4 on the left half of the GT, -1 (sigmoid 0.27) on the right half, -5 elsewhere, so the
# mask is the whole GT at threshold 0.1 (IoU 1) and only its left half at 0.5 (IoU 1/2).
TUMOUR_LOGITS = np.where(box(5, 15, 40, 45), 4.0, np.where(TUMOUR_GT, -1.0, -5.0)).astype(np.float32)
CT_REGION, MR_REGION = box(12, 18, 12, 28), box(6, 14, 41, 49)

STUB_ANSWERS = {
    "Please segment the liver.": ("Sure, it is.", [logits_of(LIVER_PRED)]),
    "And the spleen?": ("I cannot find it.", []),
    "Segment the tumour.": ("Sure, it is.", [TUMOUR_LOGITS]),
    "What organ is shown in <region>?": ("Liver", []),
    "Describe <region>.": ("bright round mass lesion", []),
    "Is this an MRI scan?": ("yes.", []),
    "Which modality is this?": ("MRI", []),
    "What is seen?": ("liver and spleen", []),
}


class StubPredictor:
    """A FAKE predictor standing in for model quality (not the model): it answers every question with a fixed,
    known text and mask logits so the metrics can be computed by hand, and records what it was given."""

    def __init__(self):
        self.images: list[np.ndarray] = []
        self.calls: list[tuple[str, list[np.ndarray]]] = []

    def set_image(self, image: np.ndarray, window=None) -> None:
        self.images.append(np.asarray(image))

    def ask(self, question: str, regions=(), max_new_tokens=None, **_):
        self.calls.append((question, [r if isinstance(r, DatasetMask) else np.asarray(r).copy() for r in regions]))
        text, logits = STUB_ANSWERS[question]
        stack = np.stack(logits) if logits else np.zeros((0, H, W), np.float32)
        return SimpleNamespace(text=text, mask_logits=stack, masks=stack > 0)


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def mecovqa(tmp_path: Path) -> tuple[Path, Path]:
    """A small MeCoVQA-format set: images/ and masks/ under one root, and its JSON (returns (json, root))."""
    root = tmp_path / "SAMed2Dv1"
    rng = np.random.RandomState(0)
    save_png(root / CT, rng.randint(0, 256, (H, W), dtype=np.uint8))
    save_png(root / MR, rng.randint(0, 256, (H, W), dtype=np.uint8))
    save_png(root / "masks/ct_liver.png", LIVER_GT.astype(np.uint8) * 255)
    save_png(root / "masks/ct_spleen.png", SPLEEN_GT.astype(np.uint8) * 255)
    save_png(root / "masks/mr_tumour.png", TUMOUR_GT.astype(np.uint8) * 255)
    save_png(root / "masks/ct_region.png", CT_REGION.astype(np.uint8))  # values 0/1: binarised at >= 1
    save_png(root / "masks/mr_region.png", MR_REGION.astype(np.uint8) * 255)
    entries = [
        {"id": "g1", "image": CT, "conversations": [  # two grounding turns, evaluated independently
            {"from": "human", "value": "<image>\nPlease segment the liver."},
            {"from": "gpt", "value": "Sure, it is <SEG>.<mask>masks/ct_liver.png</mask>"},
            {"from": "human", "value": "And the spleen?"},
            {"from": "gpt", "value": "It is <SEG>.<mask>masks/ct_spleen.png</mask>"}]},
        {"id": "r1", "image": CT, "answer_type": "closed", "conversations": [
            {"from": "human", "value": "<image>\nWhat organ is shown in <region>masks/ct_region.png</region>?"},
            {"from": "gpt", "value": "The liver."}]},
        {"id": "v1", "image": CT, "answer_type": "closed", "conversations": [
            {"from": "human", "value": "<image>\nWhich modality is this?"}, {"from": "gpt", "value": "CT"}]},
        {"id": "v2", "image": CT, "answer_type": "open", "conversations": [
            {"from": "human", "value": "<image>\nWhat is seen?"}, {"from": "gpt", "value": "the liver"}]},
        # Paths without the .png suffix (as in some MeCoVQA files) must still resolve.
        {"id": "g2", "image": MR[:-4], "conversations": [
            {"from": "human", "value": "<image>\nSegment the tumour."},
            {"from": "gpt", "value": "Sure, it is <SEG>.<mask>masks/mr_tumour</mask>"}]},
        {"id": "r2", "image": MR, "answer_type": "open", "conversations": [
            {"from": "human", "value": "<image>\nDescribe <region>masks/mr_region</region>."},
            {"from": "gpt", "value": "a bright round lesion"}]},
        {"id": "v3", "image": MR, "answer_type": "yes/no", "conversations": [
            {"from": "human", "value": "<image>\nIs this an MRI scan?"}, {"from": "gpt", "value": "Yes"}]},
    ]
    path = tmp_path / "MeCoVQA_test.json"
    path.write_text(json.dumps(entries))
    return path, root


# ---------------------------------------------------------------------------------------------- text metrics
def test_text_metrics_on_known_strings():
    assert normalize_answer("  The Liver. ") == "liver"
    assert normalize_answer("2.5 cm, left-side!") == "2.5 cm left side"
    assert closed_match("yes.", "Yes") and closed_match("The liver", "liver") and not closed_match("MRI", "CT")
    assert token_f1("liver and spleen", "the liver") == pytest.approx((0.5, 1 / 3, 1.0))
    assert token_f1("", "liver") == (0.0, 0.0, 0.0) and token_f1("kidney", "liver") == (0.0, 0.0, 0.0)
    assert bleu("a b c d e", "a b c d e") == pytest.approx(1.0)
    assert bleu("x y", "a b") == 0.0  # no unigram match
    # hyp "bright round mass lesion" vs ref "bright round lesion": p1=3/4, p2=1/3, p3=0->0.1/2, p4=0->0.1/1, BP=1
    assert bleu("bright round mass lesion", "a bright round lesion") == pytest.approx(
        (0.75 * (1 / 3) * 0.05 * 0.1) ** 0.25)
    # shorter hypothesis: brevity penalty exp(1 - 3/2)
    assert bleu("round lesion", "bright round lesion", weights=(1.0,)) == pytest.approx(math.exp(1 - 1.5))
    assert modality_of("SAMed2Dv1/images/ct_00--A--b--z_0001.png") == "ct"
    assert modality_of("x_00--Chest--c--2d_none.png") == "x"


# ---------------------------------------------------------------------------------------------- metric rules
def test_mecovqa_metrics_hand_computed(mecovqa):
    json_path, root = mecovqa
    stub = StubPredictor()
    report = evaluate_mecovqa(stub, json_path, root, threshold=0.1)

    assert report["counts"] == {"entries": 7, "turns": 8, "ground": 3, "region": 2, "vqa": 3, "box": 0,
                                "errors": 0}
    # Consecutive entries on one image share one set_image; the images are the RGB renderings of the PNGs.
    assert len(stub.images) == 2
    assert all(im.shape == (H, W, 3) and im.dtype == np.uint8 for im in stub.images)

    ground = {r["id"] + "/" + str(r["turn"]): r for r in report["samples"] if r["kind"] == "ground"}
    liver, spleen, tumour = ground["g1/0"], ground["g1/1"], ground["g2/0"]
    assert liver["iou"] == pytest.approx(1 / 3) and liver["dice"] == pytest.approx(0.5)
    assert liver["dice"] == pytest.approx(2 * liver["iou"] / (1 + liver["iou"]))
    assert spleen["predicted"] is False and spleen["iou"] == 0.0 and spleen["dice"] == 0.0  # missing mask = 0
    assert tumour["iou"] == pytest.approx(1.0) and tumour["modality"] == "mr"
    assert tumour["image"].endswith(".png") and tumour["mask"].endswith("mr_tumour.png")  # suffix fallback

    g = report["grounding"]
    assert g["n"] == 3
    assert g["miou"] == pytest.approx((1 / 3 + 0 + 1) / 3) and g["mdice"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert g["per_modality"]["ct"] == pytest.approx({"n": 2, "miou": 1 / 6, "mdice": 0.25})
    assert g["per_modality"]["mr"] == pytest.approx({"n": 1, "miou": 1.0, "mdice": 1.0})

    # Region masks really reach the predictor: markers replaced, one bool mask of the image's shape each, marked
    # as loaded from a dataset (kept to its largest grid component, as the original's dataset).
    asked = dict(stub.calls)
    assert "What organ is shown in <region>?" in asked and "Describe <region>." in asked
    for question, expected in (("What organ is shown in <region>?", CT_REGION), ("Describe <region>.", MR_REGION)):
        (region,) = asked[question]
        assert isinstance(region, DatasetMask)
        region = region.mask
        assert region.shape == (H, W) and region.dtype == bool and np.array_equal(region, expected)
    assert all(regions == [] for q, regions in stub.calls if "<region>" not in q)

    rv, vqa = report["region_vqa"], report["vqa"]
    assert rv["closed"] == {"n": 1, "accuracy": 1.0}  # "Liver" vs "The liver."
    assert rv["open"]["n"] == 1 and rv["open"]["f1"] == pytest.approx(6 / 7)  # P=3/4, R=1
    assert rv["open"]["bleu1"] == pytest.approx(0.75)
    assert vqa["closed"] == {"n": 2, "accuracy": 0.5}  # "yes." == "Yes"; "MRI" != "CT"
    assert vqa["open"]["f1"] == pytest.approx(0.5) and vqa["open"]["precision"] == pytest.approx(1 / 3)
    assert vqa["per_modality"]["ct"]["closed"]["accuracy"] == 0.0
    assert vqa["per_modality"]["mr"]["closed"]["accuracy"] == 1.0


def test_threshold_is_honoured(mecovqa):
    json_path, root = mecovqa
    report = evaluate_mecovqa(StubPredictor(), json_path, root, threshold=0.5)
    tumour = next(r for r in report["samples"] if r["id"] == "g2")
    assert tumour["iou"] == pytest.approx(0.5) and tumour["dice"] == pytest.approx(2 / 3)
    assert tumour["pred_pixels"] == 50
    assert report["grounding"]["per_modality"]["mr"]["mdice"] == pytest.approx(2 / 3)


def test_max_samples_mask_folder_and_errors(mecovqa, tmp_path):
    json_path, root = mecovqa
    entries = json.loads(json_path.read_text())
    entries.append({"id": "bad", "image": "images/ct_missing.png", "conversations": []})
    entries.append({"id": "bad2", "image": CT, "conversations": [
        {"from": "human", "value": "Segment it."}, {"from": "gpt", "value": "<SEG><mask>masks/none.png</mask>"}]})
    json_path.write_text(json.dumps(entries))
    report = evaluate_mecovqa(StubPredictor(), json_path, root)
    assert report["counts"]["errors"] == 2 and {e["id"] for e in report["errors"]} == {"bad", "bad2"}
    assert report["grounding"]["n"] == 3  # errors are reported, not scored

    first = evaluate_mecovqa(StubPredictor(), json_path, root, max_samples=1)
    assert first["counts"]["entries"] == 1 and first["grounding"]["n"] == 2
    # Masks may live in their own folder; image paths stay relative to --images.
    (tmp_path / "m").mkdir()
    (root / "masks").rename(tmp_path / "m" / "masks")
    moved = evaluate_mecovqa(StubPredictor(), json_path, root, mask_folder=tmp_path / "m", max_samples=1)
    assert moved["grounding"]["miou"] == pytest.approx(1 / 6)


# ---------------------------------------------------------------------------------------------- real model
def test_cli_end_to_end_with_tiny_model(mecovqa, tmp_path, monkeypatch, capsys):
    """The real tiny (random) model through the CLI: structure, counts and ranges (not quality)."""
    import medplib.inference.predictor as predictor_mod

    json_path, root = mecovqa
    seen: list[tuple[str, list[np.ndarray]]] = []
    real_ask = predictor_mod.MedPLIBPredictor.ask

    def spy(self, question, regions=(), **kw):
        answer = real_ask(self, question, regions=regions, **kw)
        seen.append((question, [m.copy() for m in self.last_region_masks]))  # what the model received
        assert answer.mask_logits.shape[1:] == (H, W)  # masks come back at the original resolution
        return answer

    monkeypatch.setattr(predictor_mod.MedPLIBPredictor, "ask", spy)
    log = tmp_path / "trainer_state.json"
    log.write_text(json.dumps({"history": [
        {"stage": "align", "epoch": 1, "loss": 2.0, "val_dice": 0.1}, {"stage": "align", "epoch": 2, "loss": 1.5},
        {"stage": "ground", "epoch": 1, "loss": 1.0, "val_dice": 0.4}], "best": 0.4}))
    out = tmp_path / "out"
    report = main(["--model", "tiny", "--mecovqa", str(json_path), "--images", str(root), "--out", str(out),
                   "--max-new-tokens", "6", "--train-log", str(log)])
    assert "grounding mDice" in capsys.readouterr().out
    assert report["counts"] == {"entries": 7, "turns": 8, "ground": 3, "region": 2, "vqa": 3, "box": 0,
                                "errors": 0}
    for r in report["samples"]:
        for key in ("iou", "dice", "f1", "bleu"):
            if key in r:
                assert 0.0 <= r[key] <= 1.0
    g = report["grounding"]
    assert set(g["per_modality"]) == {"ct", "mr"} and 0.0 <= g["mdice"] <= 1.0
    assert dict(seen)["What organ is shown in <region>?"][0].sum() == CT_REGION.sum()
    assert np.array_equal(dict(seen)["Describe <region>."][0], MR_REGION)

    saved = json.loads((out / "report.json").read_text())
    assert saved["counts"] == report["counts"] and saved["files"]["training_curves"] == "training_curves.png"
    for name in ("dice_per_modality.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_training_log_formats(tmp_path):
    p = tmp_path / "log.json"
    p.write_text(json.dumps([{"epoch": 1, "loss": 2.0, "val_dice": 0.2}, {"epoch": 2, "loss": 1.0}]))
    assert load_training_log(p) == [{"epoch": 1.0, "loss": 2.0, "val_dice": 0.2}, {"epoch": 2.0, "loss": 1.0}]
    p.write_text(json.dumps({"loss": [3.0, 2.0], "val_dice": [0.1, 0.3]}))
    assert [r["val_dice"] for r in load_training_log(p)] == [0.1, 0.3]
    # MONAI Label's train_stats.json is one snapshot with nested metrics.
    p.write_text(json.dumps({"epoch": 5, "best_metric": 0.7, "total_time": "0:01:00",
                             "train": {"metrics": {"train_dice": 0.6}, "key_metric_name": "train_dice"}}))
    assert load_training_log(p) == [{"epoch": 5.0, "best_metric": 0.7, "train.metrics.train_dice": 0.6}]
    # Epochs restarting per stage become a running index.
    p.write_text(json.dumps({"history": [{"epoch": 1, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]}))
    assert [(r["epoch"], r["stage_epoch"]) for r in load_training_log(p)] == [(1.0, 1.0), (2.0, 1.0)]


# ---------------------------------------------------------------------------------------------- held-out split
class OracleShapeStub(StubPredictor):
    """A FAKE predictor: answers "MR" to every question and a full-image mask to every grounding request."""

    def ask(self, question, regions=(), max_new_tokens=None, **_):
        h, w = self.images[-1].shape[:2]
        self.calls.append((question, list(regions)))
        from medplib.model.bilingual import is_grounding_request_zh

        seg = any(word in question.lower() for word in ("segment", "where is")) or is_grounding_request_zh(question)
        logits = np.full((1 if seg else 0, h, w), 5.0, np.float32)
        return SimpleNamespace(text="MR", mask_logits=logits, masks=logits > 0)


def test_heldout_aggregation_with_stub(sample_datastore):
    from monailabel.datastore.local import LocalDatastore

    stub = OracleShapeStub()
    report = evaluate_heldout(stub, LocalDatastore(str(sample_datastore), auto_reload=False), slice_step=20)
    assert len(stub.images) == report["counts"]["slices"] > 0  # one set_image per slice
    assert all(im.ndim == 3 and im.dtype == np.uint8 for im in stub.images)
    acc = report["closed_accuracy"]
    assert acc["modality"]["accuracy"] == 1.0 and acc["plane"]["accuracy"] == 0.0
    assert acc["body_part"]["accuracy"] == 0.0 and acc["region_structure"]["accuracy"] == 0.0
    closed_n = sum(v["n"] for v in acc.values())
    assert report["closed_accuracy_overall"] == pytest.approx(acc["modality"]["n"] / closed_n)
    # A full-image prediction has IoU = |GT| / (H*W) on the plane the model saw.
    for r in (s for s in report["samples"] if s["kind"] == "ground"):
        assert r["predicted"] and r["iou"] == pytest.approx(r["gt_pixels"] / r["pred_pixels"])
    per = report["grounding"]["per_structure"]
    assert report["mean_dice"] == pytest.approx(np.mean([per[s]["mdice"] for s in ("brain", "grey matter",
                                                                                   "white matter")]))
    assert per["brain"]["mdice"] > per["csf"]["mdice"]  # the brain covers more of the slice than CSF
    limited = evaluate_heldout(OracleShapeStub(), LocalDatastore(str(sample_datastore), auto_reload=False),
                               slice_step=20, max_per_kind=2)
    assert all(v["n"] <= 2 for v in limited["closed_accuracy"].values())
    assert all(v["n"] <= 2 for v in limited["grounding"]["per_structure"].values())


def test_heldout_with_tiny_model_and_plots(sample_datastore, tiny, tmp_path):
    from monailabel.datastore.local import LocalDatastore

    from medplib.inference.predictor import MedPLIBPredictor

    model, tok = tiny
    predictor = MedPLIBPredictor(model, tok, mask_threshold=0.1)
    report = evaluate_heldout(predictor, LocalDatastore(str(sample_datastore), auto_reload=False), slice_step=20,
                              max_new_tokens=6)
    assert report["counts"]["images"] == ["mni152_t1", "mni152_t1_lps_aniso"]
    assert predictor.counters["clip_encoder"] == report["counts"]["slices"] > 0  # set_image cached per slice
    assert set(report["grounding"]["per_structure"]) == {"brain", "grey matter", "white matter", "csf"}
    assert set(report["closed_accuracy"]) == {"modality", "plane", "body_part", "region_structure"}
    assert set(report["by_language"]) == {"en", "zh"}  # grounding and region questions are asked in both
    assert report["boxes"]["n"] == report["grounding"]["n"]
    assert all(0.0 <= report["boxes"][m] <= 1.0 for m in ("recall50", "acc25", "acc50", "acc75"))
    values = [report["mean_dice"], report["closed_accuracy_overall"], report["grounding"]["miou"]]
    values += [v["accuracy"] for v in report["closed_accuracy"].values()]
    assert all(0.0 <= v <= 1.0 for v in values)
    files = write_report(report, tmp_path / "heldout")
    assert set(files) == {"dice_per_structure", "closed_accuracy", "report"}
    for name in ("dice_per_structure", "closed_accuracy"):
        assert files[name].read_bytes()[:8] == PNG_MAGIC
        with Image.open(files[name]) as im:
            im.verify()
    assert json.loads(files["report"].read_text())["task"] == "heldout"


def test_box_answers_and_box_questions_med_grit_format(tmp_path):
    """Med-GRIT / MedRegA-style turns: detection answers with <box> text (scored by Recall@0.5 and Hungarian
    Acc@t, from the model's text boxes or else its masks) and referring questions whose region is a box."""
    from medplib.imaging.regions import Box

    root = tmp_path / "grit"
    save_png(root / CT, np.zeros((H, W), np.uint8))
    # truth: the liver box (cols 10..30, rows 10..20) on the 0..999 grid of a 60x40 image
    entries = [
        {"id": "d1", "image": CT, "conversations": [
            {"from": "human", "value": "<image>\nPlease locate <ref>liver</ref>."},
            {"from": "gpt", "value": "<ref>liver</ref><box>[[166, 250, 500, 500]]</box>"}]},
        {"id": "d2", "image": CT, "conversations": [
            {"from": "human", "value": "Segment the tumour."},
            {"from": "gpt", "value": "<ref>tumour</ref><box>(667,125),(833,375)</box>"}]},
        {"id": "q1", "image": CT, "answer_type": "closed", "conversations": [
            {"from": "human", "value": "What is <ref>this</ref><box>[[166, 250, 500, 500]]</box>?"},
            {"from": "gpt", "value": "liver"}]},
    ]
    path = tmp_path / "grit.json"
    path.write_text(json.dumps(entries))

    class BoxStub(StubPredictor):
        """FAKE predictor: answers with known text boxes or masks so the box metrics are hand-computable."""

        def ask(self, question, regions=(), max_new_tokens=None, **_):
            self.calls.append((question, list(regions)))
            if question == "Please locate <ref>liver</ref>.":  # a text box: cols 10..20, rows 10..20 -> IoU 0.5
                return SimpleNamespace(text="<ref>liver</ref><box>(167,250),(333,500)</box>",
                                       mask_logits=np.zeros((0, H, W), np.float32))
            if question == "Segment the tumour.":  # no text box: its mask's box is used (exactly the truth)
                return SimpleNamespace(text="Sure.", mask_logits=logits_of(TUMOUR_GT)[None])
            return SimpleNamespace(text="liver", mask_logits=np.zeros((0, H, W), np.float32))

    stub = BoxStub()
    report = evaluate_mecovqa(stub, path, root)
    assert report["counts"]["box"] == 2 and report["counts"]["errors"] == 0
    rec = {r["id"]: r for r in report["samples"]}
    assert rec["d1"]["recall50"] == 0.0 and rec["d1"]["acc25"] == 1.0 and rec["d1"]["acc50"] == 1.0
    assert rec["d1"]["acc75"] == 0.0  # IoU exactly 0.5: Recall needs > 0.5, Acc@0.5 needs >= 0.5
    assert all(rec["d2"][m] == 1.0 for m in ("recall50", "acc25", "acc50", "acc75"))
    assert report["boxes"]["recall50"] == pytest.approx(0.5) and report["boxes"]["acc75"] == pytest.approx(0.5)
    (question, regions), = [c for c in stub.calls if c[0].startswith("What is")]
    assert question == "What is <region></region>?" and regions == [Box(10.0, 10.0, 29.0, 19.0)]
    assert rec["q1"]["correct"] is True


def test_cli_decodes_as_the_original_by_default_and_reports_each_difference(mecovqa, tmp_path, monkeypatch):
    """MeCoVQA runs default to the original's 1024 new tokens; the report states dtype, <SEG> rule and text."""
    import medplib.evaluation.evaluate as evaluate_mod

    json_path, root = mecovqa
    asked = {}
    real = evaluate_mod.evaluate_mecovqa

    def capture(predictor, *args):
        asked["max_new_tokens"], asked["seg_state"] = args[5], predictor.model.config.seg_state
        return real(predictor, *args[:5], 4, *args[6:])  # decode little: the tiny model is random

    monkeypatch.setattr(evaluate_mod, "evaluate_mecovqa", capture)
    report = main(["--model", "tiny", "--mecovqa", str(json_path), "--images", str(root), "--out",
                   str(tmp_path / "out"), "--max-samples", "1", "--seg-state", "release"])
    assert asked == {"max_new_tokens": 1024, "seg_state": "release"}
    decoding = report["decoding"]
    assert decoding["dtype"] == "float32" and decoding["max_new_tokens"] == 1024
    assert decoding["seg_state"] == "release"
    differences = " ".join(decoding["differences_from_original"])
    assert "float32" in differences and "<SEG>" in differences and "1024" not in differences
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["decoding"] == decoding
    short = evaluate_mod.decoding_settings("bfloat16", 64, "predicting")["differences_from_original"]
    assert any("64 new tokens" in d for d in short) and not any("bfloat16 (" in d for d in short)
    assert any("hidden[-2]" in d for d in short)
