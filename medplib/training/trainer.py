"""Stage-wise MedPLIB fine-tuning loop (plain PyTorch): LoRA + heads, validation, checkpoints, resume, stop.

Independent of MONAI Label: `trainers/medplib_train.py` feeds it conversations from a datastore.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from medplib.checkpoints.sharded import full_state_dict, save_sharded
from medplib.imaging.metrics import dice as dice_metric
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.config import LossWeights
from medplib.model.lora import LoraSettings, add_lora
from medplib.model.losses import TrainSample, dice_loss, expand_labels, sigmoid_bce
from medplib.model.lite_medsam import tinyvit_trunk
from medplib.model.mask_io import mask_branch_logits
from medplib.model.modeling import MedPLIBForCausalLM
from medplib.model.moe import moe_layers
from medplib.training.fsdp import mask_new_token_rows, shard
from medplib.training.stages import STAGES, configure_stage

logger = logging.getLogger(__name__)
STAGE_ORDER = {"vqa": ["vqa"], "closed": ["closed"], "vqa_routed": ["vqa_routed"], "ground": ["ground"],
               "moe": ["moe"], "all": ["vqa", "ground", "moe"]}


@dataclass
class TrainConfig:
    stage: str = "all"  # vqa | closed | vqa_routed | ground | moe | all (= vqa, ground, moe in turn)
    epochs: int = 1  # per stage
    batch_size: int = 2
    lr: float = 3e-4
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_encoders: bool = False  # the paper freezes CLIP and the SAM encoder; a from-scratch small model cannot
    mask_epochs: int = 0  # extra mask-branch epochs on cached <SEG> states (LLM frozen), after the stages
    mask_batch_size: int = 8
    mask_lr: float = 1e-3
    max_steps_per_epoch: int | None = None
    val_samples: int = 64
    grad_clip: float = 1.0
    seed: int = 0
    fsdp: bool = False  # with several ranks: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    pack_turns: int = 1  # > 1: a slice's VQA and region questions train as multi-turn samples of up to this many
    region_pixel_dim: int = 0  # > 0: give a start model without it the fine region branch (`medplib.model.region_pixels`)
    mask_branch: str = ""  # "lite_medsam": give a start model without it LiteMedSAM as its mask branch
    mask_train_decoder: bool = True  # the mask phase trains the mask decoder too (else only <SEG> -> prompt)
    mask_train_prompt_encoder: bool = False  # ... and the prompt encoder (its no-mask embedding and point tokens)
    mask_train_neck: bool = False  # LiteMedSAM: ... and the image encoder's neck, on cached TinyViT trunk features

    def __post_init__(self) -> None:
        if self.pack_turns < 1:
            raise ValueError(f"pack_turns must be >= 1, got {self.pack_turns}")
        if self.region_pixel_dim < 0:
            raise ValueError(f"region_pixel_dim must be >= 0, got {self.region_pixel_dim}")
        if self.mask_branch not in ("", "lite_medsam"):
            raise ValueError(f"mask_branch must be '' or 'lite_medsam', got {self.mask_branch!r}")
        if self.mask_train_neck and self.mask_branch != "lite_medsam":
            raise ValueError("mask_train_neck needs mask_branch='lite_medsam' (the neck of LiteMedSAM's TinyViT)")
        if self.fsdp and self.mask_epochs:
            raise ValueError("fsdp and mask_epochs cannot be combined: the cached-<SEG> mask phase runs on one "
                             "device; run it as a second (DDP or single-process) training job")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        return d


@dataclass
class Example:
    """One conversation turn on one image (the image as the model sees it), and how to build its TrainSample."""

    kind: str  # "vqa" | "region" | "ground"
    question: str
    answer: str
    rgb: np.ndarray
    build: Callable[[], TrainSample]
    regions: Sequence = ()
    masks: Sequence[np.ndarray] = ()
    closed: bool = True
    key: tuple = ()  # identifies the image/slice, so validation encodes each image once


class Trainer:
    """Runs the stages, validates after each epoch, writes versioned checkpoints and publishes the best."""

    def __init__(self, model: MedPLIBForCausalLM, tokenizer, cfg: TrainConfig, out_dir: str | os.PathLike,
                 train: list[Example], val: list[Example],
                 save: Callable[[MedPLIBForCausalLM, Path], None],
                 publish: Callable[[Path], None] | None = None,
                 on_epoch: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, progress: bool = True,
                 mask_examples: list[Example] | None = None):
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.out_dir = Path(out_dir)
        self.train, self.val = train, val
        self.mask_examples = mask_examples  # single grounding turns for the mask phase (default: train's)
        self.save, self.publish = save, publish
        self.on_epoch = on_epoch or (lambda s: None)
        self.should_stop = should_stop or (lambda: False)
        self.progress = progress
        self.history: list[dict] = []
        self.best = -1.0
        self.version = 0
        dist = torch.distributed
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.fsdp = self.world > 1 and cfg.fsdp

    # ------------------------------------------------------------------ resume
    def _state_path(self) -> Path:
        return self.out_dir / "trainer_state.json"

    def _load_state(self) -> tuple[int, int]:
        """(stage index, epoch) to resume from, restoring history/best/version; weights via `resume_from`."""
        path = self._state_path()
        if not path.is_file():
            return 0, 0
        st = json.loads(path.read_text())
        self.history, self.best, self.version = st["history"], st["best"], st["version"]
        return st["stage_index"], st["epoch"]

    def _save_state(self, stage_index: int, epoch: int) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage_index": stage_index, "epoch": epoch, "history": self.history,
                                   "best": self.best, "version": self.version, "config": self.cfg.to_dict()}))
        os.replace(tmp, self._state_path())

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.cfg.seed)
        add_lora(self.model, self.cfg.lora)
        if self.fsdp:
            # rank 0 keeps an unsharded copy to validate and write the consolidated checkpoint it publishes
            self._plain = copy.deepcopy(self.model).cpu() if self.rank == 0 else None
            shard(self.model)
            self.model.touch_unused = True  # every rank gives every trainable parameter a gradient
            for moe in self._moes():
                moe.keep_idle_experts = True
        stages = STAGE_ORDER[self.cfg.stage]
        start_stage, start_epoch = self._load_state()
        stopped = False
        for si in range(start_stage, len(stages)):
            plan = STAGES[stages[si]]
            params = configure_stage(self.model, plan, self.cfg.train_encoders)
            opt = torch.optim.AdamW(params, lr=self.cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
            data = [e for e in self.train if e.kind in plan.kinds]
            if not data:
                logger.warning("stage %s: no training conversations of kinds %s", plan.name, plan.kinds)
                continue
            for epoch in range(start_epoch if si == start_stage else 0, self.cfg.epochs):
                loss = self._epoch(plan.name, epoch, data, opt, params, LossWeights(**plan.loss))
                if loss is None:
                    stopped = True
                    break
                self._finish_epoch(plan.name, epoch, loss, si, epoch + 1)
            if stopped:
                break
            start_epoch = 0
        if not stopped and self.cfg.mask_epochs > 0:
            stopped = not self._mask_phase(len(stages))
        for moe in self._moes():
            moe.force_expert = None
        return {"history": self.history, "best_val_score": self.best, "versions": self.version, "stopped": stopped}

    def _moes(self):
        return moe_layers(self.model)

    def _epoch(self, stage: str, epoch: int, data: list[Example], opt, params, weights: LossWeights) -> dict | None:
        rng = random.Random(self.cfg.seed * 1000 + epoch)
        order = data[:]
        rng.shuffle(order)  # same seed on every rank, then each rank takes its own shard
        if self.world > 1:
            order = order[self.rank::self.world][: len(order) // self.world]
        bs = self.cfg.batch_size
        n_steps = math.ceil(len(order) / bs)
        if self.cfg.max_steps_per_epoch:
            n_steps = min(n_steps, self.cfg.max_steps_per_epoch)
        self.model.train()
        net = self.model
        if self.world > 1 and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(self.model, find_unused_parameters=True,
                                          device_ids=[self.model.device] if self.model.device.type == "cuda" else None)
        totals: dict[str, float] = {}
        bar = tqdm(range(n_steps), desc=f"{stage} epoch {epoch + 1}/{self.cfg.epochs}", disable=not self.progress)
        for step in bar:
            if self.should_stop():
                return None
            batch = [e.build() for e in order[step * bs:(step + 1) * bs]]
            out = net(batch, weights)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if self.fsdp:
                mask_new_token_rows(self.model)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            opt.step()
            for k in ("loss", "ce", "bce", "dice"):
                totals[k] = totals.get(k, 0.0) + float(out[k].detach())
            bar.set_postfix(loss=f"{totals['loss'] / (step + 1):.3f}")
        self.model.eval()
        return {k: v / max(n_steps, 1) for k, v in totals.items()}

    def _finish_epoch(self, stage: str, epoch: int, losses: dict, stage_index: int, next_epoch: int) -> None:
        model = self.model
        if self.fsdp:  # every rank: its shards to disk, the full state gathered on rank 0

            full = full_state_dict(self.model)
            save_sharded(self.model, self.tok, self.out_dir / "checkpoints" / f"v{self.version + 1:04d}.sharded")
            if self.rank == 0:
                self._plain.load_state_dict(full)
                model = self._plain
            else:
                self.version += 1
        if self.rank != 0:  # rank 0 validates, saves and publishes; the others wait for it
            torch.distributed.barrier()
            return
        val = validate(model, self.tok, self.val[: self.cfg.val_samples])
        self.version += 1
        ckpt = self.out_dir / "checkpoints" / f"v{self.version:04d}"
        self.save(model, ckpt)
        score = val["score"]
        record = {"version": self.version, "stage": stage, "epoch": epoch + 1, **losses, **val,
                  "checkpoint": str(ckpt), "time": time.time()}
        if score > self.best:
            self.best = score
            record["published"] = True
            if self.publish:
                self.publish(ckpt)
        self.history.append(record)
        self._save_state(stage_index, next_epoch)
        self.on_epoch(record)
        if self.world > 1:
            torch.distributed.barrier()
        logger.info("epoch done: %s", {k: v for k, v in record.items() if k != "checkpoint"})

    # ------------------------------------------------------------------ mask phase
    def _mask_phase(self, stage_index: int) -> bool:
        """Train the mask branch on cached <SEG> states: the LLM runs once per conversation, SAM many times."""
        model = self.model
        ground = self.mask_examples if self.mask_examples is not None else [e for e in self.train
                                                                            if e.kind == "ground"]
        if not ground:
            return True
        plan = STAGES["ground"]
        configure_stage(model, plan, self.cfg.train_encoders)
        for moe in self._moes():  # cache <SEG> states exactly as inference will produce them (router decides)
            moe.force_expert = None
        prefixes = mask_phase_prefixes(self.cfg)
        for name, p in model.named_parameters():  # only the mask branch learns here
            p.requires_grad_(name.startswith(prefixes))
        params = [p for p in model.parameters() if p.requires_grad]
        encoder = model.model.visual_model.image_encoder
        neck = encoder.neck if self.cfg.mask_train_neck else None
        frozen_trunk = not any(p.requires_grad for n, p in encoder.named_parameters()
                               if not (neck is not None and n.startswith("neck.")))
        cache = _cache_seg_states(model, ground, self.progress, self.should_stop, frozen_trunk, neck is not None)
        if cache is None:
            return False
        opt = torch.optim.AdamW(params, lr=self.cfg.mask_lr, betas=(0.9, 0.95), weight_decay=0.0)
        for epoch in range(self.cfg.mask_epochs):
            rng = random.Random(self.cfg.seed + 7919 * epoch)
            order = list(range(len(cache)))
            rng.shuffle(order)
            bs = self.cfg.mask_batch_size
            model.train()
            total, n = 0.0, 0
            bar = tqdm(range(0, len(order), bs), desc=f"mask epoch {epoch + 1}/{self.cfg.mask_epochs}",
                       disable=not self.progress)
            for start in bar:
                if self.should_stop():
                    return False
                loss = _mask_step(model, [cache[i] for i in order[start:start + bs]], plan.loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
                opt.step()
                total, n = total + float(loss), n + 1
                bar.set_postfix(loss=f"{total / n:.3f}")
            model.eval()
            if (epoch + 1) % 4 == 0 or epoch + 1 == self.cfg.mask_epochs:  # generation-based validation is slow
                self._finish_epoch("mask", epoch, {"loss": total / max(n, 1)}, stage_index, 0)
        return True


def mask_phase_prefixes(cfg: TrainConfig) -> tuple[str, ...]:
    """Parameter-name prefixes the mask phase trains: the <SEG> -> prompt MLP, the decoder unless told not to,
    and the mask branch's encoders only with `train_encoders` (a pretrained LiteMedSAM encoder stays as is)."""
    out = ["model.text_hidden_fcs"]
    if cfg.mask_train_decoder:
        out.append("model.visual_model.mask_decoder")
    if cfg.mask_train_prompt_encoder:
        out.append("model.visual_model.prompt_encoder")
    if cfg.mask_train_neck:
        out.append("model.visual_model.image_encoder.neck")
    if cfg.train_encoders:
        out += ["model.visual_model.image_encoder", "model.visual_model.prompt_encoder"]
    return tuple(dict.fromkeys(out))


