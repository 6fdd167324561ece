"""Sharded checkpoints written by FSDP training: every rank writes a `torch.distributed.checkpoint` folder
(`sharded/`, one file per rank) next to the usual config and tokenizer; `load_sharded` reads such a folder in a
single process (the app), no process group needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import LlamaConfig

from medplib.checkpoints.build import build_model, finalize, load_state_dict_checked, shared_aliases
from medplib.model.config import MedPLIBConfig
from medplib.model.lora import LoraSettings, add_lora, merge_lora
from medplib.model.tokenizer import load_tokenizer, save_tokenizer

SHARDED_DIR = "sharded"
SHARDED_CONFIG = "sharded_config.json"


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole state on rank 0 (CPU); an empty dict on the other ranks. Every rank must call it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(model, tokenizer, folder: str | os.PathLike, base: str | None = None) -> Path:
    """Every rank writes its shards to `folder/sharded`; rank 0 adds the config (with LoRA settings) and tokenizer."""
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
    aliases = shared_aliases(model)  # tied lm_head / embeddings: read once
    state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items() if k not in aliases}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_DIR))  # fills `state` in place; a missing key raises
    load_state_dict_checked(model, state, source=str(folder / SHARDED_DIR))
    if model.llm_config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if lora:
        merge_lora(model)
    return finalize(model, device, dtype), tokenizer
