"""The proxy route and URL import against a real downstream (tests/sink_app.py under gunicorn),
with the front server under gunicorn and uWSGI."""

import hashlib
import json
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import TOKEN_RO, TOKEN_RW, leftover_files, sha256_of
from app.testing.servers import free_port, start_server, start_sink
from tests.sink_app import pattern_bytes

AUTH = {"Authorization": f"Bearer {TOKEN_RW}"}
DOWNSTREAM_AUTH = "Bearer downstream-secret-42"
UPSTREAM_READ_TIMEOUT = 2


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    running = start_sink(tmp_path_factory.mktemp("sink"))
    yield running
    running.stop()


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def front(request, tmp_path_factory, sink):
    base = tmp_path_factory.mktemp("front-" + request.param)
    targets = ",".join([
        f"sink={sink.url}/sink",
        f"reject={sink.url}/reject/262144",
        f"slow={sink.url}/slow/5",
        f"dead=http://127.0.0.1:{free_port()}/nothing",
    ])
    running = start_server(request.param, base / "store", base, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write,{TOKEN_RO}:read",
        "SPILLWAY_PROXY_TARGETS": targets,
        "SPILLWAY_PROXY_AUTH_SINK": DOWNSTREAM_AUTH,
        "SPILLWAY_IMPORT_ALLOW": f"{sink.url}/files/,{sink.url}/redirect",
        "SPILLWAY_UPSTREAM_CONNECT_TIMEOUT": "2",
        "SPILLWAY_UPSTREAM_READ_TIMEOUT": str(UPSTREAM_READ_TIMEOUT),
        "SPILLWAY_MAX_FILE_SIZE": "50M",
        "SPILLWAY_READ_TIMEOUT": "5",
    })
    yield running
    running.stop()


def sink_records(sink, path: str, wait: float = 5.0) -> list[dict]:
    """The sink's records for one request path (they land when its body read ends)."""
    deadline = time.monotonic() + wait
    log = Path(sink.env["SINK_LOG"])
    while True:
        found = []
        if log.exists():
            found = [r for r in map(json.loads, log.read_text().splitlines()) if r["path"] == path]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def unique(prefix="t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# forwarding -----------------------------------------------------------------

def test_raw_with_content_length_forwarded_with_length(front, sink, tmp_path):
    path = tmp_path / "raw.bin"
    path.write_bytes(b"".join(pattern_bytes(3 << 20)) + b"end")
    name = unique()
    with path.open("rb") as body:
        response = requests.put(f"{front.url}/proxy/sink/{name}?x=1&y=%C3%A9",
                                data=body, headers=AUTH | {"Content-Type": "application/x-raw",
                                                           "Cookie": "secret=1"}, timeout=30)
    assert response.status_code == 201, response.text
    report = response.json()
    digest = sha256_of(path)
    assert report["forwarded"] == {"bytes": path.stat().st_size, "sha256": digest,
                                   "complete": True}
    assert report["target"] == "sink" and report["status"] == 201
    received = report["response"]["json"]  # the sink's JSON answer, passed through
    assert received["sha256"] == digest and received["bytes"] == path.stat().st_size
    assert received["query"] == "x=1&y=%C3%A9"
    (record,) = sink_records(sink, f"/sink/{name}")
    headers = record["headers"]
    assert record["complete"] and record["method"] == "PUT"
    assert headers["Content-Length"] == str(path.stat().st_size)  # not chunked
    assert "Transfer-Encoding" not in headers
    assert headers["Content-Type"] == "application/x-raw"
    assert headers["Authorization"] == DOWNSTREAM_AUTH  # configured, the client's is not sent
    assert "Cookie" not in headers


def test_raw_chunked_forwarded_chunked(front, sink):
    blocks = [bytes([i]) * 100_000 for i in range(40)]
    name = unique()
    response = requests.post(f"{front.url}/proxy/sink/{name}", data=iter(blocks), headers=AUTH,
                             timeout=30)
    assert response.status_code == 201, response.text
    digest = hashlib.sha256(b"".join(blocks)).hexdigest()
    assert response.json()["forwarded"]["sha256"] == digest
    (record,) = sink_records(sink, f"/sink/{name}")
    assert record["sha256"] == digest and record["bytes"] == 4_000_000 and record["complete"]
    assert record["headers"]["Transfer-Encoding"] == "chunked"


def test_multipart_reemitted_streaming(front, sink, tmp_path):
    files = []
    for i, size in enumerate((0, 1, 5 << 20)):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(b"".join(pattern_bytes(size)))
        files.append(path)
    name = unique()
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-H", f"Authorization: Bearer {TOKEN_RW}",
         "-F", "note=hello wörld", "-F", f"a=@{files[0]};filename=empty.bin",
         "-F", f"b=@{files[1]};filename=Grüße \"q\".txt;type=text/plain",
         "-F", f"c=@{files[2]};filename=big.bin", "-F", "tail=end",
         f"{front.url}/proxy/sink/{name}"], capture_output=True, check=True)
    report = json.loads(result.stdout)
    assert report["status"] == 201, report
    expected = [(f.stat().st_size, sha256_of(f)) for f in files]
    assert [(f["size"], f["sha256"]) for f in report["files"]] == expected
    assert [f["filename"] for f in report["files"]] == ["empty.bin", "Grüße %22q%22.txt", "big.bin"]
    assert report["fields"] == ["note", "tail"]
    (record,) = sink_records(sink, f"/sink/{name}")
    assert record["complete"] and record["headers"]["Transfer-Encoding"] == "chunked"
    assert record["headers"]["Content-Type"].startswith("multipart/form-data; boundary=spillway-")
    parts = record["parts"]
    assert [p["name"] for p in parts] == ["note", "a", "b", "c", "tail"]
    assert parts[0]["value"] == "hello wörld" and parts[4]["value"] == "end"
    assert [(p["size"], p["sha256"]) for p in parts[1:4]] == expected
    assert parts[2]["filename"] == "Grüße %22q%22.txt" and parts[2]["content_type"] == "text/plain"
    assert record["sha256"] == report["forwarded"]["sha256"]
    assert record["bytes"] == report["forwarded"]["bytes"]


