"""Memory arithmetic from a config (no weights needed): parameter counts, weight bytes, KV cache per token.

    python -m medplib.checkpoints.memory official     # what a GPU needs for MedPLIB-7b-2e in bf16
"""

from __future__ import annotations

import sys

from medplib.model.config import MedPLIBConfig, preset
from medplib.model.conversation import SPECIAL_TOKENS


def llm_parameters(cfg: MedPLIBConfig, vocab: int | None = None) -> dict[str, int]:
    llm = cfg.llm
    h, f, n = llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers
    head = h // llm.num_attention_heads
    kv = llm.num_key_value_heads * head
    vocab = vocab or llm.vocab_size + len(SPECIAL_TOKENS)
    attn = h * h * 2 + h * kv * 2  # q, o and k, v
    expert = 3 * h * f
    layer = attn + cfg.moe.num_experts * expert + cfg.moe.num_experts * h + 2 * h  # + router + 2 norms
    embeddings = vocab * h * (1 if llm.tie_word_embeddings else 2)
    return {"layers": n * layer, "embeddings": embeddings, "one_expert_all_layers": n * expert,
            "active_per_token": n * (attn + expert) + embeddings}


def report(cfg: MedPLIBConfig, bytes_per_param: int = 2) -> dict[str, float]:
    """GiB figures for weights and the KV cache (bf16/fp16 by default)."""
    llm = llm_parameters(cfg)
    v = cfg.vision
    clip = v.num_hidden_layers * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size)
    sam_vitb = 91_000_000 + 180_500_000 if cfg.sam.encoder_adapter else 91_000_000  # measured ViT-B counts
    heads = v.hidden_size * cfg.llm.hidden_size + cfg.llm.hidden_size ** 2 * 2 + cfg.llm.hidden_size * cfg.out_dim
    total = llm["layers"] + llm["embeddings"] + clip + (sam_vitb if cfg.name == "official" else 0) + heads
    head_dim = cfg.llm.hidden_size // cfg.llm.num_attention_heads
    kv_per_token = 2 * cfg.llm.num_hidden_layers * cfg.llm.num_key_value_heads * head_dim * bytes_per_param
    gib = 2 ** 30
    return {"parameters_billion": total / 1e9, "active_parameters_billion": llm["active_per_token"] / 1e9,
            "weights_gib": total * bytes_per_param / gib, "kv_cache_mib_per_token": kv_per_token / 2 ** 20,
            "kv_cache_gib_for_1000_tokens": kv_per_token * 1000 / gib}


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "official"
    for key, value in report(preset(name)).items():
        print(f"{key}: {value:.3f}")
