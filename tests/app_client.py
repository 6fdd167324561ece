"""In-process MONAI Label server (its real FastAPI app) for tests, plus multipart response parsing."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib

APP_DIR = str(Path(__file__).resolve().parents[1] / "monailabel_app")


@contextmanager
def monailabel_client(studies: str | os.PathLike, conf: dict[str, str]):
    """A TestClient on monailabel.app:app configured like `monailabel start_server` would."""
    from fastapi.testclient import TestClient
    from monailabel.config import settings

    saved = {k: getattr(settings, k) for k in ("MONAI_LABEL_APP_DIR", "MONAI_LABEL_STUDIES", "MONAI_LABEL_APP_CONF")}
    settings.MONAI_LABEL_APP_DIR = APP_DIR
    settings.MONAI_LABEL_STUDIES = str(studies)
    settings.MONAI_LABEL_APP_CONF = dict(conf)
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
    settings.MONAI_LABEL_AUTO_UPDATE_SCORING = False
    settings.MONAI_LABEL_TRACKING_ENABLED = False
    settings.MONAI_LABEL_SESSION_PATH = tempfile.mkdtemp(prefix="mlsessions_")
    from monailabel.interfaces.utils.app import app_instance, clear_cache

    from medplib_label.server import app  # MONAI Label's app with our non-blocking /infer, as `make serve` runs

    clear_cache()
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, app_instance
    finally:
        clear_cache()
        for k, v in saved.items():
            setattr(settings, k, v)


def parse_infer(response, tmp_dir: str | os.PathLike) -> tuple[dict, nib.Nifti1Image | None, Path | None]:
    """(params, label image, label path) from a multipart /infer response."""
    from requests_toolbelt.multipart import decoder

    assert response.status_code == 200, response.text
    params, label, path = None, None, None
    for part in decoder.MultipartDecoder(response.content, response.headers["content-type"]).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        if 'name="params"' in disposition:
            params = json.loads(part.text)
        else:
            name = disposition.split("filename=")[1].strip('"')
            path = Path(tmp_dir) / os.path.basename(name)
            path.write_bytes(part.content)
            label = nib.load(str(path)) if not name.endswith(".nrrd") else None
    return params, label, path
