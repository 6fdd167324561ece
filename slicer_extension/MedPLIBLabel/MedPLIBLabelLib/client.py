"""HTTP client of the MedPLIB Label (MONAI Label 0.8.5) server; stdlib only (urllib), safe to call off the main
thread. Every network/HTTP failure is raised as a :mod:`~MedPLIBLabelLib.errors` exception with a ``user_message``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Optional, Union

from .codec import FilePart, decode_multipart, encode_multipart, file_extension
from .errors import (BadURL, ClientError, ConnectionRefused, NotFound, ServerError, Timeout, VersionMismatch,
                     error_from_http)
from .results import InferResult, ModelInfo, ServerInfo

__all__ = ["MedPLIBClient", "ServerInfo", "ModelInfo", "InferResult", "normalize_url", "SUPPORTED_SERVER"]

# Server versions this client speaks: MedPLIB Label 0.x from 0.1 on (the `/infer` params v1 of infers/request.py).
SUPPORTED_SERVER = {"major": 0, "min_minor": 1}
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def normalize_url(url: str) -> str:
    """``localhost:8000`` -> ``http://localhost:8000``; no trailing slash; raises :class:`BadURL`."""
    raw = (url or "").strip()
    if not raw:
        raise BadURL("empty server URL", "Enter the server address, e.g. http://localhost:8000")
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port  # raises ValueError for a non-numeric / out-of-range port
    except ValueError as exc:
        raise BadURL(f"invalid server URL {url!r}: {exc}",
                     f"The server address '{url}' is not valid (check the port number).") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadURL(f"invalid server URL {url!r}",
                     f"The server address '{url}' is not valid. Use http://host:port or https://host:port")
    del port
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for piece in str(version).split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


