"""Measure the stop signals of one-box 3D propagation per slice, and tune `StopRule` on them.

From the object's largest slice, propagation runs with a rule that never stops (`trace=` records, per slice: the
decoder's IoU estimate, the cosine of the image features under the new vs the previous mask, the area ratio, the
overlap with the previous mask) and the slice's Dice against the truth. Since a rule only decides where a run
ends, every candidate rule is then scored offline on these traces: its 3D Dice is exact. Volumes: a synthetic
ellipsoid in noise and the real volumes of `medplib.evaluation.promptable_sets` (ITK T1 brain by default).

    .venv/bin/python bench/propagation.py --sets itk --out bench/out/propagation.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from medplib.evaluation.promptable_sets import build_sets, synthetic_ellipsoid
from medplib.inference.promptable import PromptablePredictor, mask_box
from medplib.inference.propagate import StopRule, dice, first_slice_mask, propagate
from medplib.model.lite_medsam import build_lite_medsam

NEVER = StopRule(min_iou=-1.0, min_similarity=-2.0, min_area_ratio=0.0, max_area_ratio=1e9, min_overlap=-1.0,
                 min_area=1)


def traces(sam, vol, structure: str, batch: int = 4, margin: float = 0.05, cache: dict | None = None,
           with_naive: bool = True):
    """Signals of a never-stopping run, and the naive baseline's 3D Dice (None unless `with_naive`; it does not
    depend on the margin) on the same cached embeddings."""
    truth = vol.structures[structure]
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    predictor = PromptablePredictor(sam)
    first = first_slice_mask(predictor, vol.array[start], vol.window, box=mask_box(truth[start]))
    trace: list[dict] = []
    cache = {} if cache is None else cache
    propagate(predictor, lambda k: vol.array[k], len(vol.array), start, first, vol.window, rule=NEVER, batch=batch,
              trace=trace, cache=cache, margin=margin)
    naive_dice = None
    if with_naive:
        naive = propagate(predictor, lambda k: vol.array[k], len(vol.array), start, first, vol.window, batch=batch,
                          naive=True, cache=cache)
        naive_dice = dice(naive.volume(len(vol.array), truth.shape[1:]), truth)
    for t in trace:
        t["has_object"] = bool(truth[t["slice"]].any())
        t["dice"] = dice(t["mask"], truth[t["slice"]])
    return truth, start, first.mask, trace, naive_dice


def score(rule: StopRule, truth, start, first, trace) -> float:
    """3D Dice of the run `rule` would have made (exact: the run is the trace cut where the rule first fires)."""
    inter, total = int((first & truth[start]).sum()), int(first.sum())
    for direction in ("up", "down"):
        for t in (t for t in trace if t["direction"] == direction):
            ratio = t["area"] / max(t["prev_area"], 1)
            if (t["area"] < rule.min_area or t["iou"] < rule.min_iou or t["similarity"] < rule.min_similarity
                    or ratio < rule.min_area_ratio or ratio > rule.max_area_ratio or t["overlap"] < rule.min_overlap):
                break
            inter += int((t["mask"] & truth[t["slice"]]).sum())
            total += t["area"]
    return 2.0 * inter / max(total + int(truth.sum()), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="*", default=["itk"])
    ap.add_argument("--out", default="bench/out/propagation.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--margins", type=float, nargs="*", default=[0.05],
                    help="box margins to compare (fraction of the previous box's size); embeddings are shared")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sam = build_lite_medsam()
    cases = [(synthetic_ellipsoid(n_slices=20, size=64, radii=(5.0, 14.0, 10.0)), "ellipsoid")]
    cases += [(v, s) for v in build_sets(args.sets) for s in v.three_d]
    runs, naive, by_margin = [], {}, {m: [] for m in args.margins}
    for vol, structure in cases:
        t0 = time.perf_counter()
        cache: dict = {}
        for i, margin in enumerate(args.margins):
            truth, start, first, trace, naive_dice = traces(sam, vol, structure, margin=margin, cache=cache,
                                                            with_naive=i == 0)
            by_margin[margin].append((f"{vol.set}/{structure}", truth, start, first, trace))
            if i == 0:
                naive[f"{vol.set}/{structure}"] = naive_dice
        runs.append(by_margin[args.margins[0]][-1])
        print(f"{vol.set}/{structure}: start {start}, {len(trace)} slices traced ({time.perf_counter() - t0:.0f} s)")
        print(" slice dir  object  dice   iou   cos  area_ratio overlap")
        for t in trace:
            print(f" {t['slice']:5d} {t['direction']:4s} {int(t['has_object']):3d}   {t['dice']:.3f} {t['iou']:.3f} "
                  f"{t['similarity']:.3f} {t['area'] / max(t['prev_area'], 1):8.2f} {t['overlap']:.3f}")
    grid = {"min_iou": [0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85], "min_similarity": [-2.0, 0.7, 0.8, 0.85, 0.9, 0.95],
            "min_area_ratio": [0.0, 0.2, 0.35, 0.5], "min_overlap": [-1.0, 0.3, 0.5, 0.7]}
    results = []
    for values in itertools.product(*grid.values()):
        rule = StopRule(**dict(zip(grid, values)), max_area_ratio=2.0, min_area=8)
        per = {name: score(rule, *rest) for name, *rest in runs}
        results.append((float(np.mean(list(per.values()))), dict(zip(grid, values)), per))
    results.sort(key=lambda r: -r[0])
    default = {name: score(StopRule(), *rest) for name, *rest in runs}
    never = {name: score(NEVER, *rest) for name, *rest in runs}
    print("naive (box + 3 px, stop under 5 px):", {k: round(v, 3) for k, v in naive.items()})
    print("current StopRule():", {k: round(v, 3) for k, v in default.items()})
    print("never stop:", {k: round(v, 3) for k, v in never.items()})
    # honest tuning: each volume is scored with the rule that is best on all the *other* volumes
    held_out = {}
    for name in (r[0] for r in runs):
        best = max(results, key=lambda r: np.mean([v for k, v in r[2].items() if k != name]))
        held_out[name] = {"dice": best[2][name], "rule": best[1]}
    print("leave-one-volume-out:", {k: round(v["dice"], 3) for k, v in held_out.items()})
    margins = {}
    for margin, mruns in by_margin.items():
        scored = [(dict(zip(grid, values)), {name: score(StopRule(**dict(zip(grid, values)), max_area_ratio=2.0,
                                                                  min_area=8), *rest) for name, *rest in mruns})
                  for values in itertools.product(*grid.values())]
        loo = {}
        for name in (r[0] for r in mruns):
            best = max(scored, key=lambda r: np.mean([v for k, v in r[1].items() if k != name]))
            loo[name] = best[1][name]
        never_m = {name: score(NEVER, *rest) for name, *rest in mruns}
        margins[margin] = {"never": never_m, "leave_one_out": loo, "loo_mean": float(np.mean(list(loo.values())))}
        print(f"margin {margin}: never stop", {k: round(v, 3) for k, v in never_m.items()},
              "leave-one-out", {k: round(v, 3) for k, v in loo.items()})
    for mean, params, per in results[:5]:
        print(f"mean {mean:.3f} {params} {({k: round(v, 3) for k, v in per.items()})}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "traces": {name: [{k: v for k, v in t.items() if k != "mask"} for t in trace] for name, *_, trace in runs},
        "current": default, "never": never, "naive": naive, "leave_one_out": held_out,
        "margins": {str(k): v for k, v in margins.items()},
        "best": [{"mean": m, "rule": p, "per": per} for m, p, per in results[:10]]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
