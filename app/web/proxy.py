"""Re-stream an incoming upload to a configured downstream while it is still arriving.

No second thread is needed: ``requests`` pulls the body iterator on the request
thread, and pulling it reads the client (through :func:`app.body.open_body`).  So
reading and sending alternate, one chunk in flight, and a slow side slows the
other down instead of filling memory.

* Raw bodies go out as they came, with ``Content-Length`` when the client sent
  one (an iterable with ``__len__`` makes requests send it instead of chunked).
* ``multipart/form-data`` bodies are parsed as they arrive and re-emitted under a
  new boundary, file parts streamed through, chunked (the length is unknown).
* Client gone mid-body: the iterator raises, urllib3 drops the downstream
  connection, so the downstream sees an incomplete request too.
* Downstream answers early (413 mid-body) and closes: urllib3 swallows the
  EPIPE/ECONNRESET of the next send and reads that answer, which we pass on.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import quote, urlsplit

from flask import request

from ..core.body import open_body, unread_body_size
from .context import settings, threaded_pump
from ..core.errors import BadRequest, NotFound, PayloadTooLarge, SpillwayError, TruncatedBody
from ..core.multipart import FormParser, clean_filename, form_data_type
from ..core.pump import StreamHash
from .servers.uwsgi import close_after_response
from ..settings import ProxyTarget
from ..core.upstream import BASE_HEADERS, new_session, timeouts, upstream_errors

log = logging.getLogger("spillway")

RESPONSE_LIMIT = 64 * 1024  # bytes of the downstream's answer handed back to the client
# end-to-end request headers passed on; everything else (hop-by-hop, Authorization,
# Cookie, Host, ...) stays here
PASSED_HEADERS = ("Content-Type", "Content-Disposition", "Content-Digest", "Accept")


@dataclass
class ProxyResult:
    target: str
    path: str
    status: int
    forwarded_bytes: int
    forwarded_sha256: str
    complete: bool
    content_type: str
    content: bytes
    truncated: bool
    files: list[dict] | None = None
    fields: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        answer: dict = {"content_type": self.content_type, "bytes": len(self.content),
                        "truncated": self.truncated}
        parsed = _json_or_none(self.content_type, self.content) if not self.truncated else None
        if parsed is not None:
            answer["json"] = parsed
        else:
            answer["text"] = self.content.decode("utf-8", errors="replace")
        record = {
            "target": self.target,
            "path": self.path,
            "status": self.status,
            "forwarded": {"bytes": self.forwarded_bytes, "sha256": self.forwarded_sha256,
                          "complete": self.complete},
        }
        if self.files is not None:
            record["files"] = self.files
            record["fields"] = self.fields
        record["response"] = answer
        return record


def target_url(target_name: str, subpath: str) -> tuple[ProxyTarget, str]:
    """The configured target and the downstream URL; never a host the client chose."""
    target = settings().proxy_target(target_name)
    if target is None:
        raise NotFound(f"no proxy target named {target_name!r}", code="unknown_target")
    segments = subpath.split("/")
    bad = (not subpath or "\\" in subpath or "://" in subpath or ":" in segments[0]
           or any(s in ("", ".", "..") for s in segments)
           or any(ch < " " or ch == "\x7f" for ch in subpath))
    if bad:
        raise BadRequest(f"not a path below the target: {subpath[:200]!r}", code="bad_proxy_path")
    url = target.base_url + "/" + quote(subpath, safe="/!$&'()*+,;=:@-._~")
    base, built = urlsplit(target.base_url), urlsplit(url)
    if (built.scheme, built.netloc) != (base.scheme, base.netloc):  # belt and braces
        raise BadRequest("not a path below the target", code="bad_proxy_path")
    query = request.query_string.decode("latin-1")
    return target, url + ("?" + query if query else "")


def forward(target_name: str, subpath: str) -> ProxyResult:
    target, url = target_url(target_name, subpath)
    config = settings()
    body = open_body(limit=config.max_request_size, chunk_size=config.chunk_size)
    wire = StreamHash(threaded_pump())
    headers = dict(BASE_HEADERS)
    for name in PASSED_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    if target.authorization:
        headers["Authorization"] = target.authorization
    relay = None
    content_type = request.headers.get("Content-Type", "")
    if form_data_type(content_type):  # other multipart types: 415, as for uploads
        relay = MultipartRelay(content_type, max_field_size=config.max_field_size,
                               max_parts=config.max_parts,
                               max_part_headers=config.max_part_headers_size,
                               threaded=threaded_pump())
        headers["Content-Type"] = f"multipart/form-data; boundary={relay.boundary}"
        headers.pop("Content-Digest", None)  # the digest was of the client's encoding
        data = relay.stream(body.chunks())
    else:
        data = _sized(body.chunks(), body.declared_length)
    session = new_session()
    try:
        with upstream_errors(f"downstream {target.name!r}"):
            response = session.request(request.method, url, data=_hashed(data, wire),
                                       headers=headers, timeout=timeouts(), stream=True,
                                       allow_redirects=False)
            content, truncated = _read_bounded(response)
    except SpillwayError as error:
        wire.cancel()
        if relay:
            relay.cancel()
        if isinstance(error, (TruncatedBody, PayloadTooLarge)) or error.status == 408:
            log.warning("proxy to %r aborted after %d bytes: %s %s", target.name, wire.size,
                        error.code, error.message)
        raise
    finally:
        session.close()
    if not body.complete:
        log.info("downstream %r answered %s after %d of the client's bytes", target.name,
                 response.status_code, body.received)
        close_after_response(unread_body_size())  # do not read on a body nobody will take
    return ProxyResult(
        target=target.name, path="/" + subpath, status=response.status_code,
        forwarded_bytes=wire.size, forwarded_sha256=wire.hexdigest(), complete=body.complete,
        content_type=response.headers.get("Content-Type", ""), content=content,
        truncated=truncated,
        files=relay.files if relay else None, fields=relay.field_names if relay else [],
    )


def _hashed(chunks: Iterable[bytes], wire: StreamHash):
    def generate() -> Iterator[bytes]:
        for chunk in chunks:
            wire.update(chunk)
            yield chunk

    length = getattr(chunks, "length", None)
    return _Sized(generate(), length) if length else generate()


class _Sized:
    """An iterable with a length: requests then sends Content-Length, not chunked."""

    def __init__(self, chunks: Iterator[bytes], length: int):
        self._chunks = chunks
        self.length = length

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def __len__(self) -> int:
        return self.length


def _sized(chunks: Iterator[bytes], length: int | None):
    return _Sized(chunks, length) if length else chunks


def _read_bounded(response) -> tuple[bytes, bool]:
    kept = bytearray()
    try:
        for piece in response.raw.stream(16384, decode_content=False):
            kept += piece
            if len(kept) > RESPONSE_LIMIT:
                return bytes(kept[:RESPONSE_LIMIT]), True
        return bytes(kept), False
    finally:
        response.close()


def _json_or_none(content_type: str, content: bytes):
    kind = content_type.split(";", 1)[0].strip().lower()
    if not (kind == "application/json" or kind.endswith("+json")):
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None


class MultipartRelay:
    """Parse a multipart body as it arrives and re-emit it under a new boundary.

    File parts are streamed through and hashed; text fields pass through within
    ``max_field_size``.  The closing boundary is only sent when the client's body
    had one, so a truncated upload is never completed downstream.
    """

    def __init__(self, content_type: str, *, max_field_size: int, max_parts: int,
                 max_part_headers: int, threaded: bool = True):
        self._form = FormParser(content_type, self, max_part_headers=max_part_headers)
        self.boundary = "spillway-" + secrets.token_hex(16)
        self._max_field_size = max_field_size
        self._max_parts = max_parts
        self._threaded = threaded
        self._out: list[bytes] = []
        self._part: dict | None = None
        self._hash: StreamHash | None = None
        self._header_sent = False
        self._parts = 0
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
        self._parts += 1
        if self._parts > self._max_parts:
            raise PayloadTooLarge(f"more than {self._max_parts} parts in one request",
                                  code="too_many_parts")
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
