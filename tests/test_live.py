"""The streaming core under a real server, driven by curl, requests and raw sockets."""

import hashlib
import json
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app import Settings
from app.core.digests import content_digest_value
from tests.conftest import TOKEN_RO, TOKEN_RW, leftover_files, sha256_of
from app.testing.servers import ROOT, start_server

AUTH = {"Authorization": f"Bearer {TOKEN_RW}"}
LIMIT = 400 << 20  # per-request limit of the live server
READ_TIMEOUT = 2  # seconds a body read may stall on the live server


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi", "uwsgi-router"])
def server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    running = start_server(request.param, base / "store", base, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write,{TOKEN_RO}:read",
        "SPILLWAY_MAX_REQUEST_SIZE": str(LIMIT),
        "SPILLWAY_MAX_FILE_SIZE": str(LIMIT),
        "SPILLWAY_READ_TIMEOUT": str(READ_TIMEOUT),
    })
    yield running
    running.stop()


def curl(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True)
    if check and result.returncode != 0:
        raise AssertionError(f"curl {args} failed: {result.stderr.decode()}")
    return result


def curl_json(*args) -> tuple[int, dict]:
    result = curl("-w", "\n%{http_code}", *args)
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), json.loads(body) if body.strip() else {}


def auth_args(token=TOKEN_RW):
    return ["-H", f"Authorization: Bearer {token}"]


def download(server, file_id) -> bytes:
    return curl(*auth_args(), f"{server.url}/files/{file_id}/content").stdout


@pytest.fixture
def sample(tmp_path) -> Path:
    path = tmp_path / "sample.bin"
    path.write_bytes(bytes(range(256)) * 4096 + b"tail")
    return path


def test_curl_put_post_and_chunked(server, sample):
    digest = sha256_of(sample)
    status, put = curl_json(*auth_args(), "-T", str(sample), f"{server.url}/upload/")
    assert status == 201 and put["filename"] == "sample.bin" and put["sha256"] == digest
    status, post = curl_json(*auth_args(), "--data-binary", f"@{sample}", "-H",
                             "Content-Type: application/octet-stream", f"{server.url}/upload")
    assert status == 201 and post["sha256"] == digest and post["size"] == sample.stat().st_size
    status, chunked = curl_json(*auth_args(), "-H", "Transfer-Encoding: chunked", "--data-binary",
                                f"@{sample}", f"{server.url}/upload?filename=c.bin")
    assert status == 201 and chunked["sha256"] == digest and chunked["filename"] == "c.bin"
    for record in (put, post, chunked):
        assert download(server, record["id"]) == sample.read_bytes()


def test_curl_multipart_many_files_and_odd_names(server, tmp_path):
    every_byte = tmp_path / "bytes.bin"
    every_byte.write_bytes(bytes(range(256)) * 3)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    one = tmp_path / "one.bin"
    one.write_bytes(b"\x00")
    tricky = tmp_path / "tricky.bin"
    tricky.write_bytes(b"head\r\n--------------------------\r\n--\r\ntail")
    etc_passwd = Path("/etc/passwd").read_bytes()
    status, body = curl_json(
        *auth_args(),
        "-F", f"file=@{every_byte};filename=gr\u00fc\u00dfe-\u65e5\u672c.bin",
        "-F", f"file=@{empty}",
        "-F", f"file=@{one};filename=../../etc/passwd",
        "-F", f"other=@{tricky}",
        "-F", "note=hello", "-F", "note=again", "-F", "tag=\u00e9t\u00e9",
        f"{server.url}/upload")
    assert status == 201, body
    names = [f["filename"] for f in body["files"]]
    assert names == ["gr\u00fc\u00dfe-\u65e5\u672c.bin", "empty.bin", "passwd", "tricky.bin"]
    assert body["fields"] == {"note": ["hello", "again"], "tag": ["\u00e9t\u00e9"]}
    for record, path in zip(body["files"], (every_byte, empty, one, tricky)):
        assert record["size"] == path.stat().st_size
        assert record["sha256"] == sha256_of(path)
        assert download(server, record["id"]) == path.read_bytes()
    # "../../etc/passwd" is metadata only: the byte is stored under the file's id, and
    # nothing was written where that name leads from any directory the server works in
    storage = Path(server.storage_dir)
    one_id = body["files"][2]["id"]
    holding_the_byte = [p for p in storage.rglob("*") if p.is_file()
                        and one_id in str(p.relative_to(storage)) and p.read_bytes() == b"\x00"]
    assert len(holding_the_byte) == 1, holding_the_byte
    assert Path("/etc/passwd").read_bytes() == etc_passwd  # the tests may run as root
    assert not list(storage.parent.rglob("passwd"))
    for start in (ROOT, storage, *(d for d in storage.rglob("*") if d.is_dir())):
        landed = (start / "../../etc/passwd").resolve()
        assert landed == Path("/etc/passwd") or not landed.exists(), landed


