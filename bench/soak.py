"""Soak test: N concurrent clients on 127.0.0.1 doing mixed infer / save label / next sample / info.

    python bench/soak.py [--minutes 5] [--clients 8] [--model PATH] [--url URL]

Starts its own server (unless --url) on a private copy of the sample datastore; every loop is bounded in count
and time and stops by itself. Prints failed requests and the server's RSS growth (targets: 0 and < 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def client_loop(url: str, seed: int, deadline: float, max_requests: int, stats: dict, lock: threading.Lock,
                label_bytes: bytes) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=300) as http:
        for _ in range(max_requests):
            if time.time() > deadline:
                return
            kind = rng.choice(["infer", "infer", "infer", "info", "next", "save"])
            try:
                if kind == "infer":
                    params = rng.choice([{"label": "brain", "slice": rng.randrange(40, 150)},
                                         {"question": "What is this?", "foreground": [[98, 116, 80]], "slice": 80},
                                         {"question": "What modality is this image?", "slice": 90, "axis": 1}])
                    r = http.post("/infer/medplib?image=mni152_t1&output=json", data={"params": json.dumps(params)})
                elif kind == "info":
                    r = http.get("/info/")
                elif kind == "next":
                    r = http.post("/activelearning/random", json={"client_id": f"soak-{seed}"})
                else:
                    r = http.put("/datastore/label?image=mni152_t1&tag=final", data={"params": "{}"},
                                 files={"label": ("label.nii.gz", label_bytes)})
                ok = r.status_code == 200
            except httpx.HTTPError as exc:
                ok, r = False, exc
            with lock:
                stats["requests"] += 1
                if not ok:
                    stats["failed"] += 1
                    stats["errors"].append(f"{kind}: {getattr(r, 'status_code', r)}")


def run(url: str, pid: int | None, studies: str, minutes: float, clients: int, max_requests: int) -> dict:
    import psutil

    label_bytes = (Path(studies) / "labels" / "final" / "mni152_t1.nii.gz").read_bytes()
    httpx.post(f"{url}/infer/medplib?image=mni152_t1&output=json", data={"params": json.dumps({"label": "brain"})},
               timeout=300)  # warm-up: model loaded before the baseline RSS
    proc = psutil.Process(pid) if pid else None
    rss0 = proc.memory_info().rss if proc else 0
    stats = {"requests": 0, "failed": 0, "errors": []}
    lock = threading.Lock()
    deadline = time.time() + minutes * 60
    threads = [threading.Thread(target=client_loop, args=(url, i, deadline, max_requests, stats, lock, label_bytes))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss1 = proc.memory_info().rss if proc else 0
    stats["rss_growth"] = (rss1 - rss0) / rss0 if rss0 else 0.0
    stats["rss_mib"] = (rss0 / 2**20, rss1 / 2**20)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=10_000, help="per client")
    parser.add_argument("--model", default=str(ROOT / "monailabel_app" / "model" / "small"))
    parser.add_argument("--url")
    args = parser.parse_args()
    studies = shutil.copytree(ROOT / "sample_data" / "datastore", Path(tempfile.mkdtemp()) / "datastore")
    if args.url:
        stats = run(args.url, None, str(studies), args.minutes, args.clients, args.max_requests)
    else:
        from tests.server_harness import start_server

        with start_server(str(ROOT / "monailabel_app"), studies, {"model": args.model},
                          env={"MEDPLIB_MAX_QUEUE": str(2 * args.clients)}, timeout=300) as srv:
            stats = run(srv.url, srv.pid, str(studies), args.minutes, args.clients, args.max_requests)
    print(f"requests {stats['requests']}, failed {stats['failed']}, RSS {stats['rss_mib'][0]:.0f} -> "
          f"{stats['rss_mib'][1]:.0f} MiB ({100 * stats['rss_growth']:+.1f} %)")
    if stats["errors"]:
        print("first errors:", stats["errors"][:10])
    sys.exit(1 if stats["failed"] else 0)


if __name__ == "__main__":
    main()