def _cache_seg_states(model, examples: list[Example], progress: bool, should_stop,
                      cache_embedding: bool = False, trunk_only: bool = False) -> list[tuple] | None:
    """(sam_pixels, resize, original_size, seg hidden [n,H], gt masks, what the image is) per grounding example,
    LLM in no_grad.

    With `cache_embedding` (a frozen image encoder) the mask branch's image embedding replaces the pixels, so
    each mask step runs only the prompt encoder and the decoder; with `trunk_only` too, LiteMedSAM's TinyViT
    features before its neck are cached and each step runs the neck as well."""
    out = []
    embeddings: dict[tuple, torch.Tensor] = {}  # one encoder run per slice, shared by its conversations
    model.eval()
    for ex in tqdm(examples, desc="caching <SEG> states", disable=not progress):
        if should_stop():
            return None
        s = ex.build()
        with torch.no_grad():
            tokens, _ = model.encode_images(s.clip_pixels[None])
            emb = model.embed_sequence(s.input_ids, tokens[0])
            hidden, _ = model.run_llm(emb[None])
            labels = torch.tensor(expand_labels(s.labels, s.input_ids, tokens.shape[1]))
            seg_pos = (labels[1:] == model.seg_token_id).nonzero().flatten()
            if len(seg_pos) != s.gt_masks.shape[0]:
                continue
            image = s.sam_pixels
            if cache_embedding:
                if not ex.key or ex.key not in embeddings:
                    embeddings[ex.key or id(ex)] = _frozen_features(model, s.sam_pixels[None], trunk_only)
                image = embeddings[ex.key or id(ex)]
        kind = ("trunk" if trunk_only else "embedding") if cache_embedding else "pixels"
        out.append((image, s.resize, s.original_size, hidden[0, seg_pos].detach(), s.gt_masks, kind))
    return out


