"""Promptable LiteMedSAM latency on CPU (2 threads): image encoder for a new slice, prompt encoder + mask decoder
on a cached slice (targets 1.5 s and 60 ms), batched encoder throughput (batch 1 vs 4), bf16 vs fp32.

    .venv/bin/python bench/promptable_bench.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from medplib.evaluation.promptable import objects_2d
from medplib.evaluation.promptable_sets import build_sets, synthetic_ellipsoid
from medplib.inference.promptable import PromptablePredictor, embed_slices, mask_box
from medplib.inference.propagate import dice
from medplib.model.lite_medsam import build_lite_medsam


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bf16_on_real(sets: list[str], p32: PromptablePredictor, p16: PromptablePredictor) -> dict:
    """Box Dice of fp32 and bf16 LiteMedSAM on the promptable evaluation's real objects (one slice per volume)."""
    rows = []
    for vol in build_sets(sets):
        for k, name, truth in objects_2d(vol, 1):
            p32.set_image(vol.array[k], vol.window)
            p16.set_image(vol.array[k], vol.window)
            m32, m16 = p32.predict(box=mask_box(truth)).mask, p16.predict(box=mask_box(truth)).mask
            rows.append({"object": f"{vol.set}/{name}", "fp32": dice(m32, truth), "bf16": dice(m16, truth),
                         "agreement": dice(m16, m32)})
    return {"n": len(rows), "fp32_box_dice": float(np.mean([r["fp32"] for r in rows])),
            "bf16_box_dice": float(np.mean([r["bf16"] for r in rows])),
            "min_agreement": float(min(r["agreement"] for r in rows)), "objects": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/promptable_bench.json")
    ap.add_argument("--sets", nargs="*", default=[],
                    help="also compare bf16 with fp32 box Dice on these evaluation sets' objects (e.g. sample itk)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vol = synthetic_ellipsoid(n_slices=8, size=256, radii=(3.0, 60.0, 40.0))
    truth = vol.structures["ellipsoid"][4]
    images = [vol.array[k] for k in range(8)]
    sam = build_lite_medsam()
    p = PromptablePredictor(sam)
    res: dict = {"threads": args.threads, "load_average": os.getloadavg()}
    res["encoder_new_slice_s"] = timed(lambda: p.set_image(images[4], vol.window), args.repeats)
    res["decoder_box_ms"] = 1000 * timed(lambda: p.predict(box=mask_box(truth)), args.repeats)
    res["decoder_click_ms"] = 1000 * timed(lambda: p.predict(points=np.array([[128.0, 128.0]])), args.repeats)
    for batch in (1, 4):
        t = timed(lambda: embed_slices(sam, images, [vol.window] * 8, batch=batch), max(1, args.repeats // 2))
        res[f"encoder_slices_per_s_batch{batch}"] = 8 / t
    fp32 = p.predict(box=mask_box(truth))
    bf16_ok = hasattr(torch.backends, "cpu") and "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper() \
        or torch.backends.mkldnn.is_available()
    res["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    if bf16_ok:
        sam16 = build_lite_medsam().to(torch.bfloat16)
        p16 = PromptablePredictor(sam16)
        res["bf16_encoder_s"] = timed(lambda: p16.set_image(images[4], vol.window), args.repeats)
        res["bf16_decoder_box_ms"] = 1000 * timed(lambda: p16.predict(box=mask_box(truth)), args.repeats)
        out16 = p16.predict(box=mask_box(truth))
        res["bf16_vs_fp32_mask_dice"] = dice(out16.mask, fp32.mask)
        res["bf16_truth_dice"], res["fp32_truth_dice"] = dice(out16.mask, truth), dice(fp32.mask, truth)
        if args.sets:
            res["bf16_real"] = bf16_on_real(args.sets, p, p16)
    res["load_average_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
