"""Short variant of bench/soak.py: 8 concurrent clients, mixed requests, bounded in count and time."""

from __future__ import annotations

import shutil

from bench.soak import run

from .app_client import APP_DIR
from .server_harness import start_server


def test_eight_clients_mixed_requests_no_failures(sample_datastore_master, fitted_tiny_dir, tmp_path):
    studies = shutil.copytree(sample_datastore_master, tmp_path / "datastore")
    with start_server(APP_DIR, studies, {"model": str(fitted_tiny_dir), "device": "cpu"},
                      env={"MEDPLIB_MAX_QUEUE": "16"}) as srv:
        stats = run(srv.url, srv.pid, str(studies), minutes=0.25, clients=8, max_requests=6)
    assert stats["requests"] >= 8 and stats["failed"] == 0, stats["errors"][:5]
    # RSS growth over such a short run is noise-prone; the 5-minute script reports the < 10 % target.
    assert stats["rss_growth"] < 0.5