# failures -------------------------------------------------------------------

def test_unreachable_downstream_is_502(front):
    response = requests.post(f"{front.url}/proxy/dead/x", data=b"abc", headers=AUTH, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"


def test_slow_downstream_is_504(front):
    started = time.monotonic()
    response = requests.post(f"{front.url}/proxy/slow/x", data=b"abc", headers=AUTH, timeout=30)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < UPSTREAM_READ_TIMEOUT + 2


def test_downstream_413_mid_stream_passed_through(front, sink):
    name = unique()
    total = 64 << 20  # far more than the socket buffers between here and the sink hold
    body = (b"r" * (1 << 20) for _ in range(total >> 20))
    # the front's lingering close reads what this client sends before it reads the answer
    response = requests.post(f"{front.url}/proxy/reject/{name}", data=body, headers=AUTH,
                             timeout=30)
    (record,) = sink_records(sink, f"/reject/262144/{name}")
    assert record["bytes"] == 262144 and not record["complete"]
    assert response.status_code == 413
    report = response.json()
    assert report["response"]["json"] == {"error": "too big for the sink", "read": 262144}
    assert report["forwarded"]["complete"] is False
    assert 262144 <= report["forwarded"]["bytes"] < total
    deadline = time.monotonic() + 5
    while "answered 413" not in front.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "downstream 'reject' answered 413" in front.log()


def test_client_gone_mid_body_aborts_downstream(front, sink):
    name = unique()
    host = front.url.split("//")[1]
    sock = socket.create_connection(("127.0.0.1", int(host.split(":")[1])))
    sock.sendall(f"PUT /proxy/sink/{name} HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {TOKEN_RW}\r\nContent-Length: {50 << 20}\r\n\r\n".encode())
    sock.sendall(b"x" * (2 << 20))
    time.sleep(0.3)
    sock.close()
    (record,) = sink_records(sink, f"/sink/{name}", wait=10)
    assert record["complete"] is False
    assert 0 < record["bytes"] <= 2 << 20
    assert record["headers"]["Content-Length"] == str(50 << 20)
    deadline = time.monotonic() + 5
    while "truncated_body" not in front.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "truncated_body" in front.log()


def raw_status(front, request_line: str) -> tuple[int, bytes]:
    host = front.url.split("//")[1]
    with socket.create_connection(("127.0.0.1", int(host.split(":")[1])), timeout=10) as sock:
        sock.sendall(f"{request_line} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN_RW}"
                     "\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize("path", [
    "/proxy/sink//evil.example/x",
    "/proxy/sink/http://evil.example/x",
    "/proxy/sink/https:/evil.example",
    "/proxy/sink/../../etc/passwd",
    "/proxy/sink/a/%2e%2e/%2e%2e/x",
    "/proxy/sink/a/%2F%2Fevil.example",
    "/proxy/sink/a\\b",
])
def test_ssrf_attempts_refused(front, sink, path):
    status, data = raw_status(front, f"POST {path}")
    assert status in (400, 404), data
    assert b'"code"' in data
    log = Path(sink.env["SINK_LOG"])
    assert "evil" not in (log.read_text() if log.exists() else "")


