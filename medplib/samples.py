"""Turn (image, conversation, region prompts, masks) into `TrainSample`s with the inference preprocessing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .config import MedPLIBConfig
from .conversation import Turn, build_input_ids, with_region_markers
from .losses import TrainSample
from .preprocess import Window, clip_pixel_values, prepare_rgb, region_grid, sam_pixel_values
from .regions import Region, rasterize


def make_sample(config: MedPLIBConfig, tokenizer, image: np.ndarray, question: str, answer: str,
                regions: Sequence[Region] = (), masks: Sequence[np.ndarray] = (),
                window: Window | None = None, history: Sequence[Turn] = ()) -> TrainSample:
    """One supervised conversation turn; `masks` are the ground truths of the <SEG> tokens in `answer`."""
    rgb = prepare_rgb(image, window)
    shape = rgb.shape[:2]
    if regions:
        question = with_region_markers(question, len(regions))
    ids, labels = build_input_ids(tokenizer, config.system_prompt, list(history) + [Turn(question, answer)])
    sam_px, resize = sam_pixel_values(rgb, config.sam.image_size, config.sam.pixel_mean, config.sam.pixel_std)
    grids = [region_grid(rasterize(r, shape, config.point_span), config.vision.image_size, config.vision.patch_size)
             for r in regions]
    gt = torch.from_numpy(np.stack([np.asarray(m) > 0 for m in masks]).astype(np.float32)) if len(masks) else None
    if gt is not None and gt.shape[1:] != shape:
        raise ValueError(f"mask shape {tuple(gt.shape[1:])} != image shape {shape}")
    return TrainSample(clip_pixels=clip_pixel_values(rgb, config.vision.image_size), sam_pixels=sam_px,
                       resize=tuple(resize), original_size=shape, input_ids=ids, labels=labels,
                       region_grids=grids, gt_masks=gt)
