"""Held-out grounding by name on a subject never trained on (issue #18): named structures, the brain with and
without skull, English vs Chinese, and naming the structure under a point.

    python -m medplib.evaluation --vocabulary [--model monailabel_app/model/small] [--compare-model DIR]
        [--atlas-prior] [--heldout sample_data/heldout_datastore] [--structures 20] [--out eval_out/vocabulary]

The held-out datastore is built by `sample_data/build_atlas_data.py` (FreeSurfer fsaverage: `fsaverage_brainmask`
skull-stripped, `fsaverage_t1` with skull, one aseg + aparc label; `medplib/data/atlas_brains.py`).

What is asked, all on axial slices prepared as the server prepares them (`medplib.data.conversations.load_slice`):
  - the `--structures` largest vocabulary structures of the label (3D voxel count; one hemisphere per paired
    structure, alternating left / right down the ranking; whole-hemisphere tissue classes `EXCLUDED_BASES` and
    "brain" left out) among those with at least `--min-pixels` pixels on their own largest axial slice, on the
    skull-stripped image: "Please segment the {name}." and "请分割{zh}。" (Dice on that slice), and a point at the
    structure's deepest interior pixel with "What is this structure?" / "这是什么结构？", right when
    `vocabulary.resolve(answer)` is that structure (also counted: the base name right, the side wrong);
  - "the brain" (EN and ZH) on the largest axial slice of the brain, on the image with skull and the skull-stripped
    one.
Dice follows the project's rules (`medplib.evaluation.evaluate`: sigmoid(logits) > threshold, Dice = 2 IoU / (1 + IoU),
a missing <SEG> scores 0). Two models (`--model`, `--compare-model`) are scored on the same questions in one run;
`--atlas-prior` adds the atlas prior (`medplib.data.atlas_prior`: no learning, the CAT12 atlases registered onto
each held-out image) as one more column.
Writes report.json, report.md and dice_per_structure.png (one horizontal bar per model and structure).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medplib.data.conversations import REGION_Q, load_slice
from medplib.data.volumes import auto_window, read_volume
from medplib.data.vocabulary import Vocabulary, vocabulary
from medplib.evaluation.evaluate import binarise, decoding_settings, load_model
from medplib.imaging.metrics import dice_from_iou, iou
from medplib.imaging.regions import Box, Point, region_centre
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.bilingual import GROUND_TEMPLATES_ZH, REGION_QUESTIONS_ZH, is_chinese, to_zh
from medplib.model.conversation import GROUND_TEMPLATES

DEFAULT_MODEL = "monailabel_app/model/small"
DEFAULT_HELDOUT = "sample_data/heldout_datastore"
SKULL_STRIPPED, WITH_SKULL = "fsaverage_brainmask", "fsaverage_t1"
# Whole-hemisphere tissue classes: not "named structures" (the sample datastore's grey / white matter cover them).
EXCLUDED_BASES = ("cerebral cortex", "cerebral white matter")
GROUND = {"en": GROUND_TEMPLATES[0], "zh": GROUND_TEMPLATES_ZH[0]}  # "Please segment the {label}." / "请分割{label}。"
REGION = {"en": REGION_Q[0], "zh": REGION_QUESTIONS_ZH[0]}  # "What is this structure?" / "这是什么结构？"


@dataclass
class Target:
    """One thing asked about: a structure (or the brain) on one axial slice of one image."""

    name: str
    zh: str
    values: list[int]
    image_id: str
    axis: int
    index: int
    voxels: int  # 3D size in the label
    slice_pixels: int  # voxels on the slice asked
    kind: str = "structure"  # structure | brain


def axial_axis(vol) -> int:
    """The IJK axis whose direction is closest to superior-inferior."""
    return int(np.argmax(np.abs(np.asarray(vol.direction).reshape(3, 3)[2, :])))


def _counts(label: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, per-slice voxel counts [n_slices, n_values]) of a label along `axis`, in one pass."""
    values, inverse = np.unique(label, return_inverse=True)
    n = label.shape[axis]
    slice_of = np.broadcast_to(np.arange(n).reshape([-1 if a == axis else 1 for a in range(3)]), label.shape)
    flat = slice_of.reshape(-1).astype(np.int64) * len(values) + inverse.reshape(-1)
    return values, np.bincount(flat, minlength=n * len(values)).reshape(n, len(values))


