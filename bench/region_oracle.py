"""How well can MedPLIB's region pooling tell grey matter, white matter and CSF apart on the held-out slices?

    python bench/region_oracle.py [--studies sample_data/datastore] [--slice-step 6]

An upper bound that needs no model: give each CLIP grid cell the *true* tissue composition of its pixels, pool the
cells the way the model pools region features (`region_grid` + bilinear samples at the original's positions, or
coverage-weighted), and answer with the dominant tissue. A model can only know less than the truth per cell, so
its region accuracy stays below this bound for the same grid. The held-out region questions are those the
evaluation asks (`medplib/data/conversations.py`, same sampler and seed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def region_questions(studies: str, slice_step: int):
    from monailabel.datastore.local import LocalDatastore

    from medplib_label.trainers import dataset as D

    captured = []
    original = D.slice_conversations

    def keep_labels(rng, image_id, view, info, label_view, span, kinds):
        out = original(rng, image_id, view, info, label_view, span, kinds)
        captured.extend((c, label_view, info) for c in out if c.kind == "region")
        return out

    D.slice_conversations = keep_labels
    try:
        ds = LocalDatastore(studies, auto_reload=False)
        D.build_conversations(ds, "val", seed=1, slice_step=slice_step, image_ids=sorted(ds.get_labeled_images()))
    finally:
        D.slice_conversations = original
    return captured


def oracle(items, image_size: int, patch: int, span: int, weighted: bool) -> float:
    from medplib.data.conversations import leaf_structures, structures_of
    from medplib.imaging.preprocess import region_grid
    from medplib.imaging.regions import rasterize

    g = image_size // patch
    hits = 0
    for conv, labels, info in items:
        leaves = leaf_structures(structures_of(info))
        names = list(leaves)
        h, w = labels.shape
        onehot = torch.from_numpy(np.stack([np.isin(labels, leaves[n]) for n in names]).astype(np.float32))[None]
        cells = F.avg_pool2d(F.interpolate(onehot, size=(image_size, image_size), mode="area"), patch)[0]
        region = rasterize(conv.regions[0], (h, w), span)
        if weighted:
            m = torch.from_numpy(region.astype(np.float32))[None, None]
            cover = F.avg_pool2d(F.interpolate(m, size=(image_size, image_size), mode="area"), patch)[0, 0]
            score = (cells * cover).sum((1, 2))
        else:
            idx = torch.from_numpy(np.argwhere(region_grid(region, image_size, patch))).float()
            xy = idx.flip(-1) / g * 2 - 1  # the original's sample positions (align_corners=True at idx/G)
            score = F.grid_sample(cells[None], xy.view(1, 1, -1, 2), mode="bilinear", align_corners=True)[0, :, 0]
            score = score.mean(-1)
        hits += names[int(score.argmax())] == conv.structure
    return hits / max(len(items), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default=str(ROOT / "sample_data" / "datastore"))
    parser.add_argument("--slice-step", type=int, default=6)
    parser.add_argument("--span", type=int, default=20, help="point half-size (the small preset's point_span)")
    args = parser.parse_args()
    items = region_questions(args.studies, args.slice_step)
    print(f"{len(items)} held-out region questions (slice step {args.slice_step})")
    print("grid   patch  binary-cell pooling (MedPLIB)  coverage-weighted pooling")
    for patch in (28, 14, 7, 4):
        print(f"{336 // patch:>4}  {patch:>6}  {oracle(items, 336, patch, args.span, False):>29.3f}  "
              f"{oracle(items, 336, patch, args.span, True):>25.3f}")
    print("small preset: 12x12 grid (patch 28) plus its fine region branch (84x84 cells, coverage-weighted); "
          "official MedPLIB: 24x24 (patch 14)")


if __name__ == "__main__":
    main()
