"""The mask branch's input and output geometry, whichever encoder it has.

SAM-Med2D (`encoder="vit"`, the release) takes 0..255 pixels normalised by SAM's mean / std, centre zero-padded,
and its logits go back through the original's `postprocess_masks`. LiteMedSAM (`encoder="tinyvit"`) takes the
image min-max scaled to [0, 1], padded bottom / right, and its logits are cropped and resized back. Every caller
(predictor, batching, training samples, losses) goes through these two functions, so a model always sees the
geometry its weights were trained with.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from medplib.imaging.preprocess import longest_side_size, postprocess_masks, sam_pixel_values
from medplib.model.lite_medsam import lite_pixel_values, lite_postprocess, to_lite_frame
from medplib.model.sam_med2d import SamConfig


def mask_branch_pixels(rgb: np.ndarray, sam: SamConfig) -> tuple[Tensor, tuple[int, int]]:
    """HxWx3 uint8 image -> ([3, S, S] encoder input, (h', w') of the resized image inside it)."""
    if sam.encoder == "tinyvit":
        return lite_pixel_values(rgb)
    return sam_pixel_values(rgb, sam.image_size, sam.pixel_mean, sam.pixel_std)


def mask_branch_logits(low_res: Tensor, resize: tuple[int, int], original_size: tuple[int, int],
                       sam: SamConfig) -> Tensor:
    """Decoder logits [B, C, h, w] -> [B, C, H, W] at the original image size."""
    if sam.encoder == "tinyvit":
        return lite_postprocess(low_res, resize, original_size)
    return postprocess_masks(low_res, resize, original_size)


def to_mask_branch_frame(xy: np.ndarray, original_size: tuple[int, int], sam: SamConfig) -> np.ndarray:
    """Image pixels (x = column, y = row) -> the encoder's input frame (scaled; centre offset for SAM-Med2D)."""
    if sam.encoder == "tinyvit":
        return to_lite_frame(xy, original_size)
    h, w = original_size
    new_h, new_w = longest_side_size(h, w, sam.image_size)
    out = np.asarray(xy, np.float32).copy()
    out[..., 0] = out[..., 0] * (new_w / w) + (sam.image_size - new_w) // 2
    out[..., 1] = out[..., 1] * (new_h / h) + (sam.image_size - new_h) // 2
    return out
