"""Optional fine-resolution region features (the small preset's addition to MedPLIB's region pooling).

MedPLIB pools a region prompt over the CLIP patch grid. With the small preset's 12x12 grid a 28-px cell mixes
grey matter, white matter and CSF, so even the true tissue composition of the sampled cells names the marked
structure in only 56 % of the held-out region questions (`bench/region_oracle.py`). With `region_pixel_dim > 0`
a small convolutional encoder maps the CLIP input to a stride-4 feature map; its coverage-weighted mean over the
region goes through `region_pixel_adapter` and is *added* to the official region feature. The adapter starts at
zero, so adding the branch to a trained model leaves its answers unchanged until it is trained. The official
preset keeps `region_pixel_dim = 0` and its exact layout.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from medplib.imaging.preprocess import centre_cell, centre_pad, region_grid, resize_longest_side
from medplib.model.config import MedPLIBConfig

STRIDE = 4  # feature cells are 4x4 px of the CLIP input (84x84 for 336 px)


class RegionPixelEncoder(nn.Module):
    """[B,3,S,S] CLIP pixels -> [B,dim,S/4,S/4] local appearance features (receptive field 20 px)."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 48, kernel_size=STRIDE, stride=STRIDE), nn.GELU(),
            nn.Conv2d(48, dim, kernel_size=3, padding=1), nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels)


def add_region_pixels(model, dim: int) -> None:
    """Give a model the fine region branch (no-op if it has one): encoder plus a zero-initialised adapter."""
    if dim <= 0 or getattr(model.model, "region_pixel_encoder", None) is not None:
        return
    ref = model.model.region_fea_adapter.weight
    model.model.region_pixel_encoder = RegionPixelEncoder(dim).to(ref.device, ref.dtype)
    adapter = nn.Linear(dim, model.llm_config.hidden_size).to(ref.device, ref.dtype)
    nn.init.zeros_(adapter.weight)
    nn.init.zeros_(adapter.bias)
    model.model.region_pixel_adapter = adapter
    model.config.region_pixel_dim = dim


def region_coverage(mask: np.ndarray, image_size: int) -> np.ndarray:
    """Binary mask at the original resolution -> the fraction of each feature cell it covers [S/4, S/4].

    Same geometry as the CLIP input (resize the longest side, centre pad), so cells line up with the features.
    """
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if m.ndim != 2:
        raise ValueError(f"region mask must be 2D, got {m.shape}")
    padded = centre_pad(resize_longest_side(m, image_size, nearest=True), image_size, 0).astype(np.float32)
    n = image_size // STRIDE
    cells = padded[: n * STRIDE, : n * STRIDE].reshape(n, STRIDE, n, STRIDE).mean(axis=(1, 3))
    if not cells.any() and m.any():  # a region lost by nearest resizing still covers its cell
        cells[centre_cell(m, image_size, STRIDE)] = 1.0
    return cells


def region_inputs(config: MedPLIBConfig, masks: list[np.ndarray],
                  largest: Sequence[bool] = ()) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """What the model pools each region mask over: its CLIP grid cells and, with `region_pixel_dim`, its fine
    coverage (else an empty list). `largest[i]`: keep mask i's largest grid component (dataset masks).
    Training samples and the predictor both use this."""
    largest = list(largest) or [False] * len(masks)
    grids = [region_grid(m, config.vision.image_size, config.vision.patch_size, config.region_resample, keep)
             for m, keep in zip(masks, largest)]
    coverages = [region_coverage(m, config.vision.image_size) for m in masks] if config.region_pixel_dim else []
    return grids, coverages


def pool_region_pixels(feature_map: torch.Tensor, coverages: list[np.ndarray]) -> torch.Tensor:
    """Coverage-weighted means of one image's feature map [dim, n, n] -> [n_regions, dim]."""
    cover = torch.from_numpy(np.stack(coverages)).to(feature_map.device, feature_map.dtype)  # [R, n, n]
    weights = cover / cover.sum(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    return torch.einsum("rhw,chw->rc", weights, feature_map)
