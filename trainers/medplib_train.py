"""MONAI Label train task: fine-tunes MedPLIB on the datastore's final labels (runs in MONAI Label's subprocess)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask

from medplib.model.lora import LoraSettings
from medplib.training.run import RunPaths, run_training
from medplib.training.trainer import STAGE_ORDER, TrainConfig

logger = logging.getLogger(__name__)


def _bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class MedPLIBTrainTask(TrainTask):
    """Stages `vqa`, `ground`, `moe` or `all`; per-epoch loss and validation in /info train_stats; resumable."""

    def __init__(self, model_dir: str, model_spec: str, publish_as: str,
                 description: str = "Fine-tune MedPLIB (LoRA + heads) on the final labels"):
        super().__init__(description)
        self.model_dir = Path(model_dir)
        self.model_spec = model_spec
        self.publish_as = publish_as

    def config(self) -> dict[str, Any]:
        return {"name": "train_01", "stage": ["all", *[s for s in STAGE_ORDER if s != "all"]], "epochs": 1,
                "batch_size": 2, "lr": 3e-4, "lora_r": 8, "train_encoders": False, "mask_epochs": 0, "max_steps_per_epoch": 0,
                "slice_step": 4, "val_slice_step": 6, "val_samples": 32, "resume": True, "multi_gpu": False,
                "fsdp": False, "nproc": 2, "seed": 0, "pack_turns": 1, "region_pixel_dim": 0}

    def stats(self) -> dict:
        path = self.model_dir / "train_stats.json"
        try:
            stats = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:  # being rewritten right now (it is replaced atomically, so rare)
            return {}
        if stats.get("task", "medplib") != "medplib":  # another trainer's run (medplib_sam writes the same file)
            return {}
        if stats.get("status") == "RUNNING" and stats.get("pid") and not _alive(int(stats["pid"])):
            stats["status"] = "FAILED"
            stats["error"] = (f"the training process ({stats['pid']}) ended without finishing (killed or crashed); "
                              "the published model was kept")
        return stats

    def request_config(self, request: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        defaults = {k: (v[0] if isinstance(v, list) else v) for k, v in self.config().items()}
        req = {**defaults, **{k: v for k, v in request.items() if k in defaults and v not in (None, "")}}
        if req["stage"] not in STAGE_ORDER:
            raise ValueError(f"stage must be one of {', '.join(STAGE_ORDER)}, got {req['stage']!r}")
        cfg = TrainConfig(stage=req["stage"], epochs=int(req["epochs"]), batch_size=int(req["batch_size"]),
                          lr=float(req["lr"]), lora=LoraSettings(r=int(req["lora_r"]), alpha=2 * int(req["lora_r"])),
                          train_encoders=_bool(req["train_encoders"]), mask_epochs=int(req["mask_epochs"]),
                          max_steps_per_epoch=int(req["max_steps_per_epoch"]) or None,
                          val_samples=int(req["val_samples"]), seed=int(req["seed"]), fsdp=_bool(req["fsdp"]),
                          pack_turns=int(req["pack_turns"]), region_pixel_dim=int(req["region_pixel_dim"]))
        return cfg, req

    def __call__(self, request: dict[str, Any], datastore):
        cfg, req = self.request_config(request)
        paths = RunPaths(self.model_dir, str(req["name"]), self.publish_as)
        if _bool(req["multi_gpu"]) or cfg.fsdp:  # FSDP shards across ranks: always under torchrun
            return self._torchrun(datastore, cfg, req, paths)
        return run_training(datastore, self.model_spec, paths, cfg, slice_step=int(req["slice_step"]),
                            val_slice_step=int(req["val_slice_step"]), resume=_bool(req["resume"]),
                            progress=True)

    def _torchrun(self, datastore, cfg: TrainConfig, req: dict, paths: RunPaths) -> dict:
        """Data-parallel training with torchrun (gloo on CPU, NCCL on GPU); rank 0 saves and publishes."""
        import torch

        nproc = torch.cuda.device_count() if torch.cuda.is_available() else int(req["nproc"])
        # The ranks open `_datastore_path` as a LocalDatastore; a DICOMweb store fills that cache (images and the
        # final labels from the SEGs on the server) in datalist(); for a local store this is a cheap listing.
        datastore.datalist()
        spec = {"studies": datastore._datastore_path, "model": self.model_spec, "model_dir": str(self.model_dir),
                "name": paths.name, "publish_as": self.publish_as, "config": cfg.to_dict(),
                "slice_step": int(req["slice_step"]), "val_slice_step": int(req["val_slice_step"]),
                "resume": _bool(req["resume"])}
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={max(nproc, 1)}",
               "--master_addr=127.0.0.1", f"--master_port={os.environ.get('MASTER_PORT', '29511')}",
               "-m", "medplib.training.ddp", json.dumps(spec)]
        logger.info("launching %s", " ".join(cmd[:6]))
        subprocess.run(cmd, check=True)
        return self.stats()
