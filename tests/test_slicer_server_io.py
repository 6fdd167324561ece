"""The Slicer module's Lib against the REAL MedPLIB Label server (conftest `server`: `monailabel start_server`,
fitted tiny model on CPU), for issue #19: the lasso sent as its filled region (alone and with a scribble), the
geometry check of returned labels, uploads and labels written as NRRD in the worker, result files in the module's
own folder (also after cancel), and background transfers that keep moving while a GIL-holding "Qt loop" idles.

What this cannot check: Slicer itself. The Qt loop is a stand-in (`usleep` called through `ctypes.PyDLL`, which
keeps the GIL like PythonQt's idle loop), and the MRML side (loading the file, writing segments) is exercised only
by the in-Slicer self-test.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "slicer_extension" / "MedPLIBLabel"))

import MedPLIBLabelLib as lib  # noqa: E402
from MedPLIBLabelLib import geometry as g, protocol as pr, regions, tasks, volume_io  # noqa: E402

IMAGE = "mni152_t1"
VOXEL = (90, 130, 80)
QUESTION_REGION = "What is this?"


@pytest.fixture(scope="module")
def client(server) -> lib.MedPLIBClient:
    return lib.MedPLIBClient(server.url, timeout=120)


@pytest.fixture(scope="module")
def mni(studies):
    img = nib.load(str(studies / f"{IMAGE}.nii.gz"))
    return np.asarray(img.affine, dtype=np.float64), tuple(int(s) for s in img.shape[:3])


def _axial(m, voxel) -> np.ndarray:
    world = g.ijk_to_ras(voxel, m)
    return g.standard_slice_to_ras("axial", center=world, offset=float(world[2]))


def _ring(m, voxel, radius_vox: float, n: int = 12, centre_shift=(0.0, 0.0)) -> list:
    """A closed curve of `n` world points around `voxel` on its axial slice (like a lasso drawn there)."""
    pts = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        ijk = np.array(voxel, float) + [centre_shift[0] + radius_vox * np.cos(a),
                                          centre_shift[1] + radius_vox * np.sin(a), 0.1]
        pts.append(g.ijk_to_ras(ijk, m).tolist())
    return pts


# ---------------------------------------------------------------------------------------------------- item 1
def test_lasso_goes_as_its_filled_region_and_combines_with_a_scribble(client, mni, tmp_path):
    m, dims = mni
    s = _axial(m, VOXEL)
    prompts = lib.collect_prompts(lasso=_ring(m, VOXEL, 6.0))
    assert [type(p) for p in prompts] == [pr.LassoPrompt]
    params = pr.build_infer_params(QUESTION_REGION, prompts, m, s, dims=dims)
    assert "scribble" not in params  # the outline is not sent as a 3-px stroke
    region = regions.lasso_region(prompts[0], m, s, dims=dims)
    assert (region.axis, region.index) == (2, VOXEL[2])
    plane = region.plane  # rows J, columns I
    assert plane[VOXEL[1], VOXEL[0]], "the lasso's inside must be part of the region"
    assert region.voxels > 100 and not plane[VOXEL[1], VOXEL[0] + 9]
    r = tasks.infer_with_region(client, "medplib", IMAGE, params, region, m, str(tmp_path))
    assert r.task == "region" and r.answer in ("left", "right")
    assert r.params["prompts_used"]["scribble"] is True and r.params["prompts_used"]["regions"] == 1
    assert r.label_path and Path(r.label_path).parent == tmp_path

    # A scribble and a lasso in one question: two regions.
    scribble = [g.ijk_to_ras(np.array(VOXEL, float) + [d, 20, 0], m).tolist() for d in (-5, 0, 5)]
    both = lib.collect_prompts(scribble=scribble, lasso=_ring(m, VOXEL, 6.0))
    params = pr.build_infer_params(QUESTION_REGION, both, m, s, dims=dims)
    assert len(params["scribble"]) == 3
    r = tasks.infer_with_region(client, "medplib", IMAGE, params, regions.lasso_region(both[1], m, s, dims=dims),
                                m, str(tmp_path))
    assert r.params["prompts_used"]["regions"] == 2
    assert not [f for f in os.listdir(tmp_path) if f.startswith("lasso_")], "the uploaded region file is removed"


# ---------------------------------------------------------------------------------------------------- item 4
def test_returned_label_geometry_is_checked(client, mni, tmp_path):
    m, dims = mni
    s = _axial(m, VOXEL)
    params = pr.build_infer_params("Please segment the liver.", [pr.PointPrompt(g.ijk_to_ras(VOXEL, m))], m, s,
                                   dims=dims, segment_name="target")
    r = client.infer("medplib", IMAGE, params, result_dir=str(tmp_path))
    img = nib.load(r.label_path)
    shape_kji = img.shape[::-1]
    kji = tuple(reversed(dims))
    volume_io.check_label_geometry(img.affine, shape_kji, m, kji)  # the server's answer: same grid
    flipped = m.copy()  # same shape, I axis reversed: array index i would land on voxel dims-1-i
    flipped[:3, 0] = -m[:3, 0]
    flipped[:3, 3] = m[:3, 3] + m[:3, 0] * (dims[0] - 1)
    with pytest.raises(volume_io.LabelGeometryError) as ei:
        volume_io.check_label_geometry(flipped, shape_kji, m, kji)
    assert "geometry" in ei.value.user_message
    shifted = m.copy()
    shifted[:3, 3] += 0.5 * m[:3, 2]  # half a slice off
    with pytest.raises(volume_io.LabelGeometryError):
        volume_io.check_label_geometry(shifted, shape_kji, m, kji)
    swapped = m[:, [1, 0, 2, 3]]  # other axis order with a cubic-looking shape
    with pytest.raises(volume_io.LabelGeometryError):
        volume_io.check_label_geometry(swapped, shape_kji, m, kji)
    with pytest.raises(volume_io.LabelGeometryError):
        volume_io.check_label_geometry(m, (1,) + shape_kji[1:], m, kji)
    noisy = m.astype(np.float32).astype(np.float64)  # NIfTI's float32 header rounding is not a mismatch
    noisy[:3, :] += 1e-5
    volume_io.check_label_geometry(noisy, shape_kji, m, kji)


# ---------------------------------------------------------------------------------------------------- item 7
def test_nrrd_writer_geometry_as_itk_reads_it(tmp_path, studies):
    img = nib.load(str(studies / "mni152_t1_lps_aniso.nii.gz"))  # permuted, flipped, anisotropic
    m = np.asarray(img.affine, dtype=np.float64)
    kji = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.int16)
    for compress in (False, True):
        path = volume_io.write_nrrd(str(tmp_path / f"v{int(compress)}.nrrd"), kji, m, compress=compress)
        head = Path(path).read_bytes()[:400].decode("ascii", "replace")
        assert ("encoding: raw" in head) is not compress
        back = sitk.ReadImage(path)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), kji)  # SimpleITK's arrays are KJI too
        d = np.asarray(back.GetDirection()).reshape(3, 3) * np.asarray(back.GetSpacing())
        lps = np.diag([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(lps @ d, m[:3, :3], atol=1e-6)
        np.testing.assert_allclose(lps @ np.asarray(back.GetOrigin()), m[:3, 3], atol=1e-6)
    assert os.path.getsize(tmp_path / "v0.nrrd") > kji.nbytes


def test_upload_array_and_submit_label_as_nrrd_round_trip(client, studies, tmp_path):
    img = nib.load(str(studies / "mni152_t1_lps_aniso.nii.gz"))
    m = np.asarray(img.affine, dtype=np.float64)
    kji = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.int16)
    runner = lib.JobRunner()
    runner.submit(tasks.upload_volume_array, client, kji, m, "slicer_issue19_upload", str(tmp_path))
    while runner.poll() == "running":
        pass
    assert runner.job is None
    assert "slicer_issue19_upload" in client.datastore("all")["objects"]
    assert os.listdir(tmp_path) == [], "the written NRRD is removed after the upload"
    dims = kji.shape[::-1]
    voxel = (40, 30, 20)
    world = g.ijk_to_ras(voxel, m)
    s = g.standard_slice_to_ras("axial", center=world, offset=float(world[2]))
    params = pr.build_infer_params("Please segment the liver.", [pr.PointPrompt(world)], m, s, dims=dims)
    r = client.infer("medplib", "slicer_issue19_upload", params, result_dir=str(tmp_path))
    lab = nib.load(r.label_path)  # the server read our NRRD's geometry: its answer lies on our grid
    volume_io.check_label_geometry(lab.affine, lab.shape[::-1], m, kji.shape)
    assert (r.axis, r.slice) == (params["axis"], params["slice"])

    label = np.zeros(kji.shape, np.uint8)
    label[10:20, 20:30, 30:40] = 2
    before = client.datastore()["completed"]
    tasks.submit_label_array(client, "slicer_issue19_upload", label, m, {"grey matter": 2}, str(tmp_path))
    assert client.datastore()["completed"] == before + 1
    assert "final" in client.datastore("all")["objects"]["slicer_issue19_upload"]["labels"]
    assert [f for f in os.listdir(tmp_path) if f.endswith(".nrrd")] == []


# ---------------------------------------------------------------------------------------------------- item 9
def test_result_files_stay_in_the_module_folder_and_cancelled_ones_are_removed(client, mni, tmp_path):
    m, dims = mni
    folder = tasks.make_temp_dir(str(tmp_path / "slicer_tmp"))
    s = _axial(m, VOXEL)
    params = pr.build_infer_params(QUESTION_REGION, [pr.PointPrompt(g.ijk_to_ras(VOXEL, m))], m, s, dims=dims)
    runner, got = lib.JobRunner(), []
    runner.submit(tasks.infer_with_region, client, "medplib", IMAGE, params, None, m, folder, on_done=got.append,
                  on_discard=tasks.discard_result)
    while runner.poll() == "running":
        pass
    assert Path(got[0].label_path).parent == Path(folder)
    os.remove(got[0].label_path)

    job = runner.submit(tasks.infer_with_region, client, "medplib", IMAGE, params, None, m, folder,
                        on_discard=tasks.discard_result)
    assert runner.cancel()
    while not job.finished:
        time.sleep(0.01)
    time.sleep(0.05)  # the discard runs right after the thread marks itself finished
    assert os.listdir(folder) == [], "a cancelled answer's label file must not leak"

    sample = runner.submit(tasks.fetch_sample, client, "random", folder, on_discard=tasks.discard_result)
    sample.wait(60)
    sample.cancel()  # finished but never delivered: discarded by cancel() itself
    assert os.listdir(folder) == []
    tasks.remove_temp_dir(folder)
    assert not os.path.exists(folder)


# ---------------------------------------------------------------------------------------------------- item 6
_LIBC = ctypes.PyDLL(None)  # PyDLL calls keep the GIL: a stand-in for Qt's idle loop inside PythonQt
_LIBC.usleep.argtypes = [ctypes.c_uint]


def _transfer_under_gil_holding_loop(fn, yield_s: float, tick_ms: int, limit_s: float = 60.0) -> float:
    """Run ``fn`` as the widget does (a JobRunner polled every ``tick_ms``), while the "event loop" between polls
    holds the GIL; returns the wall time until the result arrived."""
    runner, got = lib.JobRunner(), []
    t0 = time.monotonic()
    runner.submit(fn, on_done=got.append)
    while runner.poll(yield_s=yield_s) == "running":
        assert time.monotonic() - t0 < limit_s
        _LIBC.usleep(tick_ms * 1000)
    assert got, "the transfer failed"
    return time.monotonic() - t0


def test_background_transfers_move_while_the_qt_loop_holds_the_gil(client, tmp_path):
    """The widget's poll (POLL_MS timer, POLL_YIELD_S wait) against the old one (100 ms timer, no wait) for a 21 MB
    download and upload on loopback. Without the wait the worker only runs during the poll's few bytecodes."""
    big = (np.random.RandomState(0).rand(80, 256, 256) * 1000).astype(np.float32)  # 21 MB
    m = np.diag([1.0, 1.0, 2.0, 1.0])
    client.upload_image(volume_io.write_nrrd(str(tmp_path / "big.nrrd"), big, m), "slicer_issue19_big")
    path = str(tmp_path / "down.nrrd")

    def download():
        return client.download_image("slicer_issue19_big", path)

    def upload():
        return tasks.upload_volume_array(client, big, m, "slicer_issue19_big2", str(tmp_path))

    _transfer_under_gil_holding_loop(download, lib.POLL_YIELD_S, lib.POLL_MS)  # warm the server's file cache
    timings = {}
    for name, fn in (("download", download), ("upload", upload)):
        new = min(_transfer_under_gil_holding_loop(fn, lib.POLL_YIELD_S, lib.POLL_MS) for _ in range(2))
        old = min(_transfer_under_gil_holding_loop(fn, 0.0, 100) for _ in range(2))
        timings[name] = (new, old)
    assert os.path.getsize(path) > big.nbytes
    new, old = timings["download"]
    # Idle, the yielding poll is tens of times faster; the margins are small because a loaded shared machine
    # (other jobs on 2 cores) squeezes both runs: what matters is that yielding lets the worker move at all.
    assert new * 1.2 < old, f"download: {new:.3f} s with the yielding poll, {old:.3f} s without ({timings})"
    new, old = timings["upload"]  # the server's own work (reading, checking, storing the image) is in both
    assert new * 1.2 < old, f"upload: {new:.3f} s with the yielding poll, {old:.3f} s without ({timings})"


# ---------------------------------------------------------------------------------------------------- items 2, 5
def test_segments_of_the_servers_structures_get_stable_distinct_colours(client):
    info = client.test_connection()
    assert info.labels and all(v > 0 and n.lower() != "background" for n, v in info.labels.items())
    used = []
    for name in sorted(info.labels, key=info.labels.get):
        color = lib.pick_segment_color(name, info.labels, used)
        assert color not in used, (name, color)
        used.append(color)
    first = min(info.labels, key=info.labels.get)
    assert lib.pick_segment_color(first, info.labels, []) == lib.segment_color(info.labels[first])


def test_remove_image_cleans_up_an_upload(client, studies, tmp_path):
    """What the in-Slicer self-test does with the image it uploads."""
    img = nib.load(str(studies / "mr_small.nii.gz"))
    kji = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.int16)
    tasks.upload_volume_array(client, kji, img.affine, "slicer_selftest_cleanup", str(tmp_path))
    assert "slicer_selftest_cleanup" in client.datastore("all")["objects"]
    client.remove_image("slicer_selftest_cleanup")
    assert "slicer_selftest_cleanup" not in client.datastore("all")["objects"]
