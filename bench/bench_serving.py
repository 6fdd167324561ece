"""Serving benchmarks (issue "performance"), every figure a ratio measured in this one run.

    python bench/bench_serving.py [--model monailabel_app/model/small] [--studies sample_data/datastore]
                                  [--device cpu|cuda] [--skip-server]

P1a new question on a cached slice vs the first question on that slice (+ counters proving no re-encoding)
P1b refinement click vs the first question
P3  scope=volume (batched, forced template) vs the slice path called once per slice, same masks
P4  /infer round trip vs the in-process call; /info latency while an infer runs
P5  8 concurrent clients vs sequential requests (one model copy)
P6  peak RSS of the server process
On CUDA it also prints tokens/s and per-stage milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_model import median_time  # noqa: E402


def bench_predictor(model, tok, vol, window) -> None:
    from medplib.data.planes import PlaneMapper
    from medplib.inference.predictor import MedPLIBPredictor
    from medplib.model.conversation import GROUND_ANSWER

    mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, 2, vol.shape[2] // 2)
    plane = mapper.extract(vol.array)
    firsts, seconds, refines = [], [], []
    for _ in range(3):
        pred = MedPLIBPredictor(model, tok)
        t0 = time.perf_counter()
        pred.set_image(plane, window)
        # the app checks a grounding request's template answer in one pass (exact greedy result)
        first = pred.ask("Please segment the brain.", draft_answer=GROUND_ANSWER)
        t1 = time.perf_counter()
        before = dict(pred.counters)
        pred.ask("Please segment the white matter.", draft_answer=GROUND_ANSWER)
        t2 = time.perf_counter()
        delta = {k: pred.counters[k] - before[k] for k in before}
        if first.seg_count:
            t3 = time.perf_counter()
            pred.refine(points=np.array([[plane.shape[0] // 2, plane.shape[1] // 2]]), point_labels=np.array([1]))
            refines.append(time.perf_counter() - t3)
        firsts.append(t1 - t0)
        seconds.append(t2 - t1)
    f, s = statistics.median(firsts), statistics.median(seconds)
    print(f"P1a first question {f * 1e3:.0f} ms, new question on the cached slice {s * 1e3:.0f} ms "
          f"-> {f / s:.1f}x (target >= 3); counters for the second question: {delta}")
    if refines:
        r = statistics.median(refines)
        print(f"P1b refinement click {r * 1e3:.1f} ms -> {f / r:.0f}x faster than the first question (target >= 20)")
    else:
        print("P1b skipped: the model produced no mask for the first question")


def bench_volume(engine, image_path: str) -> None:
    """scope=volume vs the slice path called once per slice, both as the app's own infer requests (each call
    reads its image from the engine cache, runs the model and writes its label file, as in the server)."""
    from monailabel.interfaces.tasks.infer_v2 import InferType

    from medplib.data.volumes import read_volume
    from medplib_label.infers.medplib_infer import MedPLIBInfer

    labels = {"brain": 1, "grey matter": 2, "white matter": 3}
    slice_task = MedPLIBInfer(engine, labels, type=InferType.DEEPGROW, dimension=2)
    volume_task = MedPLIBInfer(engine, labels, type=InferType.SEGMENTATION, dimension=3, default_task="ground",
                               default_scope="volume")
    vol = engine.volume(image_path)
    axis = int(np.argmax(vol.shape))
    request = {"image": image_path, "label": "brain", "axis": axis, "largest_cc": False}
    t0 = time.perf_counter()
    path, info = volume_task(dict(request))
    t_batched = time.perf_counter() - t0
    batched = read_volume(path).array > 0
    os.remove(path)
    per_slice = np.zeros(vol.shape, bool)
    t0 = time.perf_counter()
    for k in range(vol.shape[axis]):
        path, _ = slice_task({**request, "slice": k})
        per_slice |= read_volume(path).array > 0  # (reading back is outside the model path but inside the timing)
        os.remove(path)
    t_slices = time.perf_counter() - t0
    same = float((per_slice == batched).mean())
    stats = info["slices"]["brain"]
    print(f"P3 scope=volume on {vol.shape[axis]} slices: {t_batched:.1f} s vs {t_slices:.1f} s for the slice path "
          f"once per slice -> {t_slices / t_batched:.1f}x (target >= 4); voxel agreement {same:.5f}; {stats}")


def bench_batching_ceiling(model) -> None:
    """What batching can give on this device: LLM prefill and one decode step, batch of 8 vs 8 times batch 1."""
    hidden = model.config.llm.hidden_size
    x1 = torch.randn(1, 200, hidden, dtype=model.dtype, device=model.device)
    x8 = x1.expand(8, -1, -1).contiguous()
    with torch.no_grad():
        t1 = median_time(lambda: model.run_llm(x1), 3)
        t8 = median_time(lambda: model.run_llm(x8), 3)
        step = {}
        for b, x in ((1, x1), (8, x8)):
            _, past = model.run_llm(x, use_cache=True)
            y = x[:, :1]

            def one_step():
                model.run_llm(y, past_key_values=past, use_cache=True)
                past.crop(-1)
            step[b] = median_time(one_step, 5)
    print(f"P5 ceiling on {model.device}: prefill of 200 tokens x8 {t8 * 1e3:.0f} ms vs 8 x {t1 * 1e3:.0f} ms "
          f"-> {8 * t1 / t8:.2f}x; one decode step x8 {step[8] * 1e3:.1f} ms vs 8 x {step[1] * 1e3:.1f} ms "
          f"-> {8 * step[1] / step[8]:.2f}x")


def bench_server(args, studies: str) -> None:
    import httpx
    import psutil

    from tests.server_harness import start_server

    conf = {"model": args.model, "device": args.device}
    with start_server(str(ROOT / "monailabel_app"), studies, conf, env={"MEDPLIB_MAX_QUEUE": "32"},
                      timeout=300) as srv:
        url = srv.url
        proc = psutil.Process(srv.pid)

        def infer(params, image="mni152_t1"):
            r = httpx.post(f"{url}/infer/medplib?image={image}&output=json",
                           data={"params": json.dumps(params)}, timeout=600)
            r.raise_for_status()
            return r.json()

        infer({"label": "brain", "slice": 90})  # load the model
        same = {"question": "What modality is this image?", "slice": 90}
        rt = median_time(lambda: infer(same), 5, warmup=False)
        inproc = statistics.median(infer(same)["latency_ms"]["total"] / 1e3 for _ in range(5))
        print(f"P4 /infer round trip {rt * 1e3:.0f} ms vs in-process task {inproc * 1e3:.0f} ms "
              f"-> {rt / inproc:.2f}x (target <= 1.2)")
        done = threading.Event()
        threading.Thread(target=lambda: (infer({"label": "brain", "scope": "volume", "axis": 0}), done.set())).start()
        time.sleep(0.5)
        lat = []
        while not done.is_set() and len(lat) < 20:
            t0 = time.perf_counter()
            httpx.get(f"{url}/info/", timeout=60)
            lat.append(time.perf_counter() - t0)
            time.sleep(0.1)
        done.wait()
        if lat:
            print(f"P4 /info while an infer runs: median {statistics.median(lat) * 1e3:.0f} ms, "
                  f"max {max(lat) * 1e3:.0f} ms over {len(lat)} calls (target < 200 ms)")
        workloads = {"grounding": lambda k: {"label": "white matter", "slice": k},
                     "open question": lambda k: {"question": "Describe this image.", "slice": k}}
        for name, make in workloads.items():
            slices = iter(range(40, 140, 3))  # a new slice per request: nothing comes from the feature cache
            t0 = time.perf_counter()
            for _ in range(8):
                infer(make(next(slices)))
            t_seq = time.perf_counter() - t0
            before = httpx.get(f"{url}/medplib/queue").json()["batcher"]
            threads = [threading.Thread(target=infer, args=(make(next(slices)),)) for _ in range(8)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t_conc = time.perf_counter() - t0
            after = httpx.get(f"{url}/medplib/queue").json()["batcher"]
            batches = after["batches"] - before["batches"]
            print(f"P5 {name}, 8 requests: sequential {t_seq:.1f} s, 8 concurrent clients {t_conc:.1f} s "
                  f"-> throughput {t_seq / t_conc:.2f}x (target >= 3); {batches} batches")
        rss = proc.memory_info().rss
        peak = _peak_rss_kb(srv.pid)
        print(f"P6 server RSS now {rss / 2**30:.2f} GiB, peak {peak / 2**20:.2f} GiB (target <= 3 GB)")


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "monailabel_app" / "model" / "small"))
    parser.add_argument("--studies", default=str(ROOT / "sample_data" / "datastore"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    from medplib.data.volumes import auto_window
    from medplib_label.engine import EngineSettings, MedPLIBEngine

    studies = tempfile.mkdtemp(prefix="bench_studies_")
    studies = shutil.copytree(args.studies, os.path.join(studies, "datastore"))
    engine = MedPLIBEngine(EngineSettings(model=args.model, device=args.device))
    model, tok = engine.get()
    print(f"model={engine.model_name()} device={engine.device} dtype={engine.dtype} threads={torch.get_num_threads()}")
    image_path = os.path.join(studies, "mni152_t1.nii.gz")
    vol = engine.volume(image_path)
    window = auto_window(vol, "MR")
    bench_predictor(model, tok, vol, window)
    bench_batching_ceiling(model)
    bench_volume(engine, os.path.join(studies, "mni152_t1_lps_aniso.nii.gz"))
    if not args.skip_server:
        bench_server(args, studies)


if __name__ == "__main__":
    main()
