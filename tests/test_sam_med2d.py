"""Tests for the SAM-Med2D mask branch (medplib/model/sam_med2d.py, medplib/model/sam_med2d_encoder.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medplib.model.sam_med2d import SamConfig, SamMed2D, build_sam_med2d, load_sam_med2d_state_dict
from medplib.model.sam_med2d_encoder import window_partition, window_unpartition

TINY = SamConfig.tiny()

# Parameter counts. 271,241,776 is the released SAM-Med2D ViT-B at 256 px (adapters: 180,504,576 of it).
# Sanity anchor: without adapters at 1024 px the same code gives 93,735,472, the parameter count of
# Meta's original SAM ViT-B (`sam_vit_b_01ec64.pth`).
VIT_B_PARAMS = 271_241_776
SAM_VIT_B_1024_NO_ADAPTER = 93_735_472

# Official checkpoint keys (sam-med2d_b.pth["model"]) with their shapes, written out by hand from
# the SAM-Med2D module definitions (image_encoder.py / prompt_encoder.py / mask_decoder.py / transformer.py).
OFFICIAL_KEYS = {
    "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
    "image_encoder.patch_embed.proj.bias": (768,),
    "image_encoder.pos_embed": (1, 16, 16, 768),
    "image_encoder.blocks.0.norm1.weight": (768,),
    "image_encoder.blocks.0.attn.qkv.weight": (2304, 768),
    "image_encoder.blocks.0.attn.proj.bias": (768,),
    "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),  # window 14 -> 2*14-1
    "image_encoder.blocks.0.attn.rel_pos_w": (27, 64),
    "image_encoder.blocks.2.attn.rel_pos_h": (31, 64),  # global block on a 16x16 grid -> 2*16-1
    "image_encoder.blocks.11.attn.rel_pos_w": (31, 64),
    "image_encoder.blocks.0.mlp.lin1.weight": (3072, 768),
    "image_encoder.blocks.11.mlp.lin2.bias": (768,),
    "image_encoder.blocks.0.Adapter.norm.weight": (768,),
    "image_encoder.blocks.0.Adapter.channel.0.weight": (192, 768),
    "image_encoder.blocks.0.Adapter.channel.2.weight": (768, 192),
    "image_encoder.blocks.5.Adapter.spatial.0.weight": (768, 768, 3, 3),
    "image_encoder.blocks.11.Adapter.spatial.2.weight": (768, 768, 4, 4),
    "image_encoder.neck.0.weight": (256, 768, 1, 1),
    "image_encoder.neck.1.bias": (256,),
    "image_encoder.neck.2.weight": (256, 256, 3, 3),
    "image_encoder.neck.3.weight": (256,),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "prompt_encoder.point_embeddings.0.weight": (1, 256),
    "prompt_encoder.point_embeddings.3.weight": (1, 256),
    "prompt_encoder.not_a_point_embed.weight": (1, 256),
    "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
    "prompt_encoder.mask_downscaling.1.weight": (4,),
    "prompt_encoder.mask_downscaling.3.weight": (16, 4, 2, 2),
    "prompt_encoder.mask_downscaling.4.bias": (16,),
    "prompt_encoder.mask_downscaling.6.weight": (256, 16, 1, 1),
    "prompt_encoder.no_mask_embed.weight": (1, 256),
    "mask_decoder.iou_token.weight": (1, 256),
    "mask_decoder.mask_tokens.weight": (4, 256),
    "mask_decoder.transformer.layers.0.self_attn.q_proj.weight": (256, 256),
    "mask_decoder.transformer.layers.0.norm1.weight": (256,),
    "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight": (128, 256),
    "mask_decoder.transformer.layers.0.cross_attn_token_to_image.out_proj.weight": (256, 128),
    "mask_decoder.transformer.layers.1.mlp.lin1.weight": (2048, 256),
    "mask_decoder.transformer.layers.1.norm4.bias": (256,),
    "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.bias": (128,),
    "mask_decoder.transformer.final_attn_token_to_image.k_proj.weight": (128, 256),
    "mask_decoder.transformer.norm_final_attn.weight": (256,),
    "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
    "mask_decoder.output_upscaling.1.weight": (64,),
    "mask_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
    "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight": (256, 256),
    "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
    "mask_decoder.iou_prediction_head.layers.0.weight": (256, 256),
    "mask_decoder.iou_prediction_head.layers.2.bias": (4,),
}


def tiny_model(seed: int = 0) -> SamMed2D:
    torch.manual_seed(seed)
    return build_sam_med2d(TINY).eval()


def tiny_embeddings(batch: int = 1) -> torch.Tensor:
    g = TINY.image_size // TINY.patch_size
    return torch.randn(batch, TINY.out_chans, g, g, generator=torch.Generator().manual_seed(1))


def fill_deterministic(model: torch.nn.Module) -> None:
    """Overwrite every state-dict entry with a fixed sinusoid (independent of init order / RNG)."""
    with torch.no_grad():
        for i, (name, t) in enumerate(sorted(model.state_dict().items())):
            v = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.731 + i) / math.sqrt(max(t.shape[-1], 1))
            if t.dim() == 1 and name.endswith(".weight"):  # LayerNorm gains
                v = 1.0 + 0.1 * v
            t.copy_(v.reshape(t.shape).to(t.dtype))


# ----------------------------------------------------------------------------- ViT-B


@pytest.fixture(scope="module")
def meta_vit_b() -> SamMed2D:
    with torch.device("meta"):  # structure only: no memory, no init cost
        return build_sam_med2d()


def test_vit_b_official_key_names_and_shapes(meta_vit_b: SamMed2D) -> None:
    sd = meta_vit_b.state_dict()
    missing = [k for k in OFFICIAL_KEYS if k not in sd]
    assert not missing, f"official keys missing: {missing}"
    wrong = {k: (tuple(sd[k].shape), s) for k, s in OFFICIAL_KEYS.items() if tuple(sd[k].shape) != s}
    assert not wrong, f"shape mismatches (ours, official): {wrong}"
    assert {k.split(".")[0] for k in sd} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert "pixel_mean" not in sd and "pixel_std" not in sd  # not in the official checkpoint
    # every block carries an adapter with exactly these five tensors
    adapter = sorted(k.split("Adapter.")[1] for k in sd if k.startswith("image_encoder.blocks.7.Adapter."))
    assert adapter == ["channel.0.weight", "channel.2.weight", "norm.bias", "norm.weight",
                       "spatial.0.weight", "spatial.2.weight"]


def test_vit_b_parameter_count(meta_vit_b: SamMed2D) -> None:
    assert sum(p.numel() for p in meta_vit_b.parameters()) == VIT_B_PARAMS
    with torch.device("meta"):
        plain_sam = build_sam_med2d(SamConfig(image_size=1024, encoder_adapter=False))
    assert sum(p.numel() for p in plain_sam.parameters()) == SAM_VIT_B_1024_NO_ADAPTER
    assert not any("Adapter" in k for k in plain_sam.state_dict())


def test_vit_b_forward_shapes() -> None:
    torch.manual_seed(0)
    model = build_sam_med2d().eval()
    with torch.no_grad():
        emb = model.encode_image(torch.randn(1, 3, 256, 256))
        assert emb.shape == (1, 256, 16, 16)
        logits, iou = model.decode(emb, text_embeds=torch.randn(1, 1, 256))
    assert logits.shape == (1, 1, 64, 64) and iou.shape == (1, 1)
    assert torch.isfinite(logits).all() and torch.isfinite(emb).all()


# ----------------------------------------------------------------------------- tiny config


def test_tiny_shapes_and_multimask() -> None:
    model = tiny_model()
    with torch.no_grad():
        emb = model.encode_image(torch.randn(2, 3, 64, 64))
        assert emb.shape == (2, 32, 4, 4)
        logits, iou = model.decode(emb, text_embeds=torch.randn(2, 1, 32))
        assert logits.shape == (2, 1, 16, 16) and iou.shape == (2, 1)
        logits3, iou3 = model.decode(emb, text_embeds=torch.randn(2, 1, 32), multimask_output=True)
        assert logits3.shape == (2, 3, 16, 16) and iou3.shape == (2, 3)


def test_single_mask_is_token_zero_and_multimask_are_tokens_one_to_three() -> None:
    model = tiny_model()
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps[1:]:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.zero_()
        emb, text = tiny_embeddings(), torch.randn(1, 1, 32)
        single, _ = model.decode(emb, text_embeds=text)
        multi, _ = model.decode(emb, text_embeds=text, multimask_output=True)
    assert single.abs().sum() > 0
    assert torch.count_nonzero(multi) == 0


def test_matches_reference_golden_values() -> None:
    """Values produced by the original SAM-Med2D/MedPLIB code with the same deterministic weights."""
    model = build_sam_med2d(TINY).eval()
    fill_deterministic(model)
    x = torch.cos(torch.arange(2 * 3 * 64 * 64, dtype=torch.float32) * 0.013).reshape(2, 3, 64, 64)
    text = torch.linspace(-1, 1, 64).reshape(2, 1, 32)
    points = (torch.tensor([[[10.0, 20.0], [40.0, 7.0]], [[30.0, 30.0], [0.0, 63.0]]]), torch.tensor([[1, 0], [1, -1]]))
    boxes = torch.tensor([[4.0, 6.0, 50.0, 40.0], [10.0, 12.0, 60.0, 62.0]])
    close = dict(rtol=1e-4, atol=1e-3)
    with torch.no_grad():
        emb = model.encode_image(x)
        torch.testing.assert_close(emb[0, :4, 0, 0], torch.tensor([0.0205148, 0.1193729, 0.0573327, 0.275063]), **close)
        torch.testing.assert_close(emb[1, -1, 3, 2], torch.tensor(-0.2400038), **close)
        torch.testing.assert_close(emb.abs().sum(), torch.tensor(946.06018), rtol=1e-4, atol=0.0)

        logits, iou = model.decode(emb, text_embeds=text, points=points, boxes=boxes, multimask_output=True)
        torch.testing.assert_close(logits[0, 0, 0, :3], torch.tensor([0.0448671, 0.1438089, 0.0349094]), **close)
        torch.testing.assert_close(logits[1, 2, 15, 15], torch.tensor(-0.0018659), **close)
        torch.testing.assert_close(logits.abs().sum(), torch.tensor(252.73877), rtol=1e-4, atol=0.0)
        torch.testing.assert_close(
            iou, torch.tensor([[-0.0862707, -0.1739449, -0.6496290], [-0.0844837, -0.1752660, -0.6509691]]), **close
        )

        logits, iou = model.decode(emb, text_embeds=text)
        torch.testing.assert_close(logits[0, 0, 5, :3], torch.tensor([-0.0119350, -0.1404685, 0.0994260]), **close)
        torch.testing.assert_close(logits.abs().sum(), torch.tensor(69.593727), rtol=1e-4, atol=0.0)
        torch.testing.assert_close(iou, torch.tensor([[-0.0850507], [-0.0853085]]), **close)


def test_window_partition_pads_and_round_trips() -> None:
    x = torch.randn(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert padded == (6, 9) and windows.shape == (2 * 2 * 3, 3, 3, 3)
    assert torch.equal(windows[0], x[0, :3, :3])
    assert torch.equal(window_unpartition(windows, 3, padded, (5, 7)), x)


@pytest.mark.parametrize("window_size", [3, 14])  # 4x4 grid: padded to 6x6, or one 14x14 window
def test_windows_larger_or_not_dividing_the_grid(window_size: int) -> None:
    cfg = SamConfig.from_dict({**TINY.to_dict(), "window_size": window_size, "global_attn_indexes": []})
    torch.manual_seed(0)
    model = build_sam_med2d(cfg).eval()
    assert model.image_encoder.blocks[0].attn.rel_pos_h.shape == (2 * window_size - 1, 16)
    with torch.no_grad():
        emb = model.encode_image(torch.randn(1, 3, 64, 64))
    assert emb.shape == (1, 32, 4, 4) and torch.isfinite(emb).all()


def test_relative_positions_and_adapter_affect_encoder() -> None:
    model = tiny_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = model.encode_image(x)
        model.image_encoder.blocks[0].attn.rel_pos_h.normal_()
        with_rel = model.encode_image(x)
        model.image_encoder.blocks[1].Adapter.spatial[0].weight.zero_()
        without_spatial = model.encode_image(x)
    assert not torch.allclose(base, with_rel)
    assert not torch.allclose(with_rel, without_spatial)


def test_deterministic_init_under_seed() -> None:
    a, b, c = tiny_model(0).state_dict(), tiny_model(0).state_dict(), tiny_model(1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ----------------------------------------------------------------------------- prompts


def test_prompt_combinations() -> None:
    model = tiny_model()
    emb = tiny_embeddings()
    text = torch.randn(1, 1, 32)
    points = (torch.tensor([[[20.0, 30.0]]]), torch.tensor([[1]]))
    box = torch.tensor([[8.0, 8.0, 40.0, 48.0]])
    outs = {}
    with torch.no_grad():
        for name, kw in {
            "text": dict(text_embeds=text),
            "points": dict(points=points),
            "box": dict(boxes=box),
            "text+points": dict(text_embeds=text, points=points),
            "text+box": dict(text_embeds=text, boxes=box),
            "all": dict(text_embeds=text, points=points, boxes=box, mask_input=torch.randn(1, 1, 16, 16)),
        }.items():
            logits, iou = model.decode(emb, **kw)
            assert logits.shape == (1, 1, 16, 16) and iou.shape == (1, 1), name
            assert torch.isfinite(logits).all(), name
            outs[name] = logits
    names = list(outs)
    for i, a in enumerate(names):  # every prompt set gives a different mask
        for b in names[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_sparse_token_layout() -> None:
    """Points get a padding token only when there is no box; text tokens come last."""
    model = tiny_model()
    pe = model.prompt_encoder
    text = torch.randn(1, 2, 32)
    pts = (torch.tensor([[[5.0, 5.0], [9.0, 1.0]]]), torch.tensor([[1, 0]]))
    box = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    f32 = torch.float32
    assert pe(1, None, pts, None, None, f32)[0].shape == (1, 3, 32)
    assert pe(1, None, pts, box, None, f32)[0].shape == (1, 4, 32)
    sparse, dense = pe(1, text, pts, box, None, f32)
    assert sparse.shape == (1, 6, 32) and torch.equal(sparse[:, 4:], text)
    assert pe(1, text, None, None, None, f32)[0].shape == (1, 2, 32)
    assert torch.equal(dense, pe.no_mask_embed.weight.reshape(1, 32, 1, 1).expand(1, 32, 4, 4))


def test_positional_encoding_of_points_boxes_and_grid() -> None:
    """SAM's conventions: pixel-centre shift (+0.5), x/W and y/H scaling, [sin, cos] of 2*pi*(2p-1)@G."""
    pe = tiny_model().prompt_encoder
    gauss = pe.pe_layer.positional_encoding_gaussian_matrix

    def fourier(x: float, y: float) -> torch.Tensor:
        proj = 2 * math.pi * (torch.tensor([2 * x - 1, 2 * y - 1]) @ gauss)
        return torch.cat([proj.sin(), proj.cos()])

    with torch.no_grad():
        points = (torch.tensor([[[10.0, 3.0], [7.0, 60.0]]]), torch.tensor([[1, 0]]))
        sparse, _ = pe(1, None, points, None, None, torch.float32)
        torch.testing.assert_close(sparse[0, 0], fourier(10.5 / 64, 3.5 / 64) + pe.point_embeddings[1].weight[0])
        torch.testing.assert_close(sparse[0, 1], fourier(7.5 / 64, 60.5 / 64) + pe.point_embeddings[0].weight[0])
        torch.testing.assert_close(sparse[0, 2], pe.not_a_point_embed.weight[0])  # padding token

        sparse, _ = pe(1, None, None, torch.tensor([[4.0, 6.0, 50.0, 40.0]]), None, torch.float32)
        torch.testing.assert_close(sparse[0, 0], fourier(4.5 / 64, 6.5 / 64) + pe.point_embeddings[2].weight[0])
        torch.testing.assert_close(sparse[0, 1], fourier(50.5 / 64, 40.5 / 64) + pe.point_embeddings[3].weight[0])

        grid = pe.get_dense_pe()
        assert grid.shape == (1, 32, 4, 4)
        torch.testing.assert_close(grid[0, :, 1, 3], fourier(3.5 / 4, 1.5 / 4))  # row 1, column 3


