"""Training stages: what each stage updates and how the MoE routes (the paper's stages II, III, IV), and the
gradient mask that keeps the pretrained vocabulary rows as shipped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from medplib.model.lora import ATTN, LoraSettings
from medplib.model.modeling import MedPLIBForCausalLM
from medplib.model.moe import moe_layers


@dataclass
class StagePlan:
    """What a training stage updates and how the MoE routes (paper Table: stages II, III, IV)."""

    name: str
    lora_attention: tuple[str, ...] = ()
    lora_experts: tuple[int, ...] = ()
    force_expert: int | None = None
    train_router: bool = False
    modules: tuple[str, ...] = ()  # dotted prefixes under the model, trained fully
    kinds: tuple[str, ...] = ("vqa", "region", "ground")
    loss: dict = field(default_factory=dict)


STAGES: dict[str, StagePlan] = {
    # II: VQA expert (expert 1) with LoRA on attention too; projector, norms, new tokens, region adapter.
    "vqa": StagePlan("vqa", ATTN, (1,), force_expert=1,
                     modules=("model.mm_projector", "model.region_fea_adapter", "model.region_pixel_",
                              "input_layernorm", "post_attention_layernorm", "new_token_rows"),
                     kinds=("vqa", "region"), loss={"ce": 1.0, "bce": 0.0, "dice": 0.0, "focal": 0.0}),
    # II': the same on the per-image closed questions only (modality, plane, body part): a short top-up when
    # those answers lag (the mixed stage sees each closed kind in ~1 of 6 conversations).
    "closed": StagePlan("closed", ATTN, (1,), force_expert=1,
                        modules=("model.mm_projector", "input_layernorm", "post_attention_layernorm"),
                        kinds=("vqa",), loss={"ce": 1.0, "bce": 0.0, "dice": 0.0, "focal": 0.0}),
    # II routed: stage II's trainable set, but the router decides which expert each token uses, as when served
    # (it sends ~half of a VQA prompt's tokens to the grounding expert), and both experts learn. Grounding
    # conversations are replayed with stage IV's mask losses through the frozen decoder, so training the
    # grounding expert on answers does not cost the <SEG> answers or their masks. The router stays as it was.
    "vqa_routed": StagePlan("vqa_routed", ATTN, (0, 1), force_expert=None,
                            modules=("model.mm_projector", "model.region_fea_adapter", "model.region_pixel_",
                                     "input_layernorm", "post_attention_layernorm", "new_token_rows"),
                            kinds=("vqa", "region", "ground"), loss={"ce": 1.0, "bce": 2.0, "dice": 0.5, "focal": 0.0}),
    # III: grounding expert (expert 0) FFN LoRA; mask decoder and text->prompt MLP.
    "ground": StagePlan("ground", (), (0,), force_expert=0,
                        modules=("model.visual_model.mask_decoder", "model.text_hidden_fcs", "new_token_rows"),
                        kinds=("ground",), loss={"ce": 1.0, "bce": 1.0, "dice": 5.0, "focal": 1.0}),
    # IV: router plus LoRA on q, v and both experts; decoder, text MLP, region adapter, new tokens.
    "moe": StagePlan("moe", ("q_proj", "v_proj"), (0, 1), train_router=True,
                     modules=("model.visual_model.mask_decoder", "model.text_hidden_fcs", "model.region_fea_adapter",
                              "model.region_pixel_", "new_token_rows"),
                     loss={"ce": 1.0, "bce": 2.0, "dice": 0.5, "focal": 0.0}),
}
ENCODERS = ("model.vision_tower", "model.visual_model.image_encoder", "model.visual_model.prompt_encoder",
            "model.mm_projector")


def configure_stage(model: MedPLIBForCausalLM, plan: StagePlan, train_encoders: bool = False,
                    full_embeddings: bool = False) -> list[nn.Parameter]:
    """Freeze everything, then enable this stage's parameters; returns them (for the optimizer)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for moe in moe_layers(model):
        moe.force_expert = plan.force_expert
    prefixes = list(plan.modules) + (list(ENCODERS) if train_encoders else [])
    lora_re = LoraSettings(attention=plan.lora_attention, experts=plan.lora_experts).target_regex()
    pattern = re.compile(lora_re)
    for name, p in model.named_parameters():
        if "lora_" in name:
            module_name = name.split(".lora_")[0].removeprefix("model.")
            p.requires_grad_(bool(pattern.fullmatch(module_name)) and bool(plan.lora_attention or plan.lora_experts))
        elif plan.train_router and name.endswith("deepspeed_moe.gate.wg.weight"):
            p.requires_grad_(True)
        elif any(name.startswith(pre) or f".{pre}." in name for pre in prefixes if pre != "new_token_rows"):
            p.requires_grad_(True)
    if "new_token_rows" in plan.modules:
        emb = model.model.embed_tokens.weight
        emb.requires_grad_(True)
        if not full_embeddings:
            _mask_rows(emb, model.base_vocab_size)
        if not model.llm_config.tie_word_embeddings:
            model.lm_head.weight.requires_grad_(True)
            if not full_embeddings:
                _mask_rows(model.lm_head.weight, model.base_vocab_size)
    return [p for p in model.parameters() if p.requires_grad]


def _mask_rows(weight: nn.Parameter, first_new: int) -> None:
    """Only the rows of the added tokens learn: the pretrained vocabulary stays exactly as shipped."""
    if getattr(weight, "_row_mask_hook", None) is not None:
        return
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[first_new:] = 1
    weight._row_mask_hook = weight.register_hook(lambda g: g * mask.to(g.dtype))
