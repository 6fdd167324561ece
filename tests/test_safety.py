"""Bad files and unsafe names are refused with 4xx and leave the datastore untouched; label saves are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .app_client import monailabel_client


@pytest.fixture()
def client(sample_datastore, fitted_tiny_dir):
    with monailabel_client(sample_datastore, {"model": str(fitted_tiny_dir)}) as (c, instance):
        yield c, instance, Path(sample_datastore)


def _state(studies: Path) -> dict:
    files = {str(p.relative_to(studies)): p.read_bytes() for p in studies.rglob("*") if p.is_file()
             and p.name != ".lock"}
    return files


@pytest.mark.parametrize("query", ["image=../../etc/passwd", "image=a/b", "image=%2e%2e", "image=x%00y",
                                   "image=mni152_t1&tag=../final", "image=mni152_t1&tag=fi nal"])
def test_path_traversal_and_injection_refused(client, query):
    c, _, studies = client
    before = _state(studies)
    r = c.put(f"/datastore/label?{query}", files={"label": ("x.nii.gz", b"junk")}, data={"params": "{}"})
    assert r.status_code == 422 and ("image" in r.json()["detail"] or "tag" in r.json()["detail"])
    r = c.post(f"/infer/medplib?{query}", data={"params": "{}"})
    assert r.status_code == 422
    assert _state(studies) == before


def _label_file(tmp_path, ref_path, shape=None, affine=None, corrupt=False, name="label.nii.gz"):
    ref = nib.load(str(ref_path))
    path = tmp_path / name
    if corrupt:
        data = Path(ref_path).read_bytes()
        path.write_bytes(data[: len(data) // 3])  # a truncated gzip stream
        return path
    arr = np.zeros(shape or ref.shape, np.uint8)
    arr[(slice(0, 5),) * 3] = 1
    nib.save(nib.Nifti1Image(arr, ref.affine if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize("case", ["corrupt", "not_an_image", "shape", "affine"])
def test_bad_label_files_refused_datastore_untouched(client, tmp_path, case):
    c, _, studies = client
    ref = studies / "mni152_t1.nii.gz"
    if case == "corrupt":
        path = _label_file(tmp_path, ref, corrupt=True)
    elif case == "not_an_image":
        path = tmp_path / "label.nii.gz"
        path.write_text("this is not an image")
    elif case == "shape":
        path = _label_file(tmp_path, ref, shape=(10, 10, 10))
    else:
        affine = nib.load(str(ref)).affine.copy()
        affine[0, 3] += 25.0
        path = _label_file(tmp_path, ref, affine=affine)
    before = _state(studies)
    with open(path, "rb") as fh:
        r = c.put("/datastore/label?image=mni152_t1&tag=final", files={"label": ("label.nii.gz", fh)},
                  data={"params": json.dumps({"label_info": [{"name": "brain", "idx": 1}]})})
    assert r.status_code == 422 and "label" in r.json()["detail"], r.text
    assert _state(studies) == before


def test_good_label_saved_then_corrupt_image_upload_refused(client, tmp_path):
    c, instance, studies = client
    path = _label_file(tmp_path, studies / "ct_small.nii.gz")
    with open(path, "rb") as fh:
        r = c.put("/datastore/label?image=ct_small&tag=final", files={"label": ("label.nii.gz", fh)},
                  data={"params": "{}"})
    assert r.status_code == 200, r.text
    assert "ct_small" in instance().datastore().get_labeled_images()
    before = _state(studies)
    bad = tmp_path / "upload.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08garbage")
    with open(bad, "rb") as fh:
        r = c.put("/datastore/image?image=new_scan", files={"file": ("upload.nii.gz", fh)}, data={"params": "{}"})
    assert r.status_code == 422 and "file" in r.json()["detail"]
    assert _state(studies) == before


KILL_SCRIPT = r"""
import os, sys, time, shutil
sys.path.insert(0, {root!r})
import medplib_label.datastore as d
from monailabel.datastore.local import LocalDatastore
orig = shutil.copyfileobj
def slow_copy(src, dst, length=0):
    dst.write(src.read(1000)); dst.flush(); print("WRITING", flush=True); time.sleep(60)
d.shutil.copyfileobj = slow_copy
ds = d.SafeLocalDatastore({studies!r}, auto_reload=False)
ds.save_label("mni152_t1", {label!r}, "final", {{}})
"""


def test_process_killed_mid_save_leaves_previous_label_intact(sample_datastore, tmp_path):
    studies = Path(sample_datastore)
    final = studies / "labels" / "final" / "mni152_t1.nii.gz"
    before = final.read_bytes()
    new_label = _label_file(tmp_path, studies / "mni152_t1.nii.gz")
    script = KILL_SCRIPT.format(root=str(Path(__file__).resolve().parents[1]), studies=str(studies),
                                label=str(new_label))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "WRITING"  # the new label is half written right now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert final.read_bytes() == before  # the previous label is intact and still the one on disk
    assert nib.load(str(final)).shape == nib.load(str(studies / "mni152_t1.nii.gz")).shape