def test_point_location_and_label_matter_but_padding_position_does_not() -> None:
    model = tiny_model()
    emb, text = tiny_embeddings(), torch.randn(1, 1, 32)

    def run(xy: list[float], label: int) -> torch.Tensor:
        with torch.no_grad():
            return model.decode(emb, text_embeds=text, points=(torch.tensor([[xy]]), torch.tensor([[label]])))[0]

    assert not torch.allclose(run([10.0, 10.0], 1), run([50.0, 40.0], 1))
    assert not torch.allclose(run([10.0, 10.0], 1), run([10.0, 10.0], 0))
    torch.testing.assert_close(run([10.0, 10.0], -1), run([50.0, 40.0], -1))


def test_batch_broadcasting_of_image_embeddings() -> None:
    model = tiny_model()
    emb = tiny_embeddings(1)
    text = torch.randn(3, 1, 32)
    pts = (torch.rand(3, 2, 2) * 64, torch.tensor([[1, 0], [1, 1], [0, -1]]))
    with torch.no_grad():
        logits, iou = model.decode(emb, text_embeds=text, points=pts)
        assert logits.shape == (3, 1, 16, 16) and iou.shape == (3, 1)
        for i in range(3):
            one, one_iou = model.decode(emb, text_embeds=text[i : i + 1], points=(pts[0][i : i + 1], pts[1][i : i + 1]))
            torch.testing.assert_close(logits[i : i + 1], one, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(iou[i : i + 1], one_iou, rtol=1e-5, atol=1e-6)
        # a single prompt is broadcast over a batch of images too
        many, _ = model.decode(tiny_embeddings(2), text_embeds=text[:1])
        assert many.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="batch"):
        model.decode(tiny_embeddings(2), text_embeds=text)


