"""Graceful stop: SIGTERM (what `docker stop` and systemd send) lets uploads in flight finish."""

from __future__ import annotations

import hashlib
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import TOKEN_RW
from app.testing.servers import ROOT, start_server

BLOCK = b"g" * (256 << 10)
BLOCKS = 16  # 4 MiB sent over ~3 s


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_sigterm_lets_an_upload_in_flight_finish(kind, tmp_path):
    server = start_server(kind, tmp_path / "store", tmp_path, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write",
    })
    started = threading.Event()

    class PacedBody:
        """File-like, so requests sends a Content-Length; one block per read, 0.2 s apart."""
        sent = 0

        def __len__(self):
            return len(BLOCK) * BLOCKS

        def read(self, _size=-1):
            if self.sent == BLOCKS:
                return b""
            if self.sent == 2:
                started.set()
            if self.sent:
                time.sleep(0.2)
            self.sent += 1
            return BLOCK

    result = {}

    def upload():
        try:
            result["response"] = requests.put(
                f"{server.url}/upload/inflight.bin", data=PacedBody(), timeout=30,
                headers={"Authorization": f"Bearer {TOKEN_RW}"})
        except requests.RequestException as error:
            result["error"] = error

    try:
        sender = threading.Thread(target=upload)
        sender.start()
        assert started.wait(10)
        server.process.send_signal(signal.SIGTERM)
        stop_sent = time.monotonic()
        sender.join(30)
        assert "error" not in result, result.get("error")
        response = result["response"]
        assert response.status_code == 201, response.text
        assert response.json()["sha256"] == hashlib.sha256(BLOCK * BLOCKS).hexdigest()
        assert server.process.wait(30) == 0  # both masters end cleanly once the upload is done
        assert time.monotonic() - stop_sent < 30
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/health", timeout=2)
        blobs = list((tmp_path / "store" / "blobs").rglob("*"))
        assert [p.stat().st_size for p in blobs if p.is_file()] == [len(BLOCK) * BLOCKS]
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_sighup_reloads_the_workers_and_keeps_serving(kind, tmp_path):
    """The reload operators send after a deploy: new workers, same files, metrics still
    collected.  Under uWSGI it re-executes the master, which pyuwsgi in a virtualenv gets
    wrong unless binary-path is set (uwsgi.ini sets it for .venv beside it)."""
    env = {"SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write", "TMPDIR": str(tmp_path)}
    if kind == "uwsgi" and Path(sys.prefix) != ROOT / ".venv":
        env["UWSGI_BINARY_PATH"] = sys.executable  # what the app's warning tells one to do
    server = start_server(kind, tmp_path / "store", tmp_path, env=env, workers=2)
    auth = {"Authorization": f"Bearer {TOKEN_RW}"}
    try:
        data = b"before the reload " * 1000
        stored = requests.put(f"{server.url}/upload/before.txt", data=data, headers=auth,
                              timeout=10)
        assert stored.status_code == 201
        old_workers = set(server.worker_pids())
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not (old_workers.isdisjoint(server.worker_pids())
                   and len(server.worker_pids()) == 2 and healthy(server)):
            assert server.process.poll() is None, server.log()[-3000:]
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.2)
        again = requests.get(f"{server.url}/files/{stored.json()['id']}/content", headers=auth,
                             timeout=10)
        assert again.status_code == 200 and again.content == data
        after = requests.put(f"{server.url}/upload/after.txt", data=b"after", headers=auth,
                             timeout=10)
        assert after.status_code == 201
        metrics_dir = tmp_path / f"spillway-metrics-{server.process.pid}"
        assert metrics_dir.is_dir() and any(metrics_dir.glob("*.db"))
        assert "would start python without this virtualenv" not in server.log()
    finally:
        server.stop()


def healthy(server) -> bool:
    try:
        return requests.get(f"{server.url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False
