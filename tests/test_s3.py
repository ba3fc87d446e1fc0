"""The S3 backend on a real SeaweedFS: uploads across hosts, leases, and live servers."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from app.core.errors import Locked
from app.core.pump import append_stream
from app.testing.seaweed import start_seaweed
from tests.conftest import s3_store
from app.testing.servers import ROOT, free_port, start_server

MiB = 1 << 20


def multipart_uploads(seaweed, bucket: str) -> list:
    return seaweed.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# --- uploads that outlive a request, on any host ---------------------------------------

def test_an_upload_continued_by_other_hosts_ends_anywhere_and_finishes_in_the_store(seaweed):
    bucket = seaweed.make_bucket("hosts")
    data = os.urandom(17 * MiB + 12345)
    hosts = [s3_store(seaweed, bucket, "p") for _ in range(3)]  # three "hosts"
    upload = hosts[0].create_upload(length=len(data), metadata={"filename": "h.bin"})
    # PATCHes that end inside parts: the remainder lives in the store, not on a host
    cuts = [0, 3 * MiB + 7, 9 * MiB + 1, 14 * MiB, len(data)]
    for number, (start, stop) in enumerate(zip(cuts, cuts[1:])):
        host = hosts[number % 3]
        info = append_stream([data[i:min(i + MiB, stop)] for i in range(start, stop, MiB)],
                             host.get_upload(upload.id), start, max_size=1 << 30)
        assert info.offset == stop
    listed = multipart_uploads(seaweed, bucket)
    assert len(listed) == 1  # one multipart upload, recorded with the upload
    stored = hosts[2].get_upload(upload.id).finish()
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    assert b"".join(hosts[1].read_range(upload.id)) == data
    with hosts[0].open_reader(upload.id) as handle:
        handle.seek(9 * MiB - 3)
        assert handle.read(10) == data[9 * MiB - 3:9 * MiB + 7]
    assert multipart_uploads(seaweed, bucket) == []
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == [f"p/files/{upload.id}", f"p/meta/{upload.id}"]


def test_terminate_aborts_the_multipart_upload(seaweed):
    bucket = seaweed.make_bucket("terminate")
    store = s3_store(seaweed, bucket, "p")
    upload = store.create_upload()
    append_stream([os.urandom(MiB)] * 6, upload, 0, max_size=1 << 30)
    assert len(multipart_uploads(seaweed, bucket)) == 1
    upload.terminate()
    assert multipart_uploads(seaweed, bucket) == []
    assert seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", []) == []


# --- leases ---------------------------------------------------------------------------

LEASE_RACER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from app.storage.s3 import open_s3_storage
from app.storage.leases import RedisLocker
kind, url = sys.argv[2], sys.argv[3]
locker = (RedisLocker(url, lease_time=2) if kind == "redis" else
          open_s3_storage(url, part_size=5 << 20, timeout=10, lease_time=2).locker)
while time.time() < float(sys.argv[4]):  # start together
    pass
try:
    lease = locker.acquire("d" * 32, timeout=0)
except Exception as error:
    print("lost", type(error).__name__, flush=True)
    sys.exit(0)
print("won", flush=True)
time.sleep(60)
"""


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server (Debian package redis-server): the Redis locker untested")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield url
    process.kill()
    process.wait(10)


@pytest.fixture(params=["s3", "redis"])
def locker_target(request, seaweed):
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url"), {}
    bucket = seaweed.make_bucket(f"lease-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    env = {k: v for k, v in seaweed.env(bucket).items() if k.startswith("AWS_")}
    return "s3", f"s3://{bucket}/p", env


def test_racing_processes_one_wins_and_a_killed_holders_lease_expires(locker_target):
    kind, url, env = locker_target
    start_at = str(time.time() + 1.5)
    racers = [subprocess.Popen([sys.executable, "-c", LEASE_RACER, str(ROOT), kind, url,
                                start_at], stdout=subprocess.PIPE,
                               env=os.environ | env) for _ in range(4)]
    try:
        outcomes = [racer.stdout.readline().decode().split() for racer in racers]
        winners = [r for r, outcome in zip(racers, outcomes) if outcome[0] == "won"]
        assert len(winners) == 1, outcomes
        assert all(o == ["lost", "Locked"] for o in outcomes if o[0] != "won"), outcomes
        locker = _locker(kind, url, env)
        with pytest.raises(Locked):
            locker.acquire("d" * 32, timeout=2.5)  # renewed past its 2 s lease: still held
        winners[0].send_signal(signal.SIGKILL)
        winners[0].wait(10)
        started = time.monotonic()
        locker.acquire("d" * 32, timeout=10).release()  # expired: free
        assert time.monotonic() - started < 6
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()


def _locker(kind: str, url: str, env: dict):
    from app.storage.leases import RedisLocker, S3Locker
    from app.storage.s3_client import S3Client, S3Location

    if kind == "redis":
        return RedisLocker(url, lease_time=2)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        client = S3Client(S3Location.parse(url), timeout=10)
        client.raw  # the boto3 client reads AWS_* now
        return S3Locker(client, lease_time=2)
    finally:
        os.environ.clear()
        os.environ.update(saved)
