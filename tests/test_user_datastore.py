"""A datastore users worked in starts again with their work (issue #15, part 1), on a REAL MONAI Label server.

As a new user would: start the server, upload an image and save its final label with the stock
`monailabel.client.MONAILabelClient`, stop the server; add an image with no metadata and a DICOMweb-cached series
(tests/user_work.py: neither can come through the client); run the build step exactly as `make serve` does
(`python sample_data/build_sample_data.py --out <studies>`), start the server again the same way and check that
every one of those images is listed with its label and answers /infer with a label.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

from .app_client import APP_DIR
from .server_harness import start_server
from .user_work import add_bare_image, add_dicomweb_series, snapshot

ROOT = Path(__file__).resolve().parents[1]


def test_restart_keeps_uploaded_image_label_and_foreign_entries(sample_datastore, fitted_tiny_dir, tmp_path):
    from monailabel.client import MONAILabelClient

    studies = Path(sample_datastore)
    conf = {"model": str(fitted_tiny_dir), "device": "cpu"}
    # The user's scan: a real NIfTI of their own (nibabel's test volume, as a .nii file), and a label they drew.
    scan = tmp_path / "upload" / "my_scan.nii"
    scan.parent.mkdir()
    scan.write_bytes((Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii").read_bytes())
    img = nib.load(scan)
    drawn = np.zeros(img.shape, np.uint8)
    drawn[10:20, 12:30, 8:16] = 1
    label = tmp_path / "upload" / "my_scan_label.nii.gz"
    nib.save(nib.Nifti1Image(drawn, img.affine), label)

    with start_server(APP_DIR, studies, conf) as srv:
        client = MONAILabelClient(srv.url, str(tmp_path / "client1"))
        assert client.upload_image(str(scan), image_id="my_scan")["image"] == "my_scan"
        assert client.save_label("my_scan", str(label), tag="final")["label"] == "my_scan"
        assert srv.alive(), srv.log_tail()

    bare = add_bare_image(studies, "no_metadata", studies / "mr_small.nii.gz")
    uid = add_dicomweb_series(studies, tmp_path / "dicom")
    files = {"my_scan.nii", "labels/final/my_scan.nii.gz", f"{bare}.nii.gz", f"{uid}.nii.gz"}
    before = snapshot(studies, files, {"my_scan", bare, uid})

    step = subprocess.run([sys.executable, "sample_data/build_sample_data.py", "--out", str(studies)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert step.returncode == 0, step.stdout + step.stderr
    assert "skipped" in step.stdout and all(f"\n{i} " in step.stdout for i in ("my_scan", bare, uid)), step.stdout
    assert snapshot(studies, files, {"my_scan", bare, uid}) == before  # not touched

    with start_server(APP_DIR, studies, conf) as srv:
        client = MONAILabelClient(srv.url, str(tmp_path / "client2"))
        objects = client.datastore()["objects"]
        assert {"my_scan", bare, uid, "mni152_t1", "ct_small"} <= set(objects)
        assert objects["my_scan"]["labels"]["final"]["ext"] == ".nii.gz"
        assert "final" in objects["mni152_t1"]["labels"]
        saved = tmp_path / "saved_label.nii.gz"
        got = srv.url + "/datastore/label?label=my_scan&tag=final"
        r = httpx.get(got, timeout=60)
        assert r.status_code == 200, r.text
        saved.write_bytes(r.content)
        assert np.array_equal(np.asanyarray(nib.load(saved).dataobj), drawn)  # their final label, as saved

        for image_id in ("my_scan", bare, uid):
            label_file, out = client.infer("medplib", image_id, {"label": "brain"})
            res = nib.load(label_file)
            ref = nib.load(studies / f"{image_id}{'.nii' if image_id == 'my_scan' else '.nii.gz'}")
            assert res.shape == ref.shape and np.allclose(res.affine, ref.affine, atol=1e-4), image_id
            assert out["task"] == "ground" and out["label_names"] == {"brain": 1}, out
        assert srv.alive(), srv.log_tail()
