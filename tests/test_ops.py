"""Operations, live under gunicorn and uWSGI with 2 workers: metrics that add up across
workers and survive a worker killed -9, signed webhooks fired once per upload, a refusing
pre-create, progress hooks, failed deliveries retried, spooled and redelivered by the
sweep, 429 for a token over its concurrency or its requests per minute, a shaped byte
rate, the sweep."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from app.storage import LocalStorage
from app.testing.servers import ROOT, children, start_server

SERVERS = ["gunicorn", "uwsgi"]
TOKEN = "ops-token-0123456789"
HOOK_SECRET = "hook-secret-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class HookReceiver:
    """A webhook endpoint on 127.0.0.1: records every delivery, checks its signature,
    refuses pre-create for filenames starting with "refuse"."""

    def __init__(self):
        self.deliveries: list[dict] = []
        self.failing: set[str] = set()  # filenames whose post-* deliveries get a 503
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                payload = json.loads(body)
                receiver.deliveries.append({"payload": payload, "headers": dict(self.headers),
                                            "signed": receiver.verify(self.headers, body)})
                upload = payload.get("upload") or {}
                filename = (payload.get("file") or upload.get("metadata") or {}).get("filename")
                if payload["event"] == "pre-create" and str(upload.get("filename")).startswith(
                        "refuse"):
                    answer, status = b'{"message": "no files called refuse*"}', 422
                elif payload["event"] != "pre-create" and filename in receiver.failing:
                    answer, status = b'{"message": "down for now"}', 503
                else:
                    answer, status = b"{}", 200
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def verify(headers, body: bytes) -> bool:
        fields = dict(item.split("=", 1) for item in headers["X-Spillway-Signature"].split(","))
        expected = hmac.new(HOOK_SECRET.encode(), fields["t"].encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields["v1"])

    def events(self, name: str) -> list[dict]:
        return [d for d in self.deliveries if d["payload"]["event"] == name]


@pytest.fixture(scope="module")
def receiver():
    hooks = HookReceiver()
    yield hooks
    hooks.server.shutdown()


def ops_server(kind, tmp_path, extra=None, workers=2):
    env = {"SPILLWAY_TOKENS": f"ops={TOKEN}:read+write",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
           "SPILLWAY_LOG_FORMAT": "json"}
    env.update(extra or {})
    return start_server(kind, tmp_path / "store", tmp_path, env=env, workers=workers)


def scrape(server) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def upload(server, name: str, body: bytes) -> requests.Response:
    return requests.put(f"{server.url}/upload/{name}", data=body, headers=AUTH, timeout=30)


def held_upload(server, name: str, length: int, expect: bool = False) -> socket.socket:
    """A raw PUT whose head and first KiB are sent and whose rest never comes (yet)."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (f"PUT /upload/{name} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}"
            f"\r\nContent-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "")
            + "\r\n")
    sock.sendall(head.encode() + (b"" if expect else b"x" * 1024))
    return sock


