"""Fully sharded data parallel (FSDP2) training helpers and sharded checkpoints.

The official MedPLIB-7b-2e (~11.7 B parameters) does not fit one GPU for training with AdamW, so with `fsdp`
each LLM decoder layer (with its MoE experts and LoRA factors) is its own FSDP unit and the rest of the network
(towers, projector, embeddings, mask branch) is the root unit. Checkpoints are written by every rank as a
`torch.distributed.checkpoint` folder (`sharded/`, one file per rank) next to the usual config and tokenizer;
`load_sharded` reads such a folder in a single process (the app), no process group needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from .tokenizer import save_tokenizer

SHARDED_DIR = "sharded"
SHARDED_CONFIG = "sharded_config.json"


def decoder_layers(model) -> list[torch.nn.Module]:
    return list(model.model.layers)


def shard(model, device_mesh=None) -> None:
    """Broadcast rank 0's weights (FSDP does not), then shard each decoder layer and the root, in place."""
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=device_mesh)
    fully_shard(model, mesh=device_mesh)


def mask_new_token_rows(model) -> None:
    """Keep the pretrained vocabulary rows frozen under FSDP. Unsharded, a gradient hook on the embedding does it
    (`lora._mask_rows`); FSDP writes the sharded gradients itself, so zero those rows in each rank's shard."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

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


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole state on rank 0 (CPU); an empty dict on the other ranks. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(model, tokenizer, folder: str | os.PathLike, base: str | None = None) -> Path:
    """Every rank writes its shards to `folder/sharded`; rank 0 adds the config (with LoRA settings) and tokenizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    folder = Path(folder)
    dcp.save(get_model_state_dict(model), checkpoint_id=str(folder / SHARDED_DIR))
    if dist.get_rank() == 0:
        cfg = model.config.to_dict()
        if getattr(model, "lora_settings", None) is not None:
            cfg["lora"] = model.lora_settings.to_dict()
        if base is not None:
            cfg["base"] = base
        llm_cfg = model.llm_config.to_dict()
        llm_cfg.pop("quantization_config", None)
        (folder / SHARDED_CONFIG).write_text(json.dumps({"medplib": cfg, "llm": llm_cfg}, indent=2))
        save_tokenizer(tokenizer, folder)
    dist.barrier()
    return folder


def has_sharded(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / SHARDED_DIR / ".metadata").is_file() and (folder / SHARDED_CONFIG).is_file()


def load_sharded(folder: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32):
    """Load a sharded checkpoint in one process: build the network on the meta device, then read every shard."""
    import torch.distributed.checkpoint as dcp
    from transformers import LlamaConfig

    from .config import MedPLIBConfig
    from .loading import _shared_aliases, build_model, finalize, load_state_dict_checked
    from .lora import LoraSettings, add_lora, merge_lora
    from .tokenizer import load_tokenizer

    folder = Path(folder)
    raw = json.loads((folder / SHARDED_CONFIG).read_text())
    cfg = dict(raw["medplib"])
    cfg.pop("base", None)
    lora = cfg.pop("lora", None)
    config = MedPLIBConfig.from_dict(cfg)
    llm_config = LlamaConfig.from_dict(raw["llm"])
    tokenizer = load_tokenizer(config.llm, folder=folder)
    model, tokenizer = build_model(config, tokenizer=tokenizer, meta=True, llm_config=llm_config, seed=None)
    if lora:
        add_lora(model, LoraSettings.from_dict(lora))
    aliases = _shared_aliases(model)  # tied lm_head / embeddings: read once
    state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items() if k not in aliases}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_DIR))  # fills `state` in place; a missing key raises
    load_state_dict_checked(model, state, source=str(folder / SHARDED_DIR))
    if model.llm_config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if lora:
        merge_lora(model)
    return finalize(model, device, dtype), tokenizer
