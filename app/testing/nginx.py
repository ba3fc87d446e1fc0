"""A real nginx for the tests: config rendered from deploy/nginx, own prefix, free port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from deploy.nginx.render import prepare_directories, render, resolve_values
from app.testing.servers import free_port


NO_NGINX = "nginx is not installed (.ci/run installs it with apt-get)"


def nginx_binary() -> str | None:
    """The nginx the tests and the benchmark run: ``$SPILLWAY_NGINX`` when set (``none``:
    behave as on a machine without nginx), else nginx on PATH or in an sbin directory
    (Debian keeps it in /usr/sbin, which is not on a normal user's PATH)."""
    chosen = os.environ.get("SPILLWAY_NGINX")
    if chosen is not None:
        return None if chosen in ("", "none") else chosen
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)),
        None)


class Nginx:
    def __init__(self, mode: str, prefix: Path, **values: str):
        self.mode = mode
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # environ={}: the config depends on what the test passes, not on the shell running it
        self.values = resolve_values(environ={}, PREFIX=str(prefix),
                                     LISTEN=f"127.0.0.1:{self.port}", **values)
        prepare_directories(self.values, mode)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(render(mode, self.values))
        self.error_log = prefix / "error.log"
        self.process: subprocess.Popen | None = None

    @property
    def upload_temp_dir(self) -> Path:
        return Path(self.values["UPLOAD_TEMP_DIR"])

    def start(self) -> "Nginx":
        command = [nginx_binary(), "-p", f"{self.prefix}/", "-c", str(self.conf),
                   "-e", str(self.error_log), "-g", "daemon off;"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen within 10 s:\n{self.log()}")

    def log(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # fast shutdown; the tests leave nothing in flight
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only our nginx
            self.process.wait(5)