def answer_of(sock: socket.socket) -> bytes:
    """The final answer's head and body (a "100 Continue" before it stays in)."""
    sock.settimeout(10)
    data = b""
    while True:
        head, _, body = data.rpartition(b"\r\n\r\n")
        length = re.search(rb"Content-Length: (\d+)", head, re.I)
        if length and len(body) >= int(length.group(1)):
            return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def wait_for(condition, timeout=15.0):
    """True once ``condition()`` is; a request that fails meanwhile (workers restarting
    on a loaded machine) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return condition()


@pytest.mark.parametrize("kind", SERVERS)
def test_metrics_add_up_across_workers_and_survive_kill(kind, tmp_path):
    server = ops_server(kind, tmp_path)
    try:
        bodies = [os.urandom(1000 + 4096 * i) for i in range(12)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda b: upload(server, f"f{len(b)}.bin", b), bodies))
        assert [a.status_code for a in answers] == [201] * 12
        metrics_dir = tmp_path / "metrics"
        pids = {int(m.group(1)) for f in os.listdir(metrics_dir)
                if (m := re.match(r"counter_(\d+)\.db$", f))}
        # files only from live processes (uWSGI's master built the app, and its metrics)
        assert pids and pids <= set(server.worker_pids()) | {server.process.pid}
        values = scrape(server)
        assert values["spillway_uploads_finished_total"] == 12
        assert values["spillway_uploads_started_total"] == 12
        assert values['spillway_http_requests_total{method="PUT",route="/upload/<path:filename>",'
                      'status="201"}'] == 12
        assert values["spillway_received_bytes_total"] == sum(map(len, bodies))

        held = held_upload(server, "held.bin", 10 << 20)
        assert wait_for(lambda: scrape(server)["spillway_uploads_in_flight"] == 1)
        workers = server.worker_pids()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        held.close()
        assert wait_for(lambda: set(server.worker_pids()).isdisjoint(workers)
                        and len(server.worker_pids()) == 2)
        assert wait_for(lambda: requests.get(server.url + "/health", timeout=2).ok)
        after = scrape(server)
        assert after["spillway_uploads_in_flight"] == 0  # the killed worker's gauge is gone
        assert after["spillway_uploads_finished_total"] == 12  # counts kept, folded in
        left = {int(m.group(1)) for f in os.listdir(metrics_dir)
                if (m := re.match(r"\w+?_(\d+)\.db$", f))}
        assert left.isdisjoint(workers), "dead workers' files were not folded in"
        assert (metrics_dir / "counter_archive.db").exists()
        log_lines = [json.loads(line) for line in server.log().splitlines()
                     if line.startswith('{"time"') and '"logger":"spillway.access"' in line]
        puts = [line for line in log_lines if line["method"] == "PUT" and line["status"] == 201]
        assert len(puts) == 12 and all(line["token"] == "ops" and line["file_id"] for line in puts)
        assert TOKEN not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("kind", SERVERS)
def test_webhooks_signed_once_per_upload_and_pre_create_refuses(kind, tmp_path, receiver):
    receiver.deliveries.clear()
    server = ops_server(kind, tmp_path, {"SPILLWAY_HOOK_URL": receiver.url,
                                         "SPILLWAY_HOOK_SECRET": HOOK_SECRET})
    try:
        ids = [upload(server, f"ok-{i}.bin", os.urandom(5000 + i)).json()["id"]
               for i in range(6)]
        multipart = requests.post(server.url + "/upload", headers=AUTH, timeout=30, files={
            "a": ("a.txt", b"first"), "b": ("b.txt", b"second")})
        assert multipart.status_code == 201
        ids += [f["id"] for f in multipart.json()["files"]]
        assert wait_for(lambda: len(receiver.events("post-finish")) >= len(ids))
        time.sleep(1)  # a double delivery would arrive by now
        finished = receiver.events("post-finish")
        assert sorted(d["payload"]["upload"]["id"] for d in finished) == sorted(ids)
        assert all(d["signed"] for d in receiver.deliveries)
        assert len({d["headers"]["Idempotency-Key"] for d in finished}) == len(ids)
        assert all(d["payload"]["token"] == "ops" and d["payload"]["file"]["sha256"]
                   for d in finished)

        # refused before the body: with Expect, no "100 Continue" ever comes
        sock = held_upload(server, "refuse-me.bin", 50 << 20, expect=True)
        answer = answer_of(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 422"), answer[:200]
        assert b"100 Continue" not in answer and b'"upload_refused"' in answer
        refused = [d for d in receiver.events("pre-create")
                   if d["payload"]["upload"]["filename"] == "refuse-me.bin"]
        assert len(refused) == 1
        listed = requests.get(server.url + "/files", headers=AUTH, timeout=10).json()["files"]
        assert "refuse-me.bin" not in [f["filename"] for f in listed]
        assert len(receiver.events("post-create")) == len(ids)  # nothing started for it

        gone = requests.delete(f"{server.url}/files/{ids[0]}", headers=AUTH, timeout=10)
        assert gone.status_code == 204
        assert wait_for(lambda: [d["payload"]["upload"]["id"]
                                 for d in receiver.events("post-terminate")] == [ids[0]])
    finally:
        server.stop()


@pytest.mark.parametrize("kind", SERVERS)
def test_token_over_its_concurrency_gets_429_before_the_body(kind, tmp_path):
    server = ops_server(kind, tmp_path, {"SPILLWAY_LIMIT_CONCURRENT_UPLOADS": "1"})
    try:
        first = held_upload(server, "first.bin", 1 << 20)
        assert wait_for(lambda: scrape(server)["spillway_uploads_in_flight"] == 1)
        second = held_upload(server, "second.bin", 50 << 20, expect=True)
        answer = answer_of(second)
        second.close()
        assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
        assert b"Retry-After: 2" in answer and b'"too_many_uploads"' in answer
        assert b"100 Continue" not in answer
        first.sendall(b"y" * ((1 << 20) - 1024))
        assert answer_of(first).startswith(b"HTTP/1.1 201")
        first.close()
        assert upload(server, "third.bin", b"now there is room").status_code == 201
        assert scrape(server)['spillway_limit_refusals_total{limit="concurrent_uploads"}'] == 1
    finally:
        server.stop()


def test_byte_rate_is_shaped_not_refused(tmp_path):
    server = ops_server("gunicorn", tmp_path, {"SPILLWAY_LIMIT_BYTES_PER_SECOND": "1M"})
    try:
        body = os.urandom(4 << 20)
        started = time.monotonic()
        answer = upload(server, "paced.bin", body)
        elapsed = time.monotonic() - started
        assert answer.status_code == 201 and answer.json()["size"] == len(body)
        # 4 MiB at 1 MiB/s with a one-second burst: about 3 s
        assert 2.5 <= elapsed < 15, elapsed
    finally:
        server.stop()


def test_sweep_removes_what_it_should_and_nothing_else(tmp_path):
    root = tmp_path / "store"
    store = LocalStorage(str(root), upload_ttl=3600)
    old = time.time() - 7200
    expired = store.create_upload(metadata={"filename": "old"})
    young = store.create_upload(metadata={"filename": "young"})
    busy = store.create_upload(metadata={"filename": "busy"})
    kept = store.open_writer()
    kept.write(b"a stored file")
    stored = kept.commit(filename="kept.txt", content_type="text/plain", sha256="0" * 64)
    orphan = root / "blobs" / ("f" * 32)
    orphan.write_bytes(b"no record")
    crashed_temp = root / "tmp" / ("e" * 32 + ".part")
    crashed_temp.write_bytes(b"a crashed worker's bytes")
    for path in (store.temp_path(expired.id), store.temp_path(busy.id), orphan, crashed_temp):
        os.utime(path, (old, old))
    lock = store.locker.acquire(busy.id, timeout=1)  # an upload being written to
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
        env.update(SPILLWAY_STORAGE_DIR=str(root), SPILLWAY_UPLOAD_TTL="3600")
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "spillway",
                               "sweep", "--stale-after", "3600"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    finally:
        lock.release()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["expired_uploads"] == 1 and report["stale_files"] == 2
    assert sorted(store.upload_ids()) == sorted([young.id, busy.id])
    assert not orphan.exists() and not crashed_temp.exists()
    assert store.stat(stored.id).filename == "kept.txt"
    assert (root / "blobs" / stored.id).read_bytes() == b"a stored file"


def test_a_killed_workers_upload_slot_is_given_back(tmp_path):
    from app.core.limits import SqliteLimitState

    state = SqliteLimitState(str(tmp_path / "limits.sqlite3"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from app.core.limits import SqliteLimitState; "
        f"s = SqliteLimitState({str(tmp_path / 'limits.sqlite3')!r}); "
        "print(s.take_slot('ci', 1), flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert len(holder.stdout.readline().strip()) == 32
        assert state.take_slot("ci", 1) is None  # the other process holds the only one
    finally:
        holder.kill()
        holder.wait(10)
    assert state.take_slot("ci", 1) is not None


def test_limits_in_redis(tmp_path):
    import shutil

    from app.core.limits_redis import RedisLimitState
    from app.testing.servers import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        assert wait_for(lambda: _redis_up(url), timeout=10)
        hosts = [RedisLimitState(url), RedisLimitState(url)]  # two hosts' view
        first = hosts[0].take_slot("ci", 1)
        assert first and hosts[1].take_slot("ci", 1) is None
        hosts[0].release_slot("ci", first)
        assert hosts[1].take_slot("ci", 1)
        assert [hosts[i % 2].count_request("ci", 3) for i in range(4)][:3] == [0, 0, 0]
        assert hosts[0].count_request("ci", 3) > 0
        waits = [hosts[i % 2].reserve_bytes("ci", 1 << 20, 1 << 20) for i in range(4)]
        # 1 MiB at a time at 1 MiB/s, the first second free: wait 0, 1, 2, 3 s
        assert [round(w, 1) for w in waits] == [0, 1, 2, 3]
    finally:
        redis.terminate()
        redis.wait(10)


def _redis_up(url: str) -> bool:
    import redis

    try:
        return redis.Redis.from_url(url).ping()
    except redis.RedisError:
        return False


def test_periodic_sweep_in_the_workers(tmp_path):
    # an expiry must outlast the longest pause of a live body (read timeout, rate window)
    server = ops_server("gunicorn", tmp_path, {"SPILLWAY_SWEEP_INTERVAL": "1",
                                               "SPILLWAY_UPLOAD_TTL": "2",
                                               "SPILLWAY_READ_TIMEOUT": "1",
                                               "SPILLWAY_MIN_BODY_RATE": "0"})
    try:
        store = LocalStorage(str(tmp_path / "store"), upload_ttl=2)
        expired = store.create_upload(metadata={"filename": "left"})
        kept = upload(server, "kept.bin", b"stays").json()["id"]
        for _ in range(4):  # wake both workers' sweep threads (they start on a request)
            requests.get(server.url + "/health", timeout=5)
        assert wait_for(lambda: expired.id not in set(store.upload_ids()), timeout=20)
        assert requests.get(f"{server.url}/files/{kept}/content", headers=AUTH,
                            timeout=10).content == b"stays"
        sweeps = [json.loads(line) for line in server.log().splitlines()
                  if '"logger":"spillway.sweep"' in line]
        assert any("'expired_uploads': 1" in s["message"] for s in sweeps)
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_the_metrics_directory_made_for_a_start_goes_with_it(kind, tmp_path):
    """Without PROMETHEUS_MULTIPROC_DIR the launcher makes a temp directory: removed when
    it stops, and one left by a launcher that was killed is removed at the next start."""
    temp = tmp_path / "temp"
    temp.mkdir()
    orphan = temp / "spillway-metrics-999999999"  # no such pid
    orphan.mkdir()
    (orphan / "counter_1.db").write_bytes(b"old")
    server = start_server(kind, tmp_path / "store", tmp_path, workers=2, env={
        "TMPDIR": str(temp), "SPILLWAY_TOKENS": f"ops={TOKEN}:read+write"})
    try:
        assert requests.put(server.url + "/upload/a.bin", data=b"abc", headers=AUTH,
                            timeout=10).status_code == 201
        made = [p.name for p in temp.iterdir()]
        assert made == [f"spillway-metrics-{server.process.pid}"]
        assert scrape(server)['spillway_received_bytes_total'] == 3
    finally:
        server.stop()
    assert list(temp.iterdir()) == []


def sweep_once(server) -> dict:
    """``flask spillway sweep`` with the server's own settings, as cron would run it."""
    env = {k: v for k, v in server.env.items() if k.startswith(("SPILLWAY_", "PATH", "HOME"))}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "spillway", "sweep"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", SERVERS)
