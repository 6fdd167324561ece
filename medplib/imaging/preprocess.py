"""Image preprocessing for both branches and mask post-processing, reproducing the original geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

# CLIP normalisation and the integer pad colour the original computes as int(mean * 255).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_PAD_RGB = (122, 116, 104)


@dataclass(frozen=True)
class Window:
    """Intensity window (center, width) in image units."""

    center: float
    width: float


def window_to_uint8(image: np.ndarray, window: Window | None = None,
                    percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map a 2D scalar image to uint8 [0, 255] by a window, or by robust percentiles when none is given."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {img.shape}")
    if window is not None:
        if not (np.isfinite(window.center) and np.isfinite(window.width)) or window.width <= 0:
            raise ValueError(f"window must be finite with width > 0, got {window}")
        lo, hi = window.center - window.width / 2.0, window.center + window.width / 2.0
    else:
        finite = img[np.isfinite(img)]
        if finite.size == 0:
            return np.zeros(img.shape, dtype=np.uint8)
        lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    out = (np.nan_to_num(img, nan=lo) - lo) / (hi - lo)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_rgb(image_u8: np.ndarray) -> np.ndarray:
    """Replicate a grey uint8 image to HxWx3 (SA-Med2D slices are 8-bit RGB PNGs)."""
    if image_u8.ndim == 2:
        return np.repeat(image_u8[:, :, None], 3, axis=2)
    if image_u8.ndim == 3 and image_u8.shape[2] == 3:
        return image_u8
    raise ValueError(f"expected HxW or HxWx3, got {image_u8.shape}")


def prepare_rgb(image: np.ndarray, window: Window | None = None) -> np.ndarray:
    """2D scalar slice (windowed) or HxWx3 uint8 -> HxWx3 uint8."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return arr
    if arr.ndim == 2:
        return to_rgb(window_to_uint8(arr, window))
    raise ValueError(f"expected a 2D slice or HxWx3 uint8 image, got shape {arr.shape} ({arr.dtype})")