def test_digests_over_the_wire(server, sample):
    good = content_digest_value(sha256_of(sample))
    status, _ = curl_json(*auth_args(), "-T", str(sample), "-H", f"Content-Digest: {good}",
                          f"{server.url}/upload/")
    assert status == 201
    status, body = curl_json(*auth_args(), "-T", str(sample), "-H",
                             f"Content-Digest: {content_digest_value('00' * 32)}",
                             f"{server.url}/upload/mismatch.bin")
    assert status == 400 and body["error"]["code"] == "digest_mismatch"
    status, body = curl_json(*auth_args(), "-F", f"file=@{sample}", "-F", "sha256=" + "ab" * 32,
                             f"{server.url}/upload")
    assert status == 400 and body["error"]["code"] == "digest_mismatch"
    status, body = curl_json(*auth_args(), "-F", f"file=@{sample}",
                             "-F", f"sha256={sha256_of(sample)}", f"{server.url}/upload")
    assert status == 201
    names = [f["filename"] for f in requests.get(f"{server.url}/files?limit=1000",
                                                 headers=AUTH).json()["files"]]
    assert "mismatch.bin" not in names
    assert leftover_files(server.storage_dir)["tmp"] == []


def test_malformed_multipart_over_the_wire(server):
    cases = {
        "multipart/form-data": b"--x\r\n",
        "multipart/form-data; boundary=right": b"--wrong\r\nContent-Disposition: form-data; "
                                               b"name=a\r\n\r\nv\r\n--wrong--\r\n",
        "multipart/form-data; boundary=b": b"--b\r\nContent-Disposition: form-data; name=f; "
                                           b"filename=x\r\n\r\nhalf of a fil",
    }
    before = leftover_files(server.storage_dir)
    for content_type, data in cases.items():
        response = requests.post(f"{server.url}/upload", data=data, headers={
            **AUTH, "Content-Type": content_type})
        assert response.status_code == 400, content_type
        assert response.json()["error"]["code"] in ("malformed_multipart", "truncated_body")
    assert leftover_files(server.storage_dir) == before


def test_big_upload_constant_memory(server, big_file):
    """300 MB through a streaming requests client: right hash, worker RSS grows < 30 MB."""
    warm = requests.put(f"{server.url}/upload/warm.bin", data=b"w" * (4 << 20), headers=AUTH)
    assert warm.status_code == 201
    baseline = server.workers_rss_kib()
    peak = baseline
    stop = threading.Event()

    def sample_rss():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, server.workers_rss_kib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    try:
        with big_file.open("rb") as handle:
            response = requests.put(f"{server.url}/upload/big.bin", data=handle,
                                    headers=AUTH, timeout=300)
    finally:
        stop.set()
        sampler.join()
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == sha256_of(big_file)
    assert response.json()["size"] == big_file.stat().st_size
    growth_mb = (peak - baseline) / 1024
    assert growth_mb < 30, f"worker RSS grew {growth_mb:.1f} MB"