def test_a_failed_delivery_is_retried_then_redelivered_by_the_sweep(kind, tmp_path, receiver):
    receiver.deliveries.clear()
    receiver.failing = {"flaky.bin"}
    server = ops_server(kind, tmp_path, {
        "SPILLWAY_HOOK_URL": receiver.url, "SPILLWAY_HOOK_SECRET": HOOK_SECRET,
        "SPILLWAY_HOOK_EVENTS": "post-finish", "SPILLWAY_HOOK_RETRIES": "2",
        "SPILLWAY_HOOK_BACKOFF": "0.2", "SPILLWAY_SWEEP_INTERVAL": "0"})
    spool = tmp_path / "store" / "hook-spool"

    def tries() -> list[dict]:
        return [d for d in receiver.events("post-finish")
                if d["payload"]["file"]["filename"] == "flaky.bin"]

    try:
        file_id = upload(server, "flaky.bin", b"flaky receiver").json()["id"]
        assert upload(server, "fine.bin", b"fine").status_code == 201
        assert wait_for(lambda: len(tries()) == 3)  # the first attempt and 2 retries
        assert wait_for(lambda: [json.loads(p.read_text())["exhausted"]
                                 for p in spool.glob("*.json")] == [True])
        time.sleep(1)
        assert len(tries()) == 3  # retries ran out: nothing more until the sweep
        assert scrape(server)['spillway_hook_failures_total{hook="post-finish"}'] == 3
        assert [d["payload"]["file"]["filename"] for d in receiver.events("post-finish")
                ].count("fine.bin") == 1  # the other upload's hook was not held up

        assert sweep_once(server)["hooks_redelivered"] == 0  # still failing: kept
        assert len(tries()) == 4 and len(list(spool.glob("*.json"))) == 1
        receiver.failing = set()
        assert sweep_once(server)["hooks_redelivered"] == 1
        assert list(spool.iterdir()) == []
        deliveries = tries()
        assert len(deliveries) == 5 and all(d["signed"] for d in deliveries)
        assert {d["payload"]["file"]["id"] for d in deliveries} == {file_id}
        assert len({d["headers"]["Idempotency-Key"] for d in deliveries}) == 1
    finally:
        receiver.failing = set()
        server.stop()