def longest_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """(h', w') after ResizeLongestSide(target): scale, then round half up like the original."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, target: int, nearest: bool = False) -> np.ndarray:
    """Resize an HxW[xC] uint8 array so its longest side is `target` (PIL bilinear, as torchvision on PIL)."""
    h, w = image.shape[:2]
    new_h, new_w = longest_side_size(h, w, target)
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=resample))


def centre_pad(array: np.ndarray, size: int, value: float | tuple = 0) -> np.ndarray:
    """Pad HxW[xC] to size x size with the image centred (top/left get pad // 2, bottom/right the rest)."""
    h, w = array.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    out = np.empty((size, size) + array.shape[2:], dtype=array.dtype)
    out[...] = np.asarray(value, dtype=array.dtype)
    out[top:top + h, left:left + w] = array
    return out


def clip_pixel_values(rgb: np.ndarray, size: int = 336) -> torch.Tensor:
    """CLIP branch: resize longest side, centre pad with (122,116,104), rescale and normalise -> [3,S,S]."""
    resized = resize_longest_side(rgb, size)
    padded = centre_pad(resized, size, CLIP_PAD_RGB).astype(np.float32) / 255.0
    mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(((padded - mean) / std).transpose(2, 0, 1).copy())


def sam_pixel_values(rgb: np.ndarray, size: int, pixel_mean, pixel_std) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM branch: resize longest side, normalise, then centre zero-pad -> ([3,S,S], (h', w'))."""
    resized = resize_longest_side(rgb, size).astype(np.float32)
    norm = (resized - np.asarray(pixel_mean, np.float32)) / np.asarray(pixel_std, np.float32)
    padded = centre_pad(norm, size, 0.0)
    return torch.from_numpy(padded.transpose(2, 0, 1).copy()), resized.shape[:2]


def region_grid(mask: np.ndarray, image_size: int = 336, patch_size: int = 14, resample: str = "bilinear",
                largest_component: bool = False) -> np.ndarray:
    """Binary mask at the original resolution -> boolean grid over the CLIP patches (24x24 for 336/14).

    Same geometry as the image: resize longest side (PIL bilinear as the original's `ResizeLongestSide`, or
    nearest for models trained that way), centre pad with 0, then nearest downsample by the patch size (cv2
    INTER_NEAREST samples pixel (r*14, c*14)). `largest_component` keeps only the largest 8-connected component
    of the grid, as the original's dataset does for masks it loads (`generate_mask_with_sub_component`). A
    region so small that nearest sampling misses it (a point on a very large image) falls back to "any pixel in
    the cell", instead of the original's silently empty region.
    """
    if resample not in ("bilinear", "nearest"):
        raise ValueError(f"region resample must be 'bilinear' or 'nearest', got {resample!r}")
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if m.ndim != 2:
        raise ValueError(f"region mask must be 2D, got {m.shape}")
    padded = centre_pad(resize_longest_side(m, image_size, nearest=resample == "nearest"), image_size, 0)
    grid_n = image_size // patch_size
    grid = padded[: grid_n * patch_size: patch_size, : grid_n * patch_size: patch_size] > 0
    if not grid.any() and padded.any():
        cells = padded[: grid_n * patch_size, : grid_n * patch_size].reshape(grid_n, patch_size, grid_n, patch_size)
        grid = cells.max(axis=(1, 3)) > 0
    if not grid.any() and m.any():  # even the resize lost it (a thin stroke on a large image): its centre's cell
        grid[centre_cell(m, image_size, patch_size)] = True
    if largest_component and grid.any():
        labels, n = ndimage.label(grid, structure=np.ones((3, 3), dtype=bool))
        if n > 1:  # the first of equally large components, in raster order, as cv2's scan
            grid = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return grid


def centre_cell(mask: np.ndarray, image_size: int, cell: int) -> tuple[int, int]:
    """(row, col) of the `cell`-px cell of the square model input that holds a mask's centroid (same geometry
    as the image: longest side resized to `image_size`, centre padded)."""
    h, w = mask.shape
    scale = image_size / max(h, w)
    new_h, new_w = longest_side_size(h, w, image_size)
    top, left = (image_size - new_h) // 2, (image_size - new_w) // 2
    rows, cols = np.nonzero(mask)
    n = image_size // cell
    row = min(int((rows.mean() * scale + top) // cell), n - 1)
    col = min(int((cols.mean() * scale + left) // cell), n - 1)
    return row, col


def postprocess_masks(low_res: torch.Tensor, input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> torch.Tensor:
    """Decoder logits [B,C,64,64] -> [B,C,H,W], with the original MedPLIB geometry kept verbatim.

    The original "removes" the centre padding with pad = 64 - h' where h' is in 256-px units, so the slice
    start is negative and Python clamps it: short sides >= 192 px stretch the whole canvas, shorter ones
    drop a few top/left rows. The released mask decoder was trained through this exact function, so we
    keep it rather than fix it.
    """
    if low_res.dim() == 3:
        low_res = low_res.unsqueeze(0)
    mh, mw = low_res.shape[-2:]
    pad_h, pad_w = mh - input_size[0], mw - input_size[1]
    top, left = pad_h // 2, pad_w // 2
    rows = _python_slice(mh, top, top + input_size[0])
    cols = _python_slice(mw, left, left + input_size[1])
    cropped = low_res[:, :, rows, cols]
    return F.interpolate(cropped, tuple(original_size), mode="bilinear", align_corners=False)


def _python_slice(length: int, start: int, stop: int) -> slice:
    """Resolve a slice with Python's list semantics (negative start counts from the end; clamped)."""
    return slice(*slice(start, stop).indices(length)[:2])


def logit(p: float) -> float:
    """The logit a mask probability threshold corresponds to (clamped so 0 and 1 stay finite)."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))
