"""A small downstream/upstream for the proxy and import tests, run under gunicorn.

POST|PUT /sink/...          read and hash the body (multipart: every part too), answer JSON
POST|PUT /reject/<n>/...    read n bytes, then answer 413 and close
POST|PUT /slow/<s>/...      sleep s seconds, then behave as /sink
GET /files/<name>?size=N    N deterministic bytes (see pattern_bytes) with Content-Length
GET /files/slow?size=N      the same after a 4 s sleep
GET /files/cut?size=N       announce N bytes, send half, then drop the connection
GET /files/missing          404
GET /redirect?to=URL        302 to URL
GET /redirect/loop          302 to itself

Every request with a body is recorded as one JSON line in $SINK_LOG: path, headers,
bytes, sha256 and whether the body arrived complete.
"""

import hashlib
import json
import os
import threading
import time
from urllib.parse import parse_qs

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget

_LOCK = threading.Lock()
_BLOCK = hashlib.sha256(b"sink").digest() * 2048  # 64 KiB


def pattern_bytes(size: int):
    """The bytes /files/<name>?size=N serves, in 64 KiB blocks."""
    sent = 0
    index = 0
    while sent < size:
        block = index.to_bytes(4, "big") + _BLOCK[4:]
        block = block[:size - sent]
        sent += len(block)
        index += 1
        yield block


class _Hasher(BaseTarget):
    def __init__(self, parts):
        super().__init__()
        self.parts = parts

    def on_start(self):
        self.hash = hashlib.sha256()
        self.size = 0
        self.value = bytearray()

    def on_data_received(self, chunk):
        self.hash.update(chunk)
        self.size += len(chunk)
        if self.multipart_filename is None:
            self.value += chunk

    def on_finish(self):
        record = {"filename": self.multipart_filename, "content_type": self.multipart_content_type,
                  "size": self.size, "sha256": self.hash.hexdigest()}
        if self.multipart_filename is None:
            record["value"] = self.value.decode("utf-8", "replace")
        self.parts.append(record)


class _Router(BaseTarget):
    """One target for every part (the same trick app/core/multipart.py uses)."""

    def __init__(self, parts):
        super().__init__()
        self.parts = parts
        self.current = None
        self.name = None

    def claim(self, _registered, name):
        self.name = name
        return True

    def on_start(self):
        self.current = _Hasher(self.parts)
        self.current.multipart_filename = self.multipart_filename
        self.current.on_start()
        self.multipart_filename = None

    def set_multipart_content_type(self, value):
        self.current.multipart_content_type = value

    def on_data_received(self, chunk):
        self.current.on_data_received(chunk)

    def on_finish(self):
        self.current.on_finish()
        self.parts[-1]["name"] = self.name


def _record(entry):
    with _LOCK, open(os.environ["SINK_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")


def _read_body(environ, limit=None):
    """(bytes, sha256, complete, parts) of the request body; stops after `limit` bytes."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH")
    declared = int(declared) if declared else None
    content_type = environ.get("CONTENT_TYPE", "")
    parts = []
    parser = None
    if content_type.startswith("multipart/form-data"):
        parser = StreamingFormDataParser(headers={"Content-Type": content_type})
        router = _Router(parts)
        parser.register("", router, matches=router.claim)
    digest = hashlib.sha256()
    size = 0
    complete = True
    try:
        while True:
            chunk = stream.read(65536 if limit is None else min(65536, limit - size))
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            if parser:
                parser.data_received(chunk)
            if limit is not None and size >= limit:
                return size, digest.hexdigest(), False, parts
    except Exception as error:  # the sender went away mid-body
        complete = False
        parts.append({"error": repr(error)})
    if declared is not None and size != declared:
        complete = False
    return size, digest.hexdigest(), complete, parts


def _headers(environ):
    return {key[5:].replace("_", "-").title(): value for key, value in environ.items()
            if key.startswith("HTTP_")} | {
        "Content-Length": environ.get("CONTENT_LENGTH"), "Content-Type": environ.get("CONTENT_TYPE")}


def _json(start_response, status, body, extra=()):
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), *extra])
    return [data]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if method in ("POST", "PUT", "PATCH"):
        limit = None
        if path.startswith("/reject/"):
            limit = int(path.split("/")[2])
        elif path.startswith("/slow/"):
            time.sleep(float(path.split("/")[2]))
        size, sha256, complete, parts = _read_body(environ, limit)
        entry = {"path": path, "query": environ.get("QUERY_STRING", ""), "method": method,
                 "headers": _headers(environ), "bytes": size, "sha256": sha256,
                 "complete": complete, "parts": parts}
        _record(entry)
        if limit is not None:
            return _json(start_response, "413 Payload Too Large",
                         {"error": "too big for the sink", "read": size},
                         [("Connection", "close")])
        return _json(start_response, "201 Created", entry)
    if path == "/redirect/loop":
        start_response("302 Found", [("Location", "/redirect/loop"), ("Content-Length", "0")])
        return [b""]
    if path == "/redirect":
        start_response("302 Found", [("Location", query["to"]), ("Content-Length", "0")])
        return [b""]
    if path == "/files/missing":
        return _json(start_response, "404 Not Found", {"error": "no such file"})
    if path.startswith("/files/"):
        size = int(query.get("size", "1000"))
        if path == "/files/slow":
            time.sleep(4)
        headers = [("Content-Type", "application/x-sink"), ("Content-Length", str(size)),
                   ("ETag", '"sink-%d"' % size)]
        start_response("200 OK", headers)
        if path == "/files/cut":
            return _cut(size)
        return pattern_bytes(size)
    return _json(start_response, "404 Not Found", {"error": "unknown sink path"})


def _cut(size):
    sent = 0
    for block in pattern_bytes(size):
        if sent >= size // 2:
            raise ConnectionAbortedError("the sink cuts the response")  # gunicorn drops it
        sent += len(block)
        yield block