class MedPLIBClient:
    """``MedPLIBClient("http://localhost:8000", token=None, timeout=60)``.

    ``token``: a bearer access token (str) or the ``/auth/token`` reply dict. ``timeout``: seconds for
    connecting and for each read. ``verify``: TLS certificate verification (on by default).
    """

    def __init__(self, url: str, token: Union[str, Mapping[str, Any], None] = None, timeout: float = 60.0,
                 verify: bool = True, client_id: Optional[str] = None):
        self.url = normalize_url(url)
        self.timeout = float(timeout)
        self.verify = verify
        self.client_id = client_id
        self.token = token
        self.info: Optional[ServerInfo] = None
        host = urllib.parse.urlsplit(self.url).hostname or ""
        handlers: list[Any] = []
        if host in _LOOPBACK:
            handlers.append(urllib.request.ProxyHandler({}))  # never send localhost through a proxy
        ctx = ssl.create_default_context() if verify else ssl._create_unverified_context()  # noqa: S323
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self._opener = urllib.request.build_opener(*handlers)

    # ------------------------------------------------------------------ plumbing
    @property
    def token(self) -> Optional[str]:
        return self._token

    @token.setter
    def token(self, value: Union[str, Mapping[str, Any], None]) -> None:
        if isinstance(value, Mapping):
            value = value.get("access_token")
        self._token = str(value).strip() if value else None

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json, multipart/form-data, */*", "User-Agent": "MedPLIBLabel-Slicer"}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def request(self, method: str, path: str, query: Optional[Mapping[str, Any]] = None, body: Optional[bytes] = None,
                content_type: Optional[str] = None, timeout: Optional[float] = None,
                what: str = "") -> tuple[int, str, bytes]:
        """Send one request; return (status, content type, body). Raises :class:`ClientError` subclasses."""
        q = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items() if v is not None}
        url = self.url + path + ("?" + urllib.parse.urlencode(q) if q else "")
        headers = self._headers()
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        t = self.timeout if timeout is None else float(timeout)
        try:
            with self._opener.open(req, timeout=t) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as exc:
            try:
                data = exc.read()
            except Exception:
                data = b""
            raise error_from_http(exc.code, data, url, what) from None
        except urllib.error.URLError as exc:
            raise self._network_error(exc.reason, url, t) from None
        except (http.client.InvalidURL, ValueError) as exc:
            raise BadURL(f"{url}: {exc}", f"The server address '{self.url}' is not valid.") from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._network_error(exc, url, t) from None

    def _network_error(self, reason: Any, url: str, timeout: float) -> ClientError:
        host = urllib.parse.urlsplit(self.url).netloc
        if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
            return Timeout(f"{url}: timed out after {timeout:g} s",
                           f"The MedPLIB server at {host} did not answer within {timeout:g} s. It may be busy or "
                           "still loading the model; try again or increase the timeout.", url=url)
        if isinstance(reason, socket.gaierror):
            return BadURL(f"{url}: {reason}", f"The server name '{urllib.parse.urlsplit(self.url).hostname}' "
                                              "cannot be found. Check the server address.", url=url)
        if isinstance(reason, ConnectionRefusedError):
            return ConnectionRefused(f"{url}: connection refused",
                                     f"Nothing is answering at {host}. Start the MedPLIB server, or check the "
                                     "address and port.", url=url)
        if isinstance(reason, ssl.SSLError):
            return ClientError(f"{url}: TLS error: {reason}",
                               f"The secure connection to {host} failed ({getattr(reason, 'reason', reason)}). "
                               "Check the certificate, or use http:// for a local server.", url=url)
        if isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected, http.client.HTTPException)):
            return ConnectionRefused(f"{url}: connection lost: {reason!r}",
                                     f"The server at {host} closed the connection unexpectedly. It may have "
                                     "crashed or restarted; try again.", url=url)
        return ConnectionRefused(f"{url}: {reason!r}", f"Cannot connect to the MedPLIB server at {host} "
                                                       f"({reason}). Check the address and your network.", url=url)

    def _json(self, method: str, path: str, payload: Any = None, **kw: Any) -> Any:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        status, ctype, data = self.request(method, path, body=body,
                                           content_type="application/json" if body is not None else None, **kw)
        return self._parse_json(data, kw.get("what", path))

    @staticmethod
    def _parse_json(data: bytes, what: str) -> Any:
        if not data.strip():
            return None
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError:
            raise ServerError(f"{what}: not JSON: {data[:200]!r}",
                              "The server sent an unexpected reply. Is this address a MedPLIB Label server?") \
                from None

    # ------------------------------------------------------------------ info
    def test_connection(self) -> ServerInfo:
        """GET /info/; checks it is a MedPLIB Label server of a supported version (else VersionMismatch)."""
        raw = self._json("GET", "/info/", what="server info")
        if not isinstance(raw, dict) or "models" not in raw:
            raise VersionMismatch(f"/info/ is not a MONAI Label reply: {str(raw)[:200]}",
                                  "The address answers, but it is not a MONAI Label server.")
        info = ServerInfo.from_info(self.url, raw)
        if not info.is_medplib:
            raise VersionMismatch(f"server app {info.name!r} is not MedPLIB Label",
                                  f"This MONAI Label server runs '{info.name}', not MedPLIB Label. Connect to a "
                                  "MedPLIB Label server.")
        v = _version_tuple(info.version)
        if not v or v[0] != SUPPORTED_SERVER["major"] or (len(v) > 1 and v[1] < SUPPORTED_SERVER["min_minor"]):
            need = f"{SUPPORTED_SERVER['major']}.{SUPPORTED_SERVER['min_minor']} or a later {SUPPORTED_SERVER['major']}.x"
            raise VersionMismatch(f"server version {info.version!r} not supported (need {need})",
                                  f"The MedPLIB Label server version {info.version or '(unknown)'} is not supported "
                                  f"by this Slicer module (needs {need}). Update the server or the module.")
        self.info = info
        return info

    def models(self) -> dict[str, ModelInfo]:
        """The server's models (GET /info/)."""
        raw = self._json("GET", "/info/", what="server info") or {}
        return ServerInfo.from_info(self.url, raw).models

    def auth_enabled(self) -> bool:
        """GET /auth/ (the route exists only when the server enables auth)."""
        try:
            res = self._json("GET", "/auth/", what="auth check")
        except NotFound:
            return False
        return bool((res or {}).get("enabled"))

    def login(self, username: str, password: str) -> str:
        """POST /auth/token; stores and returns the access token."""
        body = urllib.parse.urlencode({"username": username, "password": password, "grant_type": "password"})
        _, _, data = self.request("POST", "/auth/token", body=body.encode(), what="login",
                                  content_type="application/x-www-form-urlencoded")
        self.token = self._parse_json(data, "login") or {}
        return self._token or ""

    # ------------------------------------------------------------------ inference
    def infer(self, model: str, image_id: str, params: Optional[Mapping[str, Any]] = None,
              label_file: Optional[str] = None, session_id: Optional[str] = None, result_dir: Optional[str] = None,
              timeout: Optional[float] = None) -> InferResult:
        """POST /infer/{model}?image=<id>. ``label_file``: an uploaded scribble label volume (the segment name
        in ``params['label']`` is then sent as ``label_name``). The returned label volume is written into
        ``result_dir`` (a temp dir by default); the caller deletes it after loading."""
        p = dict(params or {})
        if self.client_id and "client_id" not in p:
            p["client_id"] = self.client_id
        fields: list[tuple[str, Any]] = []
        if label_file:
            if p.get("label") and not p.get("label_name"):
                p["label_name"] = p.pop("label")
            p.pop("label", None)  # the server puts the uploaded file's path in `label`; do not overwrite it
            fields.append(("label", FilePart(path=label_file)))
        fields.insert(0, ("params", json.dumps(p)))
        body, ctype = encode_multipart(fields)
        query = {"image": image_id or "", "session_id": session_id, "output": "all"}
        t0 = time.perf_counter()
        _, rtype, data = self.request("POST", f"/infer/{urllib.parse.quote(str(model), safe='')}", query=query,
                                      body=body, content_type=ctype, timeout=timeout,
                                      what=f"model '{model}', image '{image_id or session_id}'")
        rtt = (time.perf_counter() - t0) * 1e3
        if not rtype.lower().startswith("multipart/"):
            return InferResult.from_params(self._parse_json(data, "infer") or {}, None, rtt)
        try:
            parts = decode_multipart(rtype, data)
        except ValueError as exc:
            raise ServerError(f"bad multipart reply: {exc}", "The server sent a malformed answer.") from None
        result: dict = {}
        label_path = None
        for part in parts:
            if part.name == "params":
                result = json.loads(part.text() or "{}")
            elif part.filename or part.name == "image":
                fd, label_path = tempfile.mkstemp(suffix=file_extension(part.filename), prefix="medplib_",
                                                  dir=result_dir)
                with os.fdopen(fd, "wb") as f:
                    f.write(part.data)
        return InferResult.from_params(result, label_path, rtt)

    # ------------------------------------------------------------------ datastore and sessions
    def next_sample(self, strategy: str = "random", params: Optional[Mapping[str, Any]] = None) -> Optional[dict]:
        """POST /activelearning/{strategy}: the next image to label (``id``, ``path``, ...) or None when none."""
        p = dict(params or {})
        if self.client_id:
            p.setdefault("client_id", self.client_id)
        res = self._json("POST", f"/activelearning/{urllib.parse.quote(strategy, safe='')}", p,
                         what=f"strategy '{strategy}'")
        return res if isinstance(res, dict) and res.get("id") else None

    def upload_image(self, path: str, image_id: Optional[str] = None, params: Optional[Mapping] = None) -> str:
        """PUT /datastore/image?image=<id>: add a volume file to the datastore; returns its image id."""
        body, ctype = encode_multipart([("params", json.dumps(dict(params or {}))), ("file", FilePart(path=path))])
        _, _, data = self.request("PUT", "/datastore/image", query={"image": image_id}, body=body,
                                  content_type=ctype, what="image upload")
        return str((self._parse_json(data, "upload") or {}).get("image", image_id or ""))

    def remove_image(self, image_id: str) -> None:
        """DELETE /datastore/image?id=<id>: remove an image and its labels (the self-test cleans up its upload)."""
        self.request("DELETE", "/datastore/image", query={"id": image_id}, what=f"image '{image_id}'")

    def download_image(self, image_id: str, path: str) -> str:
        """GET /datastore/image?image=<id> into ``path``; returns ``path``."""
        _, _, data = self.request("GET", "/datastore/image", query={"image": image_id}, what=f"image '{image_id}'")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def create_session(self, path: str, expiry: int = 0) -> str:
        """PUT /session/: upload a volume for this session only (not stored in the datastore); returns its id."""
        body, ctype = encode_multipart([("files", FilePart(path=path))])
        _, _, data = self.request("PUT", "/session/", query={"expiry": int(expiry)}, body=body, content_type=ctype,
                                  what="session upload")
        return str((self._parse_json(data, "session") or {})["session_id"])

    def remove_session(self, session_id: str) -> None:
        self.request("DELETE", f"/session/{urllib.parse.quote(session_id, safe='')}", what="session")

    def save_label(self, image_id: str, label_path: str, label_names: Optional[Mapping[str, int]] = None,
                   tag: str = "final", params: Optional[Mapping[str, Any]] = None) -> dict:
        """PUT /datastore/label?image=&tag=: store a finished label volume (values named by ``label_names``)."""
        names = {str(k): int(v) for k, v in (label_names or {}).items()}
        p = {"label_info": [{"name": n, "idx": v} for n, v in names.items()], "label_names": names,
             **dict(params or {})}
        if self.client_id:
            p.setdefault("client_id", self.client_id)
        body, ctype = encode_multipart([("params", json.dumps(p)), ("label", FilePart(path=label_path))])
        _, _, data = self.request("PUT", "/datastore/label", query={"image": image_id, "tag": tag}, body=body,
                                  content_type=ctype, what=f"label of image '{image_id}'")
        return self._parse_json(data, "save label") or {}

    def datastore(self, output: Optional[str] = None) -> dict:
        """GET /datastore/ (``output``: None for the status summary, "all" for every image and label)."""
        return self._json("GET", "/datastore/", query={"output": output}, what="datastore") or {}

    # ------------------------------------------------------------------ training
    def train(self, model: str = "medplib", params: Optional[Mapping[str, Any]] = None) -> dict:
        """POST /train/{model}: start fine-tuning on the labelled images (BadRequest 429 if one runs)."""
        return self._json("POST", f"/train/{urllib.parse.quote(model, safe='')}", dict(params or {}),
                          what=f"training of '{model}'") or {}

    def train_status(self, check_if_running: bool = False) -> Optional[dict]:
        """GET /train/: the last training task, or None when there is none (or none running, when checking)."""
        try:
            return self._json("GET", "/train/", query={"check_if_running": check_if_running}, what="training status")
        except NotFound:
            return None

    def stop_training(self) -> dict:
        """DELETE /train/."""
        return self._json("DELETE", "/train/", what="stop training") or {}
