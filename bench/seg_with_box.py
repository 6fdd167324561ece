"""Does a structure name's `<SEG>` token help a box? Box alone vs box + `<SEG>` vs `<SEG>` alone, measured.

For every object of the promptable evaluation's 2D sets (one slice per volume), Dice of:
  - "box (LiteMedSAM)": the box alone through the wheel's LiteMedSAM (what the promptable path serves);
  - "box (model)": the box alone through the MedPLIB model's own mask decoder (no <SEG> token);
  - "box + <SEG>": the box and the model's <SEG> embedding for "Please segment the {name}." together;
  - "<SEG>": the grounded mask alone;
  - "box + <SEG>(tumor)": the box with the <SEG> of a name the model does not know.
Known names are asked as they are; every object is also asked as "tumor". Slices as stored in the volume.

    .venv/bin/python bench/seg_with_box.py --model monailabel_app/model/small --sets sample itk invesalius
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medplib.checkpoints.project import from_pretrained
from medplib.evaluation.promptable import objects_2d
from medplib.evaluation.promptable_sets import build_sets
from medplib.inference.predictor import MedPLIBPredictor
from medplib.inference.promptable import PromptablePredictor, mask_box
from medplib.inference.propagate import dice
from medplib.model.conversation import GROUND_ANSWER
from medplib.model.lite_medsam import build_lite_medsam
from medplib.model.mask_io import mask_branch_logits

KNOWN = ("brain", "grey matter", "white matter", "csf")  # the names the default model was trained on
UNKNOWN = "tumor"


def grounded(pred: MedPLIBPredictor, name: str, box=None) -> np.ndarray | None:
    ans = pred.ask(f"Please segment the {name}.", box=box, draft_answer=GROUND_ANSWER)
    return None if not len(ans.masks) else np.asarray(ans.masks[0], bool)


def model_box_alone(pred: MedPLIBPredictor, box) -> np.ndarray:
    """The model's decoder with the box only (sparse prompt = box corners, no <SEG> token)."""
    feats = pred._require_image()
    corners = pred._to_sam_frame(np.array([[box[0], box[1]], [box[2], box[3]]], np.float32)).reshape(1, 4)
    low, _ = pred.model.decode_masks(feats.sam_embedding, None, None, torch.from_numpy(corners).to(pred.model.device))
    full = mask_branch_logits(low.float(), feats.resize, feats.original_size, pred.model.config.sam)[0, 0]
    return full.cpu().numpy() > 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="monailabel_app/model/small")
    ap.add_argument("--sets", nargs="*", default=["sample", "itk", "invesalius"])
    ap.add_argument("--out", default="bench/out/seg_with_box.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = from_pretrained(args.model)
    pred = MedPLIBPredictor(model.eval(), tok)
    lite = PromptablePredictor(build_lite_medsam())
    rows = []
    for vol in build_sets(args.sets):
        for k, name, truth in objects_2d(vol, 1):
            t0 = time.perf_counter()
            box = mask_box(truth)
            pred.set_image(vol.array[k], vol.window)
            lite.set_image(vol.array[k], vol.window)
            row = {"set": vol.set, "structure": name, "slice": k, "area": int(truth.sum()),
                   "box (LiteMedSAM)": dice(lite.predict(box=box).mask, truth)}
            with torch.no_grad():
                row["box (model)"] = dice(model_box_alone(pred, box), truth)
            if name in KNOWN:
                both, alone = grounded(pred, name, box), grounded(pred, name)
                row["box + <SEG>"] = None if both is None else dice(both, truth)
                row["<SEG>"] = None if alone is None else dice(alone, truth)
            unknown = grounded(pred, UNKNOWN, box)
            row[f"box + <SEG>({UNKNOWN})"] = None if unknown is None else dice(unknown, truth)
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    keys = [k for k in rows[0] if k not in ("set", "structure", "slice", "area")]
    summary = {}
    for key in dict.fromkeys(k for r in rows for k in r if k in keys or k.startswith("box + ") or k == "<SEG>"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        summary[key] = {"n": len(vals), "mean_dice": float(np.mean(vals)) if vals else None}
    known = [r for r in rows if "box + <SEG>" in r and r["box + <SEG>"] is not None]
    summary["known names, paired"] = {k: float(np.mean([r[k] for r in known])) for k in
                                      ("box (LiteMedSAM)", "box + <SEG>", "<SEG>")} if known else {}
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows, "summary": summary}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
