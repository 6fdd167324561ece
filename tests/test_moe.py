"""MoE FFN: DeepSpeed top-1 semantics, one expert per token, conversion of a Llama model."""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from medplib.model.moe import MoEFeedForward, convert_llama_to_moe


def _mlp(seed: int) -> LlamaMLP:
    torch.manual_seed(seed)
    return LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=4))


def test_one_hot_router_equals_dense_expert():
    experts = [_mlp(0), _mlp(1)]
    moe = MoEFeedForward(16, copy.deepcopy(experts))
    x = torch.randn(2, 7, 16)
    for target in (0, 1):
        with torch.no_grad():
            moe.deepspeed_moe.gate.wg.weight.zero_()
        # A constant input feature dominates the logits: softmax is exactly one-hot in fp32.
        x_biased = x.clone()
        x_biased[..., 0] = 10.0
        with torch.no_grad():
            moe.deepspeed_moe.gate.wg.weight[target, 0] = 100.0
        out = moe(x_biased)
        torch.testing.assert_close(out, experts[target](x_biased), rtol=0, atol=0)


def test_top1_routing_per_token_scaled_by_gate_probability():
    experts = [_mlp(2), _mlp(3)]
    moe = MoEFeedForward(16, copy.deepcopy(experts))
    moe.record_routing = True
    torch.manual_seed(4)
    x = torch.randn(3, 11, 16)
    out = moe(x)
    probs = torch.softmax(x.reshape(-1, 16).float() @ moe.deepspeed_moe.gate.wg.weight.float().t(), -1)
    choice = probs.argmax(-1)
    assert torch.equal(moe.last_routing.reshape(-1), choice)
    assert 0 < int(choice.sum()) < choice.numel(), "test input should route to both experts"
    flat = x.reshape(-1, 16)
    expected = torch.stack([probs[i, e] * experts[int(e)](flat[i:i + 1])[0] for i, e in enumerate(choice)])
    torch.testing.assert_close(out.reshape(-1, 16), expected, rtol=1e-5, atol=1e-6)


def test_each_token_computed_by_its_expert_only():
    moe = MoEFeedForward(16, [_mlp(5), _mlp(6)])
    seen = [0, 0]
    for idx, expert in enumerate(moe.deepspeed_moe.experts.deepspeed_experts):
        expert.register_forward_hook(lambda m, inp, out, idx=idx: seen.__setitem__(idx, seen[idx] + inp[0].shape[0]))
    moe.record_routing = True
    x = torch.randn(50, 16)
    moe(x)
    counts = torch.bincount(moe.last_routing.flatten(), minlength=2).tolist()
    assert seen == counts and sum(seen) == 50  # no token computed twice, none dropped


def test_single_token_decode_path_matches_batched():
    moe = MoEFeedForward(16, [_mlp(7), _mlp(8)])
    x = torch.randn(9, 16)
    batched = moe(x)
    single = torch.cat([moe(x[i:i + 1]) for i in range(9)])
    torch.testing.assert_close(single, batched, rtol=1e-5, atol=1e-6)


def test_convert_llama_to_moe_preserves_outputs_and_uses_official_names():
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (1, 12))
    before = llm(ids).logits
    convert_llama_to_moe(llm.model, num_experts=2)
    after = llm(ids).logits
    # Zero router (p = 1/2) and down_proj x 2: the converted model is the dense model, exactly.
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    keys = set(llm.state_dict())
    assert "model.layers.0.mlp.deepspeed_moe.gate.wg.weight" in keys
    for e in (0, 1):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert f"model.layers.1.mlp.deepspeed_moe.experts.deepspeed_experts.{e}.{proj}.weight" in keys
    assert llm.state_dict()["model.layers.0.mlp.deepspeed_moe.gate.wg.weight"].shape == (2, 32)