def pick_targets(label: np.ndarray, axis: int, structures: dict[str, list[int]], image_id: str, n: int = 20,
                 min_pixels: int = 200, vocab: Vocabulary | None = None) -> list[Target]:
    """The `n` largest named structures (one hemisphere each, alternating sides) with >= min_pixels on their
    largest axial slice; see the module docstring."""
    vocab = vocab or vocabulary()
    values, per_slice = _counts(label, axis)
    column = {int(v): i for i, v in enumerate(values)}

    def profile(vals: list[int]) -> np.ndarray:
        cols = [column[v] for v in vals if v in column]
        return per_slice[:, cols].sum(axis=1) if cols else np.zeros(per_slice.shape[0], dtype=np.int64)

    sizes: dict[str, int] = {}  # base -> size used to rank (the larger side of a paired structure)
    for name in structures:
        s = vocab.by_name.get(name)
        if s is None or s.base in EXCLUDED_BASES or s.side == "both":
            continue
        sizes[s.base] = max(sizes.get(s.base, 0), int(profile(structures[name]).sum()))
    out: list[Target] = []
    paired_taken = 0
    for base in sorted(sizes, key=lambda b: (-sizes[b], b)):
        midline = vocab.with_side(base, "midline")
        if midline is not None and midline.side == "midline":
            s = midline
        else:
            side = ("left", "right")[paired_taken % 2]
            s = vocab.with_side(base, side)
            if s is None or s.name not in structures:
                s = vocab.with_side(base, "right" if side == "left" else "left")
        if s is None or s.name not in structures:
            continue
        prof = profile(structures[s.name])
        index = int(prof.argmax())
        if prof[index] < min_pixels:
            continue
        if s.side in ("left", "right"):
            paired_taken += 1
        out.append(Target(s.name, s.zh, list(structures[s.name]), image_id, axis, index, int(prof.sum()),
                          int(prof[index])))
        if len(out) >= n:
            break
    return out


def spread_slices(areas: np.ndarray, n: int = 10, min_fraction: float = 0.5) -> list[int]:
    """`n` slices evenly spread over those whose area is at least `min_fraction` of the largest."""
    ok = np.flatnonzero(areas >= min_fraction * areas.max())
    if ok.size <= n:
        return ok.tolist()
    return sorted({int(ok[round(i)]) for i in np.linspace(0, ok.size - 1, n)})


def brain_targets(label: np.ndarray, axis: int, values: list[int], image_ids: Sequence[str],
                  spread: int = 10) -> list[Target]:
    """'brain' on the largest axial slice of the brain (kind "brain") and on `spread` axial slices spread over it
    (kind "brain_spread": one slice is a noisy measure), once per image (with and without skull)."""
    values_, per_slice = _counts(label, axis)
    cols = [i for i, v in enumerate(values_) if int(v) in set(values)]
    prof = per_slice[:, cols].sum(axis=1)
    index = int(prof.argmax())
    out = []
    for image_id in image_ids:
        out.append(Target("brain", to_zh("brain"), list(values), image_id, axis, index, int(prof.sum()),
                          int(prof[index]), "brain"))
        out += [Target("brain", to_zh("brain"), list(values), image_id, axis, k, int(prof.sum()), int(prof[k]),
                       "brain_spread") for k in (spread_slices(prof, spread) if spread else [])]
    return out


