"""What the atlas prior names at points deep in grey and white matter (docs/atlas_prior.md): random points of a
tissue label, the name the registered atlases give each, and whether its side matches the point's patient side.

    .venv/bin/python bench/atlas_prior_points.py [--image sample_data/datastore/mni152_t1_lps_aniso.nii.gz] [--n 10]

Needs the optional atlases (`make atlases`). The label's values: 1 grey matter, 2 white matter (sample datastore).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from medplib.data.atlas_prior import AtlasPrior
from medplib.data.vocabulary import side_of, volume_affine
from medplib.data.volumes import read_volume


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="sample_data/datastore/mni152_t1_lps_aniso.nii.gz")
    ap.add_argument("--n", type=int, default=10, help="points per tissue class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    image = Path(args.image)
    vol = read_volume(str(image))
    label = read_volume(str(image.parent / "labels" / "final" / image.name)).array
    prior = AtlasPrior.load().register(vol.reference)
    affine = volume_affine(vol)
    rng = np.random.default_rng(args.seed)
    for value, tissue, depth_min in ((1, "grey matter", 2), (2, "white matter", 4)):
        depth = ndimage.distance_transform_edt(label == value)
        candidates = np.argwhere(depth >= depth_min)
        names, side_ok = Counter(), 0
        for ijk in candidates[rng.choice(len(candidates), args.n, replace=False)]:
            s = prior.name_at(ijk)
            names[s.name if s else "(none)"] += 1
            side = side_of(ijk, affine, tolerance_mm=2.0)  # MNI space: x = 0 is the midline
            side_ok += s is not None and (s.side in ("both", "midline") or side == "midline" or s.side == side)
        print(f"{tissue}: {dict(names.most_common())}; side consistent {side_ok}/{args.n}")


if __name__ == "__main__":
    main()
