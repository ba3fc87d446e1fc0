"""Early refusals (401, 403, 413) reach the client, and the client stops sending.

With ``Expect: 100-continue`` a refused client must send no body byte at all (the
server says "100 Continue" only once auth and the size check passed).  Without it the
client is already sending when the answer goes out; the server must close so that the
answer is not destroyed by a TCP reset (a lingering close: half-close, read and discard
for a bounded time and byte count, then close).
"""

import http.client
import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import TOKEN_RO, TOKEN_RW, leftover_files
from app.testing.nginx import Nginx, nginx_binary
from app.testing.servers import start_server

LIMIT = 256 << 20
BIG = 512 << 20  # over LIMIT and LINGER
LINGER = 128 << 20  # at most this much of a refused body is read and thrown away
TRIES = 20  # uploads without Expect per server and size

SERVER_ENV = {
    "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write,{TOKEN_RO}:read",
    "SPILLWAY_MAX_REQUEST_SIZE": str(LIMIT),
    "SPILLWAY_MAX_FILE_SIZE": str(LIMIT),
    "SPILLWAY_LINGER_SIZE": str(LINGER),
}


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi", "uwsgi-router"])
def server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    running = start_server(request.param, base / "store", base, env=SERVER_ENV)
    yield running
    running.stop()


def sparse_file(folder: Path, size: int) -> Path:
    """A file of `size` zero bytes that takes no disk space and reads at memory speed."""
    path = folder / f"zeros-{size}.bin"
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


@pytest.fixture(scope="module")
def big_body(tmp_path_factory) -> Path:
    return sparse_file(tmp_path_factory.mktemp("bodies"), BIG)


@pytest.fixture(scope="module")
def body_20m(tmp_path_factory) -> Path:
    return sparse_file(tmp_path_factory.mktemp("bodies"), 20 << 20)


def curl_upload(url: str, body: Path, token: str, *extra: str) -> tuple[int, dict, int, str]:
    """PUT `body` with curl; (status, JSON answer, body bytes curl sent, curl's -v log)."""
    result = subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "60", "-T", str(body), "-H",
         f"Authorization: Bearer {token}", *extra, "-w", "\n%{http_code} %{size_upload}",
         f"{url}/upload/"], capture_output=True, timeout=90)
    answer, _, tail = result.stdout.rpartition(b"\n")
    status, sent = tail.split()
    try:
        document = json.loads(answer)
    except ValueError:
        document = {}
    return int(status), document, int(float(sent)), result.stderr.decode(errors="replace")


@pytest.mark.parametrize("token,status,code", [
    ("not-a-valid-token", 401, "invalid_token"),
    (TOKEN_RO, 403, "forbidden"),
    (TOKEN_RW, 413, "request_too_large"),  # BIG is over LIMIT
])
def test_expect_100_refusal_sends_no_body_byte(server, big_body, token, status, code):
    before = leftover_files(server.storage_dir)
    started = time.monotonic()
    got, answer, sent, log = curl_upload(server.url, big_body, token)
    assert (got, answer.get("error", {}).get("code")) == (status, code), log
    # a "100 Continue" before the refusal is an invitation to send: curl sent up to a few
    # MiB before the answer overtook it (how much is a race; the 100 itself is not)
    assert "< HTTP/1.1 100" not in log, log
    assert sent == 0, f"curl sent {sent} body bytes before the {status}"
    assert time.monotonic() - started < 5  # no waiting out curl's 1 s Expect timeout twice
    assert leftover_files(server.storage_dir) == before


@pytest.mark.parametrize("size", ["20M", "512M"])
def test_refusal_without_expect_always_arrives(server, big_body, body_20m, size):
    """Every try reads the JSON 401; none sees a reset or a broken pipe."""
    body = big_body if size == "512M" else body_20m
    failures = []
    deadline = time.monotonic() + 120
    for attempt in range(TRIES):
        assert time.monotonic() < deadline, f"{attempt} tries took over 120 s"
        got, answer, sent, log = curl_upload(server.url, body, "not-a-valid-token",
                                             "-H", "Expect:")
        if (got, answer.get("error", {}).get("code")) != (401, "invalid_token"):
            failures.append(f"try {attempt}: status {got}, sent {sent}: "
                            + " ".join(line for line in log.splitlines()
                                       if line.startswith("curl:")))
    assert not failures, f"{len(failures)} of {TRIES} lost the 401:\n" + "\n".join(failures)


