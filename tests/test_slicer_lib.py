"""The Slicer extension's pure-Python library (`slicer_extension/MedPLIBLabel/MedPLIBLabelLib`), outside Slicer.

* imports with `slicer`, `qt`, `ctk`, `vtk` unavailable;
* codec / errors / jobs / history units;
* the client against a REAL MedPLIB Label server (`monailabel start_server`, one per module, tiny fitted model on
  CPU): every prompt type in each standard Slicer view on `mni152_t1`, error mapping, datastore round trips,
  sessions, background jobs with cancel;
* error mapping against tiny local servers (401/403, 5xx, a socket that never answers, a non-MedPLIB app).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB_PARENT = ROOT / "slicer_extension" / "MedPLIBLabel"
sys.path.insert(0, str(LIB_PARENT))

import MedPLIBLabelLib as lib  # noqa: E402
from MedPLIBLabelLib import codec, errors, geometry as g, protocol as pr  # noqa: E402


IMAGE = "mni152_t1"
LABELLED = {"mni152_t1", "mni152_t1_lps_aniso"}
VIEWS = ("axial", "sagittal", "coronal")


# ================================================================================ import without Slicer
def test_imports_without_slicer_qt_ctk_vtk():
    pkg = LIB_PARENT / "MedPLIBLabelLib"
    code = f"""
import importlib.abc, importlib.util, sys
BLOCKED = ("slicer", "qt", "ctk", "vtk", "requests", "httpx")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
for name in BLOCKED:
    sys.modules.pop(name, None)
sys.modules["slicer"] = None  # what Slicer-less Pythons look like to `import slicer`, too
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit("the import block does not work for " + name)
spec = importlib.util.spec_from_file_location("MedPLIBLabelLib", {str(pkg / "__init__.py")!r},
                                              submodule_search_locations=[{str(pkg)!r}])
mod = importlib.util.module_from_spec(spec)
sys.modules["MedPLIBLabelLib"] = mod
spec.loader.exec_module(mod)
from MedPLIBLabelLib import (client, codec, errors, geometry, history, jobs, labels, prompts, protocol, results,
                             tasks, ui_state)
assert client.__file__.startswith({str(pkg)!r})
leaked = sorted(m for m, v in sys.modules.items() if m.split(".")[0] in BLOCKED and v is not None)
assert not leaked, leaked
print("OK", mod.__version__, len(mod.__all__))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=str(ROOT), env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("OK 0.1.0")


def test_public_api_names():
    for name in ("MedPLIBClient", "ServerInfo", "InferResult", "ClientError", "ConnectionRefused", "BadURL",
                 "Unauthorized", "NotFound", "BadRequest", "ServerError", "Timeout", "VersionMismatch",
                 "ijk_to_ras", "ras_to_ijk", "slice_axis_from_normal", "slice_index", "point_on_view",
                 "points_to_ijk", "roi_to_ijk", "scribble_to_ijk", "standard_slice_to_ras", "ObliqueSliceError",
                 "PointPrompt", "BoxPrompt", "ScribblePrompt", "build_infer_params", "slice_replacement",
                 "BackgroundJob", "JobRunner", "ChatHistory", "UndoStack", "__version__"):
        assert hasattr(lib, name), name
    for cls in (lib.ConnectionRefused, lib.BadURL, lib.Unauthorized, lib.NotFound, lib.BadRequest, lib.ServerError,
                lib.Timeout, lib.VersionMismatch):
        assert issubclass(cls, lib.ClientError) and cls().user_message


# ================================================================================ units
def test_multipart_round_trip_is_binary_safe(tmp_path):
    blob = bytes(range(256)) * 50 + b"\r\n--\r\n\r\n"
    f = tmp_path / "label.nii.gz"
    f.write_bytes(blob)
    body, ctype = codec.encode_multipart([("params", json.dumps({"a": "é"})), ("label", codec.FilePart(path=str(f))),
                                          ("files", codec.FilePart(data=b"", filename="x.nrrd"))])
    parts = codec.decode_multipart(ctype, body)
    assert [p.name for p in parts] == ["params", "label", "files"]
    assert parts[0].json() == {"a": "é"} and parts[0].filename is None
    assert parts[1].filename == "label.nii.gz" and parts[1].data == blob
    assert parts[2].data == b""
    assert codec.file_extension("medplib_x.nii.gz") == ".nii.gz" and codec.file_extension("a.seg.nrrd") == ".seg.nrrd"


