"""/session and /infer input guards (cases schemathesis found as 500s in MONAI Label's own handlers) and archive
safety: a tar or zip whose members leave the session folder is refused before anything is unpacked."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from .app_client import monailabel_client


@pytest.fixture()
def client(sample_datastore, fitted_tiny_dir):
    with monailabel_client(sample_datastore, {"model": str(fitted_tiny_dir)}) as (c, _):
        yield c


def _tar(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo("link")
            info.type, info.linkname = tarfile.SYMTYPE, symlink
            tf.addfile(info)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_infer_without_any_image_is_422_naming_image(client):
    r = client.post("/infer/medplib", data={"params": "{}"})
    assert r.status_code == 422 and r.json()["detail"].startswith("image:")


def test_wsi_endpoints_are_not_served(client):
    assert client.post("/infer/wsi_v2/medplib", data={"params": "{}"}).status_code in (404, 405)


def test_empty_upload_and_non_archive_refused(client):
    r = client.put("/session/", files={"files": ("a.nii.gz", b"")})
    assert r.status_code == 422 and "files" in r.json()["detail"] and "empty" in r.json()["detail"]
    r = client.put("/session/?uncompress=true", files={"files": ("a.zip", b"not an archive")})
    assert r.status_code == 422 and "archive" in r.json()["detail"]
    assert client.put("/session/?expiry=-5", files={"files": ("a.bin", b"x")}).status_code == 422


@pytest.mark.parametrize("archive", [
    lambda tmp: ("evil.tar.gz", _tar({"../escaped.txt": b"pwned"})),
    lambda tmp: ("evil.tar.gz", _tar({str(tmp / "abs.txt"): b"pwned"})),
    lambda tmp: ("evil.tar.gz", _tar({"ok.txt": b"x"}, symlink="/etc/passwd")),
    lambda tmp: ("evil.zip", _zip({"../escaped.txt": b"pwned"})),
])
def test_unsafe_archives_refused_nothing_written(client, tmp_path, archive):
    name, data = archive(tmp_path)
    cwd = Path.cwd()
    r = client.put("/session/?uncompress=true", files={"files": (name, data)})
    assert r.status_code == 422 and "unsafe" in r.json()["detail"], r.text
    assert not (tmp_path / "abs.txt").exists() and not (cwd.parent / "escaped.txt").exists()


def test_session_roundtrip_and_multi_file_image_is_409(client, tmp_path):
    r = client.put("/session/?uncompress=true", files={"files": ("ok.tar.gz", _tar({"a.txt": b"1", "b.txt": b"2"}))})
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    assert client.get(f"/session/{sid}").status_code == 200
    r = client.get(f"/session/{sid}?image=true")  # an unpacked archive is a folder, not one image file
    assert r.status_code == 409 and r.json()["detail"].startswith("image:")
    assert client.delete(f"/session/{sid}").status_code == 200
    assert client.get(f"/session/{sid}").status_code == 404
    single = client.put("/session/", files={"files": ("one.bin", b"abc")}).json()["session_id"]
    r = client.get(f"/session/{single}?image=true")
    assert r.status_code == 200 and r.content == b"abc"
