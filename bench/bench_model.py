"""Model benchmarks, measured in one run (CPU by default, CUDA when asked and present).

    python bench/bench_model.py [--model small|tiny|PATH] [--device cpu|cuda] [--dtype auto|float32|bfloat16]
                                [--compile none|llm|all] [--tokens 600] [--repeats 20]

Prints:
  * P2: MoE FFN time / one dense expert FFN time at equal tokens (target <= 1.15);
  * predictor: second `ask` on the same image / first `ask` including `set_image`, milliseconds per stage and
    decode tokens/s (on CUDA the stages are timed with a device sync at each boundary);
  * batched decoding: tokens/s of 8 rows decoded together vs one row.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def median_time(fn, repeats: int, warmup: bool = True) -> float:
    """Median wall time of `repeats` calls (after one untimed warm-up call)."""
    if warmup:
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bench_moe(model, tokens: int, repeats: int, device: str) -> None:
    moe = model.model.layers[0].mlp
    dense = moe.deepspeed_moe.experts.deepspeed_experts[0]
    hidden = dense.gate_proj.in_features
    x = torch.randn(1, tokens, hidden, device=device, dtype=model.dtype)
    # Route about half the tokens to each expert, as a trained router does on mixed data.
    with torch.no_grad():
        moe.deepspeed_moe.gate.wg.weight.normal_(std=0.5)
        t_moe = median_time(lambda: moe(x), repeats)
        t_dense = median_time(lambda: dense(x), repeats)
        moe.record_routing = True
        moe(x)
        share = float(moe.last_routing.float().mean())
        moe.record_routing = False
    print(f"MoE FFN {t_moe * 1e3:.2f} ms, dense expert {t_dense * 1e3:.2f} ms at {tokens} tokens "
          f"(share to expert 1: {share:.2f}) -> ratio {t_moe / t_dense:.3f} (target <= 1.15)")


def bench_predictor(model, tok) -> None:
    from nilearn.datasets import load_mni152_template

    from medplib.inference.predictor import MedPLIBPredictor

    vol = np.asanyarray(load_mni152_template(resolution=1).dataobj).astype(np.float32)
    pred = MedPLIBPredictor(model, tok)
    question = "Please segment the brain."
    t0 = time.perf_counter()
    pred.set_image(vol[:, :, 90])
    first = pred.ask(question, max_new_tokens=8)
    t1 = time.perf_counter()
    second = pred.ask("Please segment the white matter.", max_new_tokens=8)
    t2 = time.perf_counter()
    print(f"first ask incl. set_image {1e3 * (t1 - t0):.0f} ms, second ask {1e3 * (t2 - t1):.0f} ms "
          f"-> ratio second/first {(t2 - t1) / (t1 - t0):.3f}")
    print("  first stages (ms):", {k: round(v, 1) for k, v in first.timings_ms.items()})
    decode_s = second.timings_ms["decode"] / 1e3
    print(f"  decode: {len(second.token_ids)} tokens in {decode_s * 1e3:.0f} ms -> "
          f"{len(second.token_ids) / max(decode_s, 1e-9):.1f} tokens/s")
    print("  second stages (ms):", {k: round(v, 1) for k, v in second.timings_ms.items()})


def bench_batch_decode(model, tok, new_tokens: int = 24) -> None:
    from nilearn.datasets import load_mni152_template

    from medplib.inference.batch_decode import DecodeRequest, generate_batch
    from medplib.inference.predictor import MedPLIBPredictor

    vol = np.asanyarray(load_mni152_template(resolution=1).dataobj).astype(np.float32)
    pred = MedPLIBPredictor(model, tok)
    pred.set_image(vol[:, :, 90])
    prep = pred._prepare("Describe this image.", (), (), None)
    model.eos_token_id, eos = -1, model.eos_token_id  # decode exactly `new_tokens` tokens per row
    try:
        rates = {}
        for rows in (1, 8):
            reqs = [DecodeRequest(prep.past, prep.embeds, None, new_tokens) for _ in range(rows)]
            generate_batch(model, reqs)  # warm-up
            out = generate_batch(model, reqs)[0]
            rates[rows] = rows * (new_tokens - 1) / (out.timings_ms["decode"] / 1e3)
    finally:
        model.eos_token_id = eos
    print(f"batched decoding: {rates[1]:.1f} tokens/s for one row, {rates[8]:.1f} tokens/s for 8 rows "
          f"-> {rates[8] / rates[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", default="none", choices=("none", "llm", "all"))
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from medplib.checkpoints.build import build_model
    from medplib.checkpoints.project import from_pretrained

    if args.model in ("tiny", "small"):
        model, tok = build_model(args.model)
    else:
        model, tok = from_pretrained(args.model)
    from medplib.inference.compiled import compile_model
    from medplib_label.engine import pick_device, pick_dtype

    device = pick_device(args.device)
    model.to(device, pick_dtype(args.dtype, device)).eval()
    model.sync_timings = device.type == "cuda"
    compiled = compile_model(model, args.compile)
    print(f"model={args.model} device={device} dtype={model.dtype} threads={torch.get_num_threads()} "
          f"compiled modules={len(compiled)}")
    if device.type == "cuda":
        print(f"  {torch.cuda.get_device_name(device)}")
    if compiled:
        print("compiling (first calls, not timed) ...")
        bench_predictor(model, tok)
    bench_moe(model, args.tokens, args.repeats, str(device))
    bench_predictor(model, tok)
    bench_batch_decode(model, tok)


if __name__ == "__main__":
    main()
