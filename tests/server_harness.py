"""Start a real MONAI Label server (`monailabel start_server`) in a subprocess for interop tests.

Not a test module. Usage::

    with start_server(app_dir, studies, {"model": ckpt}) as srv:
        requests.get(srv.url + "/info/")

The server runs in its own process group on 127.0.0.1 and a free port; `stop()` terminates the whole group
(then kills it after a grace period). Every started server is also registered with an `atexit` guard, so an
interrupted test session does not leave a server behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["ServerHandle", "ServerStartError", "start_server", "venv_bin"]

_LIVE: set["ServerHandle"] = set()
_LIVE_LOCK = threading.Lock()


class ServerStartError(RuntimeError):
    """The server exited or did not answer `/info/` in time; the message ends with the tail of its log."""


def venv_bin() -> Path:
    """The `bin` folder of the running interpreter's virtual environment (where `monailabel` lives)."""
    for candidate in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        if (candidate / "monailabel").is_file():
            return candidate
    raise FileNotFoundError(f"no `monailabel` script next to {sys.executable} or in {sys.prefix}/bin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n_chars: int = 6000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no log>"
    return data[-n_chars:].decode("utf-8", "replace")


class ServerHandle:
    """A running server: `.url`, `.log_path`, `.pid`, `.stop()`; a context manager that stops on exit."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path, work_dir: Path, log_file):
        self.proc = proc
        self.url = url
        self.log_path = log_path
        self._work_dir = work_dir
        self._log_file = log_file
        self._stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n_chars: int = 6000) -> str:
        return _tail(self.log_path, n_chars)

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the server's process group, kill it after `grace` seconds; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            # Kill whatever is left in the group (the server itself, or children it started).
            _signal_group(self.proc, signal.SIGKILL)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        finally:
            try:
                self._log_file.close()
            except Exception:
                pass
            with _LIVE_LOCK:
                _LIVE.discard(self)
            # The log is kept (it lives next to the session folder) so a failing test can still show it.
            shutil.rmtree(self._work_dir / "sessions", ignore_errors=True)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r}, pid={self.proc.pid}, alive={self.alive()})"


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    # The child was started with start_new_session=True, so its pid is its process-group id; only signal the
    # group while we know it is ours (the pid has not been reaped yet, so it cannot have been reused).
    if proc.returncode is not None and sig == signal.SIGTERM:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_all() -> None:
    with _LIVE_LOCK:
        handles = list(_LIVE)
    for h in handles:
        try:
            h.stop(grace=3.0)
        except Exception:
            pass


atexit.register(_stop_all)


def _get_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM the server if the test process dies without cleanup
    (a SIGKILLed pytest runs neither `finally` nor `atexit`)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start_server(app_dir, studies, conf: dict[str, str], env: dict | None = None, timeout: float = 120,
                 port: int | None = None) -> ServerHandle:
    """Start `monailabel start_server` on 127.0.0.1 and a free port; return once `GET /info/` answers 200.

    `conf` becomes `--conf key value` pairs; `env` entries override the environment (after the defaults that
    keep the server quiet: no auto-update of scoring, no datastore auto-reload, no tracking, a private
    session folder, one OpenMP thread). Raises `ServerStartError` (with the log tail) if the process dies or
    `/info/` does not answer 200 within `timeout` seconds; the process group is stopped in that case.
    A port taken between choosing it and the server binding it is retried with another free port.
    """
    deadline = time.monotonic() + timeout
    attempts = 1 if port else 3
    for attempt in range(attempts):
        try:
            return _start_once(app_dir, studies, conf, env, deadline, port or _free_port())
        except ServerStartError as exc:
            if attempt + 1 < attempts and "address already in use" in str(exc).lower():
                continue
            raise
    raise AssertionError("unreachable")


def _start_once(app_dir, studies, conf: dict[str, str], env: dict | None, deadline: float,
                port: int) -> ServerHandle:
    bindir = venv_bin()
    work_dir = Path(tempfile.mkdtemp(prefix="monailabel_server_"))
    (work_dir / "sessions").mkdir()
    log_path = work_dir / "server.log"
    url = f"http://127.0.0.1:{port}"

    cmd = [str(bindir / "monailabel"), "start_server", "--app", str(app_dir), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--uvicorn_app", "medplib_label.server:app"]
    for key, value in conf.items():
        cmd += ["--conf", str(key), str(value)]

    full_env = dict(os.environ)
    full_env.update({
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_TRACKING_ENABLED": "false",
        "MONAI_LABEL_SESSION_PATH": str(work_dir / "sessions"),
        "OMP_NUM_THREADS": "1",
        # The `monailabel` script runs `${MONAILABEL_PYEXE:-python} -m monailabel.main`: pin this venv's python.
        "MONAILABEL_PYEXE": str(bindir / "python"),
        "PATH": str(bindir) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
    })
    if env:
        full_env.update({k: str(v) for k, v in env.items()})

    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=full_env, cwd=str(work_dir), start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    handle = ServerHandle(proc, url, log_path, work_dir, log_file)
    with _LIVE_LOCK:
        _LIVE.add(handle)

    ok = False
    try:
        while True:
            if proc.poll() is not None:
                raise ServerStartError(f"MONAI Label server exited with code {proc.returncode} before answering "
                                       f"/info/ ({' '.join(cmd)}); log tail:\n{handle.log_tail()}")
            status = _get_status(url + "/info/")
            if status in (200, 401):  # 401: up, with auth enabled
                ok = True
                return handle
            if time.monotonic() > deadline:
                raise ServerStartError(f"MONAI Label server did not answer /info/ with 200 in time "
                                       f"(last status {status}); log tail:\n{handle.log_tail()}")
            time.sleep(0.25)
    finally:
        if not ok:
            handle.stop()
