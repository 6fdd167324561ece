"""Greedy decoding of many independent requests in one batch (dynamic batching across clients).

Every row continues its own KV cache (e.g. the "system + image" prefix of its slice) with its own question and an
optional draft answer. Rows differ in length, so the batch is right-padded and an attention mask hides, per row,
the padding and any rejected draft tokens; RoPE positions are given per row. Each row's tokens and <SEG> states
are those of `MedPLIBForCausalLM.generate` on that row alone (up to float rounding of batched matmuls).

On a CPU the prefill is compute-bound (batching saves little there) while a decode step costs about the same for
one row as for eight, so the gain grows with answer length; on a GPU both phases gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from medplib.model.modeling import Emitted, Generation, MedPLIBForCausalLM


@dataclass
class DecodeRequest:
    """One row: its cache (None for no prefix), its new input embeddings [L, H], a draft and a token budget."""

    past: DynamicCache | None
    embeds: torch.Tensor
    draft: list[int] | None = None
    max_new_tokens: int = 64
    keep_prefix: int | None = None  # return this row's cache of its first `keep_prefix` positions (a new prefix)


def stack_caches(caches: list[DynamicCache | None], dtype: torch.dtype, device) -> tuple[DynamicCache, int]:
    """A new batch cache from per-row caches of equal length (the rows' own caches are left untouched)."""
    lengths = {0 if c is None else c.get_seq_length() for c in caches}
    if len(lengths) != 1:
        raise ValueError(f"rows must share a prefix length to be batched, got {sorted(lengths)}")
    length = lengths.pop()
    batch = DynamicCache()
    if length == 0:
        return batch, 0
    for layer in range(len(caches[0].layers)):
        keys = torch.cat([c.layers[layer].keys for c in caches]).to(device, dtype)
        values = torch.cat([c.layers[layer].values for c in caches]).to(device, dtype)
        batch.update(keys, values, layer)
    return batch, length


@torch.no_grad()
def generate_batch(model: MedPLIBForCausalLM, requests: list[DecodeRequest]) -> list[Generation]:
    """Greedy decoding of every request, batched; one `Generation` per request, in order."""
    t0 = model.clock()
    device, dtype = model.device, model.dtype
    n = len(requests)
    past, prefix = stack_caches([r.past for r in requests], dtype, device)
    drafts = [list((r.draft or [])[:r.max_new_tokens]) for r in requests]
    embed = model.model.embed_tokens
    rows = []
    for r, draft in zip(requests, drafts):
        parts = [r.embeds.to(device, dtype)]
        if draft:
            parts.append(embed(torch.tensor(draft, device=device)))
        rows.append(torch.cat(parts))
    width = max(x.shape[0] for x in rows)
    inputs = torch.zeros(n, width, rows[0].shape[-1], device=device, dtype=dtype)
    mask = torch.zeros(n, prefix + width, dtype=torch.long, device=device)
    mask[:, :prefix] = 1
    for i, x in enumerate(rows):
        inputs[i, :x.shape[0]] = x
        mask[i, prefix:prefix + x.shape[0]] = 1
    positions = torch.arange(prefix, prefix + width, device=device).expand(n, -1)
    hidden, past = model.run_llm(inputs, attention_mask=mask, position_ids=positions, past_key_values=past,
                                 use_cache=True)
    t1 = model.clock()
    kept = {i: _row_prefix(past, i, prefix + r.keep_prefix) for i, r in enumerate(requests) if r.keep_prefix}

    # Verify each draft on the host: accept the longest prefix the model itself predicts (as `generate` does).
    emitted = [Emitted(model.seg_token_id) for _ in range(n)]
    tokens = [e.tokens for e in emitted]
    done = [False] * n
    valid = [0] * n  # tokens of each row that stay visible in the cache (after the prefix)
    next_ids = [model.eos_token_id] * n
    for i, (r, draft) in enumerate(zip(requests, drafts)):
        q = r.embeds.shape[0]
        states = hidden[i, q - 1:q + len(draft)]  # states[j] predicts answer token j
        predicted = model.lm_head(states).float().argmax(-1).tolist()
        valid[i] = q
        for j, tok in enumerate(predicted):
            if len(tokens[i]) >= r.max_new_tokens:
                done[i] = True
                break
            emitted[i].add(tok, states[j])
            if tok == model.eos_token_id or len(tokens[i]) >= r.max_new_tokens:
                done[i] = True
                break
            if j >= len(draft) or tok != draft[j]:
                next_ids[i] = tok  # the model's own token: decode on from it
                break
            valid[i] += 1  # draft token j accepted: it stays in the cache
        if r.max_new_tokens <= 0:
            done[i] = True
        # hide the padding and the rejected draft tokens of this row
        mask[i, prefix + valid[i]:] = 0

    # Decode the rows that are not finished, one step for all of them at a time. Chosen ids stay on the device
    # and are read back every `sync_every` steps (every step on a CPU; on a GPU a read-back stalls the launch
    # queue); steps a row takes after its end are discarded, and finished rows leave the batch at read-backs.
    sync_every = model.sync_every or (1 if device.type == "cpu" else 8)
    active = [i for i in range(n) if not done[i]]
    if active and len(active) < n:
        past.batch_select_indices(torch.tensor(active, device=device))
        mask = mask[active]
    step_ids = torch.tensor([[next_ids[i]] for i in active], device=device)
    pos = torch.tensor([[prefix + valid[i]] for i in active], device=device)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (chosen ids [A], states [A, H]) not yet read back
    while active:
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        out, past = model.run_llm(embed(step_ids), attention_mask=mask, position_ids=pos, past_key_values=past,
                                  use_cache=True)
        h = out[:, -1]
        chosen = model.lm_head(h).float().argmax(-1)
        pending.append((chosen, h))
        step_ids, pos = chosen[:, None], pos + 1
        budget = min(requests[i].max_new_tokens - len(tokens[i]) for i in active)
        if len(pending) < min(sync_every, budget):
            continue
        values = torch.stack([c for c, _ in pending]).tolist()  # the one read-back: [steps, rows]
        keep = []
        for row, i in enumerate(active):
            for step, (_, states) in enumerate(pending):
                tok = values[step][row]
                emitted[i].add(tok, states[row])
                if tok == model.eos_token_id or len(tokens[i]) >= requests[i].max_new_tokens:
                    done[i] = True
                    break
            if not done[i]:
                keep.append(row)
        pending.clear()
        if len(keep) < len(active):
            if keep:
                index = torch.tensor(keep, device=device)
                past.batch_select_indices(index)
                mask, step_ids, pos = mask[index], step_ids[index], pos[index]
            active = [active[row] for row in keep]
    t2 = model.clock()
    timings = {"prefill": (t1 - t0) * 1e3, "decode": (t2 - t1) * 1e3, "batch": float(n)}
    return [Generation(e.tokens, e.seg_hidden(model.config.seg_state, hidden[0, -1]), dict(timings), kept.get(i))
            for i, e in enumerate(emitted)]


def _row_prefix(cache: DynamicCache, row: int, length: int) -> DynamicCache:
    out = DynamicCache()
    for layer, entry in enumerate(cache.layers):
        out.update(entry.keys[row:row + 1, :, :length].clone(), entry.values[row:row + 1, :, :length].clone(), layer)
    return out
