"""Turn (image, conversation, region prompts, masks) into `TrainSample`s with the inference preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from medplib.imaging.preprocess import Window, clip_pixel_values, prepare_rgb
from medplib.imaging.regions import Region, from_dataset, rasterize
from medplib.model.config import MedPLIBConfig
from medplib.model.conversation import Turn, build_input_ids, with_region_markers
from medplib.model.losses import TrainSample
from medplib.model.mask_io import mask_branch_pixels
from medplib.model.region_pixels import region_inputs


def make_sample(config: MedPLIBConfig, tokenizer, image: np.ndarray, question: str, answer: str,
                regions: Sequence[Region] = (), masks: Sequence[np.ndarray] = (),
                window: Window | None = None, history: Sequence[Turn] = ()) -> TrainSample:
    """One supervised conversation turn; `masks` are the ground truths of the <SEG> tokens in `answer`."""
    return make_turns_sample(config, tokenizer, image, [QA(question, answer, tuple(regions))], masks, window, history)


@dataclass(frozen=True)
class QA:
    """One supervised turn of a multi-turn sample: question, answer and the question's region prompts."""

    question: str
    answer: str
    regions: tuple[Region, ...] = ()


def make_turns_sample(config: MedPLIBConfig, tokenizer, image: np.ndarray, turns: Sequence[QA],
                      masks: Sequence[np.ndarray] = (), window: Window | None = None,
                      history: Sequence[Turn] = ()) -> TrainSample:
    """Several supervised turns about one image in one sequence (every answer is a target); the image
    tokens are computed once for all of them. `history` turns come first, with their answers supervised too."""
    rgb = prepare_rgb(image, window)
    shape = rgb.shape[:2]
    regions = [r for qa in turns for r in qa.regions]
    asked = [Turn(with_region_markers(qa.question, len(qa.regions)) if qa.regions else qa.question, qa.answer)
             for qa in turns]
    ids, labels = build_input_ids(tokenizer, config.system_prompt, list(history) + asked)
    sam_px, resize = mask_branch_pixels(rgb, config.sam)
    region_masks = [rasterize(r, shape, config.point_span) for r in regions]
    grids, coverages = region_inputs(config, region_masks, from_dataset(regions))
    gt = torch.from_numpy(np.stack([np.asarray(m) > 0 for m in masks]).astype(np.float32)) if len(masks) else None
    if gt is not None and gt.shape[1:] != shape:
        raise ValueError(f"mask shape {tuple(gt.shape[1:])} != image shape {shape}")
    return TrainSample(clip_pixels=clip_pixel_values(rgb, config.vision.image_size), sam_pixels=sam_px,
                       resize=tuple(resize), original_size=shape, input_ids=ids, labels=labels,
                       region_grids=grids, region_coverages=coverages, gt_masks=gt)
