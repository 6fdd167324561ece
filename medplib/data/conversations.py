"""Conversations generated from a MONAI Label datastore: grounding, region and closed VQA on 2D slices.

Slices are prepared exactly as the infer task prepares them (radiological plane, isotropic pixels, the image's
automatic window), so the model is trained on what it will be asked about.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from medplib.data.augment import augment_view
from medplib.data.planes import PlaneMapper
from medplib.data.volumes import Volume, auto_window, read_volume
from medplib.imaging.preprocess import Window, prepare_rgb
from medplib.imaging.regions import Box, Point, Region, Scribble, rasterize
from medplib.model.bilingual import GROUND_ANSWER_ZH, GROUND_TEMPLATES_ZH, REGION_QUESTIONS_ZH, to_zh
from medplib.model.conversation import GROUND_ANSWER, GROUND_TEMPLATES

# Closed questions (answers are single words, scored by exact match).
MODALITY_Q = ("What is the modality of this image?", "Which imaging modality was used?")
PLANE_Q = ("In which plane is this slice?", "Is this an axial, coronal or sagittal slice?")
BODY_Q = ("Which body part is shown?", "What part of the body is imaged?")
REGION_Q = ("What is this structure?", "Which structure is marked by <region>?", "What does <region> show?")
MIN_STRUCTURE_PIXELS = 30
ZH_FRACTION = 0.3  # share of grounding and region conversations asked in Chinese (MedRegA is bilingual)


@dataclass
class Conversation:
    """One question about one slice; `masks` are the <SEG> ground truths on the model plane."""

    image_id: str
    axis: int
    index: int
    kind: str  # "ground" | "region" | "vqa"
    question: str
    answer: str
    structure: str | None = None
    regions: list[Region] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    closed: bool = True
    lang: str = "en"
    rgb: np.ndarray | None = field(default=None, repr=False)  # the slice as the model sees it (shared per slice)


@dataclass
class SliceView:
    """A prepared slice: the model plane (float), its uint8 RGB rendering and the mapper back to the volume."""

    mapper: PlaneMapper
    plane: np.ndarray
    window: Window

    @property
    def rgb(self) -> np.ndarray:
        return prepare_rgb(self.plane, self.window)


def load_slice(vol: Volume, axis: int, index: int, window: Window) -> SliceView:
    mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, axis, index)
    return SliceView(mapper, mapper.extract(vol.array), window)


def structures_of(info: dict) -> dict[str, list[int]]:
    """Structure name -> label values, from the image metadata (`structures`, else `label_names`)."""
    if info.get("structures"):
        return {k: [int(v) for v in vs] for k, vs in info["structures"].items()}
    return {k: [int(v)] for k, v in (info.get("label_names") or {}).items()}


def leaf_structures(structures: dict[str, list[int]]) -> dict[str, list[int]]:
    """Structures made of one label value: what a region prompt can name unambiguously."""
    return {k: v for k, v in structures.items() if len(v) == 1}


def load_splits(studies: str | os.PathLike) -> dict:
    path = Path(studies) / "splits.json"
    return json.loads(path.read_text())["images"] if path.is_file() else {}


def split_of(splits: dict, image_id: str, axis: int, index: int) -> str:
    """"val" for held-out slices, "guard" next to them, else "train"."""
    axes = splits.get(image_id, {}).get("axes", {})
    entry = axes.get(str(axis), {})
    if index in set(entry.get("held_out", [])):
        return "val"
    if index in set(entry.get("guard", [])):
        return "guard"
    return "train"


def dominant_structure(mask: np.ndarray, label_plane: np.ndarray, leaves: dict[str, list[int]],
                       margin: float = 0.15) -> str | None:
    """The leaf structure covering most of a region mask, if it leads the runner-up by `margin` of the area."""
    area = mask.sum()
    if area == 0:
        return None
    shares = sorted(((np.isin(label_plane[mask], v).sum() / area, name) for name, v in leaves.items()), reverse=True)
    if not shares or shares[0][0] < 0.4:
        return None
    if len(shares) > 1 and shares[0][0] - shares[1][0] < margin:
        return None
    return shares[0][1]


def sample_region(rng: random.Random, label_plane: np.ndarray, leaves: dict[str, list[int]], span: int,
                  kind: str, target: str) -> Region | None:
    """A point, box or scribble placed in `target` whose rasterised mask `target` dominates, or None."""
    h, w = label_plane.shape
    inside = np.argwhere(np.isin(label_plane, leaves[target]))
    if len(inside) < MIN_STRUCTURE_PIXELS:
        return None
    for _ in range(20):
        r, c = (int(x) for x in inside[rng.randrange(len(inside))])
        if kind == "point":
            region: Region = Point(r, c)
        elif kind == "box":
            hh, ww = rng.randint(3, 10), rng.randint(3, 10)
            region = Box(max(c - ww, 0), max(r - hh, 0), min(c + ww, w - 1), min(r + hh, h - 1))
        else:
            pts = [(r, c)]
            for _ in range(rng.randint(1, 3)):
                pr, pc = pts[-1]
                pts.append((min(max(pr + rng.randint(-6, 6), 0), h - 1), min(max(pc + rng.randint(-6, 6), 0), w - 1)))
            region = Scribble(tuple(pts), width=3)
        if dominant_structure(rasterize(region, (h, w), span), label_plane, leaves) == target:
            return region
    return None


def slice_conversations(rng: random.Random, image_id: str, view: SliceView, info: dict,
                        label_view: np.ndarray | None, span: int, kinds: Iterable[str],
                        per_slice: int | None = None) -> list[Conversation]:
    """All conversations for one prepared slice (labels given on the model plane); with `per_slice`, grounding
    and region questions about at most that many structures each, drawn at random among those on the slice (an
    atlas names a hundred structures per slice)."""
    out: list[Conversation] = []
    axis, index = view.mapper.axis, view.mapper.index
    rgb = view.rgb
    kinds = set(kinds)
    if "vqa" in kinds:
        if info.get("modality"):
            out.append(Conversation(image_id, axis, index, "vqa", rng.choice(MODALITY_Q), str(info["modality"])))
        out.append(Conversation(image_id, axis, index, "vqa", rng.choice(PLANE_Q), view.mapper.view))
        if info.get("body_part") and info["body_part"] != "unknown":
            out.append(Conversation(image_id, axis, index, "vqa", rng.choice(BODY_Q), str(info["body_part"])))
    if label_view is None:
        return _with_rgb(out, rgb)
    structures = structures_of(info)
    if "ground" in kinds:
        present = [(name, mask) for name, values in structures.items()
                   if (mask := np.isin(label_view, values)).sum() >= MIN_STRUCTURE_PIXELS]
        if per_slice is not None and len(present) > per_slice:
            present = rng.sample(present, per_slice)
        for name, mask in present:
            zh = rng.random() < ZH_FRACTION
            question = rng.choice(GROUND_TEMPLATES_ZH if zh else GROUND_TEMPLATES).format(
                label=to_zh(name) if zh else name)
            out.append(Conversation(image_id, axis, index, "ground", question,
                                    GROUND_ANSWER_ZH if zh else GROUND_ANSWER, name, masks=[mask],
                                    lang="zh" if zh else "en"))
    if "region" in kinds:
        leaves = leaf_structures(structures)
        names = list(leaves)
        if per_slice is not None:  # (only then: the default recipe's random draws stay as they were)
            names = [n for n in names if np.isin(label_view, leaves[n]).sum() >= MIN_STRUCTURE_PIXELS]
            names = rng.sample(names, min(per_slice, len(names)))
        for name in names:
            kind = rng.choice(("point", "box", "scribble"))
            region = sample_region(rng, label_view, leaves, span, kind, name)
            if region is not None:
                zh = rng.random() < ZH_FRACTION
                out.append(Conversation(image_id, axis, index, "region",
                                        rng.choice(REGION_QUESTIONS_ZH if zh else REGION_Q),
                                        to_zh(name) if zh else name, name, regions=[region],
                                        lang="zh" if zh else "en"))
    return _with_rgb(out, rgb)


def _with_rgb(convs: list[Conversation], rgb: np.ndarray) -> list[Conversation]:
    for conv in convs:
        conv.rgb = rgb
    return convs


def build_conversations(datastore, split: str = "train", seed: int = 0, slice_step: int = 1,
                        kinds: Iterable[str] = ("ground", "region", "vqa"), span: int = 20,
                        unlabelled_slices: int = 3, min_brain_fraction: float = 0.02,
                        image_ids: Iterable[str] | None = None, per_slice: int | None = None,
                        augment: float = 0.0) -> list[Conversation]:
    """Conversations over every labelled image's slices of the requested split, on all three axes (`per_slice`:
    see `slice_conversations`; `augment`: the fraction of labelled slices given a random pose, resolution and
    intensity change, `medplib.data.augment`, drawn from their own random stream so that 0 changes nothing).

    Unlabelled images contribute closed VQA on a few slices (metadata is not a label) to the train split only.
    """
    rng = random.Random(seed)
    aug_rng = random.Random(f"augment-{seed}")
    studies = getattr(datastore, "_datastore_path", None) or getattr(datastore, "_studies", None)
    splits = load_splits(studies) if studies else {}
    labelled = set(datastore.get_labeled_images())
    out: list[Conversation] = []
    for image_id in sorted(image_ids or datastore.list_images()):
        info = datastore.get_image_info(image_id)
        vol = read_volume(datastore.get_image_uri(image_id))
        window = auto_window(vol, info.get("modality"))
        label = read_volume(datastore.get_label_uri(image_id, "final")).array if image_id in labelled else None
        for axis in range(3):
            n = vol.shape[axis]
            if n < 2 and axis != 2:
                continue
            if label is None:
                if split != "train":
                    continue
                picks = sorted({n // 2, n // 3, (2 * n) // 3})[:unlabelled_slices]
                for k in picks:
                    out += slice_conversations(rng, image_id, load_slice(vol, axis, k, window), info, None, span, kinds)
                continue
            for k in range(0, n, slice_step):
                if split_of(splits, image_id, axis, k) != split:
                    continue
                view = load_slice(vol, axis, k, window)
                label_view = view.mapper.extract_labels(label)
                if (label_view > 0).mean() < min_brain_fraction:
                    continue
                if augment and aug_rng.random() < augment:
                    view, label_view, _ = augment_view(aug_rng, view, label_view)
                out += slice_conversations(rng, image_id, view, info, label_view, span, kinds, per_slice)
    return out
