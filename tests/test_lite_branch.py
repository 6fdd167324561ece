"""LiteMedSAM as MedPLIB's mask branch: the `small` preset's config, the swap a training run makes on an older
model, the geometry every caller goes through, and a mask phase that keeps the pretrained encoder as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplib.checkpoints.build import build_model
from medplib.checkpoints.project import from_pretrained, save_pretrained
from medplib.imaging.preprocess import longest_side_size
from medplib.inference.predictor import MedPLIBPredictor
from medplib.inference.promptable import PromptablePredictor, SliceEmbedding
from medplib.model import lite_medsam
from medplib.model.config import preset
from medplib.model.lora import LoraSettings
from medplib.model.mask_io import mask_branch_logits, mask_branch_pixels, to_mask_branch_frame
from medplib.model.sam_med2d import SamConfig
from medplib.training.trainer import TrainConfig, Trainer, mask_phase_prefixes

from .conftest import structure_masks, synthetic_image
from .test_trainer import _examples


@pytest.fixture(scope="module")
def wheel_state():
    return lite_medsam.load_state_dict()


@pytest.fixture()
def tiny_lite():
    model, tok = build_model("tiny", seed=3)
    assert lite_medsam.give_lite_medsam(model)
    return model, tok


def test_small_preset_uses_lite_medsam_from_the_wheel():
    sam = preset("small").sam
    assert (sam.encoder, sam.pretrained, sam.out_chans, sam.image_size) == ("tinyvit", "lite_medsam", 256, 256)
    assert preset("small").out_dim == 256
    assert preset("official").sam.encoder == "vit" and preset("official").sam.pretrained is None
    with pytest.raises(ValueError, match="needs encoder 'tinyvit'"):
        SamConfig(pretrained="lite_medsam").validate()
    with pytest.raises(ValueError, match="pretrained must be"):
        SamConfig(pretrained="sam-med2d").validate()


def test_swap_gives_the_wheels_weights_and_a_256_d_prompt_layer(tiny_lite, wheel_state):
    model, _ = tiny_lite
    own = model.model.visual_model.state_dict()
    assert set(own) == set(wheel_state)
    for key, value in wheel_state.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)
    assert model.model.text_hidden_fcs[0][2].out_features == 256
    assert model.config.sam.pretrained == "lite_medsam"
    assert not lite_medsam.give_lite_medsam(model)  # a second swap is a no-op


def test_a_checkpoint_with_the_lite_branch_round_trips(tiny_lite, tmp_path):
    model, tok = tiny_lite
    save_pretrained(model, tok, tmp_path)
    again, _ = from_pretrained(tmp_path)
    assert again.config.sam == model.config.sam
    a, b = model.state_dict(), again.state_dict()
    for key in ("model.visual_model.mask_decoder.iou_prediction_head.layers.0.weight",
                "model.text_hidden_fcs.0.2.weight"):
        torch.testing.assert_close(a[key], b[key])


def test_geometry_follows_the_branch():
    rgb = np.zeros((90, 200, 3), np.uint8)
    rgb[30:60, 50:150] = 200
    lite_cfg, vit_cfg = preset("small").sam, SamConfig()
    px, resize = mask_branch_pixels(rgb, lite_cfg)
    assert px.shape == (3, 256, 256) and resize == longest_side_size(90, 200, 256)
    assert float(px.max()) == pytest.approx(1.0) and float(px[:, resize[0]:].abs().sum()) == 0  # bottom padding
    vpx, vresize = mask_branch_pixels(rgb, vit_cfg)
    assert vresize == resize and float(vpx[:, 0, 0].abs().sum()) == 0  # centre zero pad, top rows too
    xy = np.array([[100.0, 45.0]], np.float32)
    y = 45.0 * resize[0] / 90  # scaled to the resized image (115 px high), which starts at row 0 ...
    np.testing.assert_allclose(to_mask_branch_frame(xy, (90, 200), lite_cfg), [[128.0, y]], atol=1e-4)
    top = (256 - resize[0]) // 2  # ... or, for SAM-Med2D, below the centre padding
    np.testing.assert_allclose(to_mask_branch_frame(xy, (90, 200), vit_cfg), [[128.0, y + top]], atol=1e-4)
    low = torch.zeros(1, 1, 256, 256)
    low[..., : resize[0], : resize[1]] = 1.0  # the resized image's area, top-left: maps to the whole image
    full = mask_branch_logits(low, resize, (90, 200), lite_cfg)
    assert full.shape == (1, 1, 90, 200) and float(full.min()) > 0.99


def test_predictor_grounds_through_lite_medsam_and_prompts_land_where_drawn(tiny_lite):
    model, tok = tiny_lite
    pred = MedPLIBPredictor(model, tok)
    image = synthetic_image(60, 90)
    pred.set_image(image)
    assert pred.features.sam_embedding.shape[-2:] == (64, 64)
    ans = pred.ask("Please segment the liver.")
    assert ans.masks is None or ans.masks.shape[1:] == (60, 90)
    # A box through the native prompt encoder on a bright square: LiteMedSAM's own decoder finds it.
    img = np.zeros((120, 160), np.float32)
    img[30:80, 40:110] = 1.0
    pred.set_image(img)
    # The grounding predictor's cached embedding serves the promptable path as is (same encoder, same geometry).
    promptable = PromptablePredictor(model.model.visual_model)
    promptable.set_embedding(SliceEmbedding(pred.features.sam_embedding, pred.features.original_size,
                                            pred.features.resize))
    mask = promptable.predict(box=(35, 25, 115, 85)).mask
    truth = np.zeros_like(img, bool)
    truth[30:80, 40:110] = True
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.8


def test_mask_phase_keeps_the_pretrained_encoder_and_trains_prompt_layer_and_decoder(tiny_lite, tmp_path):
    model, tok = tiny_lite
    cfg = TrainConfig(stage="ground", epochs=0, mask_epochs=1, mask_batch_size=2, val_samples=2,
                      lora=LoraSettings(r=2, alpha=4))
    assert mask_phase_prefixes(cfg) == ("model.text_hidden_fcs", "model.visual_model.mask_decoder")
    assert "model.visual_model.image_encoder" in mask_phase_prefixes(TrainConfig(train_encoders=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, tok, cfg, tmp_path, _examples(model, tok), [], save=lambda m, p: None, progress=False).run()
    after = model.state_dict()
    unchanged = [k for k in before if k.startswith("model.visual_model.image_encoder")]
    assert unchanged and all(torch.equal(before[k], after[k]) for k in unchanged)
    for prefix in ("model.text_hidden_fcs", "model.visual_model.mask_decoder"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    frozen = TrainConfig(stage="ground", epochs=0, mask_epochs=1, mask_train_decoder=False)
    assert mask_phase_prefixes(frozen) == ("model.text_hidden_fcs",)
    with pytest.raises(ValueError, match="mask_branch"):
        TrainConfig(mask_branch="sam2")


def test_mask_phase_can_train_the_neck_on_cached_trunk_features(tiny_lite, tmp_path):
    """`mask_train_neck`: the TinyViT trunk stays as the wheel gave it, its neck and the prompt encoder learn."""
    model, tok = tiny_lite
    cfg = TrainConfig(stage="ground", epochs=0, mask_epochs=1, mask_batch_size=2, val_samples=2,
                      lora=LoraSettings(r=2, alpha=4), mask_branch="lite_medsam", mask_train_neck=True,
                      mask_train_prompt_encoder=True)
    assert "model.visual_model.image_encoder.neck" in mask_phase_prefixes(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, tok, cfg, tmp_path, _examples(model, tok), [], save=lambda m, p: None, progress=False).run()
    after = model.state_dict()
    trunk = [k for k in before if k.startswith("model.visual_model.image_encoder") and ".neck." not in k]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)
    for prefix in ("model.visual_model.image_encoder.neck", "model.visual_model.prompt_encoder.no_mask_embed"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    with pytest.raises(ValueError, match="mask_train_neck"):
        TrainConfig(mask_train_neck=True)
