"""Schemathesis fuzzing of the real server's OpenAPI: every operation, 0 server errors allowed.

    python bench/fuzz.py [--examples 200] [--model PATH]      (make fuzz; `make test` runs a bounded variant)

Schemathesis lives in its own venv (.venv-fuzz, made by `make fuzz-venv`): it needs jsonschema >= 4, while
pydicom-seg (DICOM SEG export) pins jsonschema < 4 in the app's venv. It talks to the server over HTTP only.
A few operations are left out because they start long jobs or replace the served model's files; each has its
own targeted tests (tests/test_trainer.py, tests/test_server.py, tests/test_uncertainty.py).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ST = ROOT / ".venv-fuzz" / "bin" / "st"
EXCLUDED = ("POST /train/{model}", "POST /scoring/{method}", "POST /batch/infer/{model}", "PUT /model/{model}",
            "DELETE /model/{model}")


def run_schemathesis(url: str, examples: int, seed: int = 0, timeout: float = 1800) -> dict:
    """Run `st run` against `url`; returns counts parsed from its summary plus the exit code and output."""
    if not ST.is_file():
        raise FileNotFoundError(f"{ST} is missing: run `make fuzz-venv` (make test does it)")
    cmd = [str(ST), "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "-n", str(examples),
           "--workers", "1", "--seed", str(seed), "--no-color", "--request-timeout", "120",
           "--suppress-health-check", "all", "--generation-database", "none"]
    for name in EXCLUDED:
        cmd += ["--exclude-name", name]
    with tempfile.TemporaryDirectory() as work:  # st keeps a crash cache (.schemathesis/) in its working dir
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=work)
    out = proc.stdout + proc.stderr
    generated = re.search(r"(\d+) generated", out)
    errors = re.search(r"Server error: (\d+)", out)
    selected = re.search(r"Selected: (\d+)/(\d+)", out)
    return {"rc": proc.returncode, "generated": int(generated.group(1)) if generated else 0,
            "server_errors": int(errors.group(1)) if errors else 0,
            "operations": (int(selected.group(1)), int(selected.group(2))) if selected else (0, 0), "output": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="test cases per operation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=str(ROOT / "monailabel_app" / "model" / "small"))
    args = parser.parse_args()
    from tests.server_harness import start_server

    studies = shutil.copytree(ROOT / "sample_data" / "datastore", Path(tempfile.mkdtemp()) / "datastore")
    with start_server(str(ROOT / "monailabel_app"), studies, {"model": args.model}, timeout=300) as srv:
        res = run_schemathesis(srv.url, args.examples, args.seed, timeout=6 * 3600)
        alive = srv.alive()
    print(res["output"][-4000:])
    print(f"operations {res['operations'][0]}/{res['operations'][1]}, requests {res['generated']}, "
          f"server errors {res['server_errors']}, server alive {alive}")
    sys.exit(0 if res["rc"] == 0 and alive else 1)


if __name__ == "__main__":
    main()