def test_multipart_decodes_requests_toolbelt_encoder():
    """The server encodes replies with requests_toolbelt's MultipartEncoder."""
    toolbelt = pytest.importorskip("requests_toolbelt")
    blob = os.urandom(5000) + b"\r\n"
    enc = toolbelt.MultipartEncoder(fields={"params": (None, json.dumps({"answer": "left"}), "application/json"),
                                            "image": ("medplib_1.nii.gz", blob, "application/gzip")})
    parts = {p.name: p for p in codec.decode_multipart(enc.content_type, enc.to_string())}
    assert parts["params"].json() == {"answer": "left"}
    assert parts["image"].data == blob and parts["image"].filename == "medplib_1.nii.gz"


@pytest.mark.parametrize("status,body,cls,field", [
    (401, {"detail": "Not authenticated"}, errors.Unauthorized, None),
    (403, {"detail": "Forbidden"}, errors.Unauthorized, None),
    (404, {"detail": "Not Found"}, errors.NotFound, None),
    (422, {"detail": "invalid infer params: axis: Value error, axis must be 0, 1 or 2"}, errors.BadRequest, "axis"),
    (422, {"detail": "foreground[0]: [1, 2, 900] is outside the image"}, errors.BadRequest, "foreground[0]"),
    (422, {"detail": [{"loc": ["query", "image"], "msg": "field required"}]}, errors.BadRequest, "image"),
    (429, {"detail": "Training is already running"}, errors.BadRequest, None),
    (500, {"detail": "boom"}, errors.ServerError, None),
    (502, "<html>bad gateway</html>", errors.ServerError, None),
])
def test_error_mapping(status, body, cls, field):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    exc = errors.error_from_http(status, raw, "http://h/infer/medplib", "model 'medplib'")
    assert type(exc) is cls and exc.status == status and exc.field == field
    assert exc.user_message and "HTTP" not in exc.user_message
    if field:
        assert f"'{field}'" in exc.user_message


def test_normalize_url():
    assert lib.normalize_url(" localhost:8000/ ") == "http://localhost:8000"
    assert lib.normalize_url("https://srv.example.org/monai/") == "https://srv.example.org/monai"
    for bad in ("", "ftp://x", "http://", "http://host:port", "http://host:99999"):
        with pytest.raises(lib.BadURL):
            lib.MedPLIBClient(bad)


