"""Teacher-forced training loss: CE on answers + BCE / Dice / focal on <SEG> masks at the original resolution."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medplib.model.config import LossWeights
from medplib.model.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX
from medplib.model.mask_io import mask_branch_logits


@dataclass
class TrainSample:
    """One conversation on one image, ready for the network (see `medplib.data` for builders)."""

    clip_pixels: torch.Tensor  # [3, S, S]
    sam_pixels: torch.Tensor  # [3, 256, 256]
    resize: tuple[int, int]
    original_size: tuple[int, int]
    input_ids: list[int]
    labels: list[int]
    region_grids: list[np.ndarray] = field(default_factory=list)
    region_coverages: list[np.ndarray] = field(default_factory=list)  # fine region features (region_pixel_dim)
    gt_masks: torch.Tensor | None = None  # [n_seg, H, W] in {0, 1}, one per <SEG> in the answers


def sigmoid_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean BCE per mask -> [n]."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice loss per mask -> [n] (the original's +1 smoothing in numerator and denominator)."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return 1.0 - (2.0 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0 + eps)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per mask -> [n]."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * ce * (1 - p_t) ** gamma).flatten(1).mean(1)


def compute_loss(model: nn.Module, batch: list[TrainSample], weights: LossWeights | None = None
                 ) -> dict[str, torch.Tensor]:
    """Forward a batch and return {"loss", "ce", "bce", "dice", "focal", "seg_count"}."""
    weights = weights or model.config.loss
    device = model.device
    clip = torch.stack([s.clip_pixels for s in batch]).to(device)
    image_tokens, patches = model.encode_images(clip)
    with torch.no_grad():  # the SAM image encoder is frozen throughout training, as in the paper
        sam_emb = model.encode_sam(torch.stack([s.sam_pixels for s in batch]).to(device))
    pixel_maps = {}
    with_regions = [i for i, s in enumerate(batch) if s.region_grids]
    if with_regions and model.config.region_pixel_dim:  # only the images that have a region prompt
        pixel_maps = dict(zip(with_regions, model.encode_region_pixels(clip[with_regions])))
    embeds, labels = [], []
    for i, s in enumerate(batch):
        regions = None
        if s.region_grids:
            regions = model.region_features(patches[i], s.region_grids, pixel_maps.get(i), s.region_coverages or None)
        embeds.append(model.embed_sequence(s.input_ids, image_tokens[i], regions))
        labels.append(expand_labels(s.labels, s.input_ids, image_tokens.shape[1]))
    max_len = max(e.shape[0] for e in embeds)
    hidden_size = embeds[0].shape[1]
    x = embeds[0].new_zeros((len(batch), max_len, hidden_size))
    attn = torch.zeros((len(batch), max_len), dtype=torch.long, device=device)
    lab = torch.full((len(batch), max_len), IGNORE_INDEX, dtype=torch.long, device=device)
    for i, (e, l) in enumerate(zip(embeds, labels)):
        x[i, : e.shape[0]] = e
        attn[i, : e.shape[0]] = 1
        lab[i, : len(l)] = torch.tensor(l, device=device)
    hidden, _ = model.run_llm(x, attention_mask=attn)
    logits = model.lm_head(hidden[:, :-1]).float()
    targets = lab[:, 1:]
    has_target = (targets != IGNORE_INDEX).any()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX) \
        if has_target else logits.sum() * 0.0

    # The state at position t predicts token t+1: the one predicting <SEG> feeds the mask decoder.
    bce = dice = focal = hidden.new_zeros((), dtype=torch.float32)
    n_masks = 0
    for i, s in enumerate(batch):
        seg_pos = (targets[i] == model.seg_token_id).nonzero().flatten()
        if len(seg_pos) == 0:
            continue
        if s.gt_masks is None or s.gt_masks.shape[0] != len(seg_pos):
            raise ValueError(f"sample {i}: {len(seg_pos)} <SEG> token(s) but "
                             f"{0 if s.gt_masks is None else s.gt_masks.shape[0]} ground-truth mask(s)")
        prompts = model.seg_to_prompt(hidden[i, seg_pos])
        low_res, _ = model.decode_masks(sam_emb[i:i + 1], prompts)
        pred = mask_branch_logits(low_res.float(), s.resize, s.original_size, model.config.sam)[:, 0]
        gt = s.gt_masks.to(device, torch.float32)
        n = gt.shape[0]
        bce = bce + sigmoid_bce(pred, gt).sum()
        dice = dice + dice_loss(pred, gt).sum()
        focal = focal + focal_loss(pred, gt).sum()
        n_masks += n
    if n_masks:
        bce, dice, focal = bce / n_masks, dice / n_masks, focal / n_masks
    loss = weights.ce * ce + weights.bce * bce + weights.dice * dice + weights.focal * focal
    if getattr(model, "touch_unused", False):
        # FSDP reduce-scatters the gradients of a unit only for the parameters that got one, and every rank must
        # reduce the same set: give the root unit's trainable parameters a zero gradient even when this batch
        # has no region (adapter) or no <SEG> (mask branch). Decoder layers do the same for idle experts.
        touched = [p.reshape(-1)[:1].sum() for name, p in model.named_parameters()
                   if p.requires_grad and not name.startswith("model.layers.")]
        if touched:
            loss = loss + 0.0 * torch.stack(touched).sum().to(loss.dtype)
    return {"loss": loss, "ce": ce.detach(), "bce": bce.detach(), "dice": dice.detach(),
            "focal": focal.detach(), "seg_count": torch.tensor(n_masks)}


def expand_labels(labels: list[int], input_ids: list[int], n_image_tokens: int) -> list[int]:
    """Labels aligned with the spliced sequence: the image placeholder becomes P ignored positions."""
    out: list[int] = []
    for tok, lab in zip(input_ids, labels):
        if tok == IMAGE_TOKEN_INDEX:
            out.extend([IGNORE_INDEX] * n_image_tokens)
        elif tok == REGION_TOKEN_INDEX:
            out.append(IGNORE_INDEX)
        else:
            out.append(lab)
    return out