def test_unknown_target_and_scopes(front):
    response = requests.post(f"{front.url}/proxy/nope/x", data=b"a", headers=AUTH, timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_target"
    response = requests.post(f"{front.url}/proxy/sink/x", data=b"a", timeout=10)
    assert response.status_code == 401
    response = requests.post(f"{front.url}/proxy/sink/x", data=b"a", timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN_RO}"})
    assert response.status_code == 403


def test_big_proxied_upload_constant_memory(front, sink, big_file):
    name = unique()
    before = front.workers_rss_kib()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], front.workers_rss_kib())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with big_file.open("rb") as body:
            response = requests.put(f"{front.url}/proxy/sink/{name}", data=body, headers=AUTH,
                                    timeout=120)
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 201, response.text
    digest = sha256_of(big_file)
    assert response.json()["forwarded"]["sha256"] == digest
    (record,) = sink_records(sink, f"/sink/{name}")
    assert record["sha256"] == digest and record["bytes"] == big_file.stat().st_size
    growth_mib = (peak[0] - before) / 1024
    print(f"\n{front.kind}: 300 MB proxied, worker RSS {before // 1024} MiB -> peak "
          f"{peak[0] // 1024} MiB (+{growth_mib:.1f} MiB)")
    assert growth_mib < 30


# URL import -------------------------------------------------------------------

def import_(front, payload, token=TOKEN_RW):
    return requests.post(f"{front.url}/import", json=payload, timeout=30,
                         headers={"Authorization": f"Bearer {token}"})


def pattern_sha(size: int) -> str:
    digest = hashlib.sha256()
    for block in pattern_bytes(size):
        digest.update(block)
    return digest.hexdigest()


def test_import_stores_and_checks_digest(front, sink):
    size = (3 << 20) + 17
    url = f"{sink.url}/files/data%20set.bin?size={size}"
    response = import_(front, {"url": url, "sha256": pattern_sha(size)})
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["sha256"] == pattern_sha(size) and record["size"] == size
    assert record["filename"] == "data set.bin" and record["source"]["redirects"] == 0
    content = requests.get(f"{front.url}{record['content_url']}", headers=AUTH, timeout=30)
    assert hashlib.sha256(content.content).hexdigest() == pattern_sha(size)
    before = leftover_files(front.storage_dir)
    response = import_(front, {"url": url, "sha256": "0" * 64})
    assert response.status_code == 400 and response.json()["error"]["code"] == "digest_mismatch"
    assert leftover_files(front.storage_dir) == before