def test_post_receive_reports_progress_of_a_slow_upload(tmp_path, receiver):
    receiver.deliveries.clear()
    server = ops_server("gunicorn", tmp_path, {
        "SPILLWAY_HOOK_URL": receiver.url, "SPILLWAY_HOOK_SECRET": HOOK_SECRET,
        "SPILLWAY_HOOK_PROGRESS_INTERVAL": "0.5"})
    try:
        # progress is looked at as each chunk (SPILLWAY_CHUNK_SIZE, 1 MiB) is written
        size = 1024 + 5 * (1 << 20)
        sock = held_upload(server, "slow.bin", size)
        for _ in range(5):
            time.sleep(0.6)
            sock.sendall(b"s" * (1 << 20))
        assert answer_of(sock).startswith(b"HTTP/1.1 201")
        sock.close()
        assert wait_for(lambda: receiver.events("post-finish"))
        offsets = [d["payload"]["upload"]["offset"] for d in receiver.events("post-receive")]
        assert len(offsets) >= 3 and offsets == sorted(offsets), offsets
        assert 0 < offsets[0] and offsets[-1] <= size
        names = [d["payload"]["event"] for d in receiver.deliveries]
        assert names.index("post-create") < names.index("post-receive") \
            < names.index("post-finish")
    finally:
        server.stop()


@pytest.mark.parametrize("kind", SERVERS)
def test_requests_per_minute_per_token_across_workers(kind, tmp_path):
    other = "other-token-0123456789"
    server = ops_server(kind, tmp_path, {
        "SPILLWAY_TOKENS": f"ops={TOKEN}:read+write,other={other}:read",
        "SPILLWAY_LIMIT_REQUESTS_PER_MINUTE": "6"})
    try:
        answers = [requests.get(server.url + "/files", headers=AUTH, timeout=10)
                   for _ in range(8)]  # new connections: both workers take some
        assert [a.status_code for a in answers] == [200] * 6 + [429] * 2
        refused = answers[-1]
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert upload(server, "late.bin", b"x").status_code == 429  # uploads count too
        elsewhere = requests.get(server.url + "/files", timeout=10,
                                 headers={"Authorization": f"Bearer {other}"})
        assert elsewhere.status_code == 200  # another token has its own minute
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
        assert scrape(server)['spillway_limit_refusals_total{limit="requests_per_minute"}'] == 3
    finally:
        server.stop()
