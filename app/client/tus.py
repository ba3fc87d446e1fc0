"""Resumable uploads over tus 1.0.0 (`upload --resumable`), on requests.

Our own code rather than tuspy: tuspy is not a runtime dependency, has no concatenation
(`--parallel`), and sends an empty `Upload-Metadata:` that other servers refuse; what is
needed is a POST, HEADs and streamed PATCHes, all plain requests calls.

A small JSON state file per (server URL, absolute path, size, mtime) in the state directory
is written as soon as the upload(s) exist on the server and removed once the file is
stored; the same command run again finds it, asks each upload's offset (HEAD) and sends only
the rest. An upload the server no longer has (404, 410 expired) means starting over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

import requests

from .errors import ClientError, IntegrityError, NetworkError, from_response
from .reader import HashingReader, sha256_file, sha256_prefix
from .retry import as_client_error, is_transient

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
LOCKED_WAIT_SECONDS = 30.0  # a killed run's PATCH may hold the upload's lock a little longer


def default_state_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "spillway" / "tus"


class StateFile:
    """Where a resumable upload of one version of one file to one server is remembered."""

    def __init__(self, directory: str | os.PathLike | None, url: str, path: str):
        stat = os.stat(path)
        key = json.dumps([url, os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
        self.path = Path(directory or default_state_dir()) / (
            hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def load(self) -> list[dict] | None:
        try:
            parts = json.loads(self.path.read_text())["parts"]
            return [{"url": p["url"], "start": int(p["start"]), "length": int(p["length"])}
                    for p in parts] or None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none, or unreadable: start over

    def save(self, parts: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps({"parts": parts}))
        os.replace(scratch, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def ranges(size: int, count: int) -> list[tuple[int, int]]:
    """(start, length) of ``count`` nearly equal pieces (fewer for a tiny file)."""
    if size == 0:
        return [(0, 0)]
    count = max(1, min(count, size))
    step = -(-size // count)
    return [(start, min(step, size - start)) for start in range(0, size, step)]


class ResumableUpload:
    def __init__(self, client, path: str, name: str, parallel: int = 1,
                 chunk_size: int = 0, state_dir: str | None = None):
        self.client = client
        self.path = path
        self.name = name
        self.size = os.path.getsize(path)
        self.parallel = max(1, parallel)
        self.chunk_size = chunk_size  # bytes per PATCH; 0: the rest of a part in one PATCH
        self.state = StateFile(state_dir, client.url, path)
        self.hash_while_sending = True  # until a retry sends some bytes twice

    def run(self) -> dict:
        parts, offsets = self._resume()
        resumed_from = sum(offsets)
        bar = self.client.progress(self.size, self.name, resumed_from)
        try:
            if len(parts) == 1:
                sent = self._send_alone(parts[0], offsets[0], bar)
                record = self.client.info(parts[0]["url"].rstrip("/").rsplit("/", 1)[-1])
            else:
                sent = self._send_parallel(parts, offsets, bar)
                record = self._join(parts)
        finally:
            bar.close()
        self.state.remove()
        if record.get("sha256") != sent or record.get("size") != self.size:
            raise IntegrityError(f"{self.path}: server stored {record.get('size')} bytes with "
                                 f"sha256 {record.get('sha256')}, the file has {self.size} "
                                 f"bytes with sha256 {sent}", code="sha256_mismatch")
        return record | {"resumed_from": resumed_from}

    # -- creating or finding the uploads ---------------------------------------------------------

    def _resume(self) -> tuple[list[dict], list[int]]:
        parts = self.state.load()
        if parts:
            try:
                return parts, [self._offset(part["url"]) for part in parts]
            except ClientError as error:
                if error.status not in (404, 410):
                    raise
                self.state.remove()  # gone or expired on the server: start over
        bounds = ranges(self.size, self.parallel)
        partial = len(bounds) > 1
        parts = [{"url": self._create(length, partial), "start": start, "length": length}
                 for start, length in bounds]
        self.state.save(parts)
        return parts, [0] * len(parts)

    def _create(self, length: int, partial: bool) -> str:
        headers = TUS | {"Upload-Length": str(length), "Upload-Metadata": self._metadata()}
        if partial:
            headers["Upload-Concat"] = "partial"
        response = self._request("POST", self.client.url + "/tus/", headers=headers)
        return urljoin(self.client.url + "/", response.headers["Location"])

    def _join(self, parts: list[dict]) -> dict:
        headers = TUS | {"Upload-Metadata": self._metadata(),
                         "Upload-Concat": "final;" + " ".join(p["url"] for p in parts)}
        return self._request("POST", self.client.url + "/tus/", headers=headers).json()

    def _metadata(self) -> str:
        return "filename " + base64.b64encode(self.name.encode()).decode()

    def _offset(self, url: str, session: requests.Session | None = None) -> int:
        response = self._request("HEAD", url, headers=TUS, session=session)
        return int(response.headers["Upload-Offset"])

    # -- sending bytes -----------------------------------------------------------------------

    def _send_alone(self, part: dict, offset: int, bar) -> str:
        """The SHA-256 of the file, hashed on the way (after the part sent earlier)."""
        digest = sha256_prefix(self.path, offset)
        self._send_part(self.client.session, part, offset, bar, digest)
        return digest.hexdigest() if self.hash_while_sending else sha256_file(self.path)

    def _send_parallel(self, parts: list[dict], offsets: list[int], bar) -> str:
        """One thread (and connection) per part; this thread hashes the file meanwhile."""
        failures: list[BaseException] = []

        def send(part, offset):
            session = requests.Session()
            session.headers.update(self.client.session.headers)
            try:
                self._send_part(session, part, offset, bar, None)
            except BaseException as error:  # noqa: B036 - handed to the main thread
                failures.append(error)
            finally:
                session.close()

        threads = [threading.Thread(target=send, args=pair, daemon=True)
                   for pair in zip(parts, offsets)]
        for thread in threads:
            thread.start()
        digest = sha256_file(self.path)
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # a short wait: Ctrl-C still interrupts
        if failures:
            raise failures[0]
        return digest

    def _send_part(self, session, part: dict, offset: int, bar, digest) -> None:
        attempt = 0
        while offset < part["length"]:
            piece = part["length"] - offset
            if self.chunk_size:
                piece = min(piece, self.chunk_size)
            reader = HashingReader(self.path, bar, part["start"] + offset, piece, digest)
            try:
                now = self._patch(session, part["url"], offset, reader)
                attempt = 0
            except Exception as error:  # noqa: BLE001 - sorted below
                if not self._retryable(error, attempt):
                    raise as_client_error(error, f"upload of {self.name}") from error
                time.sleep(self._delay(error, attempt))
                attempt += 1
                now = self._offset(part["url"], session)
            finally:
                reader.close()
            if now != offset + reader.bytes_read:  # bytes hashed twice or skipped
                self.hash_while_sending = False
            offset = now

    def _patch(self, session, url: str, offset: int, reader: HashingReader) -> int:
        headers = TUS | {"Upload-Offset": str(offset), "Content-Type": OFFSET_CONTENT_TYPE}
        response = session.patch(url, data=reader, headers=headers, timeout=self.client.timeout)
        if response.status_code == 409 and "Upload-Offset" in response.headers:
            return int(response.headers["Upload-Offset"])  # the server holds more: go on there
        return int(self._check(response).headers["Upload-Offset"])

    def _retryable(self, error: Exception, attempt: int) -> bool:
        if isinstance(error, ClientError) and error.status == 423:
            return attempt * max(self.client.backoff.base, 0.25) < LOCKED_WAIT_SECONDS
        return is_transient(error) and attempt < self.client.backoff.retries

    def _delay(self, error: Exception, attempt: int) -> float:
        if isinstance(error, ClientError) and error.status == 423:
            return max(self.client.backoff.base, 0.25)
        return self.client.backoff.delay(attempt)

    # -- plumbing ----------------------------------------------------------------------------

    def _request(self, method: str, url: str, session=None, **kwargs) -> requests.Response:
        session = session or self.client.session

        def step():
            return self._check(session.request(method, url, timeout=self.client.timeout,
                                               **kwargs))

        return self.client.backoff.run(step, what=f"{method} {url}")

    @staticmethod
    def _check(response: requests.Response) -> requests.Response:
        if response.status_code >= 400:
            raise from_response(response)
        return response


__all__ = ["ResumableUpload", "StateFile", "default_state_dir", "ranges", "NetworkError"]
