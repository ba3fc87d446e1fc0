"""Start real WSGI servers on free loopback ports for the live tests."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
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


STOP_SIGNALS = {"flask": signal.SIGTERM, "gunicorn": signal.SIGTERM, "uwsgi": signal.SIGINT, "uwsgi-router": signal.SIGINT,
                "uwsgi-behind-nginx": signal.SIGINT}


def server_command(kind: str) -> list[str]:
    """The command line that starts `kind`, as a deployment runs it (from the project root)."""
    if kind == "flask":  # the development server (threaded); host and port from FLASK_RUN_*
        return [sys.executable, "-m", "flask", "--app", "wsgi", "run", "--no-reload",
                "--no-debugger", "--with-threads"]
    if kind == "gunicorn":
        return [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
    if kind == "uwsgi":
        return [str(BIN / "uwsgi"), "--ini", "uwsgi.ini"]  # as the Docker image's CMD
    if kind == "uwsgi-router":
        return [str(BIN / "uwsgi"), "--ini", "uwsgi.ini:http-router"]
    if kind == "uwsgi-behind-nginx":  # the uwsgi protocol on SPILLWAY_BIND, for uwsgi_pass
        return [str(BIN / "uwsgi"), "--ini", "uwsgi.ini:behind-nginx"]
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
        "FLASK_RUN_HOST": "127.0.0.1",
        "FLASK_RUN_PORT": str(port),
    })
    environment.update(env or {})
    return launch(kind, server_command(kind), environment, storage_dir, log_dir)


def launch(kind: str, command: list[str], environment: dict, storage_dir: Path,
           log_dir: Path, cwd: Path = ROOT) -> Server:
    """Run `command` with exactly `environment` and wait for /health on its SPILLWAY_BIND."""
    port = int(environment["SPILLWAY_BIND"].rpartition(":")[2])
    log_path = log_dir / f"{kind}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    scheme = "uwsgi" if kind == "uwsgi-behind-nginx" else "http"
    server = Server(kind, f"{scheme}://127.0.0.1:{port}", process, storage_dir, log_path,
                    environment)
    return _wait_ready(server, lambda: _healthy(server))


def _wait_ready(server: Server, ready) -> Server:
    """Wait until ``ready()`` is true (errors count as not yet); fail if the process exits."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.kind} exited at start:\n{server.log()}")
        try:
            if ready():
                return server
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.kind} did not answer within 30 s:\n{server.log()}")


def _healthy(server: Server) -> bool:
    if not server.url.startswith("uwsgi://"):
        return requests.get(server.url + "/health", timeout=1).status_code == 200
    host, port = server.url.removeprefix("uwsgi://").split(":")
    return uwsgi_get(host, int(port), "/health").startswith(b"HTTP/1.1 200")


def uwsgi_get(host: str, port: int, path: str, headers: dict | None = None) -> bytes:
    """A GET in the uwsgi protocol (what nginx's uwsgi_pass sends); the raw HTTP answer."""
    params = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REQUEST_URI": path,
              "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": host,
              "SERVER_PORT": str(port), "HTTP_HOST": f"{host}:{port}"}
    for name, value in (headers or {}).items():
        params["HTTP_" + name.upper().replace("-", "_")] = value
    body = b"".join(struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
                    for k, v in params.items())
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(struct.pack("<BHB", 0, len(body), 0) + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def start_sink(log_dir: Path) -> Server:
    """tests/sink_app.py under gunicorn: the downstream/upstream of the proxy and import tests.

    Its record of every received body is ``log_dir / "sink.jsonl"``.
    """
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}
    environment.update({"SINK_LOG": str(log_dir / "sink.jsonl"), "PYTHONUNBUFFERED": "1"})
    command = [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-k", "gthread",
               "--threads", "16", "--graceful-timeout", "1", "--no-control-socket",
               "tests.sink_app:app"]
    log_path = log_dir / f"sink-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("gunicorn", f"http://127.0.0.1:{port}", process, log_dir, log_path,
                    environment)
    # any answer will do: the sink is up
    return _wait_ready(server, lambda: requests.get(server.url + "/files/x?size=1", timeout=1)
                       .status_code > 0)
