"""How many candidate boxes does a lone click need? 1-click and 3-click Dice and decode time per scale set.

LiteMedSAM ignores bare point prompts, so a click becomes boxes of several sizes around it, decoded as one batch
(the IoU head picks); each candidate costs one decoder pass (~35 ms on 2 CPU threads). Objects: the promptable
evaluation's 2D objects (one slice per volume).

    .venv/bin/python bench/click_scales.py --sets sample itk invesalius
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medplib.evaluation.promptable import Ours, click_series, objects_2d
from medplib.evaluation.promptable_sets import build_sets
from medplib.inference import promptable
from medplib.inference.promptable import PromptablePredictor
from medplib.model.lite_medsam import build_lite_medsam

SCALE_SETS = {"4 boxes (0.05, 0.1, 0.2, 0.35)": (0.05, 0.1, 0.2, 0.35), "3 boxes (0.05, 0.15, 0.35)": (0.05, 0.15, 0.35),
              "2 boxes (0.1, 0.3)": (0.1, 0.3), "2 boxes (0.05, 0.2)": (0.05, 0.2), "1 box (0.15)": (0.15,)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="*", default=["sample", "itk", "invesalius"])
    ap.add_argument("--out", default="bench/out/click_scales.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    predictor = PromptablePredictor(build_lite_medsam())
    default = promptable.CLICK_SCALES
    results: dict[str, dict] = {name: {"1 click": [], "3 clicks": [], "ms per click": []} for name in SCALE_SETS}
    try:
        for vol in build_sets(args.sets):
            for k, name, truth in objects_2d(vol, 1):
                predictor.set_image(vol.array[k], vol.window)
                for label, scales in SCALE_SETS.items():
                    promptable.CLICK_SCALES = scales
                    t0 = time.perf_counter()
                    series = click_series(Ours(predictor), truth, n=3, use_mask=True)
                    results[label]["ms per click"].append(1000 * (time.perf_counter() - t0) / 3)
                    results[label]["1 click"].append(series[0])
                    results[label]["3 clicks"].append(series[2])
                print(f"{vol.set}/{name}: " + "  ".join(f"{lab.split(' (')[0]} {r['1 click'][-1]:.3f}"
                                                       for lab, r in results.items()), flush=True)
    finally:
        promptable.CLICK_SCALES = default
    summary = {lab: {k: float(np.mean(v)) for k, v in r.items()} | {"n": len(r["1 click"])}
               for lab, r in results.items()}
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "per_object": results}, indent=1))


if __name__ == "__main__":
    main()