def raw_request(server, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def test_client_gone_halfway_leaves_nothing(server):
    before = leftover_files(server.storage_dir)
    host = server.url.split("//")[1]
    for announced in (10 << 20, None):
        head = (f"PUT /upload/gone.bin HTTP/1.1\nHost: {host}\nAuthorization: Bearer {TOKEN_RW}\n"
                + (f"Content-Length: {announced}\n" if announced else "Transfer-Encoding: chunked\n"))
        sock = raw_request(server, head)
        payload = b"g" * (5 << 20)
        if announced is None:
            payload = b"%x\r\n" % len(payload) + payload + b"\r\n"
        sock.sendall(payload)
        time.sleep(0.3)
        sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and leftover_files(server.storage_dir) != before:
            time.sleep(0.1)
        assert leftover_files(server.storage_dir) == before, announced
    assert requests.get(f"{server.url}/files", headers=AUTH).status_code == 200


def _responses(data: bytes) -> list[tuple[int, bytes]]:
    """Every (status, body) in ``data``, a connection's whole answer stream."""
    found = []
    while b"\r\n\r\n" in data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status == 100:
            continue
        length = next(int(line.split(":", 1)[1]) for line in lines
                      if line.lower().startswith("content-length:"))
        found.append((status, data[:length]))
        data = data[length:]
    return found


def test_back_to_back_uploads_on_one_connection(server):
    """The body reader stops exactly at Content-Length: a second request on the same
    connection, even one sent in the same packets as the first body, arrives intact."""
    host = server.url.split("//")[1]
    # a small body first: gunicorn's first recv holds it and the start of the next request
    bodies = [b"first body" * 100, bytes(range(256)) * (12 << 10) + b"tail", b"third" * 99]

    def put(name: str, body: bytes, last: bool) -> bytes:
        return (f"PUT /upload/{name} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {TOKEN_RW}\r\nContent-Length: {len(body)}\r\n"
                + ("Connection: close\r\n" if last else "") + "\r\n").encode() + body

    if server.kind == "gunicorn":
        sent = bodies  # keep-alive, each request pipelined behind the body before it
        wire = b"".join(put(f"{n}.bin", body, n == len(bodies) - 1) for n, body in enumerate(bodies))
    else:
        # uWSGI answers one request per connection and then closes it (a pipelining
        # client would see its second request reset), so: the first, and the close
        sent = bodies[:1]
        wire = put("0.bin", bodies[0], False)
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    sock.sendall(wire)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    answers = _responses(data)
    assert len(answers) == len(sent), data[:600]
    for (status, body), expected in zip(answers, sent):
        assert status == 201, body
        record = json.loads(body)
        assert (record["size"], record["sha256"]) == (len(expected),
                                                      hashlib.sha256(expected).hexdigest())
        assert download(server, record["id"]) == expected


def test_oversize_content_length_refused_before_body(server):
    host = server.url.split("//")[1]
    sock = raw_request(server, f"PUT /upload/huge.bin HTTP/1.1\nHost: {host}\n"
                               f"Authorization: Bearer {TOKEN_RW}\nContent-Length: {LIMIT + 1}\n")
    started = time.monotonic()
    status, headers, body = read_response(sock)
    sock.close()
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert headers.get("connection", "").lower() == "close"
    assert time.monotonic() - started < 2


def test_chunked_over_limit_is_413_and_kept_nothing(server, tmp_path):
    before = leftover_files(server.storage_dir)

    def generate():
        block = b"o" * (1 << 20)
        for _ in range((LIMIT >> 20) + 8):
            yield block

    # requests sends all of it before reading; the server's lingering close reads the rest
    response = requests.put(f"{server.url}/upload/over.bin", data=generate(), headers=AUTH,
                            timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert leftover_files(server.storage_dir) == before
    assert requests.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize("token,status", [(None, 401), ("wrong-token-xyz", 401), (TOKEN_RO, 403)])
def test_bad_token_answered_before_a_big_body(server, token, status):
    host = server.url.split("//")[1]
    auth = f"Authorization: Bearer {token}\n" if token else ""
    sock = raw_request(server, f"PUT /upload/big.bin HTTP/1.1\nHost: {host}\n{auth}"
                               f"Content-Length: {1 << 30}\n", b"x" * 65536)
    started = time.monotonic()
    code, headers, body = read_response(sock)
    elapsed = time.monotonic() - started
    sock.close()
    assert code == status and json.loads(body)["error"]["status"] == status
    assert elapsed < 0.1, f"answered after {elapsed:.3f} s"


def test_downloads_with_curl(server, sample, tmp_path):
    data = sample.read_bytes()
    _, record = curl_json(*auth_args(), "-T", str(sample), f"{server.url}/upload/r\u00e9sum\u00e9.bin")
    url = f"{server.url}/files/{record['id']}/content"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    subprocess.run(["curl", "-sS", "-OJ", *auth_args(), url], cwd=out_dir, check=True)
    assert (out_dir / "resume.bin").read_bytes() == data  # curl -J uses the ASCII fallback
    assert curl(*auth_args(), "-r", "0-1023", url).stdout == data[:1024]
    assert curl(*auth_args(), "-r", "-100", url).stdout == data[-100:]
    assert curl(*auth_args(), "-r", "1000-", url).stdout == data[1000:]
    unsatisfiable = curl(*auth_args(), "-r", f"{len(data)}-", "-w", "%{http_code}", url).stdout
    assert unsatisfiable.endswith(b"416")
    etag = f'"{record["sha256"]}"'
    not_modified = curl(*auth_args(), "-H", f"If-None-Match: {etag}", "-w", "%{http_code}", url)
    assert not_modified.stdout == b"304"
    head = curl(*auth_args(), "-I", url).stdout.decode()
    assert " 200" in head.splitlines()[0]
    assert f"content-length: {len(data)}" in head.lower()
    assert f"etag: {etag}".lower() in head.lower()
    response = requests.get(url, headers=AUTH, stream=True)
    assert hashlib.sha256(b"".join(response.iter_content(1 << 16))).hexdigest() == record["sha256"]


def test_expect_100_continue_is_answered_at_once(server, tmp_path):
    """curl waits for "100 Continue" before it sends the body; nobody answering costs it
    the whole --expect100-timeout (1 s by default, 10 s here so a miss cannot hide)."""
    path = tmp_path / "expect.bin"
    path.write_bytes(bytes(range(256)) * (12 << 10))  # 3 MiB
    result = curl("-v", "-T", str(path), "-H", "Expect: 100-continue", "--expect100-timeout", "10",
                  *auth_args(), "-w", "\n%{http_code} %{time_total}", f"{server.url}/upload/")
    body, _, tail = result.stdout.rpartition(b"\n")
    status, elapsed = tail.split()
    assert int(status) == 201 and json.loads(body)["sha256"] == sha256_of(path)
    assert b"HTTP/1.1 100 Continue" in result.stderr
    assert float(elapsed) < 1.0, f"took {elapsed} s"


def test_expect_100_continue_refused_before_the_body(server, tmp_path):
    path = tmp_path / "refused.bin"
    path.write_bytes(b"r" * (8 << 20))
    result = curl("-T", str(path), "-H", "Expect: 100-continue", "--expect100-timeout", "10",
                  "-H", "Authorization: Bearer wrong-token-xyz", "-o", "/dev/null",
                  "-w", "%{http_code} %{size_upload} %{time_total}", f"{server.url}/upload/")
    status, uploaded, elapsed = result.stdout.split()
    assert int(status) == 401 and float(elapsed) < 1.0
    if server.kind.startswith("uwsgi"):
        # the app sends "100 Continue" itself, only once it decided to read the body;
        # gunicorn sends it before the app runs, so curl may have begun sending there
        assert int(uploaded) == 0


def test_refused_body_is_not_drained(server):
    """After an early 401 the server closes: it reads on (so that a client that reads only
    after sending gets the answer) at most SPILLWAY_LINGER_SIZE, then cuts the client off."""
    host = server.url.split("//")[1]
    sock = raw_request(server, f"PUT /upload/big.bin HTTP/1.1\nHost: {host}\n"
                               f"Content-Length: {1 << 30}\n", b"x" * 65536)
    status, _, _ = read_response(sock)
    assert status == 401
    block, sent = b"x" * 65536, 0
    deadline = time.monotonic() + 10
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        while sent < (512 << 20) and time.monotonic() < deadline:
            sent += sock.send(block)
    sock.close()
    linger = Settings().linger_size  # the live server keeps the default
    assert sent < linger + (64 << 20), f"the server swallowed {sent} bytes of a refused body"


def test_both_content_length_and_chunked_is_refused(server):
    before = leftover_files(server.storage_dir)
    host = server.url.split("//")[1]
    sock = raw_request(server, f"PUT /upload/smuggled.bin HTTP/1.1\nHost: {host}\n"
                               f"Authorization: Bearer {TOKEN_RW}\nContent-Length: 5\n"
                               "Transfer-Encoding: chunked\n", b"5\r\nhello\r\n0\r\n\r\n")
    status, _, _ = read_response(sock)
    sock.close()
    assert status == 400
    assert leftover_files(server.storage_dir) == before


def _paced_upload(server, *, chunked: bool, blocks: int, pause: float) -> tuple[int, dict, float]:
    """PUT `blocks` blocks of 64 KiB over a raw socket, `pause` s apart; 0 blocks: send 10
    bytes of a 1 MiB body, then nothing."""
    host = server.url.split("//")[1]
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {(blocks or 16) << 16}"
    sock = raw_request(server, f"PUT /upload/paced.bin HTTP/1.1\nHost: {host}\n"
                               f"Authorization: Bearer {TOKEN_RW}\n{framing}\n")
    sock.settimeout(READ_TIMEOUT + 10)

    def send(data: bytes) -> None:
        sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

    started = time.monotonic()
    if blocks == 0:
        send(b"0123456789")
    for number in range(blocks):
        send(bytes([number]) * 65536)
        time.sleep(pause)
    if chunked and blocks:
        sock.sendall(b"0\r\n\r\n")
    status, _, body = read_response(sock)
    sock.close()
    return status, json.loads(body), time.monotonic() - started


def test_stalled_client_times_out_and_a_slow_one_finishes(server):
    """READ_TIMEOUT=2: a client that stops sending gets 408 after ~2 s and leaves nothing;
    clients sending 64 KiB every 0.5 s for 5 s finish, on the same worker, meanwhile."""
    before = leftover_files(server.storage_dir)
    with ThreadPoolExecutor(4) as pool:
        stalls = [pool.submit(_paced_upload, server, chunked=c, blocks=0, pause=0)
                  for c in (False, True)]
        slows = [pool.submit(_paced_upload, server, chunked=c, blocks=10, pause=0.5)
                 for c in (False, True)]
        for future in stalls:
            status, body, elapsed = future.result()
            assert status == 408 and body["error"]["code"] == "request_timeout", body
            assert READ_TIMEOUT - 0.5 < elapsed < READ_TIMEOUT + 8, elapsed
        expected = hashlib.sha256(b"".join(bytes([n]) * 65536 for n in range(10))).hexdigest()
        for future in slows:
            status, body, elapsed = future.result()
            assert status == 201 and body["sha256"] == expected and body["size"] == 10 << 16, body
            assert elapsed >= 5
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and leftover_files(server.storage_dir)["tmp"]:
        time.sleep(0.1)
    assert leftover_files(server.storage_dir)["tmp"] == before["tmp"]
    again = requests.put(f"{server.url}/upload/after.bin", data=b"a" * 1000, headers=AUTH)
    assert again.status_code == 201
