"""Building a MedPLIB network from a config, and the checks shared by every checkpoint reader."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from medplib.model import lite_medsam
from medplib.model.config import LLMConfig, MedPLIBConfig, preset
from medplib.model.modeling import MedPLIBForCausalLM, token_ids_from_tokenizer
from medplib.model.tokenizer import load_tokenizer, resolve_llm_path


def llama_config(cfg: LLMConfig, vocab_size: int | None = None):
    """A transformers LlamaConfig from our LLM hyper-parameters."""
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
    if config.sam.pretrained == "lite_medsam" and not meta:
        model.model.visual_model.load_state_dict(lite_medsam.load_state_dict(), strict=True)
    return model.eval(), tokenizer


def load_clip_weights(model: MedPLIBForCausalLM, clip_dir: str | os.PathLike) -> None:
    """Load CLIP vision weights from a local transformers CLIP folder (openai/clip-vit-large-patch14-336)."""
    clip_dir = Path(clip_dir)
    if not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(f"CLIP folder {clip_dir} has no config.json")
    clip = CLIPVisionModel.from_pretrained(str(clip_dir), dtype=model.dtype)
    model.model.vision_tower.vision_tower.vision_model.load_state_dict(clip.state_dict(), strict=True)


def shared_aliases(model: nn.Module) -> set[str]:
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


def load_state_dict_checked(model: MedPLIBForCausalLM, state: dict[str, torch.Tensor], source: str,
                            ignore: tuple[str, ...] = ()) -> None:
    """assign-load a state dict; missing or unexpected keys raise an error that names them."""
    aliases = shared_aliases(model)
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
