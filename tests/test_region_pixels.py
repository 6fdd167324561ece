"""Fine-resolution region features (`medplib.model.region_pixels`) and multi-turn packed training samples."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from medplib.checkpoints.build import build_model
from medplib.checkpoints.project import from_pretrained, save_delta
from medplib.imaging.preprocess import region_grid
from medplib.imaging.regions import Box, Point, rasterize
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.config import tiny_config
from medplib.model.conversation import IGNORE_INDEX, REGION_TOKEN_INDEX
from medplib.model.lora import LoraSettings, add_lora
from medplib.model.losses import compute_loss
from medplib.model.region_pixels import add_region_pixels, region_coverage
from medplib.training.samples import QA, make_sample, make_turns_sample
from medplib.training.stages import STAGES, configure_stage

from .conftest import synthetic_image


def _pixel_tiny(dim: int = 8, seed: int = 0):
    return build_model(dataclasses.replace(tiny_config(), region_pixel_dim=dim), seed=seed)


def _randomise_branch(model, scale: float = 0.5) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "region_pixel_adapter" in name:
                p.copy_(torch.randn_like(p) * scale)


def test_coverage_follows_the_clip_input_geometry():
    mask = np.zeros((40, 70), bool)
    mask[5:20, 10:40] = True
    cover = region_coverage(mask, 336)
    assert cover.shape == (84, 84) and cover.min() >= 0 and cover.max() == 1.0
    scale = 336 / 70  # longest side to 336, then the 192-px-high image is centred: 72 px of padding on top
    assert cover.sum() * 16 == pytest.approx(15 * 30 * scale ** 2, rel=0.03)
    rows = np.nonzero(cover.sum(1))[0]
    cols = np.nonzero(cover.sum(0))[0]
    assert rows[0] == int((72 + 5 * scale) // 4) and rows[-1] == int((72 + 20 * scale - 1) // 4)
    assert cols[0] == int(10 * scale // 4) and cols[-1] == int((40 * scale - 1) // 4)


def test_a_region_lost_by_resizing_still_covers_its_cell():
    mask = np.zeros((2000, 1000), bool)
    mask[1000, 503] = True  # 1 px shrunk 6x: nearest resizing drops it
    cover = region_coverage(mask, 336)
    assert cover.sum() == 1.0
    r, c = np.argwhere(cover)[0]
    assert r == 1000 * 336 // 2000 // 4 and c == (503 * 336 / 2000 + (336 - 168) // 2) // 4


def test_the_fine_branch_tells_apart_regions_that_the_grid_cannot():
    # Two boxes that sample the same CLIP grid cells (tiny: 56 px, 14-px patches) but cover different pixels.
    img = synthetic_image(56, 56, seed=3)
    small_box, big_box = Box(0, 0, 4, 4), Box(0, 0, 12, 12)
    m1, m2 = (rasterize(b, (56, 56)) for b in (small_box, big_box))
    assert (region_grid(m1, 56, 14) == region_grid(m2, 56, 14)).all()
    feats = {}
    for dim in (0, 8):
        model, tok = _pixel_tiny(dim) if dim else build_model("tiny", seed=0)
        _randomise_branch(model)
        pred = MedPLIBPredictor(model, tok)
        pred.set_image(img)
        per_box = []
        for box in (small_box, big_box):
            pred.ask("What is <region>?", regions=[box], max_new_tokens=1)
            prep = pred._prepare("What is <region>?", [box], (), None)
            region_at = [i for i, t in enumerate(prep.ids) if t == REGION_TOKEN_INDEX][0]
            per_box.append(prep.embeds[region_at - (len(prep.ids) - prep.embeds.shape[0])].clone())
        feats[dim] = per_box
    torch.testing.assert_close(feats[0][0], feats[0][1])  # MedPLIB's grid pooling: the same feature
    assert not torch.allclose(feats[8][0], feats[8][1], atol=1e-3)  # the fine branch sees the difference


def test_adding_the_branch_to_a_trained_model_keeps_its_answers(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    model = copy.deepcopy(model)
    answers = []
    for step in range(2):
        if step:
            add_region_pixels(model, 8)
            assert model.config.region_pixel_dim == 8
        pred = MedPLIBPredictor(model, tok)
        pred.set_image(img)
        answers.append([pred.ask("What is this?", regions=[Point(8, 8)]).token_ids,
                        pred.ask("What is this?", regions=[Point(32, 62)]).token_ids])
    assert answers[0] == answers[1] and answers[0][0] != answers[0][1]


def test_training_reaches_the_branch_and_the_vqa_stages_train_it():
    model, tok = _pixel_tiny()
    _randomise_branch(model, 0.05)
    sample = make_sample(model.config, tok, synthetic_image(), "What is this?", "left", regions=[Point(8, 8)])
    model.train()
    compute_loss(model, [sample, sample])["loss"].backward()
    grad = model.model.region_pixel_encoder.layers[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    for stage in ("vqa", "moe"):
        names = {n for n, p in model.named_parameters() if p in set(configure_stage(model, STAGES[stage]))}
        assert {"model.region_pixel_adapter.weight", "model.region_pixel_encoder.layers.0.weight"} <= names
    names = {n for n, p in model.named_parameters() if p in set(configure_stage(model, STAGES["ground"]))}
    assert not any("region_pixel" in n for n in names)


def test_delta_checkpoint_with_the_branch_reloads_to_identical_answers(tmp_path):
    model, tok = _pixel_tiny()
    add_lora(model, LoraSettings(r=2, alpha=4))
    model.eval()  # the injected LoRA dropout starts in training mode
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "region_pixel" in name:
                p.add_(torch.randn_like(p) * 0.05)
    trained = {n for n, _ in model.named_parameters() if "lora_" in n or "region_pixel" in n}
    save_delta(model, tok, tmp_path / "delta", base="tiny", trained=trained, dtype=torch.float32)
    reloaded, tok2 = from_pretrained(tmp_path / "delta")
    assert reloaded.config.region_pixel_dim == 8
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, reloaded.state_dict()[key], rtol=0, atol=0, msg=key)
    img = synthetic_image()
    answers = []
    for m, t in ((model, tok), (reloaded, tok2)):
        pred = MedPLIBPredictor(m, t)
        pred.set_image(img)
        answers.append(pred.ask("Describe <region>.", regions=[Box(3, 3, 30, 20)], max_new_tokens=6).token_ids)
    assert answers[0] == answers[1]


def test_cached_features_count_the_branch_memory():
    model, tok = _pixel_tiny()
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(synthetic_image())
    before = pred.memory_bytes()
    pred.ask("What is <region>?", regions=[Point(5, 5)], max_new_tokens=1)
    assert pred.memory_bytes() - before >= 8 * 14 * 14 * 4  # the [8, 14, 14] fine map, kept for the next region


# ---------------------------------------------------------------------- packed multi-turn samples
def test_one_packed_turn_is_the_single_turn_sample():
    model, tok = _pixel_tiny()
    img = synthetic_image()
    a = make_sample(model.config, tok, img, "What is this?", "left", regions=[Point(8, 8)])
    b = make_turns_sample(model.config, tok, img, [QA("What is this?", "left", (Point(8, 8),))])
    assert a.input_ids == b.input_ids and a.labels == b.labels
    assert all((x == y).all() for x, y in zip(a.region_grids + a.region_coverages, b.region_grids + b.region_coverages))


def test_packed_sample_supervises_every_answer_with_its_own_region():
    model, tok = _pixel_tiny()
    img = synthetic_image()
    turns = [QA("Which plane?", "axial"), QA("What is this?", "left", (Point(8, 8),)),
             QA("And <region>?", "right", (Box(50, 25, 65, 35),))]
    s = make_turns_sample(model.config, tok, img, turns)
    assert s.input_ids.count(REGION_TOKEN_INDEX) == 2 and len(s.region_coverages) == 2
    assert s.region_coverages[0].sum() != s.region_coverages[1].sum()
    eos = tok.eos_token or "</s>"
    expected = sum(len(tok.encode(f" {qa.answer}{eos}", add_special_tokens=False)) for qa in turns)
    assert sum(label != IGNORE_INDEX for label in s.labels) == expected
    singles = [make_sample(model.config, tok, img, qa.question, qa.answer, regions=qa.regions) for qa in turns]
    assert compute_loss(model, [s])["ce"] > 0 and all(len(x.input_ids) < len(s.input_ids) for x in singles)


def test_to_examples_packs_each_slice_question_once():
    from medplib.data.conversations import Conversation
    from medplib.training.run import to_examples

    model, tok = _pixel_tiny()
    img = (synthetic_image() * 255).astype(np.uint8)
    convs = []
    for index in range(2):
        for k in range(5):
            convs.append(Conversation("im", 2, index, "vqa", f"Q{k}?", f"a{k}", rgb=img))
        convs.append(Conversation("im", 2, index, "region", "What is this?", "left", "left", regions=[Point(8, 8)],
                                  rgb=img))
        convs.append(Conversation("im", 2, index, "ground", "Please segment the left.", "Sure, <SEG>.", "left",
                                  masks=[np.ones(img.shape[:2], bool)], rgb=img))
    examples = to_examples(model, tok, convs, pack_turns=4, seed=0)
    ground = [e for e in examples if e.kind == "ground"]
    packed = [e for e in examples if e.kind != "ground"]
    assert len(ground) == 2 and len(packed) == 4  # 6 questions per slice -> 4 + 2 turns
    asked = sorted(q for e in packed for q in e.question.split(" | "))
    assert asked == sorted([f"Q{k}?" for k in range(5)] * 2 + ["What is this?"] * 2)
    assert all(len(e.question.split(" | ")) <= 4 for e in packed)
    assert {e.kind for e in packed if "What is this?" in e.question} == {"region"}
    for e in packed:
        sample = e.build()
        assert sample.input_ids.count(REGION_TOKEN_INDEX) == len(e.regions)


@pytest.mark.parametrize("field, value", [("pack_turns", 0), ("region_pixel_dim", -1)])
def test_train_config_rejects_bad_values(field, value):
    from medplib.training.trainer import TrainConfig

    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
