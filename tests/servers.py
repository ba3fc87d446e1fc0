"""Start real WSGI servers on free loopback ports for the live tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Server:
    kind: str
    url: str
    process: subprocess.Popen
    storage_dir: Path
    log_path: Path
    env: dict = field(default_factory=dict)

    def worker_pids(self) -> list[int]:
        return children(self.process.pid) or [self.process.pid]

    def workers_rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.worker_pids())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop at once; uploads in flight are not waited for (SIGTERM would wait)."""
        if self.process.poll() is None:
            # gunicorn: SIGTERM is its graceful stop, but the tests leave nothing in flight;
            # uWSGI: SIGINT kills the workers at once (SIGTERM is graceful in uwsgi.ini)
            self.process.send_signal(STOP_SIGNALS[self.kind])
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the workers too: own session
                self.process.wait(5)


STOP_SIGNALS = {"gunicorn": signal.SIGTERM, "uwsgi": signal.SIGINT}


def server_command(kind: str) -> list[str]:
    """The command line that starts `kind`, as a deployment runs it (from the project root)."""
    if kind == "gunicorn":
        return [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
    if kind == "uwsgi":
        return [str(BIN / "uwsgi"), "--ini", "uwsgi.ini"]  # as the Docker image's CMD
    raise ValueError(f"unknown server kind {kind}")


def start_server(kind: str, storage_dir: Path, log_dir: Path, env: dict | None = None,
                 workers: int = 1) -> Server:
    port = free_port()
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("SPILLWAY_", "GUNICORN_", "UWSGI_"))}
    environment.update({
        "SPILLWAY_STORAGE_DIR": str(storage_dir),
        "SPILLWAY_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(workers),
        "UWSGI_PROCESSES": str(workers),
        "GUNICORN_ACCESSLOG": "",
        "PYTHONUNBUFFERED": "1",
    })
    environment.update(env or {})
    command = server_command(kind)
    log_path = log_dir / f"{kind}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(kind, f"http://127.0.0.1:{port}", process, storage_dir, log_path, environment)
    return _wait_ready(server, "/health", need_ok=True)


def _wait_ready(server: Server, path: str, need_ok: bool = False) -> Server:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.kind} exited at start:\n{server.log()}")
        try:
            if requests.get(server.url + path, timeout=1).ok or not need_ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.kind} did not answer within 30 s:\n{server.log()}")


def start_sink(log_dir: Path) -> Server:
    """tests/sink_app.py under gunicorn: the downstream/upstream of the proxy and import tests.

    Its record of every received body is ``log_dir / "sink.jsonl"``.
    """
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}
    environment.update({"SINK_LOG": str(log_dir / "sink.jsonl"), "PYTHONUNBUFFERED": "1"})
    command = [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-k", "gthread",
               "--threads", "16", "--graceful-timeout", "1", "tests.sink_app:app"]
    log_path = log_dir / f"sink-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("gunicorn", f"http://127.0.0.1:{port}", process, log_dir, log_path,
                    environment)
    return _wait_ready(server, "/files/x?size=1")
