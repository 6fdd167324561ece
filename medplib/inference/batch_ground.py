"""Batched grounding of one question on many images (volume scope): one LLM forward per batch, no decoding.

The answer is forced to the grounding template ("Sure, it is <SEG>.") and checked against the model's own
greedy choices at every template position: where the model would have generated exactly the template, the
forced <SEG> state *is* the generated one, so the mask equals the interactive path's; elsewhere the caller falls
back to ordinary generation for that image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medplib.inference.predictor import encode_batch
from medplib.model.conversation import GROUND_ANSWER, IMAGE_TOKEN_INDEX, Turn, build_input_ids
from medplib.model.mask_io import mask_branch_logits
from medplib.model.modeling import MedPLIBForCausalLM


@dataclass
class BatchGrounding:
    """Per image: mask logits [H, W] (None when the model would not answer with the template)."""

    logits: list[np.ndarray | None]
    forced_ok: list[bool]


@torch.no_grad()
def ground_batch(model: MedPLIBForCausalLM, tokenizer, images: list[np.ndarray], question: str,
                 answer: str = GROUND_ANSWER) -> BatchGrounding:
    """`images` are HxWx3 uint8 (all the same size, e.g. slices of one volume)."""
    cfg = model.config
    feats, _ = encode_batch(model, images, [None] * len(images), for_regions=False)
    image_tokens = torch.stack([f.image_tokens for f in feats])
    ids, labels = build_input_ids(tokenizer, cfg.system_prompt, [Turn(question, answer)])
    # The text before the image (system prompt) is the same for every image: run it once, share its KV cache.
    cut = ids.index(IMAGE_TOKEN_INDEX)
    _, past = model.run_llm(model.embed_sequence(ids[:cut], None)[None], use_cache=True)
    past.batch_repeat_interleave(len(images))
    embeds = torch.stack([model.embed_sequence(ids[cut:], image_tokens[i]) for i in range(len(images))])
    hidden, _ = model.run_llm(embeds, past_key_values=past, use_cache=True)
    # Index of spliced position (ids index p > cut) in `hidden`: the placeholder became n_img positions and
    # the first `cut` positions live in the shared cache.
    offset = image_tokens.shape[1] - 1 - cut
    answer_pos = [i for i, lab in enumerate(labels) if lab >= 0]
    # Hidden state at position t predicts token t+1: check every answer token is the greedy choice.
    pred_pos = torch.tensor([p - 1 + offset for p in answer_pos])
    logits = model.lm_head(hidden[:, pred_pos]).float()
    target = torch.tensor([ids[p] for p in answer_pos])
    forced_ok = (logits.argmax(-1) == target[None]).all(-1).tolist()
    seg_pos = [p - 1 + offset for p in answer_pos if ids[p] == model.seg_token_id]
    out: list[np.ndarray | None] = []
    for i, ok in enumerate(forced_ok):
        if not ok or not seg_pos:
            out.append(None)
            continue
        prompts = model.seg_to_prompt(hidden[i, seg_pos])
        low, _ = model.decode_masks(feats[i].sam_embedding, prompts)
        full = mask_branch_logits(low.float(), feats[i].resize, feats[i].original_size, model.config.sam)[:, 0]
        out.append(full[0].cpu().numpy().astype(np.float32))  # the template has one <SEG>
    return BatchGrounding(out, forced_ok)
