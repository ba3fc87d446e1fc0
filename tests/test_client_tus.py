"""`python -m app.client upload --resumable` (tus) as a real subprocess against live servers:
plain, killed halfway and resumed, in parallel parts, and with a stale state file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import TOKEN_RO, TOKEN_RW, sha256_of
from tests.test_client import client_command, lines, random_file, run_client
from app.testing.servers import ROOT, start_server

AUTH = {"Authorization": f"Bearer {TOKEN_RW}"}
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"tus-client-{request.param}")
    live = start_server(request.param, base / "store", base, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write,{TOKEN_RO}:read"})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, str]:
    path = random_file(tmp_path_factory.mktemp("tus-big") / "big.bin", 200 * 1024 * 1024 + 7)
    return path, sha256_of(path)


def unfinished(url: str) -> list[dict]:
    response = requests.get(f"{url}/tus/?limit=1000", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["uploads"]


def offset_of(url: str, upload_id: str) -> int:
    response = requests.head(f"{url}/tus/{upload_id}", headers=AUTH | TUS, timeout=10)
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])


def resumable(url: str, path: Path, state: Path, *more: str) -> list[str]:
    return ["upload", str(path), "--resumable", "--state-dir", str(state), *more]


def kill_halfway(url: str, path: Path, state: Path) -> str:
    """Start the client, SIGKILL it once the server holds part of the file; the upload's id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    env["PYTHONPATH"] = str(ROOT)
    before = {u["id"] for u in unfinished(url)}
    # 8 MiB PATCHes: the server's offset moves at every PATCH's end, well before the last
    process = subprocess.Popen(client_command(url, *resumable(url, path, state,
                                                              "--chunk-size", "8M")),
                               cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            moving = [u for u in unfinished(url) if u["id"] not in before and u["offset"] > 0]
            if moving:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                return moving[0]["id"]
            time.sleep(0.01)
        pytest.fail(f"no upload in flight to kill (client exit {process.poll()}: "
                    f"{process.stderr.read().decode()[-500:] if process.poll() is not None else ''})")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdout.close()
        process.stderr.close()


def test_resumable_upload_stores_the_file_under_its_tus_id(server, tmp_path):
    source = random_file(tmp_path / "small.bin", 3_000_001)
    result = run_client(server.url, *resumable(server.url, source, tmp_path / "state"))
    assert result.returncode == 0, result.stderr
    [record] = lines(result)
    assert record["sha256"] == sha256_of(source) and record["size"] == 3_000_001
    assert record["filename"] == "small.bin" and record["resumed_from"] == 0
    stored = requests.get(f"{server.url}/files/{record['id']}", headers=AUTH, timeout=10).json()
    assert stored["sha256"] == record["sha256"]
    assert not list((tmp_path / "state").iterdir())  # nothing left to resume


def test_killed_client_resumes_the_same_upload(server, tmp_path, big):
    path, sha = big
    state = tmp_path / "state"
    upload_id = kill_halfway(server.url, path, state)
    time.sleep(0.5)  # the server notices the cut and records what it got
    held = offset_of(server.url, upload_id)
    assert 0 < held < path.stat().st_size
    assert len(list(state.iterdir())) == 1
    ids_before = {u["id"] for u in unfinished(server.url)}

    result = run_client(server.url, *resumable(server.url, path, state), timeout=120)
    assert result.returncode == 0, result.stderr
    [record] = lines(result)
    assert record["id"] == upload_id  # the same upload, continued: no new POST
    assert record["resumed_from"] >= held
    assert record["sha256"] == sha and record["size"] == path.stat().st_size
    assert {u["id"] for u in unfinished(server.url)} == ids_before - {upload_id}
    assert not list(state.iterdir())


def test_stale_state_file_starts_over(server, tmp_path, big):
    path, sha = big
    state = tmp_path / "state"
    upload_id = kill_halfway(server.url, path, state)
    time.sleep(0.5)
    gone = requests.delete(f"{server.url}/tus/{upload_id}", headers=AUTH | TUS, timeout=10)
    assert gone.status_code == 204
    result = run_client(server.url, *resumable(server.url, path, state), timeout=120)
    assert result.returncode == 0, result.stderr
    [record] = lines(result)
    assert record["id"] != upload_id and record["resumed_from"] == 0
    assert record["sha256"] == sha and record["size"] == path.stat().st_size


def test_parallel_parts_are_joined(server, tmp_path):
    source = random_file(tmp_path / "parts.bin", 30_000_011)
    result = run_client(server.url, *resumable(server.url, source, tmp_path / "state",
                                               "--parallel", "3"))
    assert result.returncode == 0, result.stderr
    [record] = lines(result)
    assert record["sha256"] == sha256_of(source) and record["size"] == 30_000_011
    assert record["filename"] == "parts.bin"
    copy = requests.get(f"{server.url}/files/{record['id']}/content", headers=AUTH, timeout=60)
    assert copy.content == source.read_bytes()
    assert record["id"] not in {u["id"] for u in unfinished(server.url)}


def test_empty_file_and_a_missing_one(server, tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    result = run_client(server.url, *resumable(server.url, empty, tmp_path / "state",
                                               "--parallel", "3"))
    assert result.returncode == 0, result.stderr
    assert lines(result)[0]["size"] == 0
    missing = run_client(server.url, *resumable(server.url, tmp_path / "nope", tmp_path / "s"))
    assert missing.returncode == 2 and "no_such_file" in missing.stderr