def send_then_read(url: str, body: Path, token: str) -> tuple[int, dict, dict]:
    """http.client (what urllib uses): the whole body goes out before the answer is read,
    and a reset while sending is raised, not retried or skipped over."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        with body.open("rb") as handle:
            connection.request("PUT", "/upload/x.bin", body=handle,
                               headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


def requests_put(url: str, body: Path, token: str) -> tuple[int, dict, dict]:
    with body.open("rb") as handle:  # a file: sent with Content-Length, no Expect
        response = requests.put(f"{url}/upload/x.bin", data=handle, timeout=60,
                                headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json(), dict(response.headers)


@pytest.mark.parametrize("send", [send_then_read, requests_put], ids=["http.client", "requests"])
@pytest.mark.parametrize("token,status,code", [
    ("not-a-valid-token", 401, "invalid_token"),
    (TOKEN_RO, 403, "forbidden"),
])
def test_client_that_reads_only_after_sending_gets_the_answer(server, tmp_path, send, token,
                                                              status, code):
    """A client that reads only once its whole body is out: the server must read and
    discard that body (it is under the lingering bound) rather than reset it.
    (python-requests gets by even on a reset: urllib3 ignores a broken pipe while
    sending and reads whatever answer arrived.)"""
    body = sparse_file(tmp_path, 96 << 20)
    got, answer, headers = send(server.url, body, token)
    assert (got, answer["error"]["code"]) == (status, code)
    assert {k.lower(): v for k, v in headers.items()}["connection"].lower() == "close"
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def test_lingering_reads_no_more_than_linger_size(server, big_body):
    """The bound: a client that sends 512 MiB before it reads is cut after about LINGER
    bytes (plus what the socket buffers hold), rather than read to its end."""
    started = time.monotonic()
    with pytest.raises(ConnectionError):  # BrokenPipeError or ConnectionResetError
        send_then_read(server.url, big_body, "not-a-valid-token")
    assert time.monotonic() - started < 30
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


@pytest.fixture(scope="module", params=["proxy", "uwsgi"])
def nginx_front(request, tmp_path_factory):
    """nginx streaming the body on as it arrives (proxy_pass to gunicorn, uwsgi_pass)."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed")
    base = tmp_path_factory.mktemp(f"nginx-{request.param}")
    kind = "gunicorn" if request.param == "proxy" else "uwsgi-behind-nginx"
    backend = start_server(kind, base / "store", base, env=SERVER_ENV)
    nginx = None
    try:
        nginx = Nginx(request.param, base / "nginx", BACKEND=backend.url.split("//", 1)[1],
                      STORAGE_DIR=str(base / "store"), MAX_BODY=str(LIMIT)).start()
        yield nginx
    finally:
        if nginx:
            nginx.stop()
        backend.stop()


@pytest.mark.parametrize("expect", [[], ["-H", "Expect:"]], ids=["expect", "no-expect"])
def test_early_answer_passes_through_nginx(nginx_front, tmp_path, expect):
    """Spillway refuses a malformed Content-Digest before the body while nginx still
    streams it upstream; a reset there made nginx answer its own 502 instead."""
    body = sparse_file(tmp_path, 64 << 20)
    for attempt in range(5):
        got, answer, _, log = curl_upload(
            nginx_front.url, body, TOKEN_RW, "-H", "Content-Digest: sha-256=:bad:", *expect)
        assert (got, answer.get("error", {}).get("code")) == (400, "bad_digest"), (attempt, log)
    assert "Broken pipe" not in nginx_front.log() and "reset by peer" not in nginx_front.log()
