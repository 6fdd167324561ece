"""Many clients' questions in one batch: one LLM pass (image prefixes included), batched decoding, one mask decoder.

New slices are encoded together beforehand by `medplib.inference.predictor.set_images`.

Each job keeps its own `MedPLIBPredictor` (its cached slice features and image-prefix KV cache), so a batched
answer is the answer that predictor's `ask` gives, and its caches serve the client's next question or refinement
click exactly as after `ask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from medplib.imaging.regions import Region
from medplib.inference.batch_decode import DecodeRequest, generate_batch
from medplib.inference.predictor import Answer, MedPLIBPredictor
from medplib.model.conversation import Turn
from medplib.model.mask_io import mask_branch_logits


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
def ask_batch(jobs: list[AskJob]) -> list[Answer | Exception]:
    """Greedy answers of every job, batched; a job whose input is invalid gets its exception instead."""
    if not jobs:
        return []
    results: list[Answer | Exception | None] = [None] * len(jobs)
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
    # A slice's first question runs its image prefix in the same pass (its row starts from an empty cache).
    requests = [DecodeRequest(p.past, p.embeds, p.draft, jobs[i].max_new_tokens or model.config.max_new_tokens,
                              p.new_prefix[1] if p.new_prefix else None) for i, p in zip(ready, preps)]
    # rows batch with rows whose cached prefix has the same length (normally all of them)
    groups: dict[int, list[int]] = {}
    for k, r in enumerate(requests):
        groups.setdefault(0 if r.past is None else r.past.get_seq_length(), []).append(k)
    outs: list = [None] * len(requests)
    for rows in groups.values():
        for k, out in zip(rows, generate_batch(model, [requests[k] for k in rows])):
            outs[k] = out
    for k, i in enumerate(ready):
        if preps[k].new_prefix is not None:
            pred = jobs[i].predictor
            pred._prefix = (preps[k].new_prefix[0], outs[k].prefix_cache, preps[k].new_prefix[1])
            pred.counters["image_prefill"] += 1
    # Jobs with one <SEG> and no click/box prompts share one mask-decoder call; the others decode their own.
    simple = [k for k, i in enumerate(ready) if outs[k].seg_hidden.shape[0] == 1 and jobs[i].points is None
              and jobs[i].box is None]
    if simple:
        t0 = model.clock()
        text_embeds = model.seg_to_prompt(torch.cat([outs[k].seg_hidden for k in simple]))
        feats = [jobs[ready[k]].predictor.features for k in simple]
        low, iou = model.decode_masks(torch.cat([f.sam_embedding for f in feats]), text_embeds)
        mask_ms = (model.clock() - t0) * 1e3 / len(simple)
        for row, k in enumerate(simple):
            pred, f = jobs[ready[k]].predictor, feats[row]
            pred.counters["prefill"] += 1
            pred.counters["mask_decoder"] += 1
            logits = mask_branch_logits(low[row:row + 1].float(), f.resize, f.original_size,
                                        model.config.sam)[:, 0]
            results[ready[k]] = pred._answer(preps[k], outs[k], text_embeds[row:row + 1],
                                             logits.cpu().numpy().astype(np.float32), [float(iou[row, 0])], mask_ms)
    for k, i in enumerate(ready):
        if results[i] is None:
            job = jobs[i]
            results[i] = job.predictor._finish(preps[k], outs[k], job.points, job.point_labels, job.box)
    return results