def test_import_follows_redirects_only_within_allowlist(front, sink):
    target = f"{sink.url}/files/r.bin?size=1000"
    hop = f"{sink.url}/redirect?to={requests.utils.quote(target, safe='')}"
    response = import_(front, {"url": hop, "filename": "named.bin"})
    assert response.status_code == 201, response.text
    assert response.json()["source"] == {"url": target, "redirects": 1}
    assert response.json()["filename"] == "named.bin"
    assert response.json()["sha256"] == pattern_sha(1000)
    outside = f"http://127.0.0.1:{free_port()}/files/x"
    response = import_(front, {"url": f"{sink.url}/redirect?to={outside}"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "redirect_not_allowed"
    response = import_(front, {"url": f"{sink.url}/redirect/loop"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "too_many_redirects"


@pytest.mark.parametrize("url,status,code", [
    ("http://127.0.0.1:1/files/x", 403, "url_not_allowed"),
    ("{sink}/sink/x", 403, "url_not_allowed"),
    ("{sink}/files/../sink/x", 403, "url_not_allowed"),
    ("{sink}/files/big?size=60000000", 413, "file_too_large"),
    ("{sink}/files/slow?size=10", 504, "upstream_timeout"),
    ("{sink}/files/missing", 502, "upstream_status"),
    ("{sink}/files/cut?size=4000000", 502, "upstream_failed"),
])
def test_import_failures_leave_nothing(front, sink, url, status, code):
    before = leftover_files(front.storage_dir)
    response = import_(front, {"url": url.format(sink=sink.url)})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if code == "upstream_status":
        assert "404" in response.json()["error"]["message"]
    assert leftover_files(front.storage_dir) == before


def test_import_needs_write_and_json(front, sink):
    assert import_(front, {"url": f"{sink.url}/files/a"}, token=TOKEN_RO).status_code == 403
    response = requests.post(f"{front.url}/import", data=b"nope", headers=AUTH, timeout=10)
    assert response.status_code == 400


def test_fetch_streams_through(front, sink):
    size = (2 << 20) + 5
    response = requests.get(f"{front.url}/fetch", params={"url": f"{sink.url}/files/f?size={size}"},
                            headers={"Authorization": f"Bearer {TOKEN_RO}"}, timeout=30)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == pattern_sha(size)
    assert response.headers["Content-Length"] == str(size)
    assert response.headers["ETag"] == f'"sink-{size}"'
    assert response.headers["Content-Type"] == "application/x-sink"
    response = requests.get(f"{front.url}/fetch", params={"url": f"{sink.url}/sink/x"},
                            headers=AUTH, timeout=30)
    assert response.status_code == 403


def test_fetch_cut_upstream_is_not_a_complete_body(front, sink):
    """The source drops the connection halfway, after the 200 and its Content-Length went
    out: the client must get a body it can tell is cut, never a complete-looking short one."""
    size = 4_000_000
    response = requests.get(f"{front.url}/fetch", params={"url": f"{sink.url}/files/cut?size={size}"},
                            headers=AUTH, timeout=30, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(size)
    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        for block in response.iter_content(1 << 16):
            received += block
    assert 0 < len(received) < size
    assert received == b"".join(pattern_bytes(size))[:len(received)]


# settings and the allowlist, no server needed --------------------------------

def test_settings_parse_targets_and_auth():
    from app.settings import Settings, SettingsError

    config = Settings.from_env({
        "SPILLWAY_PROXY_TARGETS": "a=https://api.example/v1/, b-2=http://10.0.0.1:8080",
        "SPILLWAY_PROXY_AUTH_B_2": "Bearer xyz",
        "SPILLWAY_IMPORT_ALLOW": "https://data.example/pub/",
        "SPILLWAY_UPSTREAM_READ_TIMEOUT": "7.5",
    })
    assert config.proxy_target("a").base_url == "https://api.example/v1"
    assert config.proxy_target("a").authorization is None
    assert config.proxy_target("b-2").authorization == "Bearer xyz"
    assert "xyz" not in repr(config)
    assert config.upstream_read_timeout == 7.5
    for bad in ("noequals", "a=ftp://x", "a=https://u:p@x", "a=http://x,a=http://y", "a b=http://x"):
        with pytest.raises(SettingsError):
            Settings.from_env({"SPILLWAY_PROXY_TARGETS": bad})
    with pytest.raises(SettingsError):
        Settings.from_env({"SPILLWAY_IMPORT_ALLOW": "data.example"})


@pytest.mark.parametrize("url,allowed", [
    ("https://data.example/pub/a.bin", True),
    ("https://data.example/pub", True),
    ("https://DATA.example:443/pub/x/y", True),
    ("https://data.example/public/a.bin", False),
    ("http://data.example/pub/a.bin", False),
    ("https://data.example:8443/pub/a.bin", False),
    ("https://data.example.evil/pub/a.bin", False),
    ("https://user@data.example/pub/a.bin", False),
    ("https://data.example/pub/../private", False),
    ("https://data.example/pub/%2e%2e/private", False),
    ("file:///etc/passwd", False),
    ("https://data.example:99999/pub/", False),
])
def test_url_allowlist(url, allowed):
    from app.core.upstream import url_allowed

    assert url_allowed(url, ("https://data.example/pub/",)) is allowed
