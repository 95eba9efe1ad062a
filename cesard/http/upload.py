"""A multipart/form-data upload streamed to disk: the ``file`` part goes straight into
a file in the spool's tmp/ as it arrives (never whole into memory), the other fields
(small) are kept; past the size limit the upload stops with :class:`TooLarge`.
python-multipart's streaming parser does the parsing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

MAX_FIELD_BYTES = 64 << 10  # a form field that is not the file (prompt, language, ...)
MAX_FIELDS = 64


class BadUpload(Exception):
    """The request is not a multipart form cesard-http can read (says why)."""


class TooLarge(Exception):
    """The upload is over ``max_upload_mb``."""


@dataclass
class Upload:
    fields: dict[str, list[str]] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None  # where the file part was written
    size: int = 0

    def one(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None


class _Receiver:
    """The parser's callbacks: headers of each part, then its data to a field or file."""

    def __init__(self, into: Path, limit: int) -> None:
        self.into = into
        self.limit = limit
        self.upload = Upload()
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None
        self.buf = bytearray()
        self.fd = -1

    def on_part_begin(self) -> None:
        self.headers, self.name, self.buf = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = params.get(b"name", b"").decode("utf-8", "replace")
        if self.name == "file":
            if self.fd >= 0:
                raise BadUpload("the form has more than one 'file'")
            raw = params.get(b"filename", b"audio").decode("utf-8", "replace")
            self.upload.filename = os.path.basename(raw.replace("\\", "/")) or "audio"
            self.upload.path = self.into
            self.fd = os.open(self.into, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.name == "file":
            self.upload.size += len(chunk)
            if self.upload.size > self.limit:
                raise TooLarge()
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view):]
        else:
            self.buf += chunk
            if len(self.buf) > MAX_FIELD_BYTES:
                raise BadUpload(f"form field {self.name!r} is over {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.name != "file" and self.name:
            if sum(len(v) for v in self.upload.fields.values()) >= MAX_FIELDS:
                raise BadUpload(f"the form has more than {MAX_FIELDS} fields")
            self.upload.fields.setdefault(self.name, []).append(
                self.buf.decode("utf-8", "replace"))

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


class Stalled(Exception):
    """The client sent nothing for ``idle`` seconds (a slow or stuck upload)."""


async def receive(content_type: str, body: AsyncIterator[bytes], into: Path,
                  limit: int, idle: float = 60.0) -> Upload:
    """Parse a multipart body from ``body``; the file part is written to ``into``. A
    client that sends nothing for ``idle`` seconds is given up (:class:`Stalled`)."""
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise BadUpload("the request must be multipart/form-data with the audio as 'file'")
    r = _Receiver(into, limit)
    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": r.on_part_begin, "on_header_field": r.on_header_field,
        "on_header_value": r.on_header_value, "on_header_end": r.on_header_end,
        "on_headers_finished": r.on_headers_finished, "on_part_data": r.on_part_data,
        "on_part_end": r.on_part_end})
    chunks = body.__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), idle)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise Stalled() from None
            parser.write(chunk)
        parser.finalize()
    except (TooLarge, BadUpload, Stalled):
        r.close()
        raise
    except Exception as e:  # noqa: BLE001 - the parser's errors: a malformed body
        r.close()
        raise BadUpload(f"the multipart body cannot be read: {e}") from e
    r.close()
    if r.upload.path is None:
        raise BadUpload("the form has no 'file' (the audio)")
    return r.upload
