"""Mixture-of-experts FFN: a plain-PyTorch port of the DeepSpeed top-1 MoE used by MedPLIB.

Module names mirror DeepSpeed's so official state-dict keys load unchanged:
`mlp.deepspeed_moe.gate.wg.weight` and `mlp.deepspeed_moe.experts.deepspeed_experts.{e}.{gate,up,down}_proj.weight`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class TopKGate(nn.Module):
    """Router: bias-free Linear(hidden -> num_experts), softmax in fp32 (as DeepSpeed's TopKGate)."""

    def __init__(self, hidden_size: int, num_experts: int):
        super().__init__()
        self.wg = nn.Linear(hidden_size, num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return routing probabilities [tokens, num_experts] in fp32."""
        return F.softmax(x.float() @ self.wg.weight.float().t(), dim=-1)


class Experts(nn.Module):
    def __init__(self, experts: list[nn.Module]):
        super().__init__()
        self.deepspeed_experts = nn.ModuleList(experts)


class MoEBlock(nn.Module):
    def __init__(self, hidden_size: int, experts: list[nn.Module]):
        super().__init__()
        self.gate = TopKGate(hidden_size, len(experts))
        self.experts = Experts(experts)


class MoEFeedForward(nn.Module):
    """Top-1 MoE: y = p[e] * expert_e(x), e = argmax p.

    Each token is computed by its chosen expert only, so the cost is about one dense FFN. No token is
    dropped: at eval the original's capacity (factor 2 over 2 experts) equals the token count, so this
    is exact there; in training we also keep every token (capacity dropping only served memory balance).
    """

    def __init__(self, hidden_size: int, experts: list[nn.Module], top_k: int = 1):
        super().__init__()
        if top_k != 1:
            raise NotImplementedError("MedPLIB uses top-1 routing; top_k > 1 is not implemented")
        self.deepspeed_moe = MoEBlock(hidden_size, experts)
        self.last_routing: torch.Tensor | None = None  # expert index per token of the last call (for tests/stats)
        self.record_routing = False
        # Training stages II/III of the paper train one expert as a dense FFN: route every token to it, still
        # scaled by its gate probability so the output stays continuous with the MoE stage that follows.
        self.force_expert: int | None = None
        self.keep_idle_experts = False  # set by FSDP training

    @property
    def num_experts(self) -> int:
        return len(self.deepspeed_moe.experts.deepspeed_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs = self.deepspeed_moe.gate(tokens)
        if self.force_expert is None:
            gate, choice = probs.max(dim=-1)
        else:
            choice = torch.full(probs.shape[:1], self.force_expert, dtype=torch.long, device=probs.device)
            gate = probs[:, self.force_expert]
        if self.record_routing:
            self.last_routing = choice.detach().reshape(shape[:-1])
        experts = self.deepspeed_moe.experts.deepspeed_experts
        if tokens.shape[0] == 1:
            # Decode step: one token, one expert; skip the gather/scatter entirely.
            out = experts[int(choice)](tokens) * gate.to(tokens.dtype)[:, None]
            return out.reshape(shape)
        out = torch.empty_like(tokens)
        order = torch.argsort(choice)
        counts = torch.bincount(choice, minlength=len(experts)).tolist()
        start = 0
        # Tokens sorted by expert: each expert runs once on a contiguous slice of its own tokens.
        # Under FSDP every expert joins the graph, idle ones on zero tokens: ranks must agree on which parameters
        # get a gradient (FSDP reduce-scatters per unit). Off otherwise: a zero gradient is not "no gradient" for
        # Adam (its step count moves on), so single-process and DDP training keep idle experts out.
        keep_idle = self.keep_idle_experts and self.training and torch.is_grad_enabled()
        for idx, count in enumerate(counts):
            if count == 0 and not keep_idle:
                continue
            sel = order[start:start + count]
            start += count
            y = experts[idx](tokens.index_select(0, sel))
            out.index_copy_(0, sel, y * gate.index_select(0, sel).to(y.dtype)[:, None])
        return out.reshape(shape)


def convert_llama_to_moe(model: nn.Module, num_experts: int = 2, layers: list[int] | None = None) -> None:
    """Replace the MLP of each decoder layer of a transformers Llama model with a MoE of copies of it.

    The router starts at zero (uniform p = 1/num_experts) and each expert's down_proj is scaled by
    num_experts, so p[e] * expert_e(x) equals the dense FFN exactly: a pretrained LLM keeps its behaviour
    until training moves the router and the experts apart (the original starts from fine-tuned copies).
    """
    decoder_layers = model.layers
    wanted = set(range(len(decoder_layers))) if layers is None else set(layers)
    for i, layer in enumerate(decoder_layers):
        if i not in wanted or isinstance(layer.mlp, MoEFeedForward):
            continue
        dense = layer.mlp
        experts = [dense] + [copy.deepcopy(dense) for _ in range(num_experts - 1)]
        if not dense.down_proj.weight.is_meta:
            with torch.no_grad():
                for expert in experts:
                    expert.down_proj.weight.mul_(num_experts)
        moe = MoEFeedForward(dense.gate_proj.in_features, experts)
        moe.to(device=dense.gate_proj.weight.device)
        if not moe.deepspeed_moe.gate.wg.weight.is_meta:
            nn.init.zeros_(moe.deepspeed_moe.gate.wg.weight)
        layer.mlp = moe


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]
