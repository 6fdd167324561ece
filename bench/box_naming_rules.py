"""How should the atlas prior name a box? Three rules compared on validation brains first, then on the held-out
subject (docs/atlas_prior.md, "Naming a box"):
  - `centre`: the structure at the box's centre (`SubjectPrior.name_at`): what the server does;
  - `box`: of the named structures fused on the slice whose pieces touch the box, the one whose bounding box (of
    those pieces) best matches the box (IoU); one side before both at a tie;
  - `mask`: the same candidates, the one whose pieces best fill the box (IoU of pieces and box).
The last two are implemented here only: the validation chose `centre` (docs/atlas_prior.md).

Validation (chooses the rule): nilearn's MNI152 (the atlas datastore's `mni152_<atlas>` images) with the CAT12
atlases as truth. The prior registers the CAT12 template onto it; the truth is one atlas's structure, so this
checks the geometry of each rule (nesting, sides, box margins), not how atlases disagree with FreeSurfer.
Held out: fsaverage with and without skull (FreeSurfer's own labels), reported for the chosen rule and the others.
Boxes: each target's extent on its largest axial slice plus 0, 2 and 5 pixels (`outline_box`).

    .venv/bin/python bench/box_naming_rules.py [--atlases neuromorphometrics hammers lpba40 aal3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medplib.data.atlas_prior import COARSE_BASES, AtlasPrior, is_cortical
from medplib.data.conversations import load_slice, structures_of
from medplib.data.volumes import auto_window, read_volume
from medplib.data.vocabulary import vocabulary
from medplib.evaluation.vocabulary_eval import (DEFAULT_HELDOUT, SKULL_STRIPPED, WITH_SKULL, axial_axis, load_heldout,
                                                outline_box, pick_targets)
from medplib.imaging.boxes import PixelBox, box_iou
from medplib.imaging.regions import rasterize, region_centre

RULES = ("centre", "box", "mask")
MARGINS = (0, 2, 5)


def _bbox(mask: np.ndarray) -> PixelBox:
    rows, cols = np.nonzero(mask)
    return PixelBox(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


def outlined(sp, extract, outline: np.ndarray, fit: str):
    """The `box` / `mask` rules (module docstring) on one slice; None when no named structure touches the box."""
    from scipy import ndimage

    labels = {a: extract(lab) for a, lab in sp.labels.items()}
    grey = extract(sp.grey) if sp.grey is not None else None
    present = {a: np.unique(lab[outline]) for a, lab in labels.items()}
    best, best_key = None, (0.0, False)
    for s in sp.vocab.structures:
        atlases = sp.atlases_for(s)
        if s.base in COARSE_BASES or not any(np.isin(present[a], s.sources[a]).any() for a in atlases):
            continue
        fused = sum(np.isin(labels[a], s.sources[a]).astype(np.float32) for a in atlases) / len(atlases) >= 0.5
        if grey is not None and is_cortical(s):
            fused &= grey
        pieces, _ = ndimage.label(fused)
        touching = np.setdiff1d(np.unique(pieces[outline]), [0])
        if touching.size == 0:
            continue
        shape = np.isin(pieces, touching)
        if fit == "box":
            value = box_iou(_bbox(shape), _bbox(outline))
        else:
            inside = int((shape & outline).sum())
            value = inside / (int(shape.sum()) + int(outline.sum()) - inside)
        key = (round(value, 3), s.side != "both")
        if key > best_key:
            best, best_key = s, key
    return best


def name_with(sp, view, box, rule: str):
    shape = view.mapper.model_shape
    if rule == "centre":  # exactly what the server does (infers/atlas_route.py)
        return sp.name_at(view.mapper.to_voxel(*region_centre(box, shape)))
    return outlined(sp, view.mapper.extract_labels, rasterize(box, shape), rule)


def score(sp, vol, window, label, targets) -> dict[str, dict[int, int]]:
    """rule -> margin -> how many targets were named right."""
    right = {r: {m: 0 for m in MARGINS} for r in RULES}
    for t in targets:
        view = load_slice(vol, t.axis, t.index, window)
        gt = np.isin(view.mapper.extract_labels(label), t.values)
        for m in MARGINS:
            box = outline_box(gt, m)
            for rule in RULES:
                s = name_with(sp, view, box, rule)
                right[rule][m] += int(s is not None and s.name == t.name)
    return right


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--atlas-data", default="sample_data/atlas_datastore")
    ap.add_argument("--atlases", nargs="+", default=["neuromorphometrics", "hammers", "lpba40", "aal3"])
    ap.add_argument("--out", default="eval_out/box_naming_rules.json")
    args = ap.parse_args()
    vocab = vocabulary()
    prior = AtlasPrior.load(vocab=vocab)
    store = Path(args.atlas_data)
    objects = json.loads((store / "datastore_v2.json").read_text())["objects"]
    results: dict = {"validation": {}, "heldout": {}}
    t0 = time.perf_counter()
    sp = None
    for atlas in args.atlases:
        image_id = f"mni152_{atlas}"
        vol = read_volume(str(store / f"{image_id}.nii.gz"))
        label = read_volume(str(store / "labels" / "final" / f"{image_id}.nii.gz")).array
        sp = sp or prior.register(vol.reference)  # one brain: the same registration for every atlas
        axis = axial_axis(vol)
        structures = structures_of(objects[image_id]["image"]["info"])
        targets = pick_targets(label, axis, structures, image_id, 20, 200, vocab)
        results["validation"][atlas] = {"n": len(targets), **score(sp, vol, auto_window(vol, "MR"), label, targets)}
        print(atlas, results["validation"][atlas], flush=True)
    data = load_heldout(DEFAULT_HELDOUT)
    axis = axial_axis(data["images"][SKULL_STRIPPED][0])
    structures = {k: [int(v) for v in vs] for k, vs in data["structures"].items()}
    targets = pick_targets(data["label"], axis, structures, SKULL_STRIPPED, 20, 200, vocab)
    for image_id in (SKULL_STRIPPED, WITH_SKULL):
        vol, window = data["images"][image_id]
        results["heldout"][image_id] = {"n": len(targets), **score(prior.register(vol.reference), vol, window,
                                                                   data["label"], targets)}
        print(image_id, results["heldout"][image_id], flush=True)
    totals = {r: {m: sum(v[r][m] for v in results["validation"].values()) for m in MARGINS} for r in RULES}
    n_val = sum(v["n"] for v in results["validation"].values())
    results["validation_total"] = {"n": n_val, **totals}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"validation total (n={n_val}):", totals)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
