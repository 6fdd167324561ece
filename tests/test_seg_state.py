"""`seg_state`: which hidden state becomes the <SEG> prompt.

"predicting" (default) is the state training supervises; "release" reproduces the release commit's evaluate() /
demo worker (`elif pred_embeddings.shape[0]:` replaces a single <SEG>'s state by `hidden[-2]`; with several, only
the first is used). The expected states come from one teacher-forced pass over prompt + answer, laid out as
transformers' `generate(output_hidden_states=True)` concatenates them: the prompt's states, then one per
generated token but the last.
"""

from __future__ import annotations

import pytest
import torch

from medplib.inference.batch_decode import DecodeRequest, generate_batch
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.config import MedPLIBConfig
from medplib.model.modeling import Emitted


def _teacher_forced_states(model, embeds: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Final-norm states of prompt + all but the last generated token: index -1 predicts the last token."""
    tail = model.model.embed_tokens(torch.tensor([tokens[:-1]]))
    hidden, _ = model.run_llm(torch.cat([embeds[None], tail.to(embeds.dtype)], dim=1), use_cache=False)
    return hidden[0]


@pytest.mark.parametrize("question, n_seg", [("Please segment the liver.", 1), ("Segment the liver and the spleen.", 2)])
def test_release_rule_picks_the_originals_state(fitted_tiny, question, n_seg):
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    pred.prefix_cache = False  # one plain pass over the whole prompt, as the reference below
    prep = pred._prepare(question, (), (), None)
    outputs = {}
    for rule in ("predicting", "release"):
        model.config.seg_state = rule
        try:
            outputs[rule] = model.generate(prep.embeds[None], 16)
        finally:
            model.config.seg_state = "predicting"
    tokens = outputs["predicting"].token_ids
    assert tokens == outputs["release"].token_ids and tokens.count(model.seg_token_id) == n_seg
    states = _teacher_forced_states(model, prep.embeds, tokens)
    n_prompt = prep.embeds.shape[0]
    seg_at = [j for j, t in enumerate(tokens) if t == model.seg_token_id]
    # "predicting": the state whose output is <SEG> (position n_prompt - 1 + j predicts token j)
    torch.testing.assert_close(outputs["predicting"].seg_hidden, states[[n_prompt - 1 + j for j in seg_at]],
                               rtol=1e-4, atol=1e-4)
    want = states[-2:-1] if n_seg == 1 else states[[n_prompt - 1 + seg_at[0]]]
    torch.testing.assert_close(outputs["release"].seg_hidden, want, rtol=1e-4, atol=1e-4)
    if n_seg == 1:
        assert not torch.allclose(outputs["release"].seg_hidden, outputs["predicting"].seg_hidden)


def test_batched_decoding_follows_the_same_rule(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(img)
    prep = pred._prepare("Please segment the liver.", (), (), None)
    model.config.seg_state = "release"
    try:
        single = model.generate(prep.embeds[None], 16, past_key_values=prep.past)
        pred._prefix = None
        prep = pred._prepare("Please segment the liver.", (), (), None)
        batched = generate_batch(model, [DecodeRequest(prep.past, prep.embeds, None, 16)])[0]
    finally:
        model.config.seg_state = "predicting"
    assert batched.token_ids == single.token_ids
    torch.testing.assert_close(batched.seg_hidden, single.seg_hidden, rtol=1e-3, atol=1e-3)


def test_emitted_rules_on_known_states():
    states = [torch.full((3,), float(i)) for i in range(5)]
    seg = 7
    for tokens, predicting, release in [
        ([1, seg, 2, 0], [1], [2]),  # one <SEG>: the state predicting the second-to-last token
        ([seg, 2, seg, 0], [0, 2], [0]),  # several: release keeps the first only
        ([1, 2, 0], [], []),  # none: no mask either way
    ]:
        e = Emitted(seg)
        for tok, state in zip(tokens, states):
            e.add(tok, state)
        like = states[0]
        assert e.seg_hidden("predicting", like)[:, 0].tolist() == predicting
        assert e.seg_hidden("release", like)[:, 0].tolist() == release


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="seg_state"):
        MedPLIBConfig(seg_state="last")


def test_app_conf_seg_state_reaches_the_served_model(fitted_tiny_dir, tmp_path):
    from medplib_label.engine import MedPLIBEngine
    from medplib_label.main import engine_settings

    settings = engine_settings(str(tmp_path), {"model": str(fitted_tiny_dir), "device": "cpu", "seg_state": "release"})
    model, _ = MedPLIBEngine(settings).get()
    assert model.config.seg_state == "release" and settings.to_info()["seg_state"] == "release"
    assert engine_settings(str(tmp_path), {}).seg_state == "predicting"
    with pytest.raises(ValueError, match="seg_state must be one of"):
        engine_settings(str(tmp_path), {"seg_state": "last"})
