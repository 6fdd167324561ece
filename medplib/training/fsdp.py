"""Fully sharded data parallel (FSDP2) training: each LLM decoder layer (with its MoE experts and LoRA factors) is
its own FSDP unit; the rest of the network (towers, projector, embeddings, mask branch) is the root unit. The
official MedPLIB-7b-2e (~11.7 B parameters) does not fit one GPU for training with AdamW. Checkpoints of such a run:
`medplib.checkpoints.sharded`."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset


def decoder_layers(model) -> list[torch.nn.Module]:
    return list(model.model.layers)


def shard(model, device_mesh=None) -> None:
    """Broadcast rank 0's weights (FSDP does not), then shard each decoder layer and the root, in place."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=device_mesh)
    fully_shard(model, mesh=device_mesh)


def mask_new_token_rows(model) -> None:
    """Keep the pretrained vocabulary rows frozen under FSDP. Unsharded, a gradient hook on the embedding does it
    (`lora._mask_rows`); FSDP writes the sharded gradients itself, so zero those rows in each rank's shard."""
    weights = [model.model.embed_tokens.weight]
    if not model.llm_config.tie_word_embeddings:
        weights.append(model.lm_head.weight)
    for w in weights:
        g = w.grad
        if not w.requires_grad or g is None:
            continue
        if isinstance(g, DTensor):
            local = g.to_local()
            _, offset = compute_local_shape_and_global_offset(g.shape, g.device_mesh, g.placements)
            first = offset[0]  # global index of this shard's first row (FSDP shards dim 0)
        else:
            local, first = g, 0
        local[: max(0, min(model.base_vocab_size - first, local.shape[0]))] = 0