def _frozen_features(model, pixels: torch.Tensor, trunk_only: bool) -> torch.Tensor:
    """What the mask phase caches per slice for a frozen encoder (fp16 on the CPU: ~2.6 MB for a trunk)."""
    if not trunk_only:
        return model.encode_sam(pixels)[0].half().cpu()
    encoder = model.model.visual_model.image_encoder
    return tinyvit_trunk(encoder, pixels.to(model.device, next(encoder.parameters()).dtype))[0].half().cpu()


def _mask_step(model, items: list[tuple], w: dict) -> torch.Tensor:
    images = torch.stack([it[0] for it in items]).to(model.device)
    kind = items[0][5]
    if kind == "pixels":
        emb = model.encode_sam(images)
    elif kind == "trunk":
        neck = model.model.visual_model.image_encoder.neck
        emb = neck(images.to(next(neck.parameters()).dtype))
    else:
        emb = images.to(model.dtype)
    total = emb.new_zeros((), dtype=torch.float32)
    count = 0
    for i, (_, resize, size, hidden, gt, _) in enumerate(items):
        low, _ = model.decode_masks(emb[i:i + 1], model.seg_to_prompt(hidden.to(model.device)))
        pred = mask_branch_logits(low.float(), resize, size, model.config.sam)[:, 0]
        gt = gt.to(pred.device)
        total = total + (w["bce"] * sigmoid_bce(pred, gt) + w["dice"] * dice_loss(pred, gt)).sum()
        count += gt.shape[0]
    return total / max(count, 1)


