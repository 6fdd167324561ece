"""A private Orthanc PACS (with the DICOMweb plugin) on 127.0.0.1 for tests; never the system service.

    with OrthancServer(tmp_dir) as pacs:
        pacs.upload(path_or_bytes)           # REST: POST /instances
        pacs.dicomweb_url                    # http://127.0.0.1:<port>/dicom-web

The server gets its own config JSON, storage and index in `tmp_dir`, a free HTTP port, no DICOM (DIMSE) listener,
no remote access and no authentication. Orthanc comes from the Debian packages `orthanc` and `orthanc-dicomweb`
(CI installs them, see .ci/run). When they are missing, `find_orthanc()` raises `OrthancUnavailable` with the reason
(tests skip on it); with MEDPLIB_ORTHANC_INSTALL=1 and root it first tries apt-get (opt-in: installing the package
may also register the system service, which these tests never use).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

PLUGIN_NAMES = ("libOrthancDicomWeb.so",)
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins",
               "/usr/lib/x86_64-linux-gnu/orthanc", "/usr/lib/aarch64-linux-gnu/orthanc")
INSTALL_HINT = "apt-get update && apt-get install -y orthanc orthanc-dicomweb"


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed (and could not be installed)."""


@dataclass(frozen=True)
class OrthancInstall:
    binary: str
    dicomweb_plugin: str


def _find_binary() -> str | None:
    env = os.environ.get("ORTHANC_BINARY")
    if env and os.access(env, os.X_OK):
        return env
    found = shutil.which("Orthanc")
    if found:
        return found
    for path in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc", "/usr/local/sbin/Orthanc"):
        if os.access(path, os.X_OK):
            return path
    return None


def _find_plugin() -> str | None:
    env = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    if env and os.path.isfile(env):
        return env
    for folder in PLUGIN_DIRS:
        for name in PLUGIN_NAMES:
            hits = sorted(glob.glob(os.path.join(folder, name + "*")))
            if hits:
                return hits[0]
    if shutil.which("dpkg"):  # wherever the Debian package put it
        out = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False)
        for line in out.stdout.splitlines():
            if "libOrthancDicomWeb.so" in line and os.path.isfile(line):
                return line
    return None


def _try_install() -> str:
    """apt-get install the packages when allowed; returns a reason when it did not happen."""
    if os.environ.get("MEDPLIB_ORTHANC_INSTALL") != "1":
        return "automatic install is off (set MEDPLIB_ORTHANC_INSTALL=1 to allow it)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "automatic install needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "orthanc", "orthanc-dicomweb"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
        if res.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {res.stderr.strip()[-300:]}"
    return ""


def find_orthanc() -> OrthancInstall:
    """The Orthanc binary and DICOMweb plugin, or OrthancUnavailable with a reason fit for pytest.skip."""
    binary, plugin = _find_binary(), _find_plugin()
    if binary and plugin:
        return OrthancInstall(binary, plugin)
    why = _try_install()
    binary, plugin = _find_binary(), _find_plugin()
    if binary and plugin:
        return OrthancInstall(binary, plugin)
    missing = "the Orthanc binary" if not binary else "the Orthanc DICOMweb plugin (libOrthancDicomWeb.so)"
    raise OrthancUnavailable(f"{missing} is not installed and {why or 'installing it did not provide it'}; "
                             f"install it with `{INSTALL_HINT}`")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """One private Orthanc process; use as a context manager (stop() kills only this process)."""

    def __init__(self, workdir: str | os.PathLike, install: OrthancInstall | None = None,
                 http_port: int | None = None, name: str = "MEDPLIB_TEST"):
        self.install = install or find_orthanc()
        self.workdir = Path(workdir)
        self.http_port = http_port or free_port()
        self.name = name
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    # ------------------------------------------------------------------ life cycle
    def config(self) -> dict:
        """The private configuration: nothing shared with /etc/orthanc or /var/lib/orthanc."""
        storage = self.workdir / "storage"
        return {
            "Name": self.name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "DicomServerEnabled": False,  # no DIMSE listener at all
            "DicomPort": free_port(),  # ignored while disabled; never the default 4242
            "RemoteAccessAllowed": False,  # only clients on this machine
            "AuthenticationEnabled": False,
            "SaveJobs": False,
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
            "StableAge": 1,
            "Plugins": [self.install.dicomweb_plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        }

    def start(self, timeout_s: float = 30.0) -> "OrthancServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen([self.install.binary, str(cfg_path)], cwd=str(self.workdir),
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok and \
                        requests.get(f"{self.dicomweb_url}/studies", timeout=2).status_code in (200, 204):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ REST helpers
    def upload(self, data: bytes | str | os.PathLike) -> dict:
        """Store one DICOM file (path or bytes) through Orthanc's REST API (POST /instances)."""
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
        res = requests.post(f"{self.url}/instances", data=data, headers={"Content-Type": "application/dicom"},
                            timeout=30)
        res.raise_for_status()
        return res.json()

    def get(self, path: str, **kwargs):
        res = requests.get(f"{self.url}{path}", timeout=30, **kwargs)
        res.raise_for_status()
        return res.json()

    def series_uids(self, modality: str | None = None) -> list[str]:
        """SeriesInstanceUIDs stored, optionally of one modality (REST /tools/find, independent of DICOMweb)."""
        query = {"Modality": modality} if modality else {}
        res = requests.post(f"{self.url}/tools/find", json={"Level": "Series", "Query": query, "Expand": True},
                            timeout=30)
        res.raise_for_status()
        return [s["MainDicomTags"]["SeriesInstanceUID"] for s in res.json()]

    def delete_series(self, series_uid: str) -> None:
        """Remove a series (e.g. a SEG) through the REST API, as a PACS administrator would."""
        res = requests.post(f"{self.url}/tools/lookup", data=series_uid, timeout=30)
        res.raise_for_status()
        for hit in res.json():
            if hit.get("Type") == "Series":
                requests.delete(f"{self.url}/series/{hit['ID']}", timeout=30).raise_for_status()
