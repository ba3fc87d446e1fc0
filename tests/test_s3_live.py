"""gunicorn and uWSGI on the S3 backend (SeaweedFS): the routes, faults of the client and
of the store, wrong credentials, and memory for 1 GiB each way."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest
import requests

from app.testing.seaweed import ACCESS_KEY, start_seaweed
from app.testing.servers import start_server
from tests.conftest import seaweed_in
from tests.patterned import PatternedBytes

MiB = 1 << 20
PART = 8 * MiB


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """This module's own store: the gigabytes it writes go when the module ends."""
    with seaweed_in(tmp_path_factory.mktemp("seaweed-live")) as store:
        yield store


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def s3_server(request, seaweed, tmp_path_factory):
    bucket = seaweed.make_bucket(f"live-{request.param}")
    base = tmp_path_factory.mktemp(f"s3-{request.param}")
    server = start_server(request.param, base / "unused", base,
                          env=seaweed.env(bucket, SPILLWAY_S3_PART_SIZE=str(PART),
                                          SPILLWAY_MAX_FILE_SIZE="2G",
                                          SPILLWAY_MAX_REQUEST_SIZE="2G"))
    server.bucket = bucket
    yield server
    server.stop()


def listed(server) -> list:
    return requests.get(f"{server.url}/files?limit=1000").json()["files"]


def test_routes_on_s3(s3_server, seaweed):
    server = s3_server
    data = os.urandom(20 * MiB + 5)
    raw = requests.put(f"{server.url}/upload/raw.bin", data=data)
    assert raw.status_code == 201, raw.text
    assert raw.json()["sha256"] == hashlib.sha256(data).hexdigest()
    small = requests.post(f"{server.url}/upload", files={"f": ("s.txt", b"tiny", "text/plain")})
    assert small.status_code == 201, small.text
    small_id = small.json()["files"][0]["id"]
    file_id = raw.json()["id"]
    assert {f["id"] for f in listed(server)} >= {file_id, small_id}

    whole = requests.get(f"{server.url}/files/{file_id}/content")
    assert whole.status_code == 200 and whole.content == data
    part = requests.get(f"{server.url}/files/{file_id}/content",
                        headers={"Range": f"bytes={PART - 10}-{PART + 9}"})
    assert part.status_code == 206 and part.content == data[PART - 10:PART + 10]
    assert part.headers["Content-Range"] == f"bytes {PART - 10}-{PART + 9}/{len(data)}"
    tail = requests.get(f"{server.url}/files/{small_id}/content", headers={"Range": "bytes=-2"})
    assert tail.status_code == 206 and tail.content == b"ny"
    etag = whole.headers["ETag"]
    again = requests.get(f"{server.url}/files/{file_id}/content", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""

    assert requests.delete(f"{server.url}/files/{file_id}").status_code == 204
    gone = requests.get(f"{server.url}/files/{file_id}/content")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert file_id not in {f["id"] for f in listed(server)}
    assert multipart_uploads(seaweed, server.bucket) == []


def multipart_uploads(seaweed, bucket: str) -> list:
    return seaweed.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_a_client_that_disconnects_leaves_no_multipart_upload(s3_server, seaweed):
    server = s3_server
    before = listed(server)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"PUT /upload/cut.bin HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: {100 * MiB}\r\n\r\n".encode())
        block = os.urandom(MiB)
        for _ in range(30):  # past three parts: a multipart upload is under way
            sock.sendall(block)
        deadline = time.monotonic() + 10
        while not multipart_uploads(seaweed, server.bucket) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert multipart_uploads(seaweed, server.bucket), "no multipart upload was started"
    deadline = time.monotonic() + 15
    while multipart_uploads(seaweed, server.bucket) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multipart_uploads(seaweed, server.bucket) == []
    assert listed(server) == before


