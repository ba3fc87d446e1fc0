"""The processes under test: Spillway under each server, a proxy front, nginx, all on loopback.

Every process is started here in its own session and stopped by its own PID; a server that
died during a transfer is restarted by :meth:`Fleet.revive` so the run goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from app.testing.nginx import nginx_binary
from app.testing.servers import ROOT, Server, free_port, launch, server_command, start_server

BIG = "64G"  # no Spillway limit may cut a benchmark file


def router_available() -> bool:
    """True once uwsgi.ini has the [http-router] section (uWSGI's HTTP router in front)."""
    return "[http-router]" in (ROOT / "uwsgi.ini").read_text()


def server_env(storage: Path) -> dict:
    return {
        "SPILLWAY_MAX_REQUEST_SIZE": BIG,
        "SPILLWAY_MAX_FILE_SIZE": BIG,
        "SPILLWAY_ENABLE_BASELINE": "true",
        "SPILLWAY_READ_TIMEOUT": "120",
        "GUNICORN_TIMEOUT": "600",
        "GUNICORN_LOGLEVEL": "warning",
        # werkzeug spools request.files parts here; keep them off a small /tmp and countable
        "TMPDIR": str(storage.parent / "spool"),
    }


@dataclass
class Target:
    """One thing to send bytes to: a Spillway server (or a proxy front and its backend)."""
    name: str
    kind: str
    server: Server
    command: list[str] | None = None  # when not the kind's usual command
    extra_env: dict | None = None
    backend: "Target | None" = None  # proxy fronts: the second Spillway
    targets_template: str = ""  # proxy fronts: SPILLWAY_PROXY_TARGETS, {url} = the backend's

    @property
    def url(self) -> str:
        return self.server.url

    def roots(self) -> list[int]:
        roots = [self.server.process.pid]
        if self.backend is not None:
            roots.append(self.backend.server.process.pid)
        return roots

    def alive(self) -> bool:
        return self.server.process.poll() is None and (
            self.backend is None or self.backend.alive())


class Fleet:
    def __init__(self, workdir: Path, workers: int, log):
        self.workdir = workdir
        self.workers = workers
        self.log = log
        self.targets: dict[str, Target] = {}

    def _start(self, name: str, kind: str, command: list[str] | None = None,
               extra_env: dict | None = None) -> Server:
        storage = self.workdir / name / "store"
        (self.workdir / name / "spool").mkdir(parents=True, exist_ok=True)
        env = server_env(storage) | (extra_env or {})
        if command is None:
            return start_server(kind, storage, self.workdir, env=env, workers=self.workers)
        port = free_port()
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("SPILLWAY_", "GUNICORN_", "UWSGI_"))}
        environment |= {"SPILLWAY_STORAGE_DIR": str(storage), "SPILLWAY_BIND": f"127.0.0.1:{port}",
                        "GUNICORN_WORKERS": str(self.workers), "UWSGI_PROCESSES": str(self.workers),
                        "GUNICORN_ACCESSLOG": "", "PYTHONUNBUFFERED": "1"} | env
        return launch(kind, command, environment, storage, self.workdir)

    def add(self, name: str, kind: str, command: list[str] | None = None,
            extra_env: dict | None = None, backend: Target | None = None,
            targets_template: str = "") -> Target:
        if backend is not None:
            extra_env = proxy_env(targets_template, backend)
        target = Target(name, kind, self._start(name, kind, command, extra_env), command,
                        extra_env, backend, targets_template)
        self.targets[name] = target
        self.log(f"started {name}: {' '.join(command or server_command(kind))} on {target.url}")
        return target

    def revive(self, target: Target) -> None:
        """Restart whatever died in ``target`` (the benchmark goes on after a crash)."""
        if target.backend is not None and not target.backend.alive():
            self.revive(target.backend)
        target.server.stop()
        extra = dict(target.extra_env or {})
        if target.backend is not None:  # the backend may have come back on another port
            extra = proxy_env(target.targets_template, target.backend)
        target.server = self._start(target.name, target.kind, target.command, extra)
        self.log(f"restarted {target.name} on {target.url}")

    def stop(self) -> None:
        for target in self.targets.values():
            target.server.stop()


def proxy_env(template: str, backend: Target) -> dict:
    return {"SPILLWAY_PROXY_TARGETS": template.format(url=backend.url)}


# --- nginx: the C-level reference -------------------------------------------------------------

NGINX_CONF = """\
{user}worker_processes 1;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    sendfile on;
    tcp_nopush on;
    sendfile_max_chunk 0;  # one client: no fairness slicing (1.22 sends 2m per call by default)
    server {{
        listen 127.0.0.1:{port};
        # upload limit: nginx writes the whole body to a file, then a body-less subrequest
        # to the trivial server below answers (the offload pattern, without Spillway)
        location /body {{
            client_max_body_size 0;
            client_body_in_file_only clean;
            client_body_buffer_size 1m;
            proxy_pass http://127.0.0.1:{port2}/done;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        # download limit: sendfile(2) straight from the source file's folder
        location /static/ {{ alias {static}/; }}
    }}
    server {{
        listen 127.0.0.1:{port2};
        location /done {{ return 204; }}
    }}
}}
"""


class ReferenceProcess:
    """A reference server the benchmark starts in its own session and stops by PID."""

    name = "reference"

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def wait_ready(self, probe, log_path: Path) -> None:
        """Until ``probe()`` answers (15 s at most); the log's tail if the process died."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: "
                                   + log_path.read_text(errors="replace")[-500:])
            try:
                probe()
                return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within 15 s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def roots(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)  # nginx: fast stop; node: exit
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


class Nginx(ReferenceProcess):
    name = "nginx"

    def __init__(self, prefix: Path, static: Path):
        super().__init__()
        self.prefix = prefix
        self.static = static

    def start(self) -> "Nginx":
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            user="user root root;\n" if os.geteuid() == 0 else "", prefix=self.prefix,
            port=self.port, port2=free_port(), static=self.static))
        with (self.prefix / "stdout.log").open("wb") as out:
            self.process = subprocess.Popen(
                [nginx_binary(), "-p", str(self.prefix), "-c", str(conf),
                 "-e", str(self.prefix / "error.log"), "-g", "daemon off;"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(lambda: requests.get(self.url + "/static/", timeout=1),
                        self.prefix / "error.log")
        return self


# --- @tus/server: the node tus server a user would pick instead --------------------------------

TUS_NODE = ROOT / "benchmark" / "tus-node"


def tus_node_missing() -> str | None:
    """Why the @tus/server reference cannot run here, or None when it can."""
    import shutil

    if shutil.which("node") is None:
        return "node is not installed"
    if not (TUS_NODE / "node_modules" / "@tus" / "server").is_dir():
        return "its packages are not installed (npm ci --prefix benchmark/tus-node)"
    return None


class TusNode(ReferenceProcess):
    """``node benchmark/tus-node/server.mjs`` with @tus/file-store writing to ``store``."""

    name = "@tus/server"

    def __init__(self, store: Path):
        super().__init__()
        self.store = store

    def start(self) -> "TusNode":
        self.store.mkdir(parents=True, exist_ok=True)
        with (self.store.parent / "tus-node.log").open("wb") as out:
            self.process = subprocess.Popen(
                ["node", str(TUS_NODE / "server.mjs"), str(self.port), str(self.store)],
                cwd=TUS_NODE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(lambda: requests.options(self.url + "/files", timeout=1),
                        self.store.parent / "tus-node.log")
        return self
