"""Slow clients against a thread-per-request server: heads that never end, bodies that trickle.

Each server runs with few threads and short bounds so that a handful of slow connections
is enough to take every thread, and the bounds run out within seconds.
"""

import hashlib
import json
import math
import os
import socket
import time

import pytest
import requests

from tests.conftest import leftover_files
from app.testing.servers import start_server

THREADS = 2
SLOW_CLIENTS = THREADS + 4
HEAD_TIMEOUT = 2  # gunicorn: SPILLWAY_HEAD_TIMEOUT
READ_TIMEOUT = 3  # uWSGI bounds a head by its idle socket-timeout, which follows this
RATE_WINDOW = 2
MIN_RATE = 1024

SLOW_ENV = {
    "GUNICORN_THREADS": str(THREADS),
    "UWSGI_THREADS": str(THREADS),
    "SPILLWAY_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
    "SPILLWAY_READ_TIMEOUT": str(READ_TIMEOUT),
    "SPILLWAY_MIN_BODY_RATE": str(MIN_RATE),
    "SPILLWAY_MIN_BODY_RATE_WINDOW": str(RATE_WINDOW),
    "SPILLWAY_CHUNK_SIZE": "64K",
}

# how long a head may hold a thread: gunicorn's whole-head deadline, uWSGI's idle bound
HEAD_BOUND = {"gunicorn": HEAD_TIMEOUT, "uwsgi": READ_TIMEOUT}


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    running = start_server(request.param, base / "store", base, env=SLOW_ENV)
    yield running
    running.stop()


def open_connection(server) -> socket.socket:
    host, port = server.url.split("//")[1].split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def half_head(server) -> socket.socket:
    sock = open_connection(server)
    sock.sendall(b"PUT /upload/never.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Len")
    return sock


def answer_or_close(sock: socket.socket, within: float) -> bytes:
    """Everything the server sent before closing; fails if it neither answers nor closes."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was neither answered nor closed within {within} s "
                    f"(got {received!r})")
    finally:
        sock.close()
    return received


def assert_408(answer: bytes, code: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["error"]["code"] == code, answer


def put(server, name: str, data: bytes, within: float) -> requests.Response:
    return requests.put(f"{server.url}/upload/{name}", data=data, timeout=(5, within))


def test_half_heads_hold_threads_only_until_the_head_bound(server):
    """More half-sent heads than threads: a normal upload behind them still succeeds, as soon
    as the bound frees the threads, and every slow connection is answered 408 (gunicorn) or
    closed (uWSGI, which has no whole-head answer)."""
    bound = HEAD_BOUND[server.kind]
    slow = [half_head(server) for _ in range(SLOW_CLIENTS)]
    time.sleep(0.5)  # all of them accepted, the first ones holding the threads
    data = os.urandom(1 << 20)
    # under uWSGI each thread waits out one idle bound per slow head it takes in turn
    rounds = 1 if server.kind == "gunicorn" else math.ceil(SLOW_CLIENTS / THREADS)
    started = time.monotonic()
    response = put(server, "after-slow-heads.bin", data, within=rounds * bound + 10)
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert elapsed < rounds * bound + 8, elapsed
    for sock in slow:
        answer = answer_or_close(sock, within=5)
        if server.kind == "gunicorn":
            assert_408(answer, "request_head_timeout")
        else:
            assert answer == b""


def test_a_trickled_head_is_cut_by_the_whole_head_deadline(server):
    """One header byte every 0.3 s: each read is quick, the head as a whole is too slow."""
    if server.kind != "gunicorn":
        pytest.skip("uWSGI bounds each head read (socket-timeout), not the whole head")
    sock = open_connection(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    try:
        for byte in b"X-Slow: " + b"a" * 40:
            sock.sendall(bytes([byte]))
            time.sleep(0.3)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = answer_or_close(sock, within=5)
    assert_408(answer, "request_head_timeout")
    assert time.monotonic() - started < HEAD_TIMEOUT + 4


def test_a_trickled_body_is_cut_by_the_minimum_rate(server):
    """1 byte every 0.5 s (2 B/s, far below 1 KiB/s) never stalls long enough for the idle
    timeout, yet is answered 408 within two rate windows, and nothing is kept."""
    before = leftover_files(server.storage_dir)
    sock = open_connection(server)
    sock.sendall(b"PUT /upload/trickle.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Connection: close\r\nContent-Length: 1048576\r\n\r\n")
    started = time.monotonic()
    sock.settimeout(0.5)
    answer = b""
    while time.monotonic() - started < 3 * RATE_WINDOW + 6:
        try:
            sock.sendall(b"x")
            chunk = sock.recv(65536)  # waits the 0.5 s between bytes
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        answer += chunk
        if not chunk or b"\r\n\r\n" in answer:
            break
    elapsed = time.monotonic() - started
    answer += answer_or_close(sock, within=5)  # the rest of it
    assert_408(answer, "request_too_slow")
    assert elapsed < 2 * RATE_WINDOW + 4, elapsed
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and leftover_files(server.storage_dir) != before:
        time.sleep(0.1)
    assert leftover_files(server.storage_dir) == before


def test_a_slow_but_steady_body_is_not_cut(server):
    """4 KiB every 0.5 s (8 KiB/s) is above the minimum rate: the upload completes."""
    data = os.urandom(16 * 4096)
    sock = open_connection(server)
    sock.sendall(b"PUT /upload/steady.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(data))
    for offset in range(0, len(data), 4096):
        sock.sendall(data[offset:offset + 4096])
        time.sleep(0.5)
    answer = answer_or_close(sock, within=10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), answer
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()