@torch.no_grad()
def validate(model: MedPLIBForCausalLM, tokenizer, examples: list[Example]) -> dict:
    """Generation-based validation: grounding Dice and closed-answer accuracy; `score` ranks checkpoints.

    The router decides as at inference, even in a stage that trains one expert densely: the score picks the
    checkpoint that is published and served (forced to the VQA expert, grounding would score 0)."""
    forced = [(moe, moe.force_expert) for moe in moe_layers(model)]
    for moe, _ in forced:
        moe.force_expert = None
    try:
        return _validate(model, tokenizer, examples)
    finally:
        for moe, expert in forced:
            moe.force_expert = expert


def _validate(model: MedPLIBForCausalLM, tokenizer, examples: list[Example]) -> dict:
    pred = MedPLIBPredictor(model, tokenizer)
    dices, hits = [], []
    last_key = None
    for ex in examples:
        if pred.features is None or ex.key != last_key:
            pred.set_image(ex.rgb)
            last_key = ex.key
        ans = pred.ask(ex.question, regions=list(ex.regions))
        if ex.kind == "ground":
            mask = ans.masks[0] if ans.seg_count else None
            dices.append(dice_metric(mask, np.asarray(ex.masks[0])))
        elif ex.closed:
            hits.append(float(ans.text.strip().lower().rstrip(".") == ex.answer.strip().lower()))
    mean_dice = float(np.mean(dices)) if dices else 0.0
    acc = float(np.mean(hits)) if hits else 0.0
    # Checkpoints are ranked by validation Dice; runs without grounding data fall back to accuracy.
    return {"val_dice": mean_dice, "val_accuracy": acc, "val_n": len(dices) + len(hits),
            "score": mean_dice if dices else acc}
