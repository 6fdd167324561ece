"""Schemathesis over the real server's OpenAPI (bounded; `make fuzz` runs the long mode): 0 server errors."""

from __future__ import annotations

import shutil

import httpx

from bench.fuzz import run_schemathesis

from .app_client import APP_DIR
from .server_harness import start_server


def test_schemathesis_finds_no_server_error(sample_datastore_master, fitted_tiny_dir, tmp_path):
    studies = shutil.copytree(sample_datastore_master, tmp_path / "datastore")
    with start_server(APP_DIR, studies, {"model": str(fitted_tiny_dir), "device": "cpu"}) as srv:
        res = run_schemathesis(srv.url, examples=25, timeout=1200)
        assert srv.alive(), srv.log_tail()
        # the server still answers real work after the fuzzing
        info = httpx.get(srv.url + "/info/", timeout=60)
        assert info.status_code == 200 and "medplib" in info.json()["models"]
    assert res["server_errors"] == 0 and res["rc"] == 0, res["output"][-6000:]
    assert res["generated"] >= 1000, res["output"][-2000:]
    assert res["operations"][0] >= 30, res["operations"]  # every operation but the five job/model-file ones
