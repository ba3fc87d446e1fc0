"""Three Spillway hosts (gunicorn, uWSGI, gunicorn: separate processes on separate ports) on
one SeaweedFS bucket: a file and a tus upload move between them, two hosts race for an
upload, a host killed mid-PATCH leaves an upload another host resumes once the lease
expires, and tus parallel uploads (concatenation) work on S3."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time

import pytest
import requests

from app.testing.servers import start_server
from tests.conftest import TOKEN_RW
from tests.tus_wire import (AUTH, create, downloaded_sha256, new_upload, offset, open_patch,
                            patch, read_status, resumable_offset, stored_sha256)

MiB = 1 << 20
LEASE_TIME = 2  # seconds: a killed holder's lease expires quickly


def host_env(seaweed, bucket: str) -> dict:
    return seaweed.env(bucket, SPILLWAY_S3_PART_SIZE=str(5 * MiB),
                       SPILLWAY_LEASE_TIME=str(LEASE_TIME),
                       SPILLWAY_TOKENS=f"{TOKEN_RW}:read+write",
                       SPILLWAY_READ_TIMEOUT="5")


@pytest.fixture(scope="module")
def hosts(seaweed, tmp_path_factory):
    """A (gunicorn), B (uWSGI), C (gunicorn) on the bucket ``hosts3``."""
    bucket = seaweed.make_bucket("hosts3")
    base = tmp_path_factory.mktemp("three-hosts")
    started = []
    try:
        for kind in ("gunicorn", "uwsgi", "gunicorn"):
            started.append(start_server(kind, base / "unused", base,
                                        env=host_env(seaweed, bucket), workers=2))
        yield started
    finally:
        for server in started:
            server.stop()


def test_upload_on_a_ranged_download_on_b_delete_on_c(hosts):
    a, b, c = hosts
    data = os.urandom(12 * MiB + 3)
    put = requests.put(f"{a.url}/upload/shared.bin", data=data, headers=AUTH, timeout=60)
    assert put.status_code == 201, put.text
    file_id = put.json()["id"]
    assert put.json()["sha256"] == hashlib.sha256(data).hexdigest()
    start, stop = 5 * MiB - 100, 10 * MiB + 99  # across the store's part boundaries
    ranged = requests.get(f"{b.url}/files/{file_id}/content", timeout=60,
                          headers=AUTH | {"Range": f"bytes={start}-{stop}"})
    assert ranged.status_code == 206 and ranged.content == data[start:stop + 1]
    assert ranged.headers["Content-Range"] == f"bytes {start}-{stop}/{len(data)}"
    assert requests.delete(f"{c.url}/files/{file_id}", headers=AUTH).status_code == 204
    for host in hosts:
        gone = requests.get(f"{host.url}/files/{file_id}/content", headers=AUTH)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_tus_created_on_a_patched_on_b_cut_resumed_on_c(hosts):
    a, b, c = hosts
    data = os.urandom(14 * MiB + 777)
    location = new_upload(a.url, len(data), metadata="filename c2hhcmVkLmJpbg==")
    first = patch(b.url, location, 0, data[:3 * MiB])
    assert first.status_code == 204, first.text
    assert offset(c.url, location) == 3 * MiB
    sock = open_patch(b.url, location, 3 * MiB, len(data) - 3 * MiB)
    sock.sendall(data[3 * MiB:9 * MiB + 5])  # past a part boundary, then cut
    time.sleep(0.3)
    sock.close()
    at = resumable_offset(c.url, location, arrived=3 * MiB + 1)
    assert 3 * MiB < at <= 9 * MiB + 5  # what arrived before the cut was kept
    rest = patch(c.url, location, at, data[at:])
    assert rest.status_code == 204, rest.text
    assert stored_sha256(a.url, location) == hashlib.sha256(data).hexdigest()
    assert downloaded_sha256(b.url, location) == hashlib.sha256(data).hexdigest()


def test_two_hosts_racing_a_patch_one_wins_and_bytes_never_interleave(hosts):
    a, b, _ = hosts
    size = 8 * MiB
    bodies = {a.url: b"A" * size, b.url: b"B" * size}
    location = new_upload(a.url, size)
    socks = {url: open_patch(url, location, 0, size) for url in bodies}
    statuses = {}

    def send_and_answer(url: str) -> None:
        sock = socks[url]
        try:
            for start in range(0, size, MiB):
                sock.sendall(bodies[url][start:start + MiB])
        except OSError:  # the loser may be answered and closed before its body is sent
            pass
        statuses[url] = read_status(sock)
        sock.close()

    racers = [threading.Thread(target=send_and_answer, args=(url,)) for url in bodies]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    winners = [url for url, status in statuses.items() if status == 204]
    losers = [status for status in statuses.values() if status != 204]
    assert len(winners) == 1 and losers and losers[0] in (409, 423), statuses
    assert stored_sha256(a.url, location) == hashlib.sha256(bodies[winners[0]]).hexdigest()
    assert downloaded_sha256(b.url, location) == hashlib.sha256(bodies[winners[0]]).hexdigest()


def test_host_killed_mid_patch_resumed_on_another_once_the_lease_expires(hosts, seaweed,
                                                                          tmp_path):
    a = hosts[0]
    doomed = start_server("gunicorn", tmp_path / "unused", tmp_path,
                          env=host_env(seaweed, "hosts3"))
    try:
        data = os.urandom(16 * MiB)
        location = new_upload(a.url, len(data))
        sock = open_patch(doomed.url, location, 0, len(data))
        sock.sendall(data[:6 * MiB])
        sent, deadline = 6 * MiB, time.monotonic() + 15
        # progress is recorded every second while bytes arrive: keep them coming
        while offset(a.url, location) == 0:
            assert time.monotonic() < deadline, "the PATCH recorded no progress"
            sock.sendall(data[sent:sent + 64 * 1024])
            sent += 64 * 1024
            time.sleep(0.1)
        os.killpg(doomed.process.pid, signal.SIGKILL)  # master and workers: no clean-up
        doomed.process.wait(10)
        killed_at = time.monotonic()
        at = offset(a.url, location)
        held = patch(a.url, location, at, b"")
        assert held.status_code == 423, (held.status_code, held.text)  # the dead host's lease
        at = resumable_offset(a.url, location, timeout=15)
        waited = time.monotonic() - killed_at
        assert 0 < at <= sent
        rest = patch(a.url, location, at, data[at:])
        assert rest.status_code == 204, rest.text
        assert stored_sha256(a.url, location) == hashlib.sha256(data).hexdigest()
        print(f"\nresumed {waited:.1f} s after the kill (lease {LEASE_TIME} s)")
    finally:
        sock.close()
        doomed.stop()


# --- concatenation (tus parallel uploads) on S3 ------------------------------------------

def test_partial_uploads_on_two_hosts_concatenated_on_a_third(hosts, seaweed):
    a, b, c = hosts
    # small pieces go through memory, big ones are copied inside the store; both mixed
    sizes = [3 * MiB + 1, 7 * MiB + 11, 1, 6 * MiB, 2 * MiB]
    pieces = [os.urandom(size) for size in sizes]
    partials = []
    for number, piece in enumerate(pieces):
        host = (a, b)[number % 2]
        response = create(host.url, len(piece), headers={"Upload-Concat": "partial"})
        assert response.status_code == 201, response.text
        answer = patch(host.url, response.headers["Location"], 0, piece)
        assert answer.status_code == 204, answer.text
        partials.append(response.headers["Location"])
    final = create(c.url, None, headers={"Upload-Concat": "final;" + " ".join(partials)})
    assert final.status_code == 201, final.text
    data = b"".join(pieces)
    location = final.headers["Location"]
    assert stored_sha256(a.url, location) == hashlib.sha256(data).hexdigest()
    assert downloaded_sha256(b.url, location) == hashlib.sha256(data).hexdigest()
    for partial in partials:  # used up: no upload and no object is left of them
        assert requests.head(c.url + partial, headers=AUTH | {"Tus-Resumable": "1.0.0"}
                             ).status_code == 404
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(
        Bucket="hosts3", Prefix="spillway/uploads/").get("Contents", [])]
    assert not [k for k in keys if any(p.rsplit("/", 1)[1] in k for p in partials)]


def test_tus_js_parallel_uploads_on_s3(hosts, tmp_path):
    from tests.test_tus_clients import JS_DIR, NODE

    if NODE is None or not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        pytest.skip("tus-js-client needs node and `npm ci --prefix tests/js`")
    source = tmp_path / "source.bin"
    data = os.urandom(18 * MiB + 5)
    source.write_bytes(data)
    arguments = {"endpoint": hosts[1].url + "/tus/", "file": str(source), "token": TOKEN_RW,
                 "filename": "parallel.bin", "parallelUploads": 3}
    finished = subprocess.run([NODE, str(JS_DIR / "tus_upload.mjs"), json.dumps(arguments)],
                              capture_output=True, timeout=120, cwd=JS_DIR)
    assert finished.returncode == 0, finished.stderr.decode()
    result = json.loads(finished.stdout.decode().strip().splitlines()[-1])
    assert result["status"] == "success", result
    location = "/tus/" + result["url"].rstrip("/").rsplit("/", 1)[1]
    assert stored_sha256(hosts[2].url, location) == hashlib.sha256(data).hexdigest()
