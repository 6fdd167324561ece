"""Project save/load round trip and loading of a checkpoint in the official MedPLIB-7b-2e layout (tiny dims)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medplib.checkpoints.build import build_model
from medplib.checkpoints.official import CLIP_PREFIX, SAM_PREFIX, load_official
from medplib.checkpoints.project import from_pretrained, save_pretrained
from medplib.imaging.regions import Point
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.config import tiny_config

from .conftest import synthetic_image


def _outputs(model, tok):
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(synthetic_image(30, 45, seed=3))
    ans = pred.ask("Describe <region>.", regions=[Point(10, 20)], max_new_tokens=6)
    seg = model.seg_to_prompt(torch.ones(1, model.llm_config.hidden_size))
    low, iou = model.decode_masks(pred.features.sam_embedding, seg)
    return ans.token_ids, pred.features.image_tokens, low


def test_save_and_from_pretrained_round_trip(tmp_path, tiny):
    model, tok = tiny
    save_pretrained(model, tok, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"medplib_config.json", "llm_config.json",
                                                             "model.safetensors", "tokenizer_config.json"}
    loaded, tok2 = from_pretrained(tmp_path / "ckpt")
    assert len(tok2) == len(tok) and tok2.convert_tokens_to_ids("<SEG>") == tok.convert_tokens_to_ids("<SEG>")
    for a, b in zip(_outputs(model, tok), _outputs(loaded, tok2)):
        if isinstance(a, list):
            assert a == b
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_from_pretrained_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="medplib_config.json"):
        from_pretrained(tmp_path)


def _train_sentencepiece(folder: Path) -> None:
    import sentencepiece as spm

    text = folder / "corpus.txt"
    text.write_text("\n".join([
        "Please segment the liver in this CT image.", "What modality is this? It is an MR scan of the brain.",
        "A chat between a curious human and an artificial intelligence assistant.",
        "Sure, it is the grey matter and the white matter. USER: ASSISTANT:"] * 40))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=400,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2)
    text.unlink()
    (folder / "tokenizer.vocab").unlink()


def write_official_layout(root: Path):
    """Write a tiny model in the release's layout: HF folder with 2 .bin shards + index, CLIP folder, SAM .pth."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from medplib.model.tokenizer import add_medplib_tokens

    ckpt, clip_dir, sam_path = root / "MedPLIB-7b-2e", root / "clip-vit-large-patch14-336", root / "sam-med2d_b.pth"
    ckpt.mkdir(parents=True)
    _train_sentencepiece(ckpt)
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": True,
                                                            "bos_token": "<s>", "eos_token": "</s>",
                                                            "unk_token": "<unk>"}))
    tok = AutoTokenizer.from_pretrained(str(ckpt), use_fast=False, legacy=True)
    add_medplib_tokens(tok)
    tok.save_pretrained(str(ckpt))  # official folders ship the tokens already added (added_tokens.json)
    cfg = tiny_config()
    cfg.llm.tokenizer = "llama"
    model, tok = build_model(cfg, tokenizer=tok, seed=7)
    state = model.state_dict()
    # The real CLIP folder is a full CLIPModel (text + vision); write one the same way.
    vision_cfg = model.model.vision_tower.vision_tower.vision_model.config
    full = CLIPModel(CLIPConfig(vision_config=vision_cfg.to_dict(),
                                text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "vocab_size": 64}))
    full.vision_model.load_state_dict({k[len(CLIP_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)})
    full.save_pretrained(str(clip_dir))
    torch.save({"model": {k[len(SAM_PREFIX):]: v.clone() for k, v in state.items() if k.startswith(SAM_PREFIX)},
                "epoch": 12}, sam_path)
    rest = {k: v.clone() for k, v in state.items() if not k.startswith((CLIP_PREFIX, SAM_PREFIX))}
    rest["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # saved by transformers 4.31
    names = sorted(rest)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    weight_map = {}
    for fname, keys in shards.items():
        torch.save({k: rest[k] for k in keys}, ckpt / fname)
        weight_map.update({k: fname for k in keys})
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    llm = cfg.llm
    (ckpt / "config.json").write_text(json.dumps({
        "architectures": ["MedPLIBForCausalLM"], "model_type": "medplib_moe_llama",
        "hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_hidden_layers, "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads, "vocab_size": len(tok),
        "max_position_embeddings": llm.max_position_embeddings, "rms_norm_eps": llm.rms_norm_eps,
        "mm_vision_tower": "/data/huangxs/pretrained/clip-vit-large-patch14-336",  # absolute path of the authors
        "mm_hidden_size": cfg.vision.hidden_size, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_use_im_start_end": True, "out_dim": cfg.sam.out_chans, "sam_config": cfg.sam.to_dict(),
        "moe": {"moe_enable": True, "num_experts": [2], "moe_layers_idx": [0, 1], "top_k_experts": 1,
                "capacity_factor": 1.5, "eval_capacity_factor": 2.0, "router_aux_loss_coef": 0.0},
    }))
    return model, tok, ckpt, clip_dir, sam_path


def test_official_layout_loads_exactly(tmp_path):
    model, tok, ckpt, clip_dir, sam_path = write_official_layout(tmp_path)
    loaded, tok2 = load_official(ckpt, clip_dir=clip_dir, sam_checkpoint=sam_path, dtype=torch.float32)
    assert tok2.convert_tokens_to_ids("<SEG>") == 400 == tok.convert_tokens_to_ids("<SEG>")  # = base vocab
    for a, b in zip(_outputs(model, tok), _outputs(loaded, tok2)):
        if isinstance(a, list):
            assert a == b
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_official_missing_pieces_are_named(tmp_path):
    _, _, ckpt, clip_dir, sam_path = write_official_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="sam-med2d_b.pth"):
        load_official(ckpt, clip_dir=clip_dir)
    with pytest.raises(FileNotFoundError, match="CLIP folder"):
        load_official(ckpt, clip_dir=tmp_path / "nowhere", sam_checkpoint=sam_path)
    # A shard missing from disk and a key missing from the shards are both reported by name.
    index = json.loads((ckpt / "pytorch_model.bin.index.json").read_text())
    shard = ckpt / "pytorch_model-00002-of-00002.bin"
    part = torch.load(shard, weights_only=True)
    dropped = sorted(part)[0]
    del part[dropped]
    torch.save(part, shard)
    with pytest.raises(KeyError, match=dropped.replace(".", r"\.")):
        load_official(ckpt, clip_dir=clip_dir, sam_checkpoint=sam_path)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="00002-of-00002"):
        load_official(ckpt, clip_dir=clip_dir, sam_checkpoint=sam_path)
    assert index["weight_map"]


def test_bf16_load(tmp_path, tiny):
    model, tok = tiny
    save_pretrained(model, tok, tmp_path / "ckpt")
    loaded, tok2 = from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.layers[0].mlp.deepspeed_moe.gate.wg.weight.dtype == torch.float32  # fp32 router
    pred = MedPLIBPredictor(loaded, tok2)
    pred.set_image(synthetic_image())
    ans = pred.ask("What is shown?", max_new_tokens=3)
    assert len(ans.token_ids) >= 1 and np.isfinite(ans.mask_logits).all()


def test_official_config_without_projector_type_means_linear(tmp_path):
    """LLaVA's builder: a config.json with no `mm_projector_type` gets a single Linear projector."""
    from medplib.checkpoints.official import official_medplib_config

    _, _, ckpt, clip_dir, _ = write_official_layout(tmp_path)
    hf = json.loads((ckpt / "config.json").read_text())
    assert official_medplib_config(hf, ckpt, clip_dir).projector_type == "mlp2x_gelu"
    del hf["mm_projector_type"]
    assert official_medplib_config(hf, ckpt, clip_dir).projector_type == "linear"
