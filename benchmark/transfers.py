"""One timed transfer per call, done by curl so the client is never the bottleneck.

Each returns an :class:`Outcome`; uploads are only "ok" when the server's SHA-256 (or, for
the no-hash probe, its size) matches the file's, downloads when every byte arrived.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

CURL = ["curl", "--silent", "--show-error", "--noproxy", "*",
        "-H", "Expect:"]  # no 100-continue round trip: a 1 s stall on some servers, not a cost


NO_HASH = "0" * 64  # what benchmark.nohash stores instead of a digest


@dataclass
class Outcome:
    status: str  # ok | failed | crashed | unavailable
    seconds: float = 0.0
    detail: str = ""
    file_id: str | None = None


def timeout_for(size: int) -> float:
    """Generous: 120 s plus 10 MB/s (the slowest path, request.files on the dev server, does ~25)."""
    return 120 + size / 10e6


def _curl(args: list[str], size: int, body_out: Path) -> tuple[float, int, str, str]:
    command = CURL + ["--max-time", str(int(timeout_for(size))), "-o", str(body_out),
                      "-w", "%{http_code} %{size_download}"] + args
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=timeout_for(size) + 30)
    seconds = time.perf_counter() - start
    code, _, downloaded = done.stdout.strip().partition(" ")
    if done.returncode != 0:
        return seconds, 0, "", f"curl exit {done.returncode}: {done.stderr.strip()[:200]}"
    return seconds, int(code or 0), downloaded, ""


def _stored(response_file: Path) -> dict:
    record = json.loads(response_file.read_text())
    if "files" in record:
        files = record["files"]
        return files[0] if len(files) == 1 else {"error": f"{len(files)} files stored"}
    return record


def _text(response: Path) -> str:
    return response.read_text(errors="replace")[:300] if response.exists() else ""


def _send_upload(args: list[str], size: int, scratch: Path) -> tuple[Outcome | None, float, Path]:
    """curl an upload: (the failure, or None on a 201; seconds; the file holding the answer)."""
    response = scratch / "response.json"
    response.unlink(missing_ok=True)
    try:
        seconds, code, _, error = _curl(args, size, response)
    except subprocess.TimeoutExpired:
        return Outcome("failed", timeout_for(size), "timed out"), timeout_for(size), response
    if error:
        return Outcome("failed", seconds, error), seconds, response
    if code != 201:
        return Outcome("failed", seconds, f"HTTP {code}: {_text(response)}"), seconds, response
    return None, seconds, response


def upload(kind: str, url: str, path: Path, size: int, sha256: str, scratch: Path,
           verify_hash: bool = True) -> Outcome:
    """``kind``: raw (PUT body), multipart (-F), files (-F to the request.files baseline)."""
    if kind == "raw":
        args = ["-T", str(path), "-H", "Content-Type: application/octet-stream",
                f"{url}/upload/{path.name}"]
    else:
        route = "/upload" if kind == "multipart" else "/upload-baseline"
        args = ["-F", f"file=@{path};type=application/octet-stream", url + route]
    failure, seconds, response = _send_upload(args, size, scratch)
    if failure:
        return failure
    try:
        record = _stored(response)
    except ValueError:
        return Outcome("failed", seconds, f"not JSON: {_text(response)}")
    if record.get("size") != size:
        return Outcome("failed", seconds, f"stored {record.get('size')} bytes of {size}")
    if verify_hash and record.get("sha256") != sha256:
        return Outcome("failed", seconds, f"sha256 {record.get('sha256')} != {sha256}")
    if not verify_hash and record.get("sha256") != NO_HASH:
        # the probe's patch no longer reaches the pump: a "no hash" figure would be a lie
        return Outcome("failed", seconds, "hash stage still on (benchmark/nohash.py is stale)")
    return Outcome("ok", seconds, "" if verify_hash else "size checked, no hash",
                   record.get("id"))


def proxied_upload(front: str, route: str, path: Path, size: int, sha256: str,
                   scratch: Path) -> Outcome:
    """A raw PUT through the front's proxy route (``route`` already names target and path).

    The front answers with its own report (what it forwarded, and the backend's answer under
    ``response.json``); both the forwarded SHA-256 and the one the backend stored must match.
    """
    args = ["-T", str(path), "-H", "Content-Type: application/octet-stream", front + route]
    failure, seconds, response = _send_upload(args, size, scratch)
    if failure:
        return failure
    try:
        report = json.loads(response.read_text())
    except ValueError:
        return Outcome("failed", seconds, f"not JSON: {_text(response)}")
    forwarded = report.get("forwarded", {})
    if forwarded and (forwarded.get("bytes") != size or forwarded.get("sha256") != sha256):
        return Outcome("failed", seconds, f"forwarded {forwarded}")
    record = report.get("response", {}).get("json", report)
    record = record["files"][0] if "files" in record and len(record["files"]) == 1 else record
    if record.get("size") != size or record.get("sha256") != sha256:
        return Outcome("failed", seconds,
                       f"backend stored {record.get('size')} bytes sha256 {record.get('sha256')}")
    return Outcome("ok", seconds, "", record.get("id"))


def download(url: str, size: int, scratch: Path) -> Outcome:
    """GET ``url`` into /dev/null; ok when exactly ``size`` bytes came with a 200."""
    try:
        seconds, code, downloaded, error = _curl([url], size, Path("/dev/null"))
    except subprocess.TimeoutExpired:
        return Outcome("failed", timeout_for(size), "timed out")
    if error:
        return Outcome("failed", seconds, error)
    if code != 200 or downloaded != str(size):
        return Outcome("failed", seconds, f"HTTP {code}, {downloaded} bytes of {size}")
    return Outcome("ok", seconds)


def nginx_body(url: str, path: Path, size: int, scratch: Path) -> Outcome:
    """nginx writes the body to a file then answers 204: the C-level upload limit."""
    try:
        seconds, code, _, error = _curl(["-T", str(path), url + "/body"], size, Path("/dev/null"))
    except subprocess.TimeoutExpired:
        return Outcome("failed", timeout_for(size), "timed out")
    if error or code != 204:
        return Outcome("failed", seconds, error or f"HTTP {code}")
    return Outcome("ok", seconds, "size not checked by nginx")


def disk_copy(path: Path, scratch: Path) -> Outcome:
    """``cp`` of the file next to the servers' storage: what the disk (and page cache) allow."""
    target = scratch / "copy.bin"
    start = time.perf_counter()
    done = subprocess.run(["cp", str(path), str(target)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    ok = done.returncode == 0 and target.stat().st_size == path.stat().st_size
    target.unlink(missing_ok=True)
    return Outcome("ok" if ok else "failed", seconds, done.stderr.strip()[:200])


def hashlib_rate(path: Path) -> Outcome:
    """SHA-256 of the file in this process, one core: how fast the hash stage can go at all."""
    import hashlib

    digest = hashlib.sha256()
    start = time.perf_counter()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return Outcome("ok", time.perf_counter() - start, "read + hash, one thread")


def delete(url: str, file_id: str | None) -> None:
    if file_id:
        try:
            requests.delete(f"{url}/files/{file_id}", timeout=60)
        except requests.RequestException:
            pass


def curl_available() -> bool:
    return shutil.which("curl") is not None
