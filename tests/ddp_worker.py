"""One rank of the DDP / FSDP tests (run by torchrun from tests/test_trainer.py): train one step, save weights.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.ddp_worker OUT_DIR [ddp|fsdp]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist

from medplib.checkpoints.build import build_model
from medplib.imaging.regions import Point
from medplib.model.lora import LoraSettings
from medplib.training.samples import make_sample
from medplib.training.trainer import Example, TrainConfig, Trainer


def main(out_dir: str, mode: str = "ddp") -> None:
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
                      lora=LoraSettings(r=2, alpha=4), fsdp=mode == "fsdp")

    def save(m, path):  # the consolidated checkpoint rank 0 publishes (LoRA merged)
        import copy

        from medplib.checkpoints.project import save_pretrained
        from medplib.model.lora import merge_lora

        merged = copy.deepcopy(m)
        merge_lora(merged)
        save_pretrained(merged, tok, path)

    # FSDP ranks share one run folder (the sharded checkpoint is written by all of them)
    run_dir = f"{out_dir}/run" if mode == "fsdp" else f"{out_dir}/run{rank}"
    Trainer(model, tok, cfg, run_dir, examples, [], save=save if rank == 0 else (lambda m, p: None),
            progress=False).run()
    if mode == "fsdp":
        from torch.distributed.tensor import DTensor

        from medplib.checkpoints.sharded import full_state_dict

        local = {k: tuple(v.to_local().shape) for k, v in model.state_dict().items() if isinstance(v, DTensor)}
        torch.save(local, f"{out_dir}/fsdp_local{rank}.pt")
        state = full_state_dict(model)
        if rank == 0:
            torch.save(state, f"{out_dir}/fsdp_full.pt")
    else:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
