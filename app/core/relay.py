"""The proxy's multipart re-encoding: a form-data body parsed as it arrives and re-emitted
under a new boundary, file parts streamed through and hashed (for :mod:`app.web.routes.proxy`)."""

from __future__ import annotations

import secrets
from typing import Iterable, Iterator

from .errors import PayloadTooLarge
from .filenames import clean_filename
from .multipart import FormParser
from .pump import StreamHash


class MultipartRelay:
    """Parse a multipart body as it arrives and re-emit it under a new boundary.

    File parts are streamed through and hashed; text fields pass through within
    ``max_field_size``.  The closing boundary is only sent when the client's body
    had one, so a truncated upload is never completed downstream.
    """

    def __init__(self, content_type: str, *, max_field_size: int, max_parts: int,
                 max_part_headers: int, threaded: bool = True):
        self._form = FormParser(content_type, self, max_part_headers=max_part_headers,
                                max_parts=max_parts)
        self.boundary = "spillway-" + secrets.token_hex(16)
        self._max_field_size = max_field_size
        self._threaded = threaded
        self._out: list[bytes] = []
        self._part: dict | None = None
        self._hash: StreamHash | None = None
        self._header_sent = False
        self.files: list[dict] = []
        self.field_names: list[str] = []

    def stream(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._form.feed(chunk)
            out, self._out = self._out, []
            yield from out
        self._form.check_closed()
        yield f"--{self.boundary}--\r\n".encode()

    def cancel(self) -> None:
        if self._hash is not None:
            self._hash.cancel()

    # called by FormParser ---------------------------------------------------
    def start_part(self, name: str, filename: str | None) -> None:
        self._part = {"field": name, "filename": filename, "content_type": None, "size": 0}
        self._hash = StreamHash(self._threaded) if filename is not None else None
        self._header_sent = False

    def part_content_type(self, content_type: str) -> None:
        # the parser reports it after the part started; the header goes out lazily
        self._part["content_type"] = content_type

    def part_data(self, chunk: bytes) -> None:
        self._send_header()
        part = self._part
        part["size"] += len(chunk)
        if self._hash is not None:
            self._hash.update(chunk)
        elif part["size"] > self._max_field_size:
            raise PayloadTooLarge(f"field {part['field']!r} is longer than "
                                  f"{self._max_field_size} bytes", code="field_too_large")
        self._out.append(chunk)

    def finish_part(self) -> None:
        self._send_header()
        self._out.append(b"\r\n")
        part, self._part = self._part, None
        if self._hash is None:
            self.field_names.append(part["field"])
            return
        part["filename"] = clean_filename(part["filename"])
        part["content_type"] = part["content_type"] or "application/octet-stream"
        part["sha256"] = self._hash.hexdigest()
        self._hash = None
        self.files.append(part)

    def _send_header(self) -> None:
        if self._header_sent:
            return
        self._header_sent = True
        part = self._part
        disposition = f'form-data; name="{_quoted(part["field"])}"'
        if part["filename"] is not None:
            disposition += f'; filename="{_quoted(clean_filename(part["filename"]))}"'
        lines = [f"--{self.boundary}", f"Content-Disposition: {disposition}"]
        if part["content_type"]:
            lines.append("Content-Type: " + _quoted(part["content_type"]))
        self._out.append(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))


def _quoted(text: str) -> str:
    # what browsers do inside multipart quoted strings (WHATWG form encoding)
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
