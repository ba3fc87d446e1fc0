"""The plain-upload servers a Python user would pick instead, measured beside Spillway.

copyparty (PUT, multipart, download) and uploadserver (multipart, download), each from
PyPI, started with their default settings on a free loopback port and stopped by PID.
The same curl sends the same file; each upload is "ok" only when the file it stored has
the file's size and SHA-256 (read back after the clock stops: neither reports a SHA-256).
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import requests

from .fleet import ReferenceProcess
from .transfers import CURL, Outcome, download, timeout_for

# peer -> {method: curl arguments for FILE sent to URL}
PEER_METHODS = {
    "copyparty": {"raw": lambda path, url: ["-T", str(path), f"{url}/{path.name}"],
                  "multipart": lambda path, url: ["-F", "act=bput", "-F", f"f=@{path}",
                                                  url + "/"]},
    "uploadserver": {"multipart": lambda path, url: ["-F", f"files=@{path}", url + "/upload"]},
}
PEERS = tuple(PEER_METHODS)


def peer_missing(name: str) -> str | None:
    """Why ``name`` cannot run here, or None when it can."""
    if importlib.util.find_spec(name) is None:
        return "not installed (pip install -r requirements-dev.txt)"
    return None


class Peer(ReferenceProcess):
    def __init__(self, name: str, store: Path):
        super().__init__()
        self.name = name
        self.store = store

    def command(self) -> list[str]:
        if self.name == "copyparty":  # the folder shared read-write at /, quiet
            return [sys.executable, "-m", "copyparty", "-i", "127.0.0.1", "-p", str(self.port),
                    "-v", f"{self.store}::rw", "-q"]
        return [sys.executable, "-m", "uploadserver", str(self.port), "--bind", "127.0.0.1",
                "--directory", str(self.store)]

    def start(self) -> "Peer":
        self.store.mkdir(parents=True, exist_ok=True)
        log = self.store.parent / f"{self.name}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(self.command(), stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(lambda: requests.get(self.url + "/", timeout=1), log)
        return self

    def upload(self, method: str, path: Path, size: int, sha: str) -> Outcome:
        command = CURL + ["--max-time", str(int(timeout_for(size))), "-o", "/dev/null",
                          "-w", "%{http_code}"] + PEER_METHODS[self.name][method](path, self.url)
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=timeout_for(size) + 30)
        except subprocess.TimeoutExpired:
            return Outcome("failed", timeout_for(size), "timed out")
        seconds = time.perf_counter() - started
        if done.returncode != 0 or done.stdout.strip() not in ("201", "204"):
            return Outcome("failed", seconds, f"curl exit {done.returncode}, HTTP "
                           f"{done.stdout.strip()}: {done.stderr.strip()[:200]}")
        return self._check(path.name, size, sha, Outcome("ok", seconds))

    def _check(self, name: str, size: int, sha: str, outcome: Outcome) -> Outcome:
        stored = self.store / name
        if not stored.is_file() or stored.stat().st_size != size:
            outcome.status, outcome.detail = "failed", f"{name} not stored whole"
            return outcome
        digest = hashlib.sha256()
        with stored.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != sha:
            outcome.status, outcome.detail = "failed", "stored sha256 differs"
        return outcome

    def clear(self) -> None:
        for path in self.store.iterdir():
            if path.is_file():
                path.unlink()


def start_peers(workdir: Path) -> tuple[dict[str, Peer], list[str]]:
    """The peers that started, and a note for each that did not."""
    started, notes = {}, []
    for name in PEERS:
        why = peer_missing(name)
        if why is None:
            try:
                started[name] = Peer(name, workdir / name / "store").start()
                continue
            except RuntimeError as error:
                why = str(error)[:200]
        notes.append(f"{name}: unavailable ({why})")
    return started, notes


def cells(runner, path: Path, size: int, sha: str, repeat: int) -> None:
    """Each peer's uploads of ``path``, then a download of what it stored."""
    for name in PEERS:
        peer = runner.peers.get(name)
        methods = [m for m in PEER_METHODS[name] if m in runner.args.methods]
        downloads = "download" in runner.args.methods
        if peer is None:
            for method in methods + (["download"] if downloads else []):
                runner.measure(size, repeat, method, name, None, None,
                               lambda: Outcome("unavailable", 0, peer_missing(name) or
                                               "did not start"))
            continue
        stored = False
        for method in methods:
            peer.clear()
            outcome = runner.measure(size, repeat, method, name, peer.roots(), peer.alive,
                                     lambda: peer.upload(method, path, size, sha))
            stored = outcome.status == "ok"
        if downloads:
            if stored:
                runner.measure(size, repeat, "download", name, peer.roots(), peer.alive,
                               lambda: download(f"{peer.url}/{path.name}", size, runner.scratch))
            else:
                runner.measure(size, repeat, "download", name, None, None,
                               lambda: Outcome("failed", 0, "no stored file to fetch"))
        peer.clear()
