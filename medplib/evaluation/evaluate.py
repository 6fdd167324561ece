"""Evaluation: MeCoVQA-format sets and the sample datastore's held-out split, with the official MedPLIB rules.

Grounding: per-sample IoU at the original image resolution with masks `sigmoid(logits) > threshold` (0.1 as
`vqa_infer.py`), Dice = 2·IoU/(1+IoU), a <SEG> the model did not emit counts IoU 0, means per sample and per
modality (the file name's prefix). VQA: closed exact match, open token F1 and BLEU (`medplib.evaluation.scoring`).
Unlike the original, region masks are really passed to the model (its `validate_vqa` drops them).

    python -m medplib.evaluation --model tiny --mecovqa test.json --images SAMed2Dv1 --out eval/
    python -m medplib.evaluation --model PATH --heldout sample_data/datastore --slice-step 10 --train-log log.json
    python -m medplib.evaluation --promptable --sets sample invesalius itk   # LiteMedSAM prompts vs the bare wheel
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medplib.checkpoints.build import build_model
from medplib.checkpoints.official import load_official
from medplib.checkpoints.project import from_pretrained
from medplib.data.conversations import BODY_Q, MODALITY_Q, PLANE_Q, build_conversations, load_slice
from medplib.data.volumes import auto_window, read_volume
from medplib.evaluation.promptable import main as promptable_main
from medplib.evaluation.scoring import (
    closed_match,
    load_training_log,
    mean_or_none,
    modality_of,
    plot_bars,
    plot_training_curves,
    score_answer,
    summarise_boxes,
    summarise_grounding,
    summarise_qa,
)
from medplib.imaging.boxes import box_scores, boxes_to_regions, mask_boxes, parse_boxes
from medplib.imaging.metrics import dice_from_iou, iou
from medplib.imaging.regions import DatasetMask
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.config import PRESETS

_REGION_RE = re.compile(r"<region>(.*?)</region>", re.S)
_MASK_RE = re.compile(r"<mask>(.*?)</mask>", re.S)
CLOSED_TYPES = ("closed", "yes/no")
HELDOUT_DICE_STRUCTURES = ("brain", "grey matter", "white matter")


# ---------------------------------------------------------------------------------------------- MeCoVQA input
@dataclass
class EvalTurn:
    """One human/gpt pair of a MeCoVQA entry, ready to ask (markup removed, paths resolved)."""

    sample_id: str
    turn: int
    image: str
    kind: str  # "ground" | "region" | "vqa" | "box" (answer holds <box> coordinates, Med-GRIT / MedRegA style)
    question: str
    answer: str
    closed: bool
    region_paths: list[str] = field(default_factory=list)
    mask_paths: list[str] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return modality_of(self.image)


def resolve_path(folder: str | os.PathLike | None, rel: str) -> str | None:
    """`folder/rel`, or with `.png` appended (some MeCoVQA paths lack the suffix); None when neither exists."""
    base = Path(rel) if folder is None or os.path.isabs(rel) else Path(folder) / rel
    for cand in (base, base.with_name(base.name + ".png")):
        if cand.is_file():
            return str(cand)
    return None


def load_entries(json_path: str | os.PathLike) -> list[dict]:
    """A MeCoVQA JSON list (or JSON lines) of LLaVA-format entries."""
    text = Path(json_path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(data, list):
        raise ValueError(f"{json_path}: expected a list of entries")
    return data


def parse_entry(entry: dict, index: int, image_folder: str | os.PathLike, mask_folder: str | os.PathLike | None,
                answer_type: str | None = None) -> tuple[list[EvalTurn], list[dict]]:
    """Turns of one entry (each human/gpt pair on its own, without history) and errors for unusable ones."""
    sample_id = str(entry.get("id", entry.get("question_id", index)))
    errors: list[dict] = []
    image = resolve_path(image_folder, str(entry.get("image", "")))
    if image is None:
        return [], [{"id": sample_id, "error": f"image not found: {entry.get('image')!r}"}]
    masks_root = mask_folder if mask_folder is not None else image_folder  # the original: relative to --image_folder
    closed = str(answer_type or entry.get("answer_type") or "open").lower() in CLOSED_TYPES
    convs = entry.get("conversations") or []
    turns = []
    for t, (human, gpt) in enumerate(zip(convs[0::2], convs[1::2])):
        q, a = str(human.get("value", "")), str(gpt.get("value", ""))
        region_rel = [p.strip() for p in _REGION_RE.findall(q) if p.strip()]
        mask_rel = [p.strip() for p in _MASK_RE.findall(a) if p.strip()]
        # An empty <region></region> has no mask to give the model: drop it rather than ask with no feature.
        q = _REGION_RE.sub(lambda m: "<region>" if m.group(1).strip() else "", q).replace("<image>", "")
        a = " ".join(_MASK_RE.sub(" ", a).split())
        regions = [resolve_path(masks_root, p) for p in region_rel]
        masks = [resolve_path(masks_root, p) for p in mask_rel]
        missing = [p for p, r in zip(region_rel + mask_rel, regions + masks) if r is None]
        if missing:
            errors.append({"id": sample_id, "turn": t, "error": f"mask(s) not found: {missing}"})
            continue
        kind = "ground" if masks or "<SEG>" in a else "box" if "<box>" in a else "region" if regions else "vqa"
        turns.append(EvalTurn(sample_id, t, image, kind, " ".join(q.split()), a, closed, regions, masks))
    return turns, errors


def load_image(path: str) -> np.ndarray:
    """8-bit images as HxWx3 uint8 RGB (what the original's cv2 read gives); 16-bit/float as 2D (auto-windowed)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            return np.asarray(im).astype(np.float32)
        return np.asarray(im.convert("RGB"))


def load_mask(path: str) -> np.ndarray:
    """A mask PNG binarised at >= 1 (any colour channel)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    return arr > 0


def binarise(answer: Any, threshold: float) -> np.ndarray:
    """Predicted masks as `sigmoid(logits) > threshold` (the predictor's own threshold is not used)."""
    logits = getattr(answer, "mask_logits", None)
    if logits is None:
        return np.asarray(answer.masks, dtype=bool)
    t = min(max(float(threshold), 1e-6), 1 - 1e-6)
    return np.asarray(logits) > math.log(t / (1 - t))  # == sigmoid(x) > t, without overflow


def predicted_boxes(ans, preds: list[np.ndarray], shape: tuple[int, int], min_area: int = 10) -> list:
    """Boxes the model answered with: written in its text if it wrote any, else those of its <SEG> masks."""
    try:
        written = [tb.box for tb in parse_boxes(ans.text, shape)]
    except ValueError:
        written = []
    return written or [b for m in preds for b in mask_boxes(m, min_area)]


def _seg_record(base: dict, index: int, pred: np.ndarray | None, gt: np.ndarray) -> dict:
    value = iou(pred, gt)
    return {**base, "seg_index": index, "predicted": pred is not None, "iou": value, "dice": dice_from_iou(value),
            "pred_pixels": int(pred.sum()) if pred is not None else 0, "gt_pixels": int(gt.sum())}


# ---------------------------------------------------------------------------------------------- MeCoVQA
def evaluate_mecovqa(predictor, json_path: str | os.PathLike, image_folder: str | os.PathLike,
                     mask_folder: str | os.PathLike | None = None, threshold: float = 0.1,
                     max_samples: int | None = None, max_new_tokens: int = 64, answer_type: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Evaluate a MeCoVQA-format JSON; `max_samples` limits the entries, `answer_type` overrides theirs."""
    entries = load_entries(json_path)[: max_samples if max_samples else None]
    turns, errors = [], []
    for i, entry in enumerate(entries):
        t, e = parse_entry(entry, i, image_folder, mask_folder, answer_type)
        turns += t
        errors += e
    records: list[dict] = []
    current, shape = None, (0, 0)
    for n, turn in enumerate(turns):
        if progress:
            progress(n, len(turns))
        base = {"id": turn.sample_id, "turn": turn.turn, "image": turn.image, "modality": turn.modality,
                "kind": turn.kind, "question": turn.question, "answer": turn.answer}
        try:
            if turn.image != current:  # entries of one image share the encoders' work
                current = None
                image = load_image(turn.image)
                predictor.set_image(image)
                current, shape = turn.image, tuple(image.shape[:2])
            regions = [DatasetMask(load_mask(p)) for p in turn.region_paths]  # as the original's dataset
            gts = [load_mask(p) for p in turn.mask_paths]
            question = turn.question
            if "<box>" in question:  # Med-GRIT / MedRegA referring: the region is written as a box
                question, boxes = boxes_to_regions(question, shape)
                regions += boxes
            ans = predictor.ask(question, regions=regions, max_new_tokens=max_new_tokens)
        except (OSError, ValueError) as exc:  # one unreadable file or mis-sized mask must not end a long run
            errors.append({"id": turn.sample_id, "turn": turn.turn, "error": f"{type(exc).__name__}: {exc}"})
            continue
        base["pred"] = ans.text
        if turn.kind == "ground":
            preds = binarise(ans, threshold)
            for k, (gt, path) in enumerate(zip(gts, turn.mask_paths)):
                records.append(_seg_record({**base, "mask": path}, k, preds[k] if k < len(preds) else None, gt))
        elif turn.kind == "box":
            try:
                truth = [tb.box for tb in parse_boxes(turn.answer, shape)]
            except ValueError as exc:
                errors.append({"id": turn.sample_id, "turn": turn.turn, "error": f"answer boxes: {exc}"})
                continue
            records.append({**base, **box_scores(predicted_boxes(ans, binarise(ans, threshold), shape), truth)})
        else:
            records.append({**base, "closed": turn.closed, **score_answer(ans.text, turn.answer, turn.closed)})
    ground = [r for r in records if r["kind"] == "ground"]
    region = [r for r in records if r["kind"] == "region"]
    vqa = [r for r in records if r["kind"] == "vqa"]
    boxes = [r for r in records if r["kind"] == "box"]
    return {"task": "mecovqa", "source": str(json_path), "threshold": threshold, "max_new_tokens": max_new_tokens,
            "counts": {"entries": len(entries), "turns": len(turns), "ground": len(ground), "region": len(region),
                       "vqa": len(vqa), "box": len(boxes), "errors": len(errors)},
            "grounding": summarise_grounding(ground, "modality"), "region_vqa": summarise_qa(region, "modality"),
            # the <box> answers (detection), scored against the boxes written in the reference answers
            "boxes": summarise_boxes(boxes, "modality"),
            "vqa": summarise_qa(vqa, "modality"), "samples": records, "errors": errors}


# ---------------------------------------------------------------------------------------------- held-out split
def _closed_kind(conv) -> str:
    if conv.kind == "region":
        return "region_structure"
    for name, qs in (("modality", MODALITY_Q), ("plane", PLANE_Q), ("body_part", BODY_Q)):
        if conv.question in qs:
            return name
    return "other"


def _category(conv) -> str:
    return f"ground:{conv.structure}" if conv.kind == "ground" else _closed_kind(conv)


def _limit(convs: list, max_per_kind: int | None) -> list:
    """At most `max_per_kind` conversations per category, spread evenly over the slices (order kept)."""
    if not max_per_kind:
        return convs
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(convs):
        by_cat.setdefault(_category(c), []).append(i)
    keep: set[int] = set()
    for idx in by_cat.values():
        picks = np.linspace(0, len(idx) - 1, min(max_per_kind, len(idx))).round().astype(int)
        keep.update(idx[p] for p in picks)
    return [c for i, c in enumerate(convs) if i in keep]


def evaluate_heldout(predictor, datastore, slice_step: int = 10, max_per_kind: int | None = None,
                     threshold: float = 0.1, max_new_tokens: int = 16, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Dice per structure and closed accuracy per question kind on the datastore's `val` split.

    Slices are prepared exactly as the trainer and the server prepare them (`medplib/data/conversations.py`), and each
    slice is encoded once for all of its questions.
    """
    labelled = sorted(datastore.get_labeled_images())  # only labelled images have a val split
    convs = _limit(build_conversations(datastore, split="val", seed=seed, slice_step=slice_step,
                                       image_ids=labelled), max_per_kind)
    groups: dict[tuple[str, int, int], list] = {}
    for c in convs:
        groups.setdefault((c.image_id, c.axis, c.index), []).append(c)
    records: list[dict] = []
    loaded: tuple[str, Any, Any] | None = None
    done = 0
    for (image_id, axis, index), items in groups.items():
        if loaded is None or loaded[0] != image_id:  # one volume in memory at a time
            vol = read_volume(datastore.get_image_uri(image_id))
            loaded = (image_id, vol, auto_window(vol, datastore.get_image_info(image_id).get("modality")))
        view = load_slice(loaded[1], axis, index, loaded[2])
        predictor.set_image(view.rgb)
        for c in items:
            if progress:
                progress(done, len(convs))
            done += 1
            ans = predictor.ask(c.question, regions=c.regions, max_new_tokens=max_new_tokens)
            base = {"image_id": image_id, "axis": axis, "index": index, "plane": view.mapper.view,
                    "kind": c.kind, "lang": c.lang, "question": c.question, "answer": c.answer, "pred": ans.text}
            if c.kind == "ground":
                preds = binarise(ans, threshold)
                rec = _seg_record({**base, "structure": c.structure}, 0, preds[0] if len(preds) else None,
                                  c.masks[0])
                shape = c.masks[0].shape
                rec.update(box_scores(predicted_boxes(ans, preds[:1], shape), mask_boxes(c.masks[0])))
                records.append(rec)
            else:
                records.append({**base, "closed_kind": _closed_kind(c), "correct": closed_match(ans.text, c.answer)})
    ground = [r for r in records if r["kind"] == "ground"]
    closed = [r for r in records if r["kind"] != "ground"]
    grounding = summarise_grounding(ground, "structure")
    per_structure = grounding["per_structure"]
    main = [per_structure[s]["mdice"] for s in HELDOUT_DICE_STRUCTURES if s in per_structure]
    accuracy: dict[str, dict] = {}
    for r in closed:
        accuracy.setdefault(r["closed_kind"], []).append(float(r["correct"]))  # type: ignore[arg-type]
    accuracy = {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(accuracy.items())}
    by_lang = {}
    for lang in sorted({r["lang"] for r in records}):
        g = [r for r in ground if r["lang"] == lang]
        c = [r for r in closed if r["lang"] == lang and r["closed_kind"] == "region_structure"]
        by_lang[lang] = {"grounding": summarise_grounding(g, "structure"),
                         "region_accuracy": {"n": len(c), "accuracy": mean_or_none(float(r["correct"]) for r in c)}}
    return {"task": "heldout", "source": str(getattr(datastore, "_datastore_path", "")), "slice_step": slice_step,
            "threshold": threshold, "max_new_tokens": max_new_tokens,
            "counts": {"slices": len(groups), "ground": len(ground), "closed": len(closed),
                       "images": sorted({k[0] for k in groups})},
            "grounding": grounding,
            # Macro mean over brain / grey matter / white matter (CSF is thin and noisy; reported per structure).
            "mean_dice": float(np.mean(main)) if main else None,
            "closed_accuracy": accuracy,
            "closed_accuracy_overall": float(np.mean([r["correct"] for r in closed])) if closed else None,
            # English and Chinese prompts separately (grounding and region questions are asked in both)
            "by_language": by_lang,
            # boxes of each grounded mask against the truth mask's components
            "boxes": summarise_boxes(ground, "structure"),
            "samples": records}


# ---------------------------------------------------------------------------------------------- report
def write_report(report: dict[str, Any], out_dir: str | os.PathLike,
                 train_log: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write report.json and the PNG plots; returns the written files by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    g = report.get("grounding") or {}
    key = "structure" if report.get("task") == "heldout" else "modality"
    groups = g.get(f"per_{key}") or {}
    files[f"dice_per_{key}"] = plot_bars({k: v["mdice"] for k, v in groups.items()}, out / f"dice_per_{key}.png",
                                         f"mean Dice per {key} (n={g.get('n', 0)})",
                                         counts={k: v["n"] for k, v in groups.items()})
    if report.get("closed_accuracy"):
        acc = report["closed_accuracy"]
        files["closed_accuracy"] = plot_bars({k: v["accuracy"] for k, v in acc.items()}, out / "closed_accuracy.png",
                                             "closed-question accuracy", "accuracy",
                                             counts={k: v["n"] for k, v in acc.items()})
    if train_log:
        files["training_curves"] = plot_training_curves(load_training_log(train_log), out / "training_curves.png")
    report = {**report, "files": {k: v.name for k, v in files.items()}}
    files["report"] = out / "report.json"
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=_json_default))
    os.replace(tmp, files["report"])
    return files


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def summary_table(report: dict[str, Any]) -> str:
    """A short human-readable table of the aggregates."""
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    g = report.get("grounding") or {}
    rows = [("grounding mIoU", g.get("miou")), ("grounding mDice", g.get("mdice"))]
    key = "structure" if report.get("task") == "heldout" else "modality"
    rows += [(f"  {k} Dice (n={v['n']})", v["mdice"]) for k, v in (g.get(f"per_{key}") or {}).items()]
    if report.get("task") == "heldout":
        rows.append(("mean Dice (brain/GM/WM)", report.get("mean_dice")))
        rows += [(f"  {k} accuracy (n={v['n']})", v["accuracy"]) for k, v in report["closed_accuracy"].items()]
        rows.append(("closed accuracy", report.get("closed_accuracy_overall")))
        for lang, v in (report.get("by_language") or {}).items():
            rows += [(f"[{lang}] grounding mDice (n={v['grounding']['n']})", v["grounding"]["mdice"]),
                     (f"[{lang}] region accuracy (n={v['region_accuracy']['n']})", v["region_accuracy"]["accuracy"])]
    else:
        for name in ("region_vqa", "vqa"):
            s = report.get(name) or {}
            rows += [(f"{name} closed acc (n={s['closed']['n']})", s["closed"]["accuracy"]),
                     (f"{name} open F1 (n={s['open']['n']})", s["open"]["f1"]),
                     (f"{name} open BLEU-4", s["open"]["bleu"])]
    b = report.get("boxes") or {}
    if b.get("n"):
        rows += [(f"box {m} (n={b['n']})", b[m]) for m in ("recall50", "acc25", "acc50", "acc75")]
    rows.append(("counts", json.dumps(report.get("counts"))))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {fmt(value)}" for name, value in rows]
    differences = (report.get("decoding") or {}).get("differences_from_original") or []
    return "\n".join(lines + [f"differs from the original: {d}" for d in differences])


# ---------------------------------------------------------------------------------------------- CLI
ORIGINAL_MAX_NEW_TOKENS = 1024  # vqa_infer.py / the demo worker
ORIGINAL_DTYPE = "bfloat16"


def decoding_settings(dtype: str, max_new_tokens: int, seg_state: str) -> dict[str, Any]:
    """How this run decoded, and each way that differs from the original's evaluation (written into the report)."""
    differences = []
    if dtype != ORIGINAL_DTYPE:
        differences.append(f"weights and activations in {dtype} (the original evaluates in {ORIGINAL_DTYPE})")
    if max_new_tokens < ORIGINAL_MAX_NEW_TOKENS:
        differences.append(f"answers cut at {max_new_tokens} new tokens (the original allows "
                           f"{ORIGINAL_MAX_NEW_TOKENS}); open answers longer than that score lower")
    if seg_state != "release":
        differences.append("<SEG> prompt from the state that predicts each <SEG> (the release's evaluate() uses "
                           "hidden[-2] when one <SEG> is emitted, and only the first of several: --seg-state release)")
    differences.append("answer text with the special tokens removed (no <SEG>); the original's decoded text keeps "
                       "them ('Sure, it is <SEG> .'); open-answer scores are computed on the text without them")
    return {"dtype": dtype, "max_new_tokens": max_new_tokens, "seg_state": seg_state,
            "differences_from_original": differences}


def load_model(spec: str, device: str = "cpu", dtype: str = "float32", clip: str | None = None,
               sam: str | None = None):
    """(model, tokenizer) from a preset name, a project checkpoint folder or an official release folder."""
    import torch


    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    path = Path(spec)
    if path.is_dir():
        if (path / "config.json").is_file() and not (path / "medplib_config.json").is_file():
            return load_official(path, clip, sam, device=device, dtype=torch_dtype)
        return from_pretrained(path, device=device, dtype=torch_dtype)
    if spec in PRESETS and spec != "official":
        model, tok = build_model(spec)
        return model.to(device=device, dtype=torch_dtype).eval(), tok
    raise SystemExit(f"--model: {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--promptable" in argv:  # its own options: medplib.evaluation.promptable
        return promptable_main([a for a in argv if a != "--promptable"])
    ap = argparse.ArgumentParser(prog="python -m medplib.evaluation", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="preset (tiny, small) or checkpoint folder")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--mecovqa", help="MeCoVQA-format JSON")
    src.add_argument("--heldout", help="MONAI Label datastore folder (its splits.json val split)")
    src.add_argument("--promptable", action="store_true",
                     help="box / clicks / scribbles / one-box 3D vs bare LiteMedSAM (--promptable --help)")
    ap.add_argument("--images", help="image folder (paths in the JSON are relative to it)")
    ap.add_argument("--masks", help="mask folder (default: --images)")
    ap.add_argument("--answer-type", choices=["open", "closed"], help="override the entries' answer_type")
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--max-samples", type=int, help="MeCoVQA: first N entries")
    ap.add_argument("--max-per-kind", type=int, help="held-out: at most N questions per kind")
    ap.add_argument("--slice-step", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int,
                    help=f"default {ORIGINAL_MAX_NEW_TOKENS} for --mecovqa (as the original), 16 for --heldout")
    ap.add_argument("--out", default="eval_out")
    ap.add_argument("--train-log", help="trainer log JSON (per-epoch records) for training_curves.png")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="auto: bfloat16 on CUDA (as the original), float32 on CPU")
    ap.add_argument("--seg-state", choices=["predicting", "release"],
                    help="which state becomes the <SEG> prompt (default: the model's config, 'predicting'); "
                         "'release' reproduces the release commit's evaluate()")
    ap.add_argument("--clip", help="official release only: CLIP folder")
    ap.add_argument("--sam", help="official release only: sam-med2d_b.pth")
    args = ap.parse_args(argv)
    if args.mecovqa and not args.images:
        ap.error("--mecovqa needs --images")


    dtype = args.dtype if args.dtype != "auto" else "bfloat16" if args.device.startswith("cuda") else "float32"
    model, tok = load_model(args.model, args.device, dtype, args.clip, args.sam)
    if args.seg_state:
        model.config.seg_state = args.seg_state
    predictor = MedPLIBPredictor(model, tok, mask_threshold=args.threshold)
    max_new_tokens = args.max_new_tokens or (ORIGINAL_MAX_NEW_TOKENS if args.mecovqa else 16)
    if args.mecovqa:
        report = evaluate_mecovqa(predictor, args.mecovqa, args.images, args.masks, args.threshold,
                                  args.max_samples, max_new_tokens, args.answer_type)
    else:
        from monailabel.datastore.local import LocalDatastore

        datastore = LocalDatastore(args.heldout, auto_reload=False)
        report = evaluate_heldout(predictor, datastore, args.slice_step, args.max_per_kind, args.threshold,
                                  max_new_tokens)
    report["model"] = args.model
    report["decoding"] = decoding_settings(dtype, max_new_tokens, model.config.seg_state)
    files = write_report(report, args.out, args.train_log)
    print(summary_table(report))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    for err in report.get("errors", [])[:5]:
        print(f"error: {err}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
