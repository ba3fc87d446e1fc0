"""``--methods tus``: resumable uploads, Spillway's /tus/ beside its raw PUT and @tus/server.

Each file goes as one tus upload: a POST, then either one PATCH of the whole file (curl -T
FILE, like the raw cell) or 64 MiB PATCHes (each piece piped to curl with its length, so
never chunked). The clock runs from the POST to the last PATCH's answer; the stored bytes
are checked afterwards: Spillway's SHA-256 (GET /files/<id>), @tus/server's file on disk.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import requests

from .fleet import TusNode, tus_node_missing
from .transfers import CURL, Outcome, delete, timeout_for

PIECE = 64 << 20
METHODS = {"tus": 0, "tus 64M": PIECE}  # method label -> bytes per PATCH (0: one PATCH)
SERVERS = ("gunicorn", "uwsgi")
REFERENCE = "@tus/server"
TUS = ["-H", "Tus-Resumable: 1.0.0"]


def start_reference(workdir: Path) -> tuple[TusNode | None, str]:
    """@tus/server started, or None and why not."""
    missing = tus_node_missing()
    if missing:
        return None, missing
    try:
        return TusNode(workdir / "tus-node" / "store").start(), ""
    except RuntimeError as error:
        return None, str(error)[:200]


def methods_for(size: int) -> dict[str, int]:
    """At most one piece's worth of bytes, "tus 64M" would be the one PATCH of "tus" again."""
    return {method: piece for method, piece in METHODS.items() if piece < size}


def cells(runner, path: Path, size: int, sha: str, repeat: int) -> None:
    methods = methods_for(size)
    for kind in SERVERS:
        target = runner.fleet.targets.get(kind)
        if target is None:
            continue
        for method, piece in methods.items():
            outcome = runner.on(target, size, repeat, method, lambda: upload(
                target.url + "/tus/", path, size, piece, _spillway_check(target.url, sha)))
            delete(target.url, outcome.file_id)
    node = runner.tus_node
    if node is None:
        for method in methods:
            runner.measure(size, repeat, method, REFERENCE, None, None,
                           lambda: Outcome("unavailable", 0, runner.tus_node_missing))
        return
    for method, piece in methods.items():
        outcome = runner.measure(size, repeat, method, REFERENCE, node.roots(), node.alive,
                                 lambda: upload(node.url + "/files", path, size, piece,
                                                _node_check(node.store, sha)))
        for stored in node.store.glob(f"{outcome.file_id or '-'}*"):
            stored.unlink()


def upload(create_url: str, path: Path, size: int, piece: int, check) -> Outcome:
    """POST then PATCH ``path`` to a tus server; ``check(location)`` -> failure text or ''."""
    start = time.perf_counter()
    try:
        created = requests.post(create_url, headers={"Tus-Resumable": "1.0.0",
                                                     "Upload-Length": str(size)}, timeout=30)
    except requests.RequestException as error:
        return Outcome("failed", time.perf_counter() - start, f"POST: {error}"[:200])
    if created.status_code != 201:
        return Outcome("failed", time.perf_counter() - start,
                       f"POST: HTTP {created.status_code} {created.text[:200]}")
    location = requests.compat.urljoin(create_url, created.headers["Location"])
    for offset in range(0, size, piece or size):
        length = min(piece or size, size - offset)
        failure = _patch(location, path, offset, length, size == length)
        if failure:
            return Outcome("failed", time.perf_counter() - start, failure)
    seconds = time.perf_counter() - start
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    problem = check(upload_id)
    return Outcome("failed" if problem else "ok", seconds, problem, upload_id)


def _patch(location: str, path: Path, offset: int, length: int, whole: bool) -> str:
    args = CURL + TUS + ["-X", "PATCH", "-H", f"Upload-Offset: {offset}",
                         "-H", "Content-Type: application/offset+octet-stream",
                         "--max-time", str(int(timeout_for(length))), "-o", "/dev/null",
                         "-w", "%{http_code}"]
    if whole:
        done = subprocess.run(args + ["-T", str(path), location], capture_output=True,
                              text=True, timeout=timeout_for(length) + 30)
    else:  # one piece: head reads it from the file at its offset, curl sends it with its length
        with path.open("rb") as source:
            source.seek(offset)
            head = subprocess.Popen(["head", "-c", str(length)], stdin=source,
                                    stdout=subprocess.PIPE)
            done = subprocess.run(args + ["-H", "Transfer-Encoding:", "-H",
                                          f"Content-Length: {length}", "-T", "-", location],
                                  stdin=head.stdout, capture_output=True, text=True,
                                  timeout=timeout_for(length) + 30)
            head.stdout.close()
            head.wait()
    if done.returncode != 0:
        return f"PATCH at {offset}: curl exit {done.returncode}: {done.stderr.strip()[:200]}"
    if done.stdout.strip() != "204":
        return f"PATCH at {offset}: HTTP {done.stdout.strip()}"
    return ""


def _spillway_check(url: str, sha: str):
    def check(upload_id: str) -> str:
        record = requests.get(f"{url}/files/{upload_id}", timeout=30).json()
        if record.get("sha256") != sha:
            return f"stored sha256 {record.get('sha256')} != {sha}"
        return ""

    return check


def _node_check(store: Path, sha: str):
    def check(upload_id: str) -> str:
        digest = hashlib.sha256()
        with (store / upload_id).open("rb") as stored:
            while chunk := stored.read(1 << 20):
                digest.update(chunk)
        return "" if digest.hexdigest() == sha else f"stored sha256 {digest.hexdigest()} != {sha}"

    return check
