"""torchrun entry: `python -m torch.distributed.run --nproc_per_node N -m medplib.training.ddp '<json>'`.

gloo on CPU, NCCL on GPU (one device per local rank). Every rank builds the same model and conversations;
DDP averages gradients; rank 0 validates, writes checkpoints, stats and publishes.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from medplib.model.lora import LoraSettings
from medplib.training.run import RunPaths, run_training
from medplib.training.trainer import TrainConfig


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    use_cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    from monailabel.datastore.local import LocalDatastore


    cfg_dict = dict(spec["config"])
    cfg_dict["lora"] = LoraSettings.from_dict(cfg_dict["lora"])
    cfg = TrainConfig(**cfg_dict)
    datastore = LocalDatastore(spec["studies"], auto_reload=False)
    paths = RunPaths(__import__("pathlib").Path(spec["model_dir"]), spec["name"], spec["publish_as"])
    try:
        run_training(datastore, spec["model"], paths, cfg, slice_step=spec["slice_step"],
                     val_slice_step=spec["val_slice_step"], resume=spec["resume"], progress=dist.get_rank() == 0)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