# ----------------------------------------------------------------------------- config / checkpoints


def test_config_round_trip_through_json() -> None:
    d = json.loads(json.dumps(TINY.to_dict()))
    assert isinstance(d["global_attn_indexes"], list)
    again = SamConfig.from_dict(d)
    assert again == TINY and isinstance(again.global_attn_indexes, tuple) and isinstance(again.pixel_mean, tuple)
    assert SamConfig.from_dict(SamConfig().to_dict()) == SamConfig()
    with pytest.raises(ValueError, match="bogus"):
        SamConfig.from_dict({"bogus": 1})


def test_checkpoint_round_trip(tmp_path) -> None:
    src = tiny_model(0)
    path = tmp_path / "sam-med2d_tiny.pth"
    torch.save({"model": src.state_dict(), "epoch": 3}, path)
    sd = load_sam_med2d_state_dict(path)
    dst = tiny_model(1)
    dst.load_state_dict(sd, strict=True)
    x, text = torch.randn(1, 3, 64, 64), torch.randn(1, 1, 32)
    with torch.no_grad():
        a = src.decode(src.encode_image(x), text_embeds=text)
        b = dst.decode(dst.encode_image(x), text_embeds=text)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    # bare state dict with a DataParallel prefix
    bare = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, bare)
    sd2 = load_sam_med2d_state_dict(bare)
    assert sd2.keys() == sd.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_checkpoint_errors(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_sam_med2d_state_dict(missing)
    not_sd = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_sd)
    with pytest.raises(ValueError, match="list.pth"):
        load_sam_med2d_state_dict(not_sd)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_sam_med2d_state_dict(garbage)


