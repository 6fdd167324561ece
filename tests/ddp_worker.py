"""One rank of the DDP test (run by torchrun from tests/test_trainer.py): train one step, save its weights."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist

from medplib.loading import build_model
from medplib.lora import LoraSettings
from medplib.regions import Point
from medplib.samples import make_sample
from medplib.trainer import Example, TrainConfig, Trainer


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, tok = build_model("tiny", seed=rank)  # different starts on purpose: DDP must broadcast rank 0's
    rng = np.random.RandomState(0)
    img = (rng.rand(40, 60, 3) * 255).astype(np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:20, 10:40] = True
    convs = [("What is this?", "left", [Point(8, 8)], []), ("What is this?", "right", [Point(30, 50)], []),
             ("Please segment the liver.", "Sure, it is <SEG>.", [], [mask]), ("Modality?", "CT", [], [])]
    examples = [Example("region" if r else ("ground" if m else "vqa"), q, a, img,
                        (lambda q=q, a=a, r=r, m=m: make_sample(model.config, tok, img, q, a, regions=r, masks=m)),
                        r, m) for q, a, r, m in convs]
    cfg = TrainConfig(stage="moe", epochs=1, batch_size=1, max_steps_per_epoch=1, val_samples=0,
                      lora=LoraSettings(r=2, alpha=4))
    Trainer(model, tok, cfg, f"{out_dir}/run{rank}", examples, [], save=lambda m, p: None, progress=False).run()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
