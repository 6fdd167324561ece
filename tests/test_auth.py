"""MONAI Label auth mode end to end: a local stand-in for the Keycloak realm (its public-key endpoint), real
RS256 JWTs, the real server. No token -> 401; roles respected for infer, save label and train."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .app_client import APP_DIR
from .server_harness import start_server


@pytest.fixture(scope="module")
def realm():
    """Serves GET /realms/monailabel -> {"public_key": ...} like Keycloak (the only call MONAI Label makes)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"realm": "monailabel", "public_key": base64.b64encode(der).decode()}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path.startswith("/realms/monailabel") else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/realms/monailabel", key
    server.shutdown()


def token(key, roles: list[str], user: str = "dr.who", expires_in: int = 600) -> str:
    now = int(time.time())
    claims = {"preferred_username": user, "email": f"{user}@hospital.example", "name": user,
              "realm_access": {"roles": roles}, "iat": now, "exp": now + expires_in}
    return jwt.encode(claims, key, algorithm="RS256")


@pytest.fixture(scope="module")
def auth_server(realm, sample_datastore_master, fitted_tiny_dir, tmp_path_factory):
    realm_uri, _ = realm
    studies = shutil.copytree(sample_datastore_master, tmp_path_factory.mktemp("auth") / "datastore")
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm_uri}
    with start_server(APP_DIR, studies, {"model": str(fitted_tiny_dir), "device": "cpu"}, env=env) as srv:
        yield srv


def _infer(url, headers):
    return httpx.post(f"{url}/infer/medplib?image=mni152_t1&output=json", headers=headers,
                      data={"params": json.dumps({"label": "brain", "slice": 90})}, timeout=120)


def test_no_or_bad_token_is_401(auth_server, realm):
    url = auth_server.url
    assert httpx.get(f"{url}/auth/").json()["enabled"] is True
    assert httpx.get(f"{url}/info/").status_code == 401
    assert _infer(url, {}).status_code == 401
    _, key = realm
    expired = token(key, ["monailabel-user"], expires_in=-60)
    assert _infer(url, {"Authorization": f"Bearer {expired}"}).status_code == 401
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # signed by someone else
    assert _infer(url, {"Authorization": f"Bearer {token(other, ['monailabel-admin'])}"}).status_code == 401


def test_roles_are_respected(auth_server, realm, tmp_path):
    url = auth_server.url
    _, key = realm
    user = {"Authorization": f"Bearer {token(key, ['monailabel-user'])}"}
    annotator = {"Authorization": f"Bearer {token(key, ['monailabel-user', 'monailabel-annotator'])}"}
    # MONAI Label roles are not hierarchical: an administrator holds all of them (as set up in Keycloak).
    admin = {"Authorization": f"Bearer {token(key, ['monailabel-admin', 'monailabel-reviewer', 'monailabel-annotator', 'monailabel-user'])}"}
    assert httpx.get(f"{url}/info/", headers=user).status_code == 200
    r = _infer(url, user)
    assert r.status_code == 200 and r.json()["task"] == "ground"
    label = httpx.get(f"{url}/datastore/label?label=mni152_t1&tag=final", headers=user).content
    files = {"label": ("label.nii.gz", label)}
    assert httpx.put(f"{url}/datastore/label?image=mni152_t1&tag=final", headers=user, files=files,
                     data={"params": "{}"}).status_code == 403
    assert httpx.put(f"{url}/datastore/label?image=mni152_t1&tag=final", headers=annotator, files=files,
                     data={"params": "{}"}).status_code == 200
    assert httpx.post(f"{url}/train/medplib", headers=annotator, json={"epochs": 1}).status_code == 403
    assert httpx.delete(f"{url}/train/", headers=user).status_code == 403
    assert httpx.get(f"{url}/train/?check_if_running=true", headers=admin).status_code in (200, 404)
    assert httpx.delete(f"{url}/train/", headers=admin).status_code in (200, 404)  # admin may stop training
