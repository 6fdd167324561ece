"""MONAI Label train task `medplib_sam`: active learning for promptable segmentation (runs in MONAI Label's
training subprocess). Fine-tunes LiteMedSAM's mask decoder on the datastore's final labels with simulated boxes and
clicks (`medplib.training.promptable`) and publishes `<model_dir>/lite_medsam/model.safetensors` only when it beats
the served model on the held-out slices; the promptable models (`medplib_sam`, `medplib_sam_3d`) reload it.

Options (`/info` -> `trainers.medplib_sam.config`):
  name             run name: the resume key and folder `<model_dir>/runs/<name>` (default `sam_01`)
  epochs, lr, batch_size     optimiser (AdamW, gradient clipping 1.0)
  train_encoders   also train the image and prompt encoders (no embedding cache: much slower)
  axes             slice axes, "0,1,2" (default) or e.g. "2" for axial only
  slice_step, val_slice_step, max_slices, max_val_slices   which labelled slices train / validate
  structures       comma-separated structure names (default: every single-label structure in the image metadata)
  min_pixels       smallest structure area on a slice to train on
  click_rounds     click prompts per object and epoch (1 random positive + error-region clicks)
  box_jitter       box sides move by up to this fraction of the image size
  min_improvement  publish only when the best validation score beats the start by more than this
  select_on        the validation score: `mean` of box and 1-click Dice (default), `box` or `click`
  resume, seed, device
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask

from medplib.training.promptable import SELECT_ON, TASK, PromptTrainConfig, run_promptable_training
from medplib_label.trainers.medplib_train import _alive

FIELDS = {f: PromptTrainConfig.__dataclass_fields__[f].default for f in (
    "epochs", "lr", "batch_size", "slice_step", "val_slice_step", "max_slices", "max_val_slices", "min_pixels",
    "click_rounds", "box_jitter", "min_improvement", "seed")}


def _flag(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return text in ("1", "true", "yes", "on")


def _names(value) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(s.strip() for s in items if str(s).strip())


class PromptableTrainTask(TrainTask):
    """Fine-tune LiteMedSAM (promptable segmentation) on the final labels; stats in /info train_stats."""

    def __init__(self, model_dir: str, description: str = "Fine-tune LiteMedSAM (promptable segmentation: box / "
                                                          "clicks) on the final labels; publishes only if better"):
        super().__init__(description)
        self.model_dir = Path(model_dir)

    def config(self) -> dict[str, Any]:
        return {"name": "sam_01", **FIELDS, "train_encoders": False, "axes": "0,1,2", "structures": "",
                "select_on": list(SELECT_ON),
                "resume": True, "device": "auto"}

    def stats(self) -> dict:
        path = self.model_dir / "train_stats.json"
        try:
            stats = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:  # being replaced right now
            return {}
        if stats.get("task") != TASK:  # the file holds the last run of any trainer of this model_dir
            return {}
        if stats.get("status") == "RUNNING" and stats.get("pid") and not _alive(int(stats["pid"])):
            stats["status"] = "FAILED"
            stats["error"] = (f"the training process ({stats['pid']}) ended without finishing (killed or crashed); "
                              "the published weights were kept")
        return stats

    def request_config(self, request: dict[str, Any]) -> tuple[PromptTrainConfig, dict[str, Any]]:
        """The run's config from a /train request (unknown keys are MONAI Label's own and ignored); a bad value is a
        ValueError naming the option."""
        defaults = {k: (v[0] if isinstance(v, list) else v) for k, v in self.config().items()}
        req = {**defaults, **{k: v for k, v in request.items() if k in defaults and v not in (None, "")}}
        values: dict[str, Any] = {}
        for key, default in FIELDS.items():
            kind = type(default)
            try:
                values[key] = kind(float(req[key])) if kind is int and float(req[key]).is_integer() else kind(req[key])
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be {'an integer' if kind is int else 'a number'}, "
                                 f"got {req[key]!r}") from None
        try:
            axes = tuple(int(a) for a in _names(req["axes"]))
        except ValueError:
            raise ValueError(f"axes must be a comma-separated list of 0, 1, 2, got {req['axes']!r}") from None
        cfg = PromptTrainConfig(**values, train_encoders=_flag("train_encoders", req["train_encoders"]), axes=axes,
                                structures=_names(req["structures"]), device=str(req["device"]),
                                select_on=str(req["select_on"]))
        req["resume"] = _flag("resume", req["resume"])
        if not str(req["name"]).strip() or "/" in str(req["name"]) or str(req["name"]).startswith("."):
            raise ValueError(f"name must be a plain folder name, got {req['name']!r}")
        return cfg, req

    def __call__(self, request: dict[str, Any], datastore):
        cfg, req = self.request_config(request)
        return run_promptable_training(datastore, self.model_dir, str(req["name"]), cfg, resume=req["resume"],
                                       progress=True)
