"""Draft-verified greedy decoding: the template answer checked in one pass gives exactly greedy decoding's tokens
(and the same <SEG> masks), whether the model agrees with the whole draft, part of it, or none of it."""

from __future__ import annotations

import numpy as np
import pytest

from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.conversation import GROUND_ANSWER


@pytest.mark.parametrize("question, draft", [
    ("Please segment the liver.", GROUND_ANSWER),  # the fitted model answers with the template
    ("Please segment the liver.", "Sure, it is <SEG> and <SEG>."),  # disagrees part-way
    ("What modality is this?", GROUND_ANSWER),  # disagrees at once
    ("Segment the liver and the spleen.", "<SEG> and <SEG>."),
])
def test_draft_gives_greedy_tokens_and_masks(fitted_tiny, question, draft):
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    plain = pred.ask(question, max_new_tokens=12)
    drafted = pred.ask(question, max_new_tokens=12, draft_answer=draft)
    assert drafted.token_ids == plain.token_ids and drafted.text == plain.text
    assert drafted.mask_logits.shape == plain.mask_logits.shape
    np.testing.assert_allclose(drafted.mask_logits, plain.mask_logits, rtol=1e-4, atol=1e-4)
    again = pred.ask(question, max_new_tokens=12)  # the prefix cache is left exactly as it was
    assert again.token_ids == plain.token_ids


def test_draft_respects_max_new_tokens(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    for n in (1, 2, 3):
        assert pred.ask("Please segment the liver.", max_new_tokens=n, draft_answer=GROUND_ANSWER).token_ids == \
            pred.ask("Please segment the liver.", max_new_tokens=n).token_ids


@pytest.mark.parametrize("sync_every", [2, 3, 8])
def test_reading_ids_back_every_k_steps_gives_the_same_answer(fitted_tiny, sync_every):
    """The GPU setting (no host sync per token) forced on CPU: same tokens, same <SEG> states and masks."""
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    questions = ["Please segment the liver.", "Segment the liver and the spleen.", "What modality is this?"]
    reference = [pred.ask(q, max_new_tokens=n) for q in questions for n in (3, 12)]
    model.sync_every = sync_every
    try:
        got = [pred.ask(q, max_new_tokens=n) for q in questions for n in (3, 12)]
    finally:
        model.sync_every = 0
    for a, b in zip(reference, got):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.mask_logits, b.mask_logits, rtol=1e-5, atol=1e-5)