def test_jobs_result_error_cancel_and_runner():
    job = lib.BackgroundJob(lambda a, b: a + b, 2, 3)
    assert job.result(timeout=5) == 5 and job.done and job.error is None
    bad = lib.BackgroundJob(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bad.result(timeout=5)
    assert isinstance(bad.error, ZeroDivisionError)
    gate = threading.Event()
    slow = lib.BackgroundJob(gate.wait, 10, progress_delay=0.05)
    time.sleep(0.1)
    assert slow.running and slow.show_progress and slow.elapsed >= 0.05
    slow.cancel()
    assert slow.done and slow.cancelled
    with pytest.raises(lib.JobCancelled):
        slow.result()
    gate.set()

    runner, got = lib.JobRunner(progress_delay=0.0), []
    assert runner.poll() == "idle"
    gate2 = threading.Event()
    runner.submit(gate2.wait, 10, on_done=got.append, on_error=got.append)
    with pytest.raises(lib.Busy):
        runner.submit(time.sleep, 0)
    assert runner.poll() == "running" and runner.status_text().startswith("Waiting for MedPLIB")
    assert runner.cancel() and runner.poll() == "idle" and not runner.busy
    gate2.set()
    runner.submit(lambda: "ok", on_done=got.append)
    while runner.poll() == "running":
        time.sleep(0.01)
    runner.submit(lambda: [][1], on_error=got.append)
    while runner.poll() == "running":
        time.sleep(0.01)
    assert got[0] == "ok" and isinstance(got[1], IndexError) and len(got) == 2  # the cancelled job never reported


def test_history_and_bounded_undo():
    h = lib.ChatHistory(max_turns=2, max_volumes=2)
    for i in range(3):
        h.record("vol1", f"q{i}", f"a{i}", masks={"liver": 10 * i}, axis=2, slice=5)
    assert [t.question for t in h.turns("vol1")] == ["q1", "q2"]
    assert "liver (20 voxels)" in h.to_text("vol1") and "<b>Q:</b> q2" in h.to_html("vol1")
    h.record("vol2", "<b>", "x")
    h.record("vol3", "q", "a")
    assert h.volumes() == ["vol2", "vol3"] and "&lt;b&gt;" in h.to_html("vol2")

    u = lib.UndoStack(max_entries=3, max_bytes=1000)
    for i in range(5):
        u.push(f"seg{i}", 2, i, np.full((10, 10), i % 2, np.uint8))
    assert len(u) == 3 and u.peek().segment_id == "seg4"
    assert u.peek().previous.dtype == bool  # binary planes are stored compactly
    u.push("big", 0, 1, np.full((30, 30), 0.5, np.float32))  # 3600 bytes > budget: only the newest is kept
    assert len(u) == 1 and u.nbytes == 3600
    u.clear()
    u.push("liver", 2, 7, np.zeros((4, 4)), group="ask-1")
    u.push("spleen", 2, 7, np.ones((4, 4)), group="ask-1")
    u.push("liver", 2, 8, np.zeros((4, 4)), group="ask-2")
    assert [e.index for e in u.pop_group()] == [8]
    assert [e.segment_id for e in u.pop_group()] == ["spleen", "liver"]
    assert u.pop() is None and u.pop_group() == []


# ================================================================================ tiny local servers
class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    seen: list = []

    def _reply(self):
        self.seen.append((self.command, self.path, dict(self.headers)))
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        status, body = self.routes.get(self.path.split("?")[0], (404, {"detail": "Not Found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _reply

    def log_message(self, *args):
        pass


@contextmanager
def fake_server(routes: dict):
    handler = type("H", (_Handler,), {"routes": routes, "seen": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", handler.seen
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def silent_socket():
    """Accepts connections and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unauthorized_and_bearer_token():
    routes = {"/info/": (401, {"detail": "Not authenticated"}), "/train/": (403, {"detail": "Forbidden"}),
              "/infer/medplib": (500, {"detail": "CUDA out of memory"}), "/auth/": (200, {"enabled": True})}
    with fake_server(routes) as (url, seen):
        c = lib.MedPLIBClient(url, token="abc.def", timeout=5)
        with pytest.raises(lib.Unauthorized) as ei:
            c.test_connection()
        assert ei.value.status == 401 and "log in" in ei.value.user_message.lower()
        assert seen[-1][2].get("Authorization") == "Bearer abc.def"
        with pytest.raises(lib.Unauthorized):
            c.train_status()
        with pytest.raises(lib.ServerError, match="out of memory"):
            c.infer("medplib", "img", {"question": "q"})
        assert c.auth_enabled() is True
        assert "Authorization" not in lib.MedPLIBClient(url)._headers()
        c.token = {"access_token": "tok2", "token_type": "bearer"}
        assert c._headers()["Authorization"] == "Bearer tok2"


def test_not_a_medplib_server_or_wrong_version():
    other = {"name": "Radiology", "version": "0.8.5", "models": {"deepedit": {"type": "deepedit", "dimension": 3}}}
    with fake_server({"/info/": (200, other)}) as (url, _):
        with pytest.raises(lib.VersionMismatch, match="Radiology"):
            lib.MedPLIBClient(url).test_connection()
    newer = {"name": "MedPLIB Label", "version": "2.0.0", "models": {}}
    with fake_server({"/info/": (200, newer)}) as (url, _):
        with pytest.raises(lib.VersionMismatch) as ei:
            lib.MedPLIBClient(url).test_connection()
        assert "2.0.0" in ei.value.user_message
    with fake_server({}) as (url, _):  # answers 404 to everything
        with pytest.raises(lib.NotFound):
            lib.MedPLIBClient(url).test_connection()


def test_network_failures_are_mapped():
    with pytest.raises(lib.ConnectionRefused) as ei:
        lib.MedPLIBClient(f"http://127.0.0.1:{_free_port()}", timeout=5).test_connection()
    assert "server" in ei.value.user_message.lower()
    with pytest.raises(lib.BadURL) as ei:
        lib.MedPLIBClient("http://nonexistent-host.invalid:8000", timeout=5).test_connection()
    assert "cannot be found" in ei.value.user_message
    with silent_socket() as url:
        t0 = time.monotonic()
        with pytest.raises(lib.Timeout) as ei:
            lib.MedPLIBClient(url, timeout=0.5).test_connection()
        assert time.monotonic() - t0 < 5 and "did not answer" in ei.value.user_message
        # A job that hits the timeout reports it through the runner, on the polling thread.
        runner, got = lib.JobRunner(progress_delay=0.1), []
        runner.submit(lib.MedPLIBClient(url, timeout=0.4).infer, "medplib", "img", {}, on_error=got.append)
        saw_progress = False
        while runner.poll() == "running":
            saw_progress |= runner.show_progress
            time.sleep(0.02)
        assert saw_progress and len(got) == 1 and isinstance(got[0], lib.Timeout)


# ================================================================================ the real server
@pytest.fixture(scope="module")
def client(server) -> lib.MedPLIBClient:
    return lib.MedPLIBClient(server.url, timeout=120)


@pytest.fixture(scope="module")
def mni(studies):
    """(IJKToRAS, IJK dims) of the sample image as Slicer would load it: the NIfTI affine is RAS and the IJK
    order is the NIfTI array index order."""
    img = nib.load(str(studies / f"{IMAGE}.nii.gz"))
    return np.asarray(img.affine, dtype=np.float64), tuple(int(s) for s in img.shape[:3])


def _load_label_kji(path: str, ijk_to_ras: np.ndarray, dims) -> np.ndarray:
    """The returned label as Slicer's arrayFromVolume gives it (KJI), after checking it has the image geometry."""
    img = nib.load(path)
    assert tuple(img.shape[:3]) == tuple(dims)
    np.testing.assert_allclose(img.affine, ijk_to_ras, atol=1e-4)
    return np.asarray(img.dataobj).transpose(2, 1, 0)  # IJK (NIfTI) -> KJI (Slicer numpy)


def _view_through(view: str, ijk_to_ras: np.ndarray, voxel) -> np.ndarray:
    """A standard view positioned (like a slice offset snapped to voxel centres) on `voxel`'s slice."""
    return g.standard_slice_to_ras(view, center=g.ijk_to_ras(voxel, ijk_to_ras),
                                   offset=float(g.ijk_to_ras(voxel, ijk_to_ras) @ NORMAL[view]))


NORMAL = {"axial": np.array([0.0, 0, 1]), "sagittal": np.array([1.0, 0, 0]), "coronal": np.array([0, 1.0, 0])}


VOXEL = (90, 130, 80)  # on no middle slice, so the slice the server uses must come from the prompts
QUESTION_GROUND = "Please segment the liver."
QUESTION_REGION = "What is this?"


def _in_plane(s: np.ndarray, du: float, dv: float) -> np.ndarray:
    """An in-plane world offset of (du, dv) mm along the view's screen-right / screen-up."""
    return du * s[:3, 0] + dv * s[:3, 1]


def _prompt(kind: str, ras: np.ndarray, s: np.ndarray):
    """A prompt around `ras` on the view `s`, with the sloppiness of real placement (sub-voxel jitter)."""
    n = s[:3, 2]
    if kind == "point":
        return pr.PointPrompt(ras + _in_plane(s, 0.3, -0.2) + 0.2 * n, True)
    if kind == "box":  # a Markups ROI drawn on the view has some thickness along the normal
        return pr.BoxPrompt(ras + _in_plane(s, 9.6, -7.7) + 1.4 * n, ras + _in_plane(s, -8.2, 10.3) - 1.4 * n)
    return pr.ScribblePrompt([ras + _in_plane(s, du, dv) + 0.1 * n
                              for du, dv in ((-6, -2), (-3, 1), (0, 2.2), (3, 1), (6, -2.4))])


def _check_slice_result(r: lib.InferResult, view: str, axis: int, index: int, m, dims, want_mask: bool):
    assert (r.axis, r.slice, r.view) == (axis, index, view)
    assert r.label_path and os.path.isfile(r.label_path)
    label = _load_label_kji(r.label_path, m, dims)
    assert not pr.label_outside_slice(label, axis, index), "a slice-scope mask must occupy only its slice"
    masks = pr.masks_from_label(label, r.label_names, axis, index)
    total = sum(int(v.sum()) for v in masks.values())
    assert total == int(np.count_nonzero(label))
    if want_mask:
        assert r.seg_count >= 1 and total > 0
    # What the Slicer module does with it: replace that slice of the segment only, and undo it.
    seg = np.ones(label.shape, np.uint8)
    undo = lib.UndoStack()
    name = next(iter(masks))
    undo.push(name, axis, index, pr.write_slice(seg, masks[name], axis, index))
    assert int(seg.sum()) == seg.size - pr.read_slice(seg, axis, index).size + int(masks[name].sum())
    e = undo.pop()
    pr.write_slice(seg, e.previous, e.axis, e.index)
    assert seg.all()
    os.remove(r.label_path)
    return total


def test_connection_models_and_auth(client):
    info = client.test_connection()
    assert info.is_medplib and info.name == "MedPLIB Label" and info.version == "0.1.0"
    assert (info.models["medplib"].type, info.models["medplib"].dimension) == ("deepgrow", 2)
    assert (info.models["medplib_seg"].type, info.models["medplib_seg"].dimension) == ("segmentation", 3)
    assert {"brain", "grey matter", "white matter", "csf", "target"} <= set(info.labels)
    assert info.medplib.get("device") == "cpu" and "random" in info.strategies and "medplib" in info.trainers
    assert "medplib (deepgrow, 2D)" in info.summary()
    assert {"medplib", "medplib_seg"} <= set(client.models())  # the server may offer more (promptable modes)
    assert client.auth_enabled() is False


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("kind", ["point", "box", "scribble"])
def test_prompt_types_in_standard_views(client, mni, tmp_path, view, kind):
    m, dims = mni
    ras = g.ijk_to_ras(VOXEL, m)
    s = _view_through(view, m, VOXEL)
    axis, _ = g.slice_axis_from_normal(m, s)
    assert axis == {"sagittal": 0, "coronal": 1, "axial": 2}[view]  # the NIfTI is RAS-aligned
    prompt = _prompt(kind, ras, s)

    region = pr.build_infer_params(QUESTION_REGION, [prompt], m, s, dims=dims)
    assert (region["axis"], region["slice"]) == (axis, VOXEL[axis])
    r = client.infer("medplib", IMAGE, region, result_dir=str(tmp_path))
    assert r.task == "region" and r.answer in ("left", "right"), r.params
    used = r.params["prompts_used"]
    assert (used["foreground"], used["roi"], used["scribble"]) == (int(kind == "point"), kind == "box",
                                                                    kind == "scribble")
    _check_slice_result(r, view, axis, VOXEL[axis], m, dims, want_mask=False)

    if kind == "scribble":
        return  # scribbles are regions for region questions; grounding ignores them
    ground = pr.build_infer_params(QUESTION_GROUND, [prompt], m, s, dims=dims, segment_name="target")
    r = client.infer("medplib", IMAGE, ground, result_dir=str(tmp_path))
    assert r.task == "ground" and r.label_names == {"target": 1}
    _check_slice_result(r, view, axis, VOXEL[axis], m, dims, want_mask=True)


@pytest.mark.parametrize("view", VIEWS)
def test_permuted_anisotropic_image_with_parent_transform(client, studies, tmp_path, view):
    """`mni152_t1_lps_aniso` (axes permuted and flipped, 2.5 mm) under a parent transform: the server uses the
    slice and voxel computed here."""
    img = nib.load(str(studies / "mni152_t1_lps_aniso.nii.gz"))
    m, dims = np.asarray(img.affine, dtype=np.float64), img.shape[:3]
    parent = np.eye(4)
    parent[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 degrees about S, then a shift
    parent[:3, 3] = [12.0, -30.0, 7.5]
    voxel = (100, 70, 40)
    world = g.ijk_to_ras(voxel, m, parent)
    s = g.standard_slice_to_ras(view, center=world, offset=float(world @ NORMAL[view]))
    axis, _ = g.slice_axis_from_normal(m, s, parent)
    params = pr.build_infer_params(QUESTION_GROUND, [pr.PointPrompt(world + 0.4 * s[:3, 0])], m, s, parent,
                                   dims=dims)
    assert params["foreground"] == [list(voxel)] and params["slice"] == voxel[axis]
    r = client.infer("medplib", "mni152_t1_lps_aniso", params, result_dir=str(tmp_path))
    assert (r.axis, r.slice) == (axis, voxel[axis])
    label = _load_label_kji(r.label_path, m, dims)
    assert r.seg_count >= 1 and label.any() and not pr.label_outside_slice(label, axis, voxel[axis])


def test_uploaded_scribble_label_file(client, mni, tmp_path):
    """A scribble painted as a segment, sent as a label volume (the segment name travels as label_name)."""
    m, dims = mni
    scribble = np.zeros(dims, np.uint8)  # IJK (NIfTI order)
    scribble[80:100, 128:132, VOXEL[2]] = 1
    path = tmp_path / "scribble.nii.gz"
    nib.save(nib.Nifti1Image(scribble, m), str(path))
    s = _view_through("axial", m, VOXEL)
    params = pr.build_infer_params(QUESTION_REGION, [], m, s, dims=dims, segment_name="csf")
    r = client.infer("medplib", IMAGE, params, label_file=str(path), result_dir=str(tmp_path))
    assert r.task == "region" and r.answer in ("left", "right") and r.params["prompts_used"]["scribble"] is True
    assert r.label_names == {"csf": 1} and r.slice == VOXEL[2]


@pytest.mark.parametrize("params,field", [
    ({"axis": 5, "question": "q"}, "axis"),
    ({"window": {"center": 0, "width": -1}, "question": "q"}, "window.width"),
    ({"task": "nonsense"}, "task"),
    ({"question": "q", "axis": 2, "slice": 80, "foreground": [[90, 130, 81]]}, "foreground[0]"),
    ({"question": "q", "axis": 2, "slice": 80, "roi": [10, 10, 5, 50, 80, 80]}, "roi"),
    ({"question": "q", "axis": 2, "slice": 500}, "slice"),
])
def test_bad_params_name_the_field(client, params, field):
    with pytest.raises(lib.BadRequest) as ei:
        client.infer("medplib", IMAGE, params)
    assert ei.value.status == 422 and ei.value.field == field, ei.value
    assert f"'{field}'" in ei.value.user_message


def test_unknown_model_and_image_and_real_timeout(client, server):
    with pytest.raises(lib.NotFound) as ei:
        client.infer("no_such_model", IMAGE, {"question": "q"})
    assert "no_such_model" in ei.value.user_message
    with pytest.raises(lib.ClientError) as ei:
        client.infer("medplib", "no_such_image", {"question": "q"})
    assert ei.value.status is not None and 400 <= ei.value.status < 500
    with pytest.raises(lib.Timeout):
        lib.MedPLIBClient(server.url, timeout=0.002).infer("medplib_seg", IMAGE, {"question": QUESTION_GROUND})
    with pytest.raises(lib.ConnectionRefused):
        lib.MedPLIBClient(f"http://127.0.0.1:{_free_port()}", timeout=5).infer("medplib", IMAGE, {})


def test_save_label_then_next_sample(client, tmp_path):
    sample = client.next_sample("random")
    assert sample and sample["id"] not in LABELLED and sample.get("labelled") is False
    image_id = sample["id"]
    src = client.download_image(image_id, str(tmp_path / f"{image_id}.nii.gz"))
    img = nib.load(src)
    lab = np.zeros(img.shape[:3], np.uint8)
    lab[tuple(slice(s // 4, s // 2 + 1) for s in img.shape[:3])] = 1
    lab_path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(lab, img.affine), str(lab_path))
    completed = client.datastore()["completed"]
    res = client.save_label(image_id, str(lab_path), {"brain": 1})
    assert res["image"] == image_id
    assert client.datastore()["completed"] == completed + 1
    obj = client.datastore("all")["objects"][image_id]
    assert "final" in obj["labels"]
    labelled = LABELLED | {image_id}
    for strategy in ("random", "random", "first"):
        nxt = client.next_sample(strategy)
        assert nxt is None or nxt["id"] not in labelled


def test_upload_session_and_volume_scope(client, studies, tmp_path):
    path = tmp_path / "case.nii.gz"
    shutil.copy(studies / "mr_small.nii.gz", path)
    assert client.upload_image(str(path), "slicer_upload_1") == "slicer_upload_1"
    assert "slicer_upload_1" in client.datastore("all")["objects"]
    img = nib.load(str(path))
    m, dims = np.asarray(img.affine, dtype=np.float64), img.shape[:3]
    s = _view_through("axial", m, (32, 30, 0))
    params = pr.build_infer_params(QUESTION_REGION, [pr.PointPrompt(g.ijk_to_ras((32, 30, 0), m))], m, s, dims=dims)
    assert client.infer("medplib", "slicer_upload_1", params, result_dir=str(tmp_path)).answer in ("left", "right")

    sid = client.create_session(str(path))
    r = client.infer("medplib", "", params, session_id=sid, result_dir=str(tmp_path))
    assert r.answer in ("left", "right") and r.slice == 0
    client.remove_session(sid)

    vol = pr.build_infer_params(QUESTION_GROUND, [], m, s, scope="volume", segment_name="target")
    assert "slice" not in vol
    r = client.infer("medplib_seg", "slicer_upload_1", vol, result_dir=str(tmp_path))
    assert r.scope == "volume" and r.label_names == {"target": 1}
    label = _load_label_kji(r.label_path, m, dims)
    masks = pr.masks_from_label(label, r.label_names, r.axis, 0, scope="volume")
    assert masks["target"].shape == label.shape


def test_training_status_endpoints(client):
    status = client.train_status()
    assert status is None or isinstance(status, dict)
    assert client.train_status(check_if_running=True) is None
    assert isinstance(client.stop_training(), dict)


def test_background_job_and_cancel_against_server(client, mni, tmp_path):
    m, dims = mni
    s = _view_through("axial", m, VOXEL)
    params = pr.build_infer_params(QUESTION_REGION, [pr.PointPrompt(g.ijk_to_ras(VOXEL, m))], m, s, dims=dims)
    runner, got = lib.JobRunner(), []
    runner.submit(client.infer, "medplib", IMAGE, params, result_dir=str(tmp_path), on_done=got.append,
                  on_error=got.append)
    with pytest.raises(lib.Busy):
        runner.submit(client.infer, "medplib", IMAGE, params)
    t0 = time.monotonic()
    while runner.poll() == "running":
        assert time.monotonic() - t0 < 60
        time.sleep(0.02)
    assert len(got) == 1 and isinstance(got[0], lib.InferResult) and got[0].answer in ("left", "right")

    job = runner.submit(client.infer, "medplib", IMAGE, params, result_dir=str(tmp_path), on_done=got.append,
                        on_error=got.append)
    assert runner.cancel() and runner.poll() == "idle"
    assert job.wait(60) and job.cancelled
    while not job.finished:
        time.sleep(0.02)
    with pytest.raises(lib.JobCancelled):
        job.result()
    assert len(got) == 1  # the cancelled answer was discarded
    plain = lib.BackgroundJob(client.test_connection)
    assert plain.result(timeout=30).name == "MedPLIB Label" and plain.elapsed > 0
