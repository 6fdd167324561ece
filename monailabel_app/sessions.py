"""`/session` endpoints that answer bad input with 4xx instead of MONAI Label's 500s, and refuse unsafe archives.

MONAI Label's own handlers return 500 when an uploaded part is empty, when `uncompress=true` gets something that is
not an archive, or when `image=true` asks for a multi-file session (a folder); and they unpack archives without
checking member names, so a tar with `../` or absolute paths could write outside the session store. These
replacements validate first and then call MONAI Label's session store exactly as the originals do.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import PurePosixPath
from typing import List

from fastapi import APIRouter, BackgroundTasks, Depends, File, HTTPException, UploadFile
from fastapi.responses import FileResponse
from monailabel.config import RBAC_USER, settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import get_basename, get_mime_type, remove_file

router = APIRouter(prefix="/session", tags=["Session"])


def _sessions():
    sessions = app_instance().sessions()
    if sessions is None:
        raise HTTPException(status_code=406, detail="Session Feature is Not Enabled")
    return sessions


def _unsafe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def check_archive(path: str) -> None:
    """Raise 422 (field `files`) unless `path` is a zip or tar whose members all stay inside the target folder."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        bad = [n for n in names if _unsafe_member(n)]
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            members = tf.getmembers()
        names = [m.name for m in members]
        bad = [m.name for m in members if _unsafe_member(m.name) or not (m.isfile() or m.isdir())]
    else:
        raise HTTPException(status_code=422, detail="files: uncompress=true needs a .zip or .tar(.gz) archive")
    if not names:
        raise HTTPException(status_code=422, detail="files: the archive is empty")
    if bad:
        raise HTTPException(status_code=422, detail=f"files: unsafe archive member(s) refused: {bad[:3]}")


@router.get("/{session_id}", summary=f"{RBAC_USER}Get Session ID")
async def api_get_session(session_id: str, update_ts: bool = False, image: bool = False,
                          user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    info = _sessions().get_session(session_id, update_ts=update_ts)
    if not info:
        raise HTTPException(status_code=404, detail=f"Session ({session_id}) Not Found")
    if not image:
        return info.to_json()
    if not os.path.isfile(info.image):
        raise HTTPException(status_code=409, detail="image: this session holds several files (a folder); "
                                                    "fetch its info without image=true")
    return FileResponse(info.image, media_type=get_mime_type(info.image), filename=get_basename(info.image))


@router.put("/", summary=f"{RBAC_USER}Create new session with Image")
async def api_create_session(background_tasks: BackgroundTasks, uncompress: bool = False, expiry: int = 0,
                             files: List[UploadFile] = File(...),
                             user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    sessions = _sessions()
    if expiry < 0:
        raise HTTPException(status_code=422, detail="expiry: must be >= 0 seconds")
    received = tempfile.mkdtemp(prefix="medplib_session_")
    ok = False
    try:
        paths = []
        for i, f in enumerate(files):
            name = get_basename(f.filename) if f.filename else ""
            if not name or name in (".", ".."):
                name = f"upload_{i}"
            path = os.path.join(received, name)
            with open(path, "wb") as out:
                shutil.copyfileobj(f.file, out)
            if os.path.getsize(path) == 0:
                raise HTTPException(status_code=422, detail=f"files: part {i} ('{name}') is empty")
            paths.append(path)
        if not paths:
            raise HTTPException(status_code=422, detail="files: no file uploaded")
        if uncompress:
            if len(paths) != 1:
                raise HTTPException(status_code=422, detail="files: uncompress=true takes exactly one archive")
            check_archive(paths[0])
        source = paths[0] if len(paths) == 1 else received
        try:
            session_id, info = sessions.add_session(source, expiry, uncompress)
        except (OSError, ValueError, shutil.ReadError, tarfile.TarError, zipfile.BadZipFile) as exc:
            raise HTTPException(status_code=422, detail=f"files: could not store the upload: {exc}") from None
        ok = True
    finally:
        if ok:  # the store moved the upload; remove what is left once the reply is out
            background_tasks.add_task(remove_file, received)
        else:  # error replies run no background tasks
            shutil.rmtree(received, ignore_errors=True)
    return {"session_id": session_id, "session_info": info.to_json()}


@router.delete("/{session_id}", summary=f"{RBAC_USER}Delete Session")
async def api_remove_session(session_id: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    sessions = _sessions()
    info = sessions.get_session(session_id)
    if not info:
        raise HTTPException(status_code=404, detail="Session Not Found")
    sessions.remove_session(session_id)
    return info.to_json()
