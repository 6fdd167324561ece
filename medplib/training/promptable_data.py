"""Data for promptable (LiteMedSAM) fine-tuning: labelled slices of a datastore and prompts simulated from labels.

Slices are prepared as the promptable infer task prepares them (`load_slice`: radiological plane, isotropic pixels,
the image's automatic window), one object per structure present on a slice (the structure's whole mask). Prompts are
simulated as MedSAM / SAM-Med2D train: a box = the mask's bounding box with random jitter, and clicks = a random
positive point inside, then points in the largest error region of the current prediction (positive where the
object was missed, negative on a false positive).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage
from torch import Tensor

from medplib.data.conversations import leaf_structures, load_slice, load_splits, split_of, structures_of
from medplib.data.volumes import auto_window, read_volume
from medplib.imaging.metrics import largest_error_region
from medplib.imaging.preprocess import Window
from medplib.inference.promptable import CLICK_SCALES, mask_box, slice_input
from medplib.model.lite_medsam import lite_pixel_values

FALLBACK_HOLDOUT = 0.2  # images without a splits.json entry: the central 20 % of each axis' labelled extent is held out


@dataclass
class LabelledSlice:
    """One prepared slice with the structures to prompt for (masks on the model plane, bool [H, W])."""

    image_id: str
    axis: int
    index: int
    split: str
    plane: np.ndarray = field(repr=False)
    window: Window | None
    objects: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    embedding: Tensor | None = field(default=None, repr=False)  # [1, 256, 64, 64] fp16 (frozen encoder)
    resized: tuple[int, int] | None = None

    @property
    def original_size(self) -> tuple[int, int]:
        return tuple(self.plane.shape[:2])

    def pixels(self) -> Tensor:
        """LiteMedSAM's input [3, 256, 256] (for training the encoder), and fills `resized`."""
        px, self.resized = lite_pixel_values(slice_input(self.plane, self.window))
        return px


def _fallback_split(index: int, lo: int, hi: int, guard: int) -> str:
    """The central `FALLBACK_HOLDOUT` of [lo, hi] is "val", `guard` slices either side are "guard"."""
    centre, half = (lo + hi) / 2.0, max(1.0, (hi - lo + 1) * FALLBACK_HOLDOUT / 2.0)
    d = abs(index - centre)
    return "val" if d <= half else ("guard" if d <= half + guard else "train")


def _evenly(items: list, n: int) -> list:
    if n <= 0 or len(items) <= n:
        return items
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def collect_slices(datastore, axes: Iterable[int] = (0, 1, 2), slice_step: int = 4, val_slice_step: int = 6,
                   structures: Iterable[str] = (), min_pixels: int = 100, max_slices: int = 0,
                   max_val_slices: int = 24, image_ids: Iterable[str] = (),
                   log: Callable[[str], None] = lambda s: None) -> tuple[list[LabelledSlice], list[LabelledSlice]]:
    """(train, val) labelled slices of every image with a final label.

    The split follows the datastore's `splits.json` (an image entry `{"split": "val"}` holds out the whole image,
    else its per-axis `held_out` / `guard` slices); an image without an entry holds out the central 20 % of each
    axis' labelled extent (and `slice_step` guard slices either side). `structures` names the structures to train
    (default: every single-label structure of the image's metadata); a structure counts on a slice from `min_pixels`.
    `max_slices` / `max_val_slices` keep that many evenly spaced slices (0 = all).
    """
    studies = getattr(datastore, "_datastore_path", None) or getattr(datastore, "_studies", None)
    splits = load_splits(studies) if studies else {}
    wanted = set(structures)
    train: list[LabelledSlice] = []
    val: list[LabelledSlice] = []
    labelled = sorted(set(datastore.get_labeled_images()) & set(image_ids or datastore.list_images()))
    for image_id in labelled:
        info = datastore.get_image_info(image_id)
        names = structures_of(info)
        names = {k: v for k, v in names.items() if k in wanted} if wanted else leaf_structures(names)
        if not names:
            log(f"{image_id}: none of the structures {sorted(wanted) or 'with one label value'} in its metadata")
            continue
        vol = read_volume(datastore.get_image_uri(image_id))
        label = read_volume(datastore.get_label_uri(image_id, "final")).array
        window = auto_window(vol, info.get("modality"))
        entry = splits.get(image_id)
        whole = entry.get("split") if isinstance(entry, dict) else None
        values = sorted({v for vs in names.values() for v in vs})
        for axis in axes:
            n = vol.shape[axis]
            if n < 2 and axis != 2:
                continue
            other = tuple(a for a in range(3) if a != axis)
            present = np.nonzero(np.isin(label, values).any(axis=other))[0]
            if not len(present):
                continue
            lo, hi = int(present.min()), int(present.max())
            for split_name, step in (("train", slice_step), ("val", val_slice_step)):
                for k in range(lo, hi + 1, max(1, step)):
                    if whole:
                        split = "val" if whole == "val" else "train"
                    elif entry:
                        split = split_of(splits, image_id, axis, k)
                    else:
                        split = _fallback_split(k, lo, hi, slice_step)
                    if split != split_name:
                        continue
                    view = load_slice(vol, axis, k, window)
                    lab = view.mapper.extract_labels(label)
                    objects = {name: np.isin(lab, vs) for name, vs in names.items()}
                    objects = {name: m for name, m in objects.items() if m.sum() >= min_pixels}
                    if objects:
                        item = LabelledSlice(image_id, axis, k, split, view.plane, window, objects)
                        (train if split == "train" else val).append(item)
    return _evenly(train, max_slices), _evenly(val, max_val_slices)


