"""Which image features name a structure on a brain never seen: the small preset's CLIP (trained from scratch on
the template) or LiteMedSAM's pretrained medical encoder (TinyViT)? A linear probe, trained on the atlas brains and
scored on the held-out subject (issue #18, "the LLM's vision tokens").

For each encoder, the features at a point are pooled as the model pools a point prompt:
  - CLIP: the mean CLIP patch feature over the point's region cells (a 41 x 41 square, `region_grid`), the input of
    the LLM's region adapter;
  - LiteMedSAM: the mean image embedding over the 3 x 3 cells around the point (64 x 64 grid, 256 channels).
Points: the deepest pixel of every named structure (one side; tissue classes excluded) with at least
`--min-pixels` pixels on every `--slice-step`-th axial slice, labelled with its vocabulary name.
  - training: `sample_data/atlas_datastore` (the CAT12 and MNI152 templates x the CAT12 atlases);
  - held out: fsaverage (`sample_data/heldout_datastore`, both images), every point whose name the training has,
    and separately the vocabulary evaluation's 20 targets (the region-naming questions of
    `medplib.evaluation.vocabulary_eval`).
A softmax regression per feature set (standardised features), and the two concatenated. Its weight decay is
chosen per feature set on the training side only: fit on the CAT12 brains, scored on the MNI152 brains (another
template). Accuracy = the exact vocabulary name (side included). Both encoders run in the same pass.

    .venv/bin/python bench/vision_tokens_probe.py [--model monailabel_app/model/small] [--slice-step 6]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from medplib.data.atlas_prior import COARSE_BASES
from medplib.data.conversations import load_slice
from medplib.data.volumes import auto_window, read_volume
from medplib.data.vocabulary import vocabulary
from medplib.evaluation.evaluate import load_model
from medplib.evaluation.vocabulary_eval import (SKULL_STRIPPED, axial_axis, interior_point, load_heldout,
                                                pick_targets)
from medplib.imaging.preprocess import region_grid
from medplib.imaging.regions import Point, rasterize
from medplib.inference.predictor import encode_batch
from medplib.model.mask_io import to_mask_branch_frame


def point_features(model, feats, point: Point, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(CLIP region feature, LiteMedSAM embedding feature) at one point of a slice."""
    cfg = model.config
    grid = region_grid(rasterize(point, shape), cfg.vision.image_size, cfg.vision.patch_size)
    clip = feats.patch_feats[torch.from_numpy(grid.reshape(-1))].float().mean(0).numpy()
    emb = feats.sam_embedding[0].float()  # [C, n, n]
    n = emb.shape[-1]
    x, y = to_mask_branch_frame(np.array([[point.col, point.row]], np.float32), shape, cfg.sam)[0]
    cell = cfg.sam.image_size / n
    r, c = int(np.clip(y // cell, 1, n - 2)), int(np.clip(x // cell, 1, n - 2))
    sam = emb[:, r - 1:r + 2, c - 1:c + 2].mean(dim=(1, 2)).numpy()
    return clip, sam


def structure_points(model, store: Path, slice_step: int, min_pixels: int):
    """Features, names and image ids of structure points of a datastore (one encoding per distinct slice)."""
    vocab = vocabulary()
    objects = json.loads((store / "datastore_v2.json").read_text())["objects"]
    cache: dict[tuple, object] = {}
    X_clip, X_sam, names, ids = [], [], [], []
    for image_id, obj in sorted(objects.items()):
        path = store / f"{image_id}{obj['image']['ext']}"
        vol = read_volume(str(path))
        label = read_volume(str(store / "labels" / "final" / f"{image_id}{obj['labels']['final']['ext']}")).array
        window = auto_window(vol, obj["image"]["info"].get("modality"))
        structures = {k: v for k, v in obj["image"]["info"]["structures"].items()
                      if k in vocab.by_name and vocab.by_name[k].side in ("left", "right", "midline")
                      and vocab.by_name[k].base not in COARSE_BASES}
        digest = hashlib.md5(np.ascontiguousarray(vol.array).tobytes()).hexdigest()  # same template, other atlas
        axis = axial_axis(vol)
        for k in range(0, vol.shape[axis], slice_step):
            view = load_slice(vol, axis, k, window)
            plane_label = view.mapper.extract_labels(label)
            if not (plane_label > 0).any():
                continue
            key = (digest, k)
            if key not in cache:
                cache[key] = encode_batch(model, [view.rgb], [None])[0][0]
            for name, values in structures.items():
                mask = np.isin(plane_label, values)
                if mask.sum() < min_pixels:
                    continue
                clip, sam = point_features(model, cache[key], interior_point(mask), mask.shape)
                X_clip.append(clip), X_sam.append(sam), names.append(name), ids.append(image_id)
        print(f"{image_id}: {len(names)} points so far, {len(cache)} slices encoded", flush=True)
    return np.stack(X_clip), np.stack(X_sam), names, ids


def target_points(model, heldout: str):
    """The vocabulary evaluation's 20 region-naming points on fsaverage."""
    vocab = vocabulary()
    data = load_heldout(heldout)
    vol, window = data["images"][SKULL_STRIPPED]
    axis = axial_axis(vol)
    structures = {k: [int(v) for v in vs] for k, vs in data["structures"].items()}
    targets = pick_targets(data["label"], axis, structures, SKULL_STRIPPED, 20, 200, vocab)
    X_clip, X_sam, names = [], [], []
    for t in targets:
        view = load_slice(vol, t.axis, t.index, window)
        mask = np.isin(view.mapper.extract_labels(data["label"]), t.values)
        feats = encode_batch(model, [view.rgb], [None])[0][0]
        clip, sam = point_features(model, feats, interior_point(mask), mask.shape)
        X_clip.append(clip), X_sam.append(sam), names.append(t.name)
    return np.stack(X_clip), np.stack(X_sam), names


def probe(X: np.ndarray, y: np.ndarray, n_classes: int, weight_decay: float, epochs: int = 300,
          seed: int = 0) -> torch.nn.Linear:
    """Softmax regression on standardised features (full batch, Adam)."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(X.shape[1], n_classes)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(X).float(), torch.from_numpy(y).long()
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(layer(xt), yt).backward()
        opt.step()
    return layer


def fit_eval(xtr, ytr, xte, n_classes: int, weight_decay: float):
    """Standardise on the training features, fit, and return (train predictions, test logits)."""
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mean) / std, (xte - mean) / std
    layer = probe(a, ytr, n_classes, weight_decay)
    with torch.no_grad():
        return layer(torch.from_numpy(a).float()).argmax(1).numpy(), layer(torch.from_numpy(b).float())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="monailabel_app/model/small")
    ap.add_argument("--train", default="sample_data/atlas_datastore")
    ap.add_argument("--heldout", default="sample_data/heldout_datastore")
    ap.add_argument("--slice-step", type=int, default=6)
    ap.add_argument("--min-pixels", type=int, default=50)
    ap.add_argument("--weight-decays", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    ap.add_argument("--out", default="eval_out/vision_tokens_probe.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, _ = load_model(args.model, "cpu", "float32")
    with torch.no_grad():
        tr_clip, tr_sam, tr_names, tr_ids = structure_points(model, Path(args.train), args.slice_step,
                                                             args.min_pixels)
        ho_clip, ho_sam, ho_names, _ = structure_points(model, Path(args.heldout), args.slice_step, args.min_pixels)
        tg_clip, tg_sam, tg_names = target_points(model, args.heldout)
    classes = sorted(set(tr_names))
    index = {n: i for i, n in enumerate(classes)}
    y_tr = np.array([index[n] for n in tr_names])
    seen = np.array([n in index for n in ho_names])
    y_ho = np.array([index.get(n, -1) for n in ho_names])
    cat12 = np.array([i.startswith("cat12") for i in tr_ids])
    report = {"train_points": len(tr_names), "classes": len(classes), "heldout_points": int(seen.sum()),
              "heldout_points_unseen_names": int((~seen).sum()), "target_points": len(tg_names),
              "targets_seen_in_training": sum(n in index for n in tg_names), "features": {}}
    sets = {"clip": (tr_clip, ho_clip, tg_clip), "lite_medsam": (tr_sam, ho_sam, tg_sam),
            "both": (np.hstack([tr_clip, tr_sam]), np.hstack([ho_clip, ho_sam]), np.hstack([tg_clip, tg_sam]))}
    for key, (xtr, xho, xtg) in sets.items():
        validation = {}
        for wd in args.weight_decays:  # CAT12 brains -> MNI152 brains: chosen without the held-out subject
            _, logits = fit_eval(xtr[cat12], y_tr[cat12], xtr[~cat12], len(classes), wd)
            validation[wd] = float((logits.argmax(1).numpy() == y_tr[~cat12]).mean())
        wd = max(validation, key=validation.get)
        tr_pred, logits = fit_eval(xtr, y_tr, np.vstack([xho[seen], xtg]), len(classes), wd)
        ho_logits, tg_logits = logits[: int(seen.sum())], logits[int(seen.sum()):]
        got = [classes[i] for i in tg_logits.argmax(1).numpy()]
        top5 = tg_logits.topk(5, dim=1).indices.numpy()
        report["features"][key] = {
            "dims": int(xtr.shape[1]), "validation_cat12_to_mni152": validation, "weight_decay": wd,
            "train_accuracy": float((tr_pred == y_tr).mean()),
            "heldout_accuracy": float((ho_logits.argmax(1).numpy() == y_ho[seen]).mean()),
            "heldout_top5": float(np.mean([y in row for y, row in zip(y_ho[seen], ho_logits.topk(5, dim=1)
                                                                       .indices.numpy())])),
            "target_accuracy": float(np.mean([g == n for g, n in zip(got, tg_names)])),
            "target_top5": float(np.mean([index.get(n, -1) in row for n, row in zip(tg_names, top5)])),
            "targets_named": dict(zip(tg_names, got))}
        f = report["features"][key]
        print(f"{key:12s} dims {f['dims']:4d} wd {wd:g} (validation {validation[wd]:.3f})  train "
              f"{f['train_accuracy']:.3f}  held-out {f['heldout_accuracy']:.3f} (top-5 {f['heldout_top5']:.3f})  "
              f"20 targets {f['target_accuracy']:.3f} (top-5 {f['target_top5']:.3f})", flush=True)
    report["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
