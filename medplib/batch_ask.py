"""Many clients' questions in one batch: batched encoders, image prefills, LLM decoding and mask decoder.

Each job keeps its own `MedPLIBPredictor` (its cached slice features and image-prefix KV cache), so a batched
answer is the answer that predictor's `ask` gives, and its caches serve the client's next question or refinement
click exactly as after `ask`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .batch_decode import DecodeRequest, generate_batch, split_cache
from .conversation import IM_END, Turn, build_input_ids
from .predictor import Answer, ImageFeatures, MedPLIBPredictor
from .preprocess import Window, clip_pixel_values, postprocess_masks, prepare_rgb, sam_pixel_values
from .regions import Region


@dataclass
class AskJob:
    """One greedy `MedPLIBPredictor.ask` call (same arguments)."""

    predictor: MedPLIBPredictor
    question: str
    regions: Sequence[Region] = ()
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: Sequence[float] | None = None
    history: Sequence[Turn] = ()
    max_new_tokens: int | None = None
    draft_answer: str | None = None


@torch.no_grad()
def set_images(predictors: list[MedPLIBPredictor], images: list[np.ndarray],
               windows: list[Window | None]) -> None:
    """`set_image` for many predictors of one model with one CLIP and one SAM encoder call."""
    if not predictors:
        return
    model = predictors[0].model
    cfg = model.config
    t0 = time.perf_counter()
    rgbs = [prepare_rgb(image, window) for image, window in zip(images, windows)]
    for rgb in rgbs:
        if min(rgb.shape[:2]) < 2:
            raise ValueError(f"image too small: {rgb.shape[:2]}")
    clip_px = torch.stack([clip_pixel_values(rgb, cfg.vision.image_size) for rgb in rgbs])
    sam = [sam_pixel_values(rgb, cfg.sam.image_size, cfg.sam.pixel_mean, cfg.sam.pixel_std) for rgb in rgbs]
    t1 = time.perf_counter()
    image_tokens, patches = model.encode_images(clip_px)
    t2 = time.perf_counter()
    sam_embedding = model.encode_sam(torch.stack([px for px, _ in sam]))
    t3 = time.perf_counter()
    n = len(predictors)
    for i, pred in enumerate(predictors):
        pred.reset_image()
        pred.features = ImageFeatures(rgbs[i].shape[:2], tuple(sam[i][1]), image_tokens[i], patches[i],
                                      sam_embedding[i:i + 1])
        pred.counters["clip_encoder"] += 1
        pred.counters["sam_encoder"] += 1
        pred.last_timings = {"preprocess": (t1 - t0) * 1e3 / n, "clip_encoder": (t2 - t1) * 1e3 / n,
                             "sam_encoder": (t3 - t2) * 1e3 / n, "batch": float(n)}


@torch.no_grad()
def ask_batch(jobs: list[AskJob]) -> list[Answer | Exception]:
    """Greedy answers of every job, batched; a job whose input is invalid gets its exception instead."""
    if not jobs:
        return []
    results: list[Answer | Exception | None] = [None] * len(jobs)
    _prefill_images(jobs)
    ready, preps = [], []
    for i, job in enumerate(jobs):
        try:
            preps.append(job.predictor._prepare(job.question, job.regions, job.history, job.draft_answer))
            ready.append(i)
        except (ValueError, RuntimeError) as exc:
            results[i] = exc
    if not ready:
        return results
    model = jobs[0].predictor.model
    requests = [DecodeRequest(p.past, p.embeds, p.draft, jobs[i].max_new_tokens or model.config.max_new_tokens)
                for i, p in zip(ready, preps)]
    outs = generate_batch(model, requests)
    # Jobs with one <SEG> and no click/box prompts share one mask-decoder call; the others decode their own.
    simple = [k for k, i in enumerate(ready) if outs[k].seg_hidden.shape[0] == 1 and jobs[i].points is None
              and jobs[i].box is None]
    if simple:
        t0 = time.perf_counter()
        text_embeds = model.seg_to_prompt(torch.cat([outs[k].seg_hidden for k in simple]))
        feats = [jobs[ready[k]].predictor.features for k in simple]
        low, iou = model.decode_masks(torch.cat([f.sam_embedding for f in feats]), text_embeds)
        mask_ms = (time.perf_counter() - t0) * 1e3 / len(simple)
        for row, k in enumerate(simple):
            pred, f = jobs[ready[k]].predictor, feats[row]
            pred.counters["prefill"] += 1
            pred.counters["mask_decoder"] += 1
            logits = postprocess_masks(low[row:row + 1].float(), f.resize, f.original_size)[:, 0]
            results[ready[k]] = pred._answer(preps[k], outs[k], text_embeds[row:row + 1],
                                             logits.cpu().numpy().astype(np.float32), [float(iou[row, 0])], mask_ms)
    for k, i in enumerate(ready):
        if results[i] is None:
            job = jobs[i]
            results[i] = job.predictor._finish(preps[k], outs[k], job.points, job.point_labels, job.box)
    return results


def _prefill_images(jobs: list[AskJob]) -> None:
    """Run the "system + image" prefix of every predictor that lacks it through the LLM in one batch."""
    todo: dict[int, tuple[MedPLIBPredictor, list[int]]] = {}
    for job in jobs:
        pred = job.predictor
        if not pred.prefix_cache or pred.features is None or id(pred) in todo:
            continue
        ids, _ = build_input_ids(pred.tokenizer, pred.model.config.system_prompt, [Turn(job.question or "?")])
        im_end = pred.tokenizer.convert_tokens_to_ids(IM_END)
        if im_end not in ids:
            continue
        prefix = ids[:ids.index(im_end) + 1]
        if pred._prefix is None or pred._prefix[0] != prefix:
            todo[id(pred)] = (pred, prefix)
    groups: dict[tuple, list[MedPLIBPredictor]] = {}
    for pred, prefix in todo.values():
        groups.setdefault(tuple(prefix), []).append(pred)
    for prefix, preds in groups.items():
        model = preds[0].model
        t0 = time.perf_counter()
        embeds = torch.stack([model.embed_sequence(list(prefix), p.features.image_tokens) for p in preds])
        _, cache = model.run_llm(embeds, use_cache=True)
        ms = (time.perf_counter() - t0) * 1e3 / len(preds)
        for pred, row in zip(preds, split_cache(cache)):
            pred._prefix = (list(prefix), row, embeds.shape[1])
            pred.counters["image_prefill"] += 1
            pred._pending_prefill_ms = ms
