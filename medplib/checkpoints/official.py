"""Load the official MedPLIB-7b-2e release from local folders, and convert it to the project layout.

Needs three local things (nothing is downloaded):
  * the MedPLIB HF folder (`config.json` with the `moe` dict, sharded `.bin` or `.safetensors`, tokenizer files);
  * the CLIP folder (openai/clip-vit-large-patch14-336) unless the checkpoint already holds the vision tower;
  * `sam-med2d_b.pth` (key `model`) unless the checkpoint already holds `model.visual_model.*`.
Absolute paths inside `config.json` (`mm_vision_tower`, `vision_pretrained`) are replaced by the arguments.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from medplib.checkpoints.build import build_model, finalize, llama_config, load_state_dict_checked
from medplib.checkpoints.project import save_pretrained
from medplib.model.config import LLMConfig, MedPLIBConfig, MoEConfig, VisionConfig
from medplib.model.sam_med2d import SamConfig, load_sam_med2d_state_dict

CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."
SAM_PREFIX = "model.visual_model."
# Buffers old transformers saved that current models recompute.
IGNORED_KEYS = ("rotary_emb.inv_freq", "embeddings.position_ids")


def read_official_config(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint: {path} not found")
    return json.loads(path.read_text())


def official_medplib_config(hf: dict, checkpoint_dir: Path, clip_dir: Path | None) -> MedPLIBConfig:
    """Translate the release's config.json (LLaVA fields + `moe` dict) and the CLIP config to ours."""
    moe = hf.get("moe") or {}
    experts = moe.get("num_experts", 2)
    experts = experts[0] if isinstance(experts, (list, tuple)) else experts
    llm = LLMConfig(
        source="config", path=str(checkpoint_dir), tokenizer="llama",
        hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        vocab_size=hf["vocab_size"], max_position_embeddings=hf.get("max_position_embeddings", 4096),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-5), rope_theta=float(hf.get("rope_theta", 10000.0)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    vision = VisionConfig(select_layer=int(hf.get("mm_vision_select_layer", -2)),
                          pretrained_path=str(clip_dir) if clip_dir else None)
    if clip_dir is not None and (clip_dir / "config.json").is_file():
        clip_cfg = json.loads((clip_dir / "config.json").read_text())
        clip_cfg = clip_cfg.get("vision_config", clip_cfg)
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "image_size", "patch_size"):
            if name in clip_cfg:
                setattr(vision, name, int(clip_cfg[name]))
    if "mm_hidden_size" in hf and hf["mm_hidden_size"] != vision.hidden_size:
        raise ValueError(f"mm_hidden_size {hf['mm_hidden_size']} != CLIP hidden size {vision.hidden_size}")
    layers = moe.get("moe_layers_idx")
    sam = SamConfig.from_dict(hf["sam_config"]) if "sam_config" in hf else SamConfig()
    if "out_dim" in hf:
        sam.out_chans = int(hf["out_dim"])
    return MedPLIBConfig(name="official", vision=vision, llm=llm, sam=sam,
                         moe=MoEConfig(num_experts=int(experts), top_k=int(moe.get("top_k_experts", 1)),
                                       layers=list(layers) if layers is not None else None),
                         projector_type=hf.get("mm_projector_type", "linear"), max_new_tokens=512)


def read_shards(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: sharded or single, safetensors or .bin (loaded with weights_only)."""
    from safetensors.torch import load_file

    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = checkpoint_dir / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            break
    else:
        files = [n for n in ("model.safetensors", "pytorch_model.bin") if (checkpoint_dir / n).is_file()]
    if not files:
        raise FileNotFoundError(f"official checkpoint: no model.safetensors, pytorch_model.bin or shard index "
                                f"in {checkpoint_dir}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = checkpoint_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"official checkpoint: shard {path} listed in the index is missing")
        if name.endswith(".safetensors"):
            state.update(load_file(str(path)))
        else:
            state.update(torch.load(str(path), map_location="cpu", weights_only=True, mmap=True))
    return state


def load_official(checkpoint_dir: str | Path, clip_dir: str | Path | None = None,
                  sam_checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.bfloat16):
    """Build MedPLIB from the official release; returns (model, tokenizer). Errors name missing files/keys."""
    checkpoint_dir = Path(checkpoint_dir)
    hf = read_official_config(checkpoint_dir)
    clip_dir = Path(clip_dir) if clip_dir else _existing(hf.get("mm_vision_tower"))
    sam_checkpoint = Path(sam_checkpoint) if sam_checkpoint else _existing(hf.get("vision_pretrained"))
    state = read_shards(checkpoint_dir)
    if not any(k.startswith(CLIP_PREFIX) for k in state):
        state.update(_clip_state(clip_dir))
    config = official_medplib_config(hf, checkpoint_dir, clip_dir)
    if not any(k.startswith(SAM_PREFIX) for k in state):
        if sam_checkpoint is None:
            raise FileNotFoundError("official checkpoint has no model.visual_model.* weights and no "
                                    "sam-med2d_b.pth was given (sam_checkpoint=...)")
        state.update({SAM_PREFIX + k: v for k, v in load_sam_med2d_state_dict(sam_checkpoint).items()})
    llm_config = llama_config(config.llm)
    config.vision.pretrained_path = None  # weights come from `state`, not a second CLIP load
    model, tokenizer = build_model(config, meta=True, llm_config=llm_config, seed=None)
    load_state_dict_checked(model, state, source=str(checkpoint_dir), ignore=IGNORED_KEYS)
    return finalize(model, device, dtype), tokenizer


def _clip_state(clip_dir: Path | None) -> dict[str, torch.Tensor]:
    from transformers import CLIPVisionModel

    if clip_dir is None or not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(f"official checkpoint has no {CLIP_PREFIX}* weights and the CLIP folder "
                                f"{clip_dir} (clip-vit-large-patch14-336) was not found; pass clip_dir=...")
    clip = CLIPVisionModel.from_pretrained(str(clip_dir))  # also takes the vision half of a full CLIPModel folder
    state = clip.state_dict()
    # transformers < 5 named these `vision_model.*`; current CLIPVisionModel has no such level.
    return {CLIP_PREFIX + k.removeprefix("vision_model."): v for k, v in state.items()}


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).exists() else None


def main(argv: list[str] | None = None) -> None:
    """CLI: convert the official release into the project's safetensors layout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="MedPLIB-7b-2e HF folder")
    parser.add_argument("--clip", help="clip-vit-large-patch14-336 folder (if not inside the checkpoint)")
    parser.add_argument("--sam", help="sam-med2d_b.pth (if not inside the checkpoint)")
    parser.add_argument("--out", required=True, help="output folder (project layout)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    model, tokenizer = load_official(args.checkpoint, args.clip, args.sam, dtype=getattr(torch, args.dtype))
    out = save_pretrained(model, tokenizer, args.out, metadata={"source": "MedPLIB-7b-2e"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