def test_bf16_decoder_adds_the_dense_positional_encoding_in_fp32() -> None:
    """As the original (`prompt_encoder.py:209`, `transformer.py:220-222`): the dense PE stays fp32, so
    `keys + key_pe` is summed in fp32 and cast to the projection's dtype inside each attention."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    emb, text = torch.randn(1, 32, 4, 4), torch.randn(1, 1, 32)
    with torch.no_grad():
        ref, _ = model.decode(emb, text_embeds=text)
        half = model.to(torch.bfloat16)
        seen = []
        hook = half.mask_decoder.transformer.register_forward_pre_hook(lambda mod, args: seen.append(args[1].dtype))
        out, _ = half.decode(emb.to(torch.bfloat16), text_embeds=text.to(torch.bfloat16))
        hook.remove()
        # the same, with keys + pe summed in bf16 as the project did before
        pe = half.prompt_encoder.get_dense_pe()
        k = emb.to(torch.bfloat16).flatten(2).transpose(1, 2)
        summed_fp32 = (k + pe.flatten(2).transpose(1, 2)).to(torch.bfloat16)
        summed_bf16 = k + pe.flatten(2).transpose(1, 2).to(torch.bfloat16)
    assert seen == [torch.float32]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
    assert not torch.equal(summed_fp32, summed_bf16)  # the two orders really round differently