# ------------------------------------------------------------------------------------------ simulated prompts
def jittered_box(mask: np.ndarray, rng: random.Random, jitter: float) -> tuple[float, float, float, float]:
    """The mask's bounding box (x1, y1, x2, y2), each side moved by up to `jitter` x the image size."""
    x1, y1, x2, y2 = mask_box(mask)
    h, w = mask.shape
    if jitter > 0:
        x1 += rng.uniform(-jitter, jitter) * w
        x2 += rng.uniform(-jitter, jitter) * w
        y1 += rng.uniform(-jitter, jitter) * h
        y2 += rng.uniform(-jitter, jitter) * h
    x1, x2 = sorted((min(max(x1, 0.0), w - 1.0), min(max(x2, 0.0), w - 1.0)))
    y1, y2 = sorted((min(max(y1, 0.0), h - 1.0), min(max(y2, 0.0), h - 1.0)))
    return x1, y1, max(x2, x1 + 1.0), max(y2, y1 + 1.0)


def random_point(region: np.ndarray, rng: random.Random) -> tuple[float, float]:
    """A uniformly random (row, col) inside a non-empty region."""
    rows, cols = np.nonzero(region)
    i = rng.randrange(len(rows))
    return float(rows[i]), float(cols[i])


def centre_point(region: np.ndarray) -> tuple[float, float]:
    """(row, col) of the region's pixel farthest from its border (the deterministic validation click)."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(r), float(c)


def error_click(pred: np.ndarray, truth: np.ndarray, rng: random.Random) -> tuple[tuple[float, float], int] | None:
    """A random point in the largest error region: label 1 if the object was missed there, 0 if falsely covered."""
    error = largest_error_region(pred, truth)
    return None if error is None else (random_point(error[0], rng), error[1])


def click_box(points: np.ndarray, labels: np.ndarray, hw: tuple[int, int], rng: random.Random,
              previous: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """The box the promptable predictor adds to clicks: around the positive clicks at one of its sizes, or the
    previous mask's box grown to take them in (LiteMedSAM needs a box; served clicks always come with one)."""
    h, w = hw
    pos = points[labels == 1] if (labels == 1).any() else points
    r0, c0 = pos.min(axis=0)
    r1, c1 = pos.max(axis=0)
    if previous is not None and previous.any():
        x1, y1, x2, y2 = mask_box(previous)
        return min(x1, c0), min(y1, r0), max(x2, c1), max(y2, r1)
    half = rng.choice(CLICK_SCALES) * max(h, w)
    return max(c0 - half, 0.0), max(r0 - half, 0.0), min(c1 + half, w - 1.0), min(r1 + half, h - 1.0)
