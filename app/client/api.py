"""SpillwayClient: the Python API behind `python -m app.client` (usable from scripts).

    from app.client import SpillwayClient
    client = SpillwayClient("http://127.0.0.1:8000", token="...")
    record = client.upload("big.iso", method="stream")
    client.download(record["id"], "copy.iso")
"""

from __future__ import annotations

import base64
import os
import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import quote

import requests
from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor

from .download import download_file
from .errors import ClientError, IntegrityError, NetworkError, UsageError, from_response
from .progress import ProgressFactory, no_progress
from .reader import HashingReader, sha256_file
from .retry import Backoff, as_client_error
from .tus import ResumableUpload

METHODS = ("stream", "multipart", "files")


class SpillwayClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 progress: ProgressFactory = no_progress, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.backoff = Backoff(retries=retries, base=backoff)
        self.progress = progress
        self.session = session or requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    # -- reading and deleting: idempotent, retried -------------------------------------------

    def info(self, file_id: str) -> dict:
        return self._json("GET", f"/files/{file_id}", what=f"info {file_id}")

    def list_page(self, limit: int | None = None, after: str | None = None) -> dict:
        params = {k: v for k, v in (("limit", limit), ("after", after)) if v is not None}
        return self._json("GET", "/files", params=params, what="list")

    def iter_files(self, limit: int | None = None) -> Iterator[dict]:
        """Every file, page after page, following the server's `next` cursor."""
        after = None
        while True:
            page = self.list_page(limit=limit, after=after)
            yield from page["files"]
            after = page.get("next")
            if not after:
                return

    def delete(self, file_id: str) -> None:
        self._call("DELETE", f"/files/{file_id}", what=f"delete {file_id}")

    def head(self, file_id: str) -> requests.Response:
        return self._call("HEAD", f"/files/{file_id}/content", what=f"head {file_id}")

    def download(self, file_id: str, output: str | None = None, resume: bool = True) -> dict:
        """Fetch a file to `output` (default: its stored name in the current directory),
        resuming a previous `.part`; returns {"id", "path", "size", "sha256", "resumed_from"}."""
        meta = self.info(file_id)
        return download_file(self, meta, output, resume)

    # -- uploads: retried only when not a byte was sent --------------------------------------

    def upload(self, path: str, method: str = "stream", name: str | None = None,
               digest: bool = False) -> dict:
        """Upload one file; returns the server's record after checking its SHA-256 against
        the one computed while sending (IntegrityError when they differ)."""
        if method not in METHODS:
            raise UsageError(f"unknown upload method {method!r} (one of {', '.join(METHODS)})")
        self._check_readable(path)
        name = name or os.path.basename(path)
        expected = sha256_file(path) if digest else None  # pre-pass: one more read of the file
        attempt = 0
        while True:
            reader = HashingReader(path)
            try:
                record = self._send_upload(reader, method, name, expected)
                break
            except (requests.ConnectionError, requests.Timeout) as error:
                # a body already (partly) sent may have been stored: never send it twice
                if reader.bytes_read or attempt >= self.backoff.retries:
                    raise as_client_error(error, "upload") from error
            finally:
                reader.close()
            self._sleep(attempt)
            attempt += 1
        sent = reader.hexdigest()
        if reader.bytes_read != reader.size:
            raise IntegrityError(f"{path} changed size while it was sent", code="file_changed")
        if record.get("sha256") != sent or (expected and expected != sent):
            raise IntegrityError(
                f"{path}: server stored sha256 {record.get('sha256')}, client sent {sent}",
                code="sha256_mismatch")
        return record

    def upload_resumable(self, path: str, name: str | None = None, parallel: int = 1,
                         chunk_size: int = 0, state_dir: str | None = None) -> dict:
        """Upload one file over tus (/tus/), continuing an earlier interrupted run of the
        same upload (same server, path, size and mtime) from what the server holds.
        ``parallel`` > 1: that many partial uploads at once, joined by concatenation;
        ``chunk_size``: bytes per PATCH (0: one PATCH). Returns the server's record (plus
        ``resumed_from``, the bytes it had already) once its SHA-256 matches the file's."""
        self._check_readable(path)
        if parallel < 1 or chunk_size < 0:
            raise UsageError("--parallel must be ≥ 1 and --chunk-size ≥ 0", code="usage")
        return ResumableUpload(self, path, name or os.path.basename(path), parallel,
                               chunk_size, state_dir).run()

    @staticmethod
    def _check_readable(path: str) -> None:
        if not os.path.isfile(path):
            raise UsageError(f"{path}: not a readable file", code="no_such_file")

    def _send_upload(self, reader: HashingReader, method: str, name: str,
                     expected: str | None) -> dict:
        if method == "stream":
            headers = {"Content-Type": "application/octet-stream"}
            if expected:
                headers["Content-Digest"] = "sha-256=:%s:" % _b64(expected)
            with self._bar(reader.size, name) as bar:
                reader.progress = bar
                response = self.session.put(f"{self.url}/upload/{_quote(name)}", data=reader,
                                            headers=headers, timeout=self.timeout)
            return self._check(response).json()
        fields = []
        if expected and method == "multipart":
            fields.append(("sha256", expected))
        fields.append(("file", (name, reader, "application/octet-stream")))
        encoder = MultipartEncoder(fields=fields)
        route = "/upload" if method == "multipart" else "/upload-baseline"
        with self._bar(encoder.len, name) as bar:  # the whole body: part headers included
            monitor = MultipartEncoderMonitor(encoder, _monitor_progress(bar))
            response = self.session.post(f"{self.url}{route}", data=monitor,
                                         headers={"Content-Type": monitor.content_type},
                                         timeout=self.timeout)
        files = self._check(response).json()["files"]
        if len(files) != 1:
            raise ClientError(f"expected one stored file, the server answered {len(files)}",
                              code="unexpected_answer")
        return files[0]

    @contextmanager
    def _bar(self, total: int, label: str, initial: int = 0):
        bar = self.progress(total, label, initial)
        try:
            yield bar
        finally:
            bar.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _call(self, method: str, path: str, what: str, **kwargs) -> requests.Response:
        def step():
            response = self.session.request(method, self.url + path, timeout=self.timeout,
                                            **kwargs)
            return self._check(response)

        return self.backoff.run(step, what=what)

    def _json(self, method: str, path: str, what: str, **kwargs) -> dict:
        return self._call(method, path, what, **kwargs).json()

    @staticmethod
    def _check(response: requests.Response) -> requests.Response:
        if response.status_code >= 400:
            raise from_response(response)
        return response

    def _sleep(self, attempt: int) -> None:
        time.sleep(self.backoff.delay(attempt))


def _monitor_progress(bar):
    seen = [0]

    def callback(monitor):
        bar.update(monitor.bytes_read - seen[0])
        seen[0] = monitor.bytes_read

    return callback


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _quote(name: str) -> str:
    return quote(name, safe="")


__all__ = ["SpillwayClient", "ClientError", "NetworkError", "METHODS"]
