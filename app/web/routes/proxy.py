"""POST/PUT/PATCH /proxy/<target>/<path>: re-stream the body to a configured downstream
while it is still arriving.

No second thread is needed: ``requests`` pulls the body iterator on the request
thread, and pulling it reads the client (through
:func:`app.web.request_body.open_body`).  So reading and sending alternate, one chunk in
flight, and a slow side slows the other down instead of filling memory.

* Raw bodies go out as they came, with ``Content-Length`` when the client sent
  one (an iterable with ``__len__`` makes requests send it instead of chunked).
* ``multipart/form-data`` bodies are parsed as they arrive and re-emitted under a
  new boundary (:mod:`app.core.relay`), file parts streamed through, chunked (the
  length is unknown).
* Client gone mid-body: the iterator raises, urllib3 drops the downstream
  connection, so the downstream sees an incomplete request too.
* Downstream answers early (413 mid-body) and closes: urllib3 swallows the
  EPIPE/ECONNRESET of the next send and reads that answer, which we pass on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import quote, urlsplit

from flask import Blueprint, jsonify, request

from ...core.auth import WRITE
from ...core.errors import BadRequest, NotFound, PayloadTooLarge, SpillwayError, TruncatedBody
from ...core.multipart import form_data_type
from ...core.pump import StreamHash
from ...core.relay import MultipartRelay
from ...core.upstream import BASE_HEADERS, new_session, timeouts, upstream_errors
from ...settings import ProxyTarget, Settings
from ..context import reads_body, requires, settings, threaded_pump
from ..request_body import open_body, unread_body_size
from ..servers.linger import close_after_response

log = logging.getLogger("spillway")
bp = Blueprint("proxy", __name__)

RESPONSE_LIMIT = 64 * 1024  # bytes of the downstream's answer handed back to the client
# end-to-end request headers passed on; everything else (hop-by-hop, Authorization,
# Cookie, Host, ...) stays here
PASSED_HEADERS = ("Content-Type", "Content-Disposition", "Content-Digest", "Accept")
# 1xx, 204 and 304 cannot carry the JSON report; the downstream's status is in it anyway
_NO_BODY = {204, 304}


# merge_slashes off: "//host" in the path is refused as such, not redirected to "/host"
@bp.route("/proxy/<target>/<path:subpath>", methods=["POST", "PUT", "PATCH"],
          merge_slashes=False)
@requires(WRITE)
@reads_body
def proxy(target: str, subpath: str):
    result = forward(target, subpath)
    response = jsonify(result.to_json())
    status = result.status
    response.status_code = 200 if status < 200 or status in _NO_BODY else status
    response.headers["X-Downstream-Status"] = str(status)
    return response


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


def target_url(config: Settings, target_name: str,
               subpath: str) -> tuple[ProxyTarget, str]:
    """The configured target and the downstream URL; never a host the client chose."""
    target = config.proxy_target(target_name)
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
    config = settings()
    target, url = target_url(config, target_name, subpath)
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
                                       headers=headers, timeout=timeouts(config), stream=True,
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
