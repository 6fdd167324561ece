"""Dynamic batching (issue #6 P5): a batch of different clients' questions gives each client the answer its own
`ask` gives (tokens, <SEG> masks), with the encoders, image prefill and LLM run once per batch."""

from __future__ import annotations

import numpy as np
import pytest

from medplib.imaging.regions import Point
from medplib.inference.batch_ask import AskJob, ask_batch
from medplib.inference.batch_decode import DecodeRequest, generate_batch
from medplib.inference.predictor import MedPLIBPredictor, set_images
from medplib.model.conversation import GROUND_ANSWER


def _images(img):
    rgb = np.repeat((img * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return [rgb, rgb[:, ::-1].copy(), rgb[::-1].copy()]


# (question, kwargs): grounding with the draft, two SEGs, a region question, plain VQA, a refused draft,
# SAM clicks with grounding, a short token budget.
CASES = [
    ("Please segment the liver.", {"draft_answer": GROUND_ANSWER}),
    ("Segment the liver and the spleen.", {}),
    ("What is this?", {"regions": [Point(8, 8)]}),
    ("What modality is this?", {}),
    ("What modality is this?", {"draft_answer": GROUND_ANSWER}),
    ("Please segment the liver.", {"points": np.array([[20, 20]]), "point_labels": np.array([1])}),
    ("Segment the liver and the spleen.", {"max_new_tokens": 2}),
]


def test_ask_batch_equals_ask_per_client(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    images = _images(img)
    singles, jobs = [], []
    for k, (question, kwargs) in enumerate(CASES):
        image = images[k % len(images)]
        ref = MedPLIBPredictor(model, tok)
        ref.set_image(image)
        singles.append(ref.ask(question, **kwargs))
        jobs.append((image, question, kwargs))
    preds = [MedPLIBPredictor(model, tok) for _ in jobs]
    set_images(preds, [image for image, _, _ in jobs], [None] * len(jobs))
    answers = ask_batch([AskJob(p, q, **kw) for p, (_, q, kw) in zip(preds, jobs)])
    kinds = set()
    for single, batched, pred in zip(singles, answers, preds):
        assert batched.token_ids == single.token_ids
        assert batched.text == single.text
        assert batched.masks.shape == single.masks.shape
        np.testing.assert_allclose(batched.mask_logits, single.mask_logits, rtol=1e-3, atol=2e-3)
        assert pred.counters["clip_encoder"] == pred.counters["image_prefill"] == pred.counters["prefill"] == 1
        kinds.add(batched.seg_count)
    assert kinds >= {0, 1, 2}  # the cases really cover answers without, with one and with two masks
    # Each client's caches work afterwards as after `ask`: a follow-up question and a refinement click.
    follow = preds[0].ask("Please segment the liver.")
    assert follow.token_ids == singles[0].token_ids and preds[0].counters["image_prefill"] == 1
    preds[0].refine(points=np.array([[10, 10]]), point_labels=np.array([0]))
    # A batch mixing a slice with a cached prefix and a new slice (two prefix lengths: two LLM groups).
    fresh = MedPLIBPredictor(model, tok)
    set_images([fresh], [images[1]], [None])
    again = ask_batch([AskJob(preds[0], CASES[0][0], **CASES[0][1]), AskJob(fresh, CASES[1][0], **CASES[1][1])])
    assert again[0].token_ids == singles[0].token_ids and preds[0].counters["image_prefill"] == 1
    np.testing.assert_allclose(again[0].mask_logits, singles[0].mask_logits, rtol=1e-3, atol=2e-3)
    assert again[1].token_ids == singles[1].token_ids and fresh.counters["image_prefill"] == 1


def test_bad_job_fails_alone(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    preds = [MedPLIBPredictor(model, tok) for _ in range(2)]
    set_images(preds, _images(img)[:2], [None, None])
    good, bad = ask_batch([AskJob(preds[0], "What modality is this?"), AskJob(preds[1], "   ")])
    assert isinstance(bad, ValueError) and "empty" in str(bad)
    assert good.text


def test_generate_batch_rows_equal_generate(fitted_tiny):
    """Rows of different lengths, drafts accepted, rejected at different tokens, and budgets."""
    import torch

    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(_images(img)[0])
    pred.ask("What is this?", regions=[Point(8, 8)])  # fills the image-prefix cache the rows continue
    eos = tok.eos_token
    rows = [("Please segment the liver.", f" {GROUND_ANSWER}{eos}", 64), ("What modality is this?", " CT and more", 64),
            ("What modality is this?", None, 64), ("Segment the liver and the spleen.", " <SEG> and", 3)]
    reqs, refs = [], []
    for question, draft, budget in rows:
        prep = pred._prepare(question, (), (), None)
        ids = tok.encode(draft, add_special_tokens=False) if draft else None
        reqs.append(DecodeRequest(prep.past, prep.embeds, ids, budget))
    for r in reqs:
        past = r.past
        ref = model.generate(r.embeds.unsqueeze(0), r.max_new_tokens, past_key_values=past, draft=r.draft)
        past.crop(-(past.get_seq_length() - pred._prefix[2]))
        refs.append(ref)
    # sync_every 1 is the CPU default; 2 and 5 read ids back every few steps, as on a GPU (no sync per token)
    for sync_every in (1, 2, 5):
        model.sync_every = sync_every
        try:
            outs = generate_batch(model, reqs)
        finally:
            model.sync_every = 0
        for out, ref in zip(outs, refs):
            assert out.token_ids == ref.token_ids, sync_every
            assert out.seg_hidden.shape == ref.seg_hidden.shape
            torch.testing.assert_close(out.seg_hidden, ref.seg_hidden, rtol=1e-3, atol=1e-3)
        assert len(outs[3].token_ids) == 3
    assert max(len(r.token_ids) for r in refs) > 5  # some row decodes past a read-back interval


def test_rows_with_different_prefix_lengths_are_refused(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(_images(img)[0])
    pred.ask("What is this?", regions=[Point(8, 8)])
    prep = pred._prepare("What is this?", (), (), None)
    with pytest.raises(ValueError, match="prefix length"):
        generate_batch(model, [DecodeRequest(prep.past, prep.embeds), DecodeRequest(None, prep.embeds)])
