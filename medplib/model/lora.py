"""LoRA (peft) on the LLM part of MedPLIB only: which linears carry factors, injecting and folding them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from medplib.model.modeling import MedPLIBForCausalLM

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """Which LLM linears carry LoRA factors (one injection for all stages; stages toggle subsets)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    attention: tuple[str, ...] = ATTN
    experts: tuple[int, ...] = (0, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoraSettings":
        d = dict(d)
        d["attention"] = tuple(d.get("attention", ATTN))
        d["experts"] = tuple(d.get("experts", (0, 1)))
        return cls(**d)

    def target_regex(self) -> str:
        # Anchored at "layers." so the CLIP tower and the SAM decoder (which also have q_proj/v_proj) never match.
        attn = "|".join(self.attention)
        experts = "|".join(str(e) for e in self.experts)
        ffn = "|".join(FFN)
        return (rf"layers\.\d+\.(self_attn\.({attn})"
                rf"|mlp\.deepspeed_moe\.experts\.deepspeed_experts\.({experts})\.({ffn}))")


def add_lora(model: MedPLIBForCausalLM, settings: LoraSettings) -> None:
    """Inject LoRA factors into the LLM decoder layers (in place, initialised so the output is unchanged)."""
    if has_lora(model):
        return
    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=settings.target_regex(), bias="none")
    inject_adapter_in_model(cfg, model.model)
    model.lora_settings = settings


def has_lora(model: nn.Module) -> bool:
    return any("lora_A" in name for name, _ in model.named_parameters())


def merge_lora(model: MedPLIBForCausalLM) -> None:
    """Fold LoRA factors into the base weights and drop them (inference speed; exact up to rounding)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
    if hasattr(model, "lora_settings"):
        del model.lora_settings
