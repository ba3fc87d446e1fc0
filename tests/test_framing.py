"""HTTP/1.1 body framing over the wire: Content-Length, Transfer-Encoding, chunked bodies
(RFC 9112 §6-7) and oversized request heads, under every server kind a client talks to.

Raw sockets write the exact bytes and read the exact answer; every refusal must be a
JSON error with a stable code (or, where the server itself refuses before the app runs,
that server's own answer), and must leave nothing stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

import pytest
import requests

from app.core.framing import ChunkedDecoder, MalformedChunks, content_length
from tests.conftest import leftover_files
from app.testing.servers import start_server

READ_TIMEOUT = 5


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi", "uwsgi-router"])
def server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    running = start_server(request.param, base / "store", base, env={
        "SPILLWAY_MAX_REQUEST_SIZE": "1G",
        "SPILLWAY_MAX_FILE_SIZE": "1G",
        "SPILLWAY_READ_TIMEOUT": str(READ_TIMEOUT),
    })
    yield running
    running.stop()


def exchange(server, wire: bytes, timeout: float = 15) -> tuple[int, dict, bytes]:
    """Send `wire`, read the whole answer; (0, {}, b"") when the server closed or reset
    the connection without answering."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(wire)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before taking everything
        data = b""
        try:
            while b"\r\n\r\n" not in data or _incomplete(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    while data.startswith(b"HTTP/1.1 100"):
        data = data.partition(b"\r\n\r\n")[2]
    if b"\r\n\r\n" not in data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _incomplete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 100") and not body:
        return True
    if head.startswith(b"HTTP/1.1 100"):
        return b"\r\n\r\n" not in body or _incomplete(body)
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) < int(value)
    return False  # no length: read to the close


def put(server, head_lines: list[str], body: bytes = b"", name: str = "framed.bin") -> bytes:
    host = server.url.split("//")[1]
    head = [f"PUT /upload/{name} HTTP/1.1", f"Host: {host}", *head_lines, "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def stored(server) -> dict:
    """The storage dir's contents, once any cleanup in flight has finished."""
    time.sleep(0.2)
    return leftover_files(server.storage_dir)


def assert_refused(server, answer, status: int, code: str, before: dict) -> None:
    got_status, headers, body = answer
    assert got_status == status, (got_status, body[:300])
    assert json.loads(body)["error"]["code"] == code, body[:300]
    assert headers.get("content-type", "").startswith("application/json")
    assert stored(server) == before


def assert_stored(answer, expected: bytes) -> dict:
    status, _, body = answer
    assert status == 201, (status, body[:300])
    record = json.loads(body)
    assert (record["size"], record["sha256"]) == (len(expected), hashlib.sha256(expected).hexdigest())
    return record


# -- item 3: chunk sizes are not body sizes ---------------------------------------------------

def test_chunks_of_16_mib_are_stored_whole_in_bounded_memory(server):
    """requests with a generator sends each 16 MiB block as one chunk; 64 MiB in all."""
    digest = hashlib.sha256()

    def blocks():
        for number in range(4):
            block = hashlib.sha256(b"%d" % number).digest() * (1 << 19)  # 16 MiB
            digest.update(block)
            yield block

    baseline = server.workers_rss_kib()
    peak = baseline
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.workers_rss_kib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        response = requests.put(f"{server.url}/upload/blocks.bin", data=blocks(), timeout=120)
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["size"], record["sha256"]) == (64 << 20, digest.hexdigest())
    download = hashlib.sha256(requests.get(f"{server.url}{record['content_url']}").content)
    assert download.hexdigest() == digest.hexdigest()
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 24, f"workers grew {growth_mib:.1f} MiB reading 16 MiB chunks"


