"""multipart/form-data encoding (requests) and decoding (MONAI Label `/infer` replies), stdlib only.

No ``cgi`` (removed in Python 3.13) and no ``requests``/``requests_toolbelt`` (not always in Slicer's Python).
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

__all__ = ["FilePart", "Part", "encode_multipart", "decode_multipart", "file_extension"]

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.HTTP)


@dataclass
class FilePart:
    """A file field: ``path`` read at encoding time, or ``data`` bytes with ``filename``."""

    path: Optional[str] = None
    data: Optional[bytes] = None
    filename: Optional[str] = None
    content_type: str = "application/octet-stream"

    def payload(self) -> tuple[str, bytes]:
        if self.data is not None:
            return self.filename or "file", self.data
        if self.path is None:
            raise ValueError("FilePart needs a path or data")
        with open(self.path, "rb") as f:
            return self.filename or os.path.basename(self.path), f.read()


@dataclass
class Part:
    """One decoded part: form field ``name``, optional ``filename``, ``content_type`` and raw ``data``."""

    name: Optional[str]
    filename: Optional[str]
    content_type: str
    data: bytes

    def text(self) -> str:
        return self.data.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.data.decode("utf-8"))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", " ").replace("\n", " ")


def encode_multipart(fields: Iterable[tuple[str, Union[str, bytes, FilePart]]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request; a field name may repeat (e.g. ``files``)."""
    boundary = "----MedPLIBLabel" + uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in fields:
        chunks.append(f"--{boundary}\r\n".encode())
        if isinstance(value, FilePart):
            filename, data = value.payload()
            chunks.append(f'Content-Disposition: form-data; name="{_quote(name)}"; filename="{_quote(filename)}"\r\n'
                          f"Content-Type: {value.content_type}\r\n\r\n".encode())
            chunks.append(data)
        else:
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            chunks.append(f'Content-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode())
            chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _boundary(content_type: str) -> str:
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    b = msg.get_param("boundary")
    if not b or not isinstance(b, str):
        raise ValueError(f"no boundary in content type {content_type!r}")
    return b


def decode_multipart(content_type: str, body: bytes) -> list[Part]:
    """Split a multipart body into :class:`Part` objects (binary-safe: payloads are not re-encoded)."""
    delim = b"--" + _boundary(content_type).encode("latin-1")
    pieces = body.split(delim)
    parts: list[Part] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):  # closing delimiter
            break
        if piece.startswith(b"\r\n"):
            piece = piece[2:]
        elif piece.startswith(b"\n"):
            piece = piece[1:]
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep:
            head, sep, data = piece.partition(b"\n\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        headers = _HEADER_PARSER.parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_filename()
        parts.append(Part(name=str(name) if name else None, filename=filename,
                          content_type=headers.get_content_type(), data=data))
    return parts


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def file_extension(filename: Optional[str], default: str = ".nii.gz") -> str:
    """The image extension of a file name, keeping double suffixes (``.nii.gz``, ``.seg.nrrd``)."""
    if not filename:
        return default
    base = os.path.basename(filename).lower()
    for ext in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".mhd", ".dcm", ".npz", ".png"):
        if base.endswith(ext):
            return ext
    _, ext = os.path.splitext(base)
    return _SAFE.sub("", ext) or default
