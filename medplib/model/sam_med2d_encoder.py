"""SAM-Med2D image encoder: a ViTDet-style ViT with windowed attention, decomposed relative
position biases and the SAM-Med2D adapter in every block.

Attribute names are chosen so that `state_dict()` keys line up with the official
`sam-med2d_b.pth` checkpoint (prefixed with `image_encoder.` by the full model):

    patch_embed.proj.{weight,bias}
    pos_embed                                   [1, S/16, S/16, D]
    blocks.{i}.norm1 / norm2                    LayerNorm(eps=1e-6)
    blocks.{i}.attn.qkv / attn.proj             Linear
    blocks.{i}.attn.rel_pos_h / rel_pos_w       [2*n-1, D/heads], n = window (or grid for global blocks)
    blocks.{i}.mlp.lin1 / mlp.lin2              Linear
    blocks.{i}.Adapter.norm                     LayerNorm (default eps=1e-5)
    blocks.{i}.Adapter.channel.{0,2}.weight     Linear without bias (squeeze/excite)
    blocks.{i}.Adapter.spatial.{0,2}.weight     Conv2d s2 / ConvTranspose2d s2, no bias
    neck.{0,2}.weight                           Conv2d 1x1 / 3x3, no bias
    neck.{1,3}.{weight,bias}                    LayerNorm2d
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] tensor (SAM's `LayerNorm2d`, eps=1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two-layer feed-forward block `lin2(act(lin1(x)))`."""

    def __init__(self, dim: int, hidden_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patchify convolution; returns channels-last tokens [B, H/p, W/p, D]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Adapter(nn.Module):
    """SAM-Med2D adapter: channel gating (squeeze/excite) followed by a down/up-sampling conv
    branch added residually, then a LayerNorm. Works channels-last: [B, H, W, C] -> same."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)  # note: default eps, unlike the block norms
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.Sigmoid(),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[1:3]
        x = x.permute(0, 3, 1, 2)  # -> [B, C, H, W] for the convs
        gate = self.channel(x.mean(dim=(2, 3)))  # global average pool -> per-channel weights
        spatial = self.spatial(x * gate[:, :, None, None])
        # stride-2 down then up returns 2*ceil(H/2); crop so odd grids also work.
        x = x + spatial[:, :, :h, :w]
        return self.norm(x.permute(0, 2, 3, 1))


def _rel_pos_table(size: int, rel_pos: Tensor) -> Tensor:
    """Gather a [size, size, C] table of embeddings for the offsets (query - key).

    The parameter holds 2*size-1 rows when it was built for this size; otherwise it is
    linearly resampled, as SAM does when the attention grid differs from the trained one.
    """
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.t()[None], size=length, mode="linear")[0].t()
    offsets = torch.arange(size, device=rel_pos.device)
    index = offsets[:, None] - offsets[None, :] + (size - 1)
    return rel_pos[index]


def decomposed_rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, hw: tuple[int, int]) -> Tensor:
    """Additive attention bias from decomposed relative positions (MViTv2).

    q: [N, H*W, C] unscaled queries. Returns [N, H*W, H*W] where the bias for query (y, x)
    and key (y', x') is q . Rh[y, y'] + q . Rw[x, x'].
    """
    h, w = hw
    table_h = _rel_pos_table(h, rel_pos_h).to(q.dtype)
    table_w = _rel_pos_table(w, rel_pos_w).to(q.dtype)
    q = q.reshape(q.shape[0], h, w, -1)
    bias_h = torch.einsum("nhwc,hkc->nhwk", q, table_h)  # [N, H, W, H_k]
    bias_w = torch.einsum("nhwc,wkc->nhwk", q, table_w)  # [N, H, W, W_k]
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # [N, H, W, H_k, W_k]
    return bias.reshape(q.shape[0], h * w, h * w)


class Attention(nn.Module):
    """Multi-head self-attention over a 2-D token grid with relative position biases."""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        # Zero-initialised like SAM (rel_pos_zero_init=True); real values come from the checkpoint.
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, HW, head_dim]
        bias = decomposed_rel_pos_bias(q.reshape(b * self.num_heads, h * w, -1), self.rel_pos_h, self.rel_pos_w, (h, w))
        bias = bias.reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale = head_dim**-0.5 as in SAM
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


def window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad [B, H, W, C] to multiples of `window` and cut it into [B*nW, window, window, C]."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: Tensor, window: int, padded: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of `window_partition`, dropping the padding."""
    hp, wp = padded
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1).transpose(2, 3)
    x = x.reshape(b, hp, wp, -1)
    return x[:, : hw[0], : hw[1]].contiguous()


class Block(nn.Module):
    """Pre-norm ViT block; `window_size == 0` means global attention over the whole grid."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: tuple[int, int], adapter: bool
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, grid if window_size == 0 else (window_size, window_size))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.use_adapter = adapter
        if adapter:
            self.Adapter = Adapter(dim)  # capitalised: that is the checkpoint's key

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            windows, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, padded, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        # The adapter runs in parallel with the MLP on the same normalised input.
        normed = self.norm2(x)
        out = x + self.mlp(normed)
        if self.use_adapter:
            out = out + self.Adapter(normed)
        return out


class ImageEncoderViT(nn.Module):
    """[B, 3, S, S] normalised image -> [B, out_chans, S/p, S/p] embedding."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        window_size: int,
        global_attn_indexes: tuple[int, ...],
        adapter: bool,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0], grid[1], embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                grid=grid,
                adapter=adapter,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        if x.shape[1:3] != self.pos_embed.shape[1:3]:
            raise ValueError(
                f"image encoder expects {self.img_size}x{self.img_size} inputs (token grid "
                f"{tuple(self.pos_embed.shape[1:3])}), got token grid {tuple(x.shape[1:3])}"
            )
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