def outline_box(mask: np.ndarray, margin: int = 2) -> Box:
    """The box a user draws around a structure on a slice: its extent plus `margin` pixels, inside the image."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return Box(max(int(cols.min()) - margin, 0), max(int(rows.min()) - margin, 0),
               min(int(cols.max()) + margin, w - 1), min(int(rows.max()) + margin, h - 1))


def interior_point(mask: np.ndarray) -> Point:
    """The mask pixel farthest from its border (the structure's deepest interior)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Point(int(r), int(c))


# ---------------------------------------------------------------------------------------------- asking
def load_heldout(path: str | os.PathLike) -> dict[str, Any]:
    """The held-out images (both volumes, their windows), the shared label and its structures."""
    root = Path(path)
    index = root / "datastore_v2.json"
    if not index.is_file():
        raise SystemExit(f"{root} is not a datastore: build it with `python sample_data/build_atlas_data.py`")
    objects = json.loads(index.read_text())["objects"]
    missing = [i for i in (SKULL_STRIPPED, WITH_SKULL) if i not in objects]
    if missing:
        raise SystemExit(f"{root} lacks {missing}: is it the held-out datastore of sample_data/build_atlas_data.py?")
    images = {}
    for image_id in (SKULL_STRIPPED, WITH_SKULL):
        obj = objects[image_id]
        vol = read_volume(str(root / f"{image_id}{obj['image']['ext']}"))
        images[image_id] = (vol, auto_window(vol, obj["image"]["info"].get("modality")))
    lab = objects[SKULL_STRIPPED]["labels"]["final"]
    label = read_volume(str(root / "labels" / "final" / f"{SKULL_STRIPPED}{lab['ext']}")).array
    return {"images": images, "label": label, "structures": objects[SKULL_STRIPPED]["image"]["info"]["structures"]}


class ModelAsker:
    """Asks a MedPLIB model (one image encoding per slice)."""

    label = "model"

    def __init__(self, predictor: MedPLIBPredictor, threshold: float = 0.1, max_new_tokens: int = 24):
        self.predictor, self.threshold, self.max_new_tokens = predictor, threshold, max_new_tokens
        self._current = None

    def set_slice(self, image_id: str, view) -> None:
        if self._current != (image_id, view.mapper.index):
            self.predictor.set_image(view.rgb)
            self._current = (image_id, view.mapper.index)

    def ground(self, question: str) -> tuple[str, np.ndarray | None]:
        ans = self.predictor.ask(question, max_new_tokens=self.max_new_tokens)
        preds = binarise(ans, self.threshold)
        return ans.text, (preds[0] if len(preds) else None)

    def name(self, region: Point | Box, question: str) -> str:
        return self.predictor.ask(question, regions=[region], max_new_tokens=self.max_new_tokens).text


class PriorAsker:
    """Asks the atlas prior (`medplib.data.atlas_prior`): the structure the question names, resolved by the
    vocabulary as the server resolves it, from the atlases registered onto each image; a point named by vote."""

    label = "atlas prior"

    def __init__(self, priors: dict[str, Any], vocab: Vocabulary | None = None):
        self.priors, self.vocab = priors, vocab or vocabulary()
        self._image_id, self._view = None, None

    def set_slice(self, image_id: str, view) -> None:
        self._image_id, self._view = image_id, view

    def ground(self, question: str) -> tuple[str, np.ndarray | None]:
        prior = self.priors[self._image_id]
        s = self.vocab.resolve(question)
        if s is None and ("brain" in question or "脑" in question):
            s = "brain"
        if isinstance(s, str) or prior.covers(s):
            name = s if isinstance(s, str) else s.name
            return f"atlas prior: {name}", self._view.mapper.extract_labels(prior.mask(name))
        return "atlas prior: no atlas defines this", None

    def name(self, region: Point | Box, question: str) -> str:
        mapper = self._view.mapper  # named where the server names it (infers/atlas_route.py)
        s = self.priors[self._image_id].name_at(mapper.to_voxel(*region_centre(region, mapper.model_shape)))
        if s is None:
            return ""
        return f"这是{s.zh}。" if is_chinese(question) else f"This is the {s.name}."


def evaluate_model(asker: ModelAsker | PriorAsker, data: dict[str, Any], targets: Sequence[Target],
                   vocab: Vocabulary | None = None, progress=None) -> list[dict[str, Any]]:
    """Every question of every target; one record per question."""
    vocab = vocab or vocabulary()
    records = []
    for t in sorted(targets, key=lambda t: (t.image_id, t.index)):
        vol, window = data["images"][t.image_id]
        view = load_slice(vol, t.axis, t.index, window)
        asker.set_slice(t.image_id, view)
        gt = np.isin(view.mapper.extract_labels(data["label"]), t.values)
        base = {"structure": t.name, "kind": t.kind, "image_id": t.image_id, "index": t.index,
                "gt_pixels": int(gt.sum())}
        for lang in ("en", "zh"):
            question = GROUND[lang].format(label=t.name if lang == "en" else t.zh)
            text, pred = asker.ground(question)
            value = iou(pred, gt)
            records.append({**base, "task": "ground", "lang": lang, "question": question, "pred": text,
                            "predicted": pred is not None, "pred_pixels": int(pred.sum()) if pred is not None else 0,
                            "iou": value, "dice": dice_from_iou(value)})
            if progress:
                progress()
        if t.kind != "structure":
            continue
        truth = vocab.by_name[t.name]
        for task, region in (("region", interior_point(gt)), ("region_box", outline_box(gt))):
            for lang in ("en", "zh"):
                text = asker.name(region, REGION[lang])
                got = vocab.resolve(text)
                records.append({**base, "task": task, "lang": lang, "question": REGION[lang], "pred": text,
                                "prompt": [float(v) for v in vars(region).values()],
                                "resolved": got.name if got else None,
                                "correct": got is not None and got.name == truth.name,
                                "base_right_side_wrong": got is not None and got.base == truth.base
                                and got.name != truth.name})
                if progress:
                    progress()
    return records


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    ground = [r for r in records if r["task"] == "ground"]
    structs = [r for r in ground if r["kind"] == "structure"]
    out: dict[str, Any] = {"structures": {}, "brain": {}, "region_naming": {}, "box_naming": {}}
    for lang in ("en", "zh"):
        out["structures"][lang] = {"n": sum(r["lang"] == lang for r in structs),
                                   "mean_dice": _mean(r["dice"] for r in structs if r["lang"] == lang)}
        for key, task in (("region_naming", "region"), ("box_naming", "region_box")):
            reg = [r for r in records if r["task"] == task and r["lang"] == lang]
            out[key][lang] = {"n": len(reg), "correct": sum(r["correct"] for r in reg),
                              "accuracy": _mean(float(r["correct"]) for r in reg),
                              "base_right_side_wrong": sum(r["base_right_side_wrong"] for r in reg)}
    out["brain_slices"] = {}
    for key, image_id in (("with_skull", WITH_SKULL), ("skull_stripped", SKULL_STRIPPED)):
        out["brain"][key] = {r["lang"]: r["dice"] for r in ground if r["kind"] == "brain" and r["image_id"] == image_id}
        spread = [r for r in ground if r["kind"] == "brain_spread" and r["image_id"] == image_id]
        out["brain_slices"][key] = {lang: _mean(r["dice"] for r in spread if r["lang"] == lang) for lang in ("en", "zh")}
        out["brain_slices"][key]["n"] = len(spread) // 2
    per: dict[str, dict] = {}
    for r in records:
        if r["kind"] != "structure":
            continue
        entry = per.setdefault(r["structure"], {"gt_pixels": r["gt_pixels"]})
        if r["task"] == "ground":
            entry[f"dice_{r['lang']}"] = r["dice"]
        else:
            prefix = "region" if r["task"] == "region" else "box"
            entry[f"{prefix}_{r['lang']}"] = r["resolved"]
            entry[f"{prefix}_{r['lang']}_answer"] = r["pred"]
    out["per_structure"] = per
    return out


# ---------------------------------------------------------------------------------------------- report
def plot_structures(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Horizontal bars: English-question Dice per structure (and the brain rows), one bar per model."""
    from medplib.evaluation.scoring import _pyplot

    plt = _pyplot()
    models = list(report["models"])
    rows = [t["name"] for t in report["targets"]] + ["brain (skull-stripped)", "brain (with skull)"]

    def value(summary: dict, row: str) -> float:
        if row.startswith("brain ("):
            key = "with_skull" if "with" in row else "skull_stripped"
            return float(summary["brain"][key].get("en") or 0.0)
        return float(summary["per_structure"].get(row, {}).get("dice_en") or 0.0)

    height = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.32 * len(rows) * max(len(models), 1)))
    y = np.arange(len(rows))[::-1]
    colours = ["#4c72b0", "#dd8452", "#55a868"]
    for m, name in enumerate(models):
        vals = [value(report["models"][name]["summary"], r) for r in rows]
        pos = y + (len(models) - 1) * height / 2 - m * height
        bars = ax.barh(pos, vals, height=height, color=colours[m % len(colours)], label=name)
        for bar, v in zip(bars, vals):
            ax.text(v + 0.01, bar.get_y() + bar.get_height() / 2, f"{v:.2f}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(rows, fontsize=8)
    ax.set_xlim(0, 1.45)
    ax.set_xlabel("Dice (English question, largest axial slice)")
    ax.set_title("held-out subject (fsaverage): grounding by name")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(report: dict[str, Any]) -> str:
    models = list(report["models"])
    lines = ["# Held-out grounding by name (fsaverage)", "",
             (f"Held-out datastore: `{report['heldout']}`; {len(report['targets'])} structures "
              f"(>= {report['min_pixels']} pixels on their largest axial slice), threshold {report['threshold']}."), "",
             "| | " + " | ".join(f"`{m}`" for m in models) + " |", "|---|" + "---|" * len(models)]

    def row(label: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(_f(get(report["models"][m]["summary"])) for m in models) + " |")

    for lang in ("en", "zh"):
        row(f"mean Dice, {len(report['targets'])} structures ({lang.upper()})",
            lambda s, lang=lang: s["structures"][lang]["mean_dice"])
    for key, text in (("with_skull", "with skull"), ("skull_stripped", "skull-stripped")):
        for lang in ("en", "zh"):
            row(f"brain Dice, {text}, largest slice ({lang.upper()})",
                lambda s, k=key, lang=lang: s["brain"][k].get(lang))
            row(f"brain Dice, {text}, mean of spread slices ({lang.upper()})",
                lambda s, k=key, lang=lang: (s.get("brain_slices") or {}).get(k, {}).get(lang))
    for lang in ("en", "zh"):
        row(f"region naming accuracy, point ({lang.upper()})",
            lambda s, lang=lang: s["region_naming"][lang]["accuracy"])
        row(f"region naming accuracy, box ({lang.upper()})",
            lambda s, lang=lang: (s.get("box_naming") or {}).get(lang, {}).get("accuracy"))
        row(f"region: base right, side wrong ({lang.upper()})",
            lambda s, lang=lang: s["region_naming"][lang]["base_right_side_wrong"])
    lines += ["", "Per structure (Dice EN / ZH; what was named at a point inside it and for a box around it, EN, "
                  "resolved by the vocabulary):", "",
              "| structure | slice | pixels | " + " | ".join(f"`{m}`" for m in models) + " |",
              "|---|---|---|" + "---|" * len(models)]
    for t in report["targets"]:
        cells = []
        for m in models:
            p = report["models"][m]["summary"]["per_structure"].get(t["name"], {})
            named = [p.get(f"{k}_en") or f"\"{p.get(f'{k}_en_answer', '')}\" (no structure)" for k in ("region", "box")]
            cells.append(f"{_f(p.get('dice_en'))} / {_f(p.get('dice_zh'))}; {named[0]}; box: {named[1]}")
        lines.append(f"| {t['name']} | {t['index']} | {t['slice_pixels']} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per model: " + ", ".join(f"`{m}` {report['models'][m]['seconds']:.0f}" for m in models)]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"plot": plot_structures(report, out / "dice_per_structure.png")}
    files["markdown"] = out / "report.md"
    files["markdown"].write_text(markdown(report), encoding="utf-8")
    files["report"] = out / "report.json"
    files["report"].write_text(json.dumps(report, indent=1, ensure_ascii=False, default=_plain), encoding="utf-8")
    return files


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------- CLI
def run(models: Sequence[str], heldout: str | os.PathLike = DEFAULT_HELDOUT, n_structures: int = 20,
        min_pixels: int = 200, threshold: float = 0.1, max_new_tokens: int = 24, device: str = "cpu",
        dtype: str = "auto", show_progress: bool = True, atlas_prior: bool = False,
        brain_slices: int = 10) -> dict[str, Any]:
    """Score each model (loaded one at a time), and the atlas prior if asked, on the same held-out questions."""
    from tqdm import tqdm

    vocab = vocabulary()
    data = load_heldout(heldout)
    vol = data["images"][SKULL_STRIPPED][0]
    axis = axial_axis(vol)
    structures = {k: [int(v) for v in vs] for k, vs in data["structures"].items()}
    targets = pick_targets(data["label"], axis, structures, SKULL_STRIPPED, n_structures, min_pixels, vocab)
    brains = brain_targets(data["label"], axis, structures["brain"], (SKULL_STRIPPED, WITH_SKULL), brain_slices)
    dtype = dtype if dtype != "auto" else "bfloat16" if device.startswith("cuda") else "float32"
    report: dict[str, Any] = {"task": "vocabulary", "heldout": str(heldout), "axis": axis, "min_pixels": min_pixels,
                              "threshold": threshold, "targets": [asdict(t) for t in targets],
                              "brain_targets": [asdict(t) for t in brains], "models": {}}
    n_questions = 6 * len(targets) + 2 * len(brains)
    for spec in models:
        key = spec if spec not in report["models"] else f"{spec} (compare)"
        t0 = time.perf_counter()
        model, tok = load_model(spec, device, dtype)
        predictor = MedPLIBPredictor(model, tok, mask_threshold=threshold)
        with tqdm(total=n_questions, desc=f"vocabulary eval {spec}", disable=not show_progress,
                  file=sys.stderr) as bar:
            records = evaluate_model(ModelAsker(predictor, threshold, max_new_tokens), data, brains + targets,
                                     vocab, progress=bar.update)
        report["models"][key] = {"summary": summarise(records), "samples": records,
                                 "decoding": decoding_settings(dtype, max_new_tokens, model.config.seg_state),
                                 "seconds": time.perf_counter() - t0}
        del predictor, model, tok
        gc.collect()
    if atlas_prior:
        report["models"][PriorAsker.label] = score_prior(data, brains + targets, vocab)
    return report


def score_prior(data: dict[str, Any], targets: Sequence[Target], vocab: Vocabulary) -> dict[str, Any]:
    """The atlas prior on the same questions: the template registered onto each held-out image (no learning)."""
    from medplib.data.atlas_prior import AtlasPrior

    t0 = time.perf_counter()
    prior = AtlasPrior.load(vocab=vocab)
    priors = {image_id: prior.register(vol.reference) for image_id, (vol, _) in data["images"].items()}
    records = evaluate_model(PriorAsker(priors, vocab), data, targets, vocab)
    return {"summary": summarise(records), "samples": records,
            "registration": {k: {"metric": p.metric, "seconds": p.seconds} for k, p in priors.items()},
            "atlases": prior.atlases, "seconds": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m medplib.evaluation --vocabulary", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint folder or preset (default {DEFAULT_MODEL})")
    ap.add_argument("--compare-model", help="a second model scored side by side on the same questions")
    ap.add_argument("--heldout", default=DEFAULT_HELDOUT, help="held-out datastore (sample_data/build_atlas_data.py)")
    ap.add_argument("--structures", type=int, default=20, help="how many named structures (largest first)")
    ap.add_argument("--min-pixels", type=int, default=200, help="pixels a structure needs on its largest slice")
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--atlas-prior", action="store_true",
                    help="also score the atlas prior (CAT12 atlases registered onto the subject; docs/atlas_prior.md)")
    ap.add_argument("--brain-slices", type=int, default=10,
                    help="'the brain' is also asked on this many axial slices spread over it (0: largest only)")
    ap.add_argument("--out", default="eval_out/vocabulary")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, help="torch CPU threads (e.g. 1 on a shared machine)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = [args.model] + ([args.compare_model] if args.compare_model else [])
    report = run(models, args.heldout, args.structures, args.min_pixels, args.threshold, args.max_new_tokens,
                 args.device, args.dtype, not args.no_progress, args.atlas_prior, args.brain_slices)
    files = write_report(report, args.out)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return report


if __name__ == "__main__":
    main()
