""""The brain" on a real head CT that no model trained on (issue #18: heads with skull, CT as well as MR).

The CT is InVesalius' `Cranium.inv3` (Debian `invesalius-examples`, GPL-2: unpacked locally, never committed;
`medplib.evaluation.promptable_sets`). It ships bone and head threshold masks but no brain label, so the brain here
is a **pseudo-label**, drawn by a rule and not by a person: on each axial slice whose skull is a closed ring, the
soft tissue (-15 to 100 HU) inside the ring, away from the bone, largest piece, holes filled. That is the
intracranial content: brain plus the CSF around it (like a brain-extraction mask). Only slices where the ring
closes (above the skull base) and the pseudo-brain is at least `min_fraction` of its largest area are asked.

Each model is asked "Please segment the brain." and "请分割脑。" on the same slices (windowed as the server would
window an upload without metadata, `auto_window`); Dice against the pseudo-label, EN and ZH.

    python -m medplib.evaluation --ct-head [--model DIR] [--compare-model DIR] [--slices 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medplib.data.conversations import load_slice
from medplib.data.volumes import Volume, auto_window
from medplib.evaluation.evaluate import load_model
from medplib.evaluation.promptable_sets import invesalius_volume, largest_component
from medplib.imaging.metrics import dice_from_iou, iou
from medplib.evaluation.vocabulary_eval import DEFAULT_MODEL, ModelAsker, axial_axis, spread_slices
from medplib.inference.predictor import MedPLIBPredictor

QUESTIONS = {"en": "Please segment the brain.", "zh": "请分割脑。"}
SOFT_HU = (-15.0, 100.0)
# Cranium.inv3's voxel axes: i = columns (patient left), j = rows (head to feet), k = slices (face to back)
DIRECTION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def ct_volume(ct: np.ndarray, spacing: Sequence[float]) -> Volume:
    """Cranium.inv3's [slice, row, col] array as an IJK volume with LPS geometry (air-padded edges kept)."""
    img = sitk.GetImageFromArray(ct.astype(np.int16))
    img.SetSpacing([float(spacing[0]), float(spacing[1]), float(spacing[2])])
    img.SetDirection(DIRECTION.reshape(-1).tolist())
    arr = np.ascontiguousarray(ct.transpose(2, 1, 0)).astype(np.float32)
    return Volume(arr, tuple(float(s) for s in spacing), DIRECTION, img.GetOrigin(), img)


def intracranial(ct2d: np.ndarray, bone2d: np.ndarray) -> np.ndarray:
    """The pseudo-brain on one slice: soft tissue inside a closed skull ring (empty where the ring is open)."""
    disk = ndimage.generate_binary_structure(2, 1)
    ring = ndimage.binary_closing(bone2d, disk, iterations=2)
    inside = ndimage.binary_fill_holes(ring) & ~ndimage.binary_dilation(bone2d, disk)
    soft = inside & (ct2d > SOFT_HU[0]) & (ct2d < SOFT_HU[1])
    core = largest_component(ndimage.binary_opening(soft, disk, iterations=2))
    grown = ndimage.binary_dilation(core, disk, iterations=2) & soft  # give back what the opening shaved
    return ndimage.binary_fill_holes(largest_component(grown))


def load_ct_head(cache: str | os.PathLike = "eval_out/promptable_data") -> dict[str, Any] | None:
    """The CT volume, its window as the server would pick it, and the pseudo-brain per axial slice."""
    found = invesalius_volume(cache, log=lambda msg: print(msg, file=sys.stderr))
    if not found:
        return None
    ev = found[0]
    vol = ct_volume(ev.array, ev.extra["spacing"])
    axis = axial_axis(vol)
    bone = np.ascontiguousarray(ev.structures["bone"].transpose(2, 1, 0))
    brain = np.zeros(vol.shape, np.uint8)
    for j in range(vol.shape[axis]):
        sl = [slice(None)] * 3
        sl[axis] = j
        brain[tuple(sl)] = intracranial(vol.array[tuple(sl)], bone[tuple(sl)])
    return {"volume": vol, "window": auto_window(vol, None), "brain": brain, "axis": axis,
            "source": ev.source, "licence": ev.licence}


def pick_slices(brain: np.ndarray, axis: int, n: int = 10, min_fraction: float = 0.5) -> list[int]:
    """`n` axial slices evenly spread over those whose pseudo-brain is at least `min_fraction` of the largest."""
    return spread_slices(brain.sum(axis=tuple(a for a in range(3) if a != axis)), n, min_fraction)


