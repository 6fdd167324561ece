"""Errors raised by the MedPLIB Label client.

Every network or HTTP failure of :class:`~MedPLIBLabelLib.client.MedPLIBClient` is one of these. Each carries a
``user_message`` in plain English meant for a clinician (what went wrong and what to do), while ``str(exc)`` keeps
the technical detail for logs and "details" panes.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

__all__ = ["ClientError", "ConnectionRefused", "BadURL", "Unauthorized", "NotFound", "BadRequest", "ServerError",
           "Timeout", "VersionMismatch", "error_from_http"]


class ClientError(Exception):
    """Base class. ``user_message``: clear English for the user; ``status``: HTTP status (None for network
    errors); ``field``: the request parameter the server complained about (if any); ``detail``: the server's
    ``detail`` text; ``url``: the request URL."""

    default_message = "The MedPLIB server request failed."

    def __init__(self, message: str = "", user_message: str = "", *, status: Optional[int] = None,
                 field: Optional[str] = None, detail: Any = None, url: Optional[str] = None):
        self.user_message = user_message or message or self.default_message
        super().__init__(message or self.user_message)
        self.status = status
        self.field = field
        self.detail = detail
        self.url = url


class ConnectionRefused(ClientError):
    """Nothing answers at the address: the server is not running, or the port is wrong."""

    default_message = ("Cannot connect to the MedPLIB server. Check that the server is running and that the "
                       "address and port are correct.")


class BadURL(ClientError):
    """The server address is malformed, or its host name cannot be resolved."""

    default_message = "The server address is not valid. Use a form like http://localhost:8000"


class Unauthorized(ClientError):
    """HTTP 401/403: the token is missing, expired or lacks the needed role."""

    default_message = ("The server refused access (login required or token expired). Log in again or check "
                       "your access token.")


class NotFound(ClientError):
    """HTTP 404: unknown endpoint, model, image or session."""

    default_message = "The server does not know the requested item."


class BadRequest(ClientError):
    """HTTP 4xx (other than 401/403/404): the server rejected the input; ``field`` names the parameter."""

    default_message = "The server rejected the request."


class ServerError(ClientError):
    """HTTP 5xx: the server failed while processing the request."""

    default_message = "The MedPLIB server had an internal error. Try again, or ask the administrator to check its log."


class Timeout(ClientError):
    """No answer within the client's timeout."""

    default_message = ("The MedPLIB server did not answer in time. It may be busy or loading the model; try again "
                       "or increase the timeout.")


class VersionMismatch(ClientError):
    """The server is not a MedPLIB Label server, or its version is not supported by this client."""

    default_message = "The server is not a compatible MedPLIB Label server."


# "invalid infer params: axis: ...", "image: ...", "foreground[0]: ...", "body.params: ..."
_FIELD_RE = re.compile(r"^\s*(?:invalid infer params:\s*)?([A-Za-z_][\w.\[\]]*)\s*:\s")


def _detail_text(body: bytes) -> tuple[Any, str]:
    """(raw detail, readable text) from an error response body (FastAPI's {"detail": ...} or plain text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return text, text[:500]
    detail = data.get("detail", data) if isinstance(data, dict) else data
    if isinstance(detail, list):  # FastAPI request validation: [{"loc": [...], "msg": ...}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", []) if x not in ("body", "query", "path"))
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return detail, "; ".join(parts)
    if isinstance(detail, dict):
        return detail, json.dumps(detail)[:500]
    return detail, "" if detail is None else str(detail)[:1000]


def _field_of(text: str) -> Optional[str]:
    m = _FIELD_RE.match(text)
    return m.group(1) if m else None


def error_from_http(status: int, body: bytes, url: str = "", what: str = "") -> ClientError:
    """Map an HTTP error status and body to the matching :class:`ClientError` subclass."""
    detail, text = _detail_text(body or b"")
    where = f" ({what})" if what else ""
    tech = f"HTTP {status} from {url}: {text}" if url else f"HTTP {status}: {text}"
    kw = dict(status=status, detail=detail, url=url)
    if status in (401, 403):
        msg = ("The server requires you to log in, or your access token has expired. Log in again."
               if status == 401 else "Your account is not allowed to do this on the MedPLIB server.")
        return Unauthorized(tech, msg, **kw)
    if status == 404:
        msg = f"Not found on the server{where}: {text}" if text and text != "Not Found" else \
            f"The server does not provide this{where}. Check the server address and the selected model."
        return NotFound(tech, msg, **kw)
    if 400 <= status < 500:
        field = _field_of(text)
        if status == 429:
            msg = f"The server is busy{where}: {text or 'too many requests'}. Try again later."
        elif field:
            reason = text.split("invalid infer params:", 1)[-1].strip()
            msg = f"The server rejected the value of '{field}'{where}: {reason}"
        else:
            msg = f"The server rejected the request{where}: {text or 'bad request'}"
        return BadRequest(tech, msg, field=field, **kw)
    if status in (502, 503, 504):
        msg = ("The MedPLIB server (or a proxy in front of it) is unavailable or overloaded. Try again in a "
               "moment.")
        return ServerError(tech, msg, **kw)
    if status >= 500:
        msg = f"The MedPLIB server had an internal error{where}" + (f": {text}" if text else ".") + \
            " Ask the administrator to check the server log if it persists."
        return ServerError(tech, msg, **kw)
    return ClientError(tech, f"Unexpected answer from the server (HTTP {status}){where}.", **kw)