def test_one_gib_each_way_in_bounded_memory(s3_server):
    server = s3_server
    source = PatternedBytes(1024 * MiB)
    warm = requests.put(f"{server.url}/upload/warm.bin", data=os.urandom(3 * PART))
    assert warm.status_code == 201
    requests.get(f"{server.url}/files/{warm.json()['id']}/content").content
    baseline = server.workers_rss_kib()
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], server.workers_rss_kib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        started = time.monotonic()
        response = requests.put(f"{server.url}/upload/gib.bin", data=source.reader(),
                                timeout=600)
        upload_seconds = time.monotonic() - started
        assert response.status_code == 201, response.text
        assert response.json()["sha256"] == source.sha256
        started, received = time.monotonic(), hashlib.sha256()
        with requests.get(f"{server.url}/files/{response.json()['id']}/content", stream=True,
                          timeout=600) as download:
            for chunk in download.iter_content(MiB):
                received.update(chunk)
        download_seconds = time.monotonic() - started
    finally:
        stop.set()
        sampler.join()
    assert received.hexdigest() == source.sha256
    growth_mb = (peak[0] - baseline) * 1024 / 1e6
    print(f"\n{server.kind}: upload {1024 * MiB / upload_seconds / 1e6:.0f} MB/s, download "
          f"{1024 * MiB / download_seconds / 1e6:.0f} MB/s, RSS growth {growth_mb:.1f} MB")
    assert growth_mb <= 2 * PART / 1e6 + 30, f"worker RSS grew {growth_mb:.1f} MB"
    requests.delete(f"{server.url}/files/{response.json()['id']}")


# --- the store fails ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_store_stopped_mid_upload_is_503_and_nothing_listed_then_recovers(kind, tmp_path):
    weed = start_seaweed(tmp_path / "weed")  # its own store: this test stops it
    bucket = weed.make_bucket("faults")
    server = start_server(kind, tmp_path / "unused", tmp_path,
                          env=weed.env(bucket, SPILLWAY_S3_PART_SIZE=str(PART),
                                       SPILLWAY_S3_TIMEOUT="5"))
    try:
        def body():
            block = os.urandom(MiB)
            for number in range(64):
                if number == 20:
                    weed.stop()
                yield block

        answer = requests.put(f"{server.url}/upload/doomed.bin", data=body(), timeout=60)
        assert answer.status_code in (502, 503), answer.text
        assert answer.json()["error"]["code"] in ("storage_unavailable", "storage_error")
        down = requests.get(f"{server.url}/files")
        assert down.status_code == 503 and down.json()["error"]["code"] == "storage_unavailable"
        assert requests.get(f"{server.url}/health").status_code == 503
        weed.start()
        assert requests.get(f"{server.url}/files").json()["files"] == []
        data = os.urandom(10 * MiB)
        again = requests.put(f"{server.url}/upload/after.bin", data=data)
        assert again.status_code == 201, again.text
        assert again.json()["sha256"] == hashlib.sha256(data).hexdigest()
        assert [f["filename"] for f in requests.get(f"{server.url}/files").json()["files"]] \
            == ["after.bin"]
    finally:
        server.stop()
        weed.stop()


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_wrong_credentials_stop_the_start_with_a_clear_message(kind, seaweed, tmp_path):
    bucket = seaweed.make_bucket(f"creds-{kind}")
    env = seaweed.env(bucket, AWS_SECRET_ACCESS_KEY="not-the-secret")
    with pytest.raises(RuntimeError) as caught:
        start_server(kind, tmp_path / "unused", tmp_path, env=env)
    assert "the secret key is wrong" in str(caught.value)
    env = seaweed.env("no-such-bucket")
    with pytest.raises(RuntimeError) as caught:
        start_server(kind, tmp_path / "unused", tmp_path, env=env)
    assert "s3://no-such-bucket/spillway/: the bucket does not exist" in str(caught.value)
    assert ACCESS_KEY  # the right key id was used: only the secret was wrong
