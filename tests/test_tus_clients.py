"""Real tus clients against live gunicorn and uWSGI (2 worker processes each): tuspy
(Python) and tus-js-client (node, tests/js).  Cut, resume, parallel uploads, deferred
length, creation-with-upload, termination; the stored SHA-256 must be the source's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import TOKEN_RW, sha256_of
from app.testing.servers import ROOT, start_server
from tests.tus_wire import AUTH, head, offset, stored_sha256

tusclient = pytest.importorskip("tusclient.client", reason="tuspy is not installed "
                                "(pip install -r requirements-dev.txt)")

JS_DIR = ROOT / "tests" / "js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None or not (JS_DIR / "node_modules" / "tus-js-client").is_dir(),
    reason="tus-js-client needs node and `npm ci --prefix tests/js` (.ci/run does both)")
SIZE = 48 << 20


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("clients-" + request.param)
    running = start_server(request.param, base / "store", base, workers=2, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write",
        "SPILLWAY_READ_TIMEOUT": "5",
    })
    yield running
    running.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tus-source") / "source.bin"
    with path.open("wb") as out:
        for _ in range(SIZE >> 20):
            out.write(os.urandom(1 << 20))
    return path


def tus_js(server, source: Path, **options) -> dict:
    arguments = {"endpoint": server.url + "/tus/", "file": str(source), "token": TOKEN_RW,
                 "filename": "source.bin"} | options
    finished = subprocess.run([NODE, str(JS_DIR / "tus_upload.mjs"), json.dumps(arguments)],
                              capture_output=True, timeout=120, cwd=JS_DIR)
    assert finished.returncode == 0, finished.stderr.decode()
    return json.loads(finished.stdout.decode().strip().splitlines()[-1])


def location_of(url: str) -> str:
    return "/tus/" + url.rstrip("/").rsplit("/", 1)[1]


def file_record(server, location: str) -> dict:
    file_id = location.rsplit("/", 1)[1]
    return requests.get(f"{server.url}/files/{file_id}", headers=AUTH, timeout=10).json()


@needs_node
def test_tus_js_cut_mid_patch_then_resumed_by_a_new_client(server, source):
    cut = tus_js(server, source, abortAfter=SIZE // 2)
    assert cut["status"] == "aborted", cut
    location = location_of(cut["url"])
    deadline = time.monotonic() + 10
    while offset(server.url, location) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    kept = offset(server.url, location)
    assert 0 < kept < SIZE
    resumed = tus_js(server, source, uploadUrl=cut["url"])
    assert resumed["status"] == "success", resumed
    record = file_record(server, location)
    assert record["sha256"] == sha256_of(source) and record["size"] == SIZE
    assert record["filename"] == "source.bin"


@needs_node
def test_tus_js_parallel_uploads_are_concatenated(server, source):
    result = tus_js(server, source, parallelUploads=3)
    assert result["status"] == "success", result
    location = location_of(result["url"])
    assert stored_sha256(server.url, location) == sha256_of(source)
    assert file_record(server, location)["filename"] == "source.bin"
    leftovers = requests.get(server.url + "/tus/?limit=1000", headers=AUTH, timeout=10).json()
    assert not [u for u in leftovers["uploads"] if u["partial"]]  # the parts were used up


@needs_node
def test_tus_js_deferred_length(server, source):
    # (a chunk size that divides the size exactly leaves tus-js-client 4.3.1 waiting for
    # its stream forever after the last chunk: a client quirk)
    result = tus_js(server, source, deferLength=True, chunkSize=5 << 20)
    assert result["status"] == "success", result
    assert stored_sha256(server.url, location_of(result["url"])) == sha256_of(source)


@needs_node
def test_tus_js_creation_with_upload(server, source):
    result = tus_js(server, source, dataDuringCreation=True, chunkSize=16 << 20)
    assert result["status"] == "success", result
    assert stored_sha256(server.url, location_of(result["url"])) == sha256_of(source)


@needs_node
def test_tus_js_termination(server, source):
    result = tus_js(server, source, terminate=True)
    assert result["status"] == "terminated", result
    location = location_of(result["url"])
    assert head(server.url, location).status_code == 404
    file_id = location.rsplit("/", 1)[1]
    assert requests.get(f"{server.url}/files/{file_id}", headers=AUTH,
                        timeout=10).status_code == 404


def tuspy_uploader(server, source: Path, **kwargs):
    client = tusclient.TusClient(server.url + "/tus/", headers=AUTH)
    return client.uploader(str(source), **kwargs)


def test_tuspy_stopped_halfway_then_resumed_by_a_new_client(server, source):
    first = tuspy_uploader(server, source, chunk_size=4 << 20)  # no metadata: an empty header
    first.upload(stop_at=SIZE // 2)
    location = location_of(first.url)
    assert offset(server.url, location) == SIZE // 2
    second = tuspy_uploader(server, source, chunk_size=4 << 20, url=first.url)
    assert second.offset == SIZE // 2  # asked the server (HEAD)
    second.upload()
    assert stored_sha256(server.url, location) == sha256_of(source)


def test_tuspy_killed_mid_upload_then_resumed(server, source):
    script = textwrap.dedent(f"""
        import sys
        from tusclient import client
        uploader = client.TusClient({server.url + '/tus/'!r}, headers={AUTH!r}).uploader(
            {str(source)!r}, chunk_size=2 << 20, metadata={{"filename": "killed.bin"}})
        uploader.set_url(uploader.create_url())
        print(uploader.url, flush=True)
        uploader.upload()
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               cwd=ROOT, start_new_session=True)
    try:
        url = process.stdout.readline().decode().strip()
        location = location_of(url)
        deadline = time.monotonic() + 30
        while offset(server.url, location) < 4 << 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    kept = offset(server.url, location)
    assert kept < SIZE, "the client finished before it was killed"
    # the killed client's PATCH holds the upload's lock until the server has seen the
    # connection go and saved what arrived (423 meanwhile): retry as a client would
    resumed = tuspy_uploader(server, source, chunk_size=8 << 20, url=url, retries=5,
                             retry_delay=1)
    resumed.upload()
    record = file_record(server, location)
    assert record["sha256"] == sha256_of(source) and record["filename"] == "killed.bin"


def test_tuspy_with_sha1_checksums(server, source):
    uploader = tuspy_uploader(server, source, chunk_size=16 << 20, upload_checksum=True,
                              metadata={"filename": "checked.bin", "filetype": "text/plain"})
    uploader.upload()
    record = file_record(server, location_of(uploader.url))
    assert record["sha256"] == sha256_of(source)
    assert (record["filename"], record["content_type"]) == ("checked.bin", "text/plain")