def score_model(predictor: MedPLIBPredictor, data: dict[str, Any], slices: Sequence[int], threshold: float,
                max_new_tokens: int, progress=None, keep: dict | None = None) -> list[dict[str, Any]]:
    """One record per slice and language; the English masks go into `keep` (slice -> mask) when given."""
    asker = ModelAsker(predictor, threshold, max_new_tokens)
    records = []
    for index in slices:
        view = load_slice(data["volume"], data["axis"], index, data["window"])
        gt = view.mapper.extract_labels(data["brain"]) > 0  # nearest neighbour onto the model's plane
        asker.set_slice("cranium_ct", view)
        for lang, question in QUESTIONS.items():
            text, pred = asker.ground(question)
            if keep is not None and lang == "en":
                keep[int(index)] = pred
            value = iou(pred, gt)
            records.append({"index": int(index), "lang": lang, "question": question, "pred": text,
                            "gt_pixels": int(gt.sum()), "pred_pixels": int(pred.sum()) if pred is not None else 0,
                            "dice": dice_from_iou(value)})
            if progress:
                progress()
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for lang in QUESTIONS:
        vals = [r["dice"] for r in records if r["lang"] == lang]
        out[lang] = float(np.mean(vals)) if vals else None
    out["all"] = float(np.mean([r["dice"] for r in records])) if records else None
    return out


def run(models: Sequence[str], slices: int = 10, threshold: float = 0.1, max_new_tokens: int = 24,
        device: str = "cpu", show_progress: bool = True, cache: str = "eval_out/promptable_data"):
    """(report, the CT data, English masks per model and slice): each model, one at a time, on the same slices."""
    from tqdm import tqdm

    data = load_ct_head(cache)
    if data is None:
        raise SystemExit("the InVesalius head CT is missing: apt-get install -y invesalius-examples")
    picked = pick_slices(data["brain"], data["axis"], slices)
    report: dict[str, Any] = {"task": "ct_head_brain", "source": data["source"], "licence": data["licence"],
                              "label": "pseudo-label: soft tissue inside the closed skull ring (module docstring)",
                              "axis": data["axis"], "slices": picked, "window": vars(data["window"]),
                              "models": {}}
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    masks: dict[str, dict[int, np.ndarray | None]] = {}
    for spec in models:
        key = spec if spec not in report["models"] else f"{spec} (compare)"
        t0 = time.perf_counter()
        model, tok = load_model(spec, device, dtype)
        predictor = MedPLIBPredictor(model, tok, mask_threshold=threshold)
        with tqdm(total=2 * len(picked), desc=f"CT head {spec}", disable=not show_progress, file=sys.stderr) as bar:
            records = score_model(predictor, data, picked, threshold, max_new_tokens, bar.update,
                                  keep=masks.setdefault(key, {}))
        report["models"][key] = {"summary": summarise(records), "samples": records,
                                 "seconds": time.perf_counter() - t0}
        del predictor, model, tok
        gc.collect()
    return report, data, masks


def plot_examples(data: dict[str, Any], masks: dict[str, dict[int, np.ndarray | None]], path: str | os.PathLike,
                  n: int = 4) -> Path:
    """Slices x models: the CT as the model saw it, the pseudo-label outlined (green), the English answer's mask
    (red). Drawn from a GPL-2 image: keep it local (eval_out), never commit it."""
    from medplib.evaluation.scoring import _pyplot

    plt = _pyplot()
    some = next(iter(masks.values()))
    slices = [s for s in some][:: max(1, len(some) // n)][:n]
    fig, axes = plt.subplots(len(masks), len(slices), figsize=(3.2 * len(slices), 3.0 * len(masks)), squeeze=False)
    for row, (name, per_slice) in enumerate(masks.items()):
        for col, index in enumerate(slices):
            view = load_slice(data["volume"], data["axis"], index, data["window"])
            ax = axes[row][col]
            ax.imshow(view.rgb)
            pred = per_slice.get(index)
            if pred is not None and pred.any():
                ax.imshow(np.ma.masked_where(~pred, pred), cmap="autumn", alpha=0.45)
            ax.contour(view.mapper.extract_labels(data["brain"]) > 0, [0.5], colors="lime", linewidths=0.8)
            ax.set_title(f"{'/'.join(Path(name).parts[-2:])}, slice {index}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"\"The brain\" on the real head CT ({len(report['slices'])} axial slices, pseudo-label), Dice",
             "", "| model | EN | ZH | all |", "|---|---|---|---|"]
    for name, m in report["models"].items():
        s = m["summary"]
        lines.append(f"| {name} | {s['en']:.3f} | {s['zh']:.3f} | {s['all']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line: the report (json + markdown) and an example picture in `--out`."""
    ap = argparse.ArgumentParser(prog="python -m medplib.evaluation --ct-head", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint folder or preset (default {DEFAULT_MODEL})")
    ap.add_argument("--compare-model", help="a second model scored side by side on the same slices")
    ap.add_argument("--slices", type=int, default=10, help="axial slices asked (spread over the brain)")
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--cache", default="eval_out/promptable_data", help="where the CT is unpacked (not committed)")
    ap.add_argument("--out", default="eval_out/ct_head")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    models = [args.model] + ([args.compare_model] if args.compare_model else [])
    report, data, masks = run(models, args.slices, args.threshold, args.max_new_tokens, args.device,
                              not args.no_progress, args.cache)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (out / "report.md").write_text(markdown(report) + "\n")
    picture = plot_examples(data, masks, out / "ct_head_examples.png")
    print(markdown(report))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {picture} (from a GPL-2 image: do not commit)")
    return report


if __name__ == "__main__":
    main()
