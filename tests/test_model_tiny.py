"""Tiny MedPLIB end to end: VQA, region VQA, grounding (one mask per <SEG>), multi-region prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplib.imaging.metrics import dice
from medplib.imaging.regions import Box, Point, Scribble
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.conversation import REGION_TOKEN_INDEX, SPECIAL_TOKENS

from .conftest import synthetic_image


def test_random_tiny_vqa_returns_text_and_timings(tiny):
    model, tok = tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(synthetic_image(33, 51))
    ans = pred.ask("What modality is this?", max_new_tokens=5)
    assert 1 <= len(ans.token_ids) <= 5
    assert ans.text == tok.decode(ans.token_ids, skip_special_tokens=True).strip()
    assert ans.masks.shape[1:] == (33, 51)
    for stage in ("clip_encoder", "sam_encoder", "prefill", "decode", "mask"):
        assert ans.timings_ms[stage] >= 0.0
    assert "USER: <im_start>" in ans.prompt and ans.prompt.rstrip().endswith("ASSISTANT:")


def test_ask_without_image_raises(tiny):
    pred = MedPLIBPredictor(*tiny)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.ask("hello")


def test_fit_converges(fitted_tiny):
    *_, loss = fitted_tiny
    assert loss < 0.2


def test_region_answer_depends_on_region_location(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    assert pred.ask("What is this?", regions=[Point(8, 8)]).text == "left"
    assert pred.ask("What is this?", regions=[Point(32, 62)]).text == "right"
    # A box and a scribble over the same places are pooled over similar cells, so they agree.
    assert pred.ask("What is this?", regions=[Box(0, 0, 25, 25)]).text == "left"
    assert pred.ask("What is this?", regions=[Scribble(((30, 50), (35, 68)), width=5)]).text == "right"


def test_grounding_one_mask_per_seg_in_order_nonsquare(fitted_tiny):
    model, tok, img, masks, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    one = pred.ask("Please segment the liver.")
    assert one.seg_count == 1 and "<SEG>" not in one.text
    assert one.masks.shape == (1, 40, 70) and one.mask_logits.dtype == np.float32
    assert dice(one.masks[0], masks["liver"]) > 0.9
    two = pred.ask("Segment the liver and the spleen.")
    assert two.seg_count == 2 and two.masks.shape == (2, 40, 70)
    assert dice(two.masks[0], masks["liver"]) > 0.8
    assert dice(two.masks[1], masks["spleen"]) > 0.8
    # Threshold is applied to the logits: sigmoid(logit) > 0.1.
    assert np.array_equal(two.masks, 1 / (1 + np.exp(-two.mask_logits)) > 0.1)


def test_vqa_without_seg_gives_no_mask(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    ans = pred.ask("What modality is this?")
    assert ans.text == "CT" and ans.seg_count == 0 and ans.masks.shape == (0, 40, 70)


def test_several_regions_are_each_spliced(tiny):
    model, tok = tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(synthetic_image())
    seen = {}
    original = model.embed_sequence

    def spy(ids, image_tokens, region_feats=None):
        seen["n_placeholders"] = sum(1 for t in ids if t == REGION_TOKEN_INDEX)
        seen["feats"] = region_feats
        return original(ids, image_tokens, region_feats)

    model.embed_sequence = spy
    try:
        pred.ask("Compare <region> with <region>.", regions=[Point(5, 5), Point(35, 65)], max_new_tokens=2)
    finally:
        del model.embed_sequence
    assert seen["n_placeholders"] == 2
    assert seen["feats"].shape[0] == 2
    assert not torch.allclose(seen["feats"][0], seen["feats"][1])
    with pytest.raises(ValueError, match="markers"):
        pred.ask("<region> <region> <region>", regions=[Point(5, 5)])


def test_special_tokens_appended_in_original_order(tiny):
    _, tok = tiny
    base = tok.convert_tokens_to_ids("<SEG>")
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(base, base + len(SPECIAL_TOKENS)))
    assert len(SPECIAL_TOKENS) == 267 and SPECIAL_TOKENS[-2:] == ["<im_start>", "<im_end>"]
    assert tok.decode([base], skip_special_tokens=True) == ""


def test_native_point_and_box_prompts_change_the_mask(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    plain = pred.ask("Please segment the liver.")
    pts = pred.ask("Please segment the liver.", points=np.array([[30, 60]]), point_labels=np.array([1]))
    box = pred.ask("Please segment the liver.", box=(45, 20, 69, 39))
    assert pts.seg_count == box.seg_count == 1
    assert not np.allclose(plain.mask_logits, pts.mask_logits)
    assert not np.allclose(plain.mask_logits, box.mask_logits)


def test_prefix_kv_cache_gives_the_same_answers_and_skips_image_prefill(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    cached, plain = MedPLIBPredictor(model, tok), MedPLIBPredictor(model, tok)
    plain.prefix_cache = False
    for pred in (cached, plain):
        pred.set_image(img)
    questions = [("Please segment the liver.", []), ("What is this?", [Point(8, 8)]),
                 ("Segment the liver and the spleen.", []), ("What is this?", [Point(32, 62)])]
    for q, regions in questions:
        a, b = cached.ask(q, regions=regions), plain.ask(q, regions=regions)
        assert a.token_ids == b.token_ids and a.text == b.text
        np.testing.assert_allclose(a.mask_logits, b.mask_logits, rtol=1e-4, atol=1e-4)
    # Counters, not timings: the image went through the encoders and the LLM prefix exactly once.
    assert cached.counters["clip_encoder"] == cached.counters["sam_encoder"] == 1
    assert cached.counters["image_prefill"] == 1 and cached.counters["prefill"] == len(questions)


def test_refine_reuses_seg_embedding_and_runs_only_the_decoder(fitted_tiny):
    model, tok, img, masks, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    with pytest.raises(RuntimeError, match="grounded"):
        pred.refine(points=np.array([[10, 20]]))
    first = pred.ask("Please segment the liver.")
    before = dict(pred.counters)
    refined = pred.refine(points=np.array([[30, 60]]), point_labels=np.array([1]))
    assert refined.text == first.text and refined.masks.shape == first.masks.shape
    assert not np.allclose(refined.mask_logits, first.mask_logits)
    # Same as asking again with the same native prompts (same <SEG> embedding, same decoder inputs).
    again = pred.ask("Please segment the liver.", points=np.array([[30, 60]]), point_labels=np.array([1]))
    np.testing.assert_allclose(refined.mask_logits, again.mask_logits, rtol=1e-4, atol=1e-4)
    delta = {k: pred.counters[k] - before[k] for k in before}
    assert delta["clip_encoder"] == delta["sam_encoder"] == delta["image_prefill"] == 0
    assert delta["prefill"] == 1 and delta["mask_decoder"] == 2  # the refine plus the comparison ask


def test_batched_forced_grounding_matches_generation_or_declines(fitted_tiny):
    from medplib.inference.batch_ground import ground_batch

    model, tok, img, _, _ = fitted_tiny
    rgb = np.repeat((img * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    flipped = rgb[:, ::-1].copy()
    res = ground_batch(model, tok, [rgb, flipped], "Please segment the liver.")
    pred = MedPLIBPredictor(model, tok)
    for image, logits, ok in zip([rgb, flipped], res.logits, res.forced_ok):
        pred.set_image(image)
        ans = pred.ask("Please segment the liver.")
        generated_template = ans.text == "Sure, it is ." and ans.seg_count == 1
        assert ok == generated_template
        if ok:  # the forced <SEG> state is the generated one, so the mask is the same
            np.testing.assert_allclose(logits, ans.mask_logits[0], rtol=1e-3, atol=1e-3)
    assert res.forced_ok[0]  # the fitted image itself is answered with the template
    # A question the model answers otherwise is declined (the caller then generates).
    assert ground_batch(model, tok, [rgb], "What modality is this?").forced_ok == [False]