def test_one_chunk_of_64_mib_over_a_raw_socket(server):
    payload = os.urandom(1 << 20) * 64
    answer = exchange(server, put(server, ["Transfer-Encoding: chunked"],
                                  b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"), timeout=60)
    assert_stored(answer, payload)


# -- item 4: Content-Length is digits only ----------------------------------------------------

@pytest.mark.parametrize("value", ["abc", "-1", "+5", "0x5", "", "5, 5", "1e3", "٥"],
                         ids=["abc", "minus", "plus", "hex", "empty", "list", "exp", "arabic-5"])
def test_invalid_content_length_is_400_and_stores_nothing(server, value):
    before = stored(server)
    answer = exchange(server, put(server, [f"Content-Length: {value}"], b"hello"))
    if server.kind == "gunicorn" and not answer[2].startswith(b"{"):
        # gunicorn refuses these itself, before the app runs: its own plain 400
        assert answer[0] == 400, answer
        assert stored(server) == before
        return
    assert_refused(server, answer, 400, "invalid_content_length", before)


# -- item 5: a malformed chunked body is refused whole -----------------------------------------

MALFORMED_CHUNKED = {
    "not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "0x-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "no-crlf-after-data": b"5\r\nhelloXX0\r\n\r\n",
    "bare-lf": b"5\nhello\n0\n\n",
    "space-before-crlf": b"5 \r\nhello\r\n0\r\n\r\n",
    "empty-size": b"\r\nhello\r\n0\r\n\r\n",
    "bad-extension": b"5;=x\r\nhello\r\n0\r\n\r\n",
    "endless-size-line": b"5;" + b"a" * 70000 + b"\r\nhello\r\n0\r\n\r\n",
    "bad-trailer": b"5\r\nhello\r\n0\r\nno colon here\r\n\r\n",
}


@pytest.mark.parametrize("body", MALFORMED_CHUNKED.values(), ids=MALFORMED_CHUNKED.keys())
def test_malformed_chunked_body_is_400_and_stores_nothing(server, body):
    before = stored(server)
    answer = exchange(server, put(server, ["Transfer-Encoding: chunked"], body))
    if server.kind == "gunicorn" and body == MALFORMED_CHUNKED["bare-lf"]:
        # gunicorn's own chunked parser waits for a CRLF that never comes, up to its
        # 8190-byte line bound: a client that stops there gets the read timeout
        assert_refused(server, answer, 408, "request_timeout", before)
        return
    assert_refused(server, answer, 400, "malformed_chunked_body", before)


def test_chunked_body_ending_early_is_truncated(server):
    before = stored(server)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(put(server, ["Transfer-Encoding: chunked"], b"10\r\nonly eight"))
        sock.shutdown(socket.SHUT_WR)  # the client is done sending, and still listening
        answer = sock.recv(65536)
    assert stored(server) == before
    if answer:  # the client half-closed; a server may answer or just close
        assert b"truncated_body" in answer or answer.startswith(b"HTTP/1.1 400"), answer


# -- item 6: chunk extensions and trailers are valid ------------------------------------------

def test_chunk_extensions_and_trailers_are_accepted(server):
    body = (b"5;name=value\r\nhello\r\n"
            b"6 ; a ; b=\"q;\\\"x\"\r\n world\r\n"
            b"000;last\r\nX-Trailer: yes\r\nX-Other:\tmore \r\n\r\n")
    record = assert_stored(exchange(server, put(server, ["Transfer-Encoding: chunked"], body)),
                           b"hello world")
    assert requests.get(f"{server.url}{record['content_url']}").content == b"hello world"


@pytest.mark.parametrize("spelling", ["chunked", "Chunked", "CHUNKED", "chunked  "])
def test_chunked_spellings_are_accepted(server, spelling):
    if server.kind == "uwsgi-router" and spelling != spelling.strip():
        pytest.skip("uWSGI's router takes only an exact 'chunked' (any case) as chunked "
                    "and then never passes the body on; README, Framing limits")
    assert_stored(exchange(server, put(server, [f"Transfer-Encoding: {spelling}"],
                                       b"3\r\nabc\r\n0\r\n\r\n")), b"abc")


# -- items 7 and 8: only chunked is a transfer coding we take ---------------------------------

@pytest.mark.parametrize("coding", ["xchunked", "gzip, chunked", "chunked, chunked", "identity",
                                    "deflate"])
def test_other_transfer_codings_are_501_and_store_nothing(server, coding):
    before = stored(server)
    answer = exchange(server, put(server, [f"Transfer-Encoding: {coding}"],
                                  b"5\r\nhello\r\n0\r\n\r\n"))
    if server.kind == "gunicorn" and not answer[2].startswith(b"{"):
        assert answer[0] in (400, 501), answer  # gunicorn refused it before the app ran
        assert stored(server) == before
        return
    assert_refused(server, answer, 501, "unsupported_transfer_encoding", before)


def test_transfer_encoding_in_http_1_0_is_400(server):
    before = stored(server)
    host = server.url.split("//")[1]
    wire = (f"PUT /upload/old.bin HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n0\r\n\r\n").encode()
    answer = exchange(server, wire)
    if server.kind == "gunicorn" and not answer[2].startswith(b"{"):
        assert answer[0] == 400, answer
        assert stored(server) == before
        return
    assert_refused(server, answer, 400, "bad_framing", before)


# -- item 7: oversized heads get an answer -----------------------------------------------------

def test_a_header_line_over_8_kib_is_431(server):
    before = stored(server)
    answer = exchange(server, put(server, ["X-Big: " + "a" * 8192, "Content-Length: 5"], b"hello"))
    if server.kind == "gunicorn":
        assert answer[0] == 431, answer
    else:
        assert_refused(server, answer, 431, "request_headers_too_large", before)
    assert stored(server) == before


def test_200_header_fields_are_431(server):
    before = stored(server)
    many = [f"X-Field-{n}: {n}" for n in range(200)]
    answer = exchange(server, put(server, [*many, "Content-Length: 5"], b"hello"))
    if server.kind == "gunicorn":
        assert answer[0] == 431, answer
    else:
        assert_refused(server, answer, 431, "request_headers_too_large", before)
    assert stored(server) == before


def test_a_40_kib_head_within_the_field_limits_is_served(server):
    """Five 8000-byte fields: within gunicorn's per-line limit, so stored everywhere."""
    fields = [f"X-Part-{n}: " + "p" * 8000 for n in range(5)]
    assert_stored(exchange(server, put(server, [*fields, "Content-Length: 5"], b"hello")), b"hello")


def test_a_64_kib_header_line_is_answered_or_documented(server):
    """gunicorn answers 431.  uWSGI holds a head in one 64 KiB packet and cannot answer
    one that does not fit: it closes the connection (README, "Framing limits")."""
    before = stored(server)
    answer = exchange(server, put(server, ["X-Big: " + "a" * 65536, "Content-Length: 5"], b"hello"))
    if server.kind == "gunicorn":
        assert answer[0] == 431, answer
    else:
        assert answer == (0, {}, b""), answer
    assert stored(server) == before
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


# -- the decoder itself, fed in every possible split ------------------------------------------

def decode(wire: bytes, step: int) -> tuple[bytes, bool]:
    decoder = ChunkedDecoder()
    body = b""
    for start in range(0, len(wire), step):
        piece = wire[start:start + step]
        body += b"".join(piece[a:b] for a, b in decoder.feed(piece))
    return body, decoder.done


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13, 1000])
def test_decoder_gives_the_same_body_however_the_bytes_arrive(step):
    wire = (b"5;name=value\r\nhello\r\n6 ; a ; b=\"q;\\\"x\"\r\n world\r\n"
            b"10\r\n" + bytes(range(16)) + b"\r\n000;last\r\nX-Trailer: yes\r\n\r\nNEXT")
    assert decode(wire, step) == (b"hello world" + bytes(range(16)), True)


@pytest.mark.parametrize("wire", MALFORMED_CHUNKED.values(), ids=MALFORMED_CHUNKED.keys())
def test_decoder_refuses_malformed_bodies_at_any_split(wire):
    for step in (1, 7, len(wire)):
        with pytest.raises(MalformedChunks):
            decode(wire, step)


def test_decoder_waits_for_the_end():
    assert decode(b"5\r\nhello\r\n0\r\n", 3) == (b"hello", False)  # no empty line yet


@pytest.mark.parametrize("value, expected", [("0", 0), ("5", 5), (" 12 ", 12), (None, None)])
def test_content_length_values(value, expected):
    assert content_length(value) == expected
