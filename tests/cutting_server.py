"""A tests-only HTTP server that serves one file like Spillway does (metadata JSON and
/content with ETag, Range and If-Range) and can cut the first full download halfway."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CuttingServer:
    def __init__(self, data: bytes, file_id: str = "f1", filename: str = "served.bin",
                 cut_first: bool = True, corrupt: bool = False, cut_uploads: bool = True,
                 unavailable: int = 0):
        self.data = data
        self.file_id = file_id
        self.filename = filename
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.cut_first = cut_first
        self.corrupt = corrupt  # serve bytes whose hash differs from the metadata and ETag
        self.cut_uploads = cut_uploads  # else take uploads whole and answer a wrong sha256
        self.unavailable = unavailable  # answer this many metadata GETs with 503 first
        self.requests: list[dict] = []  # what the client asked for and what it got
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def content_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith("/content")]


def _handler(server: CuttingServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            record = {"path": self.path, "range": self.headers.get("Range"),
                      "if_range": self.headers.get("If-Range")}
            server.requests.append(record)
            if self.path == f"/files/{server.file_id}" and server.unavailable > 0:
                server.unavailable -= 1
                record["status"] = 503
                return self._send(503, b'{"error": {"code": "unavailable", "message": "try '
                                       b'later", "status": 503}}',
                                  {"Content-Type": "application/json"})
            if self.path == f"/files/{server.file_id}":
                body = json.dumps({"id": server.file_id, "filename": server.filename,
                                   "size": len(server.data), "sha256": server.sha256}).encode()
                record["status"] = 200
                return self._send(200, body, {"Content-Type": "application/json"})
            if self.path != f"/files/{server.file_id}/content":
                record["status"] = 404
                return self._send(404, b'{"error": {"code": "not_found", "message": "no such '
                                       b'file", "status": 404}}',
                                  {"Content-Type": "application/json"})
            data = server.data
            if server.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            etag = f'"{server.sha256}"'
            start = 0
            wanted = self.headers.get("Range")
            if wanted and self.headers.get("If-Range", etag) == etag:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
            headers = {"ETag": etag, "Content-Type": "application/octet-stream",
                       "Accept-Ranges": "bytes"}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            status = 206 if start else 200
            record["status"] = status
            cut = server.cut_first and len(server.content_requests()) == 1
            record["cut"] = cut
            self._send(status, data[start:], headers, cut_after=len(data) // 2 if cut else None)

        def do_PUT(self):
            """Take half of an upload's body, then drop the connection without an answer;
            or take it all and claim to have stored something else."""
            length = int(self.headers.get("Content-Length", 0))
            wanted = length if not server.cut_uploads else length // 2
            received = 0
            while received < wanted:
                received += len(self.rfile.read(min(1 << 20, wanted - received)) or b"")
            server.requests.append({"path": self.path, "method": self.command, "length": length,
                                    "received": received})
            if server.cut_uploads:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            record = {"id": "lie", "filename": "x", "size": length, "sha256": "0" * 64}
            body = record if self.command == "PUT" else {"files": [record], "fields": {}}
            self._send(201, json.dumps(body).encode(), {"Content-Type": "application/json"})

        do_POST = do_PUT

        def _send(self, status, body, headers, cut_after=None):
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut_after is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[:cut_after])  # then drop the connection mid-body
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    return Handler
