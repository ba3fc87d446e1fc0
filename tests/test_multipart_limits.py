"""Multipart bodies built by hand and sent over raw sockets to gunicorn and uWSGI: bounded
part headers, a missing closing boundary against a body cut short, boundaries and preambles
the RFCs allow; the same bounds on the proxy's relay; and no temp file left by a full disk."""

import errno
import hashlib
import json
import socket
import threading
import time

import pytest
import requests

from app.core.errors import InsufficientStorage
from app.storage.local import LocalStorage
from tests.conftest import TOKEN_RW, leftover_files
from app.testing.servers import start_server, start_sink

AUTH = {"Authorization": f"Bearer {TOKEN_RW}"}
HEADERS_LIMIT = 16 << 10  # SPILLWAY_MAX_PART_HEADERS_SIZE's default
MAX_FILENAME_BYTES = 1024  # in UTF-8
MAX_FIELD_NAME_BYTES = 256
BOUNDARY = "limits-7f3a"
FILE_BYTES = bytes(range(256)) * 1024 + b"end"  # 256 KiB and a tail, every byte value


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    running = start_sink(tmp_path_factory.mktemp("sink"))
    yield running
    running.stop()


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def server(request, tmp_path_factory, sink):
    base = tmp_path_factory.mktemp(request.param)
    running = start_server(request.param, base / "store", base, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write",
        "SPILLWAY_MAX_REQUEST_SIZE": "1G",
        "SPILLWAY_PROXY_TARGETS": f"sink={sink.url}/sink",
        "SPILLWAY_READ_TIMEOUT": "5",
    })
    yield running
    running.stop()


# building bodies ------------------------------------------------------------

def part(name: str, data: bytes = b"", *, filename: str | None = None,
         headers: tuple[str, ...] = ()) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    lines = [f"Content-Disposition: {disposition}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def form(*parts: bytes, boundary: str = BOUNDARY, closing: bool = True) -> bytes:
    delimiter = f"--{boundary}".encode()
    body = b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in parts)
    return body + (delimiter + b"--\r\n" if closing else b"")


def content_type(boundary: str = BOUNDARY) -> str:
    return f"multipart/form-data; boundary={boundary}"


# talking to the server ------------------------------------------------------

def send_form(server, pieces, *, length: int, ctype: str = content_type(), path="/upload",
              end: str = "wait") -> tuple[int | None, dict | None, float]:
    """POST ``pieces`` with Content-Length ``length`` over a raw socket, sent from a thread
    while this one reads the answer.  ``end``: "wait" for the answer, "half" to shut the
    sending side after the pieces, "close" to hang up after them.  (status, JSON, seconds);
    None, None when the server closed without an answer."""
    host = server.url.split("//")[1]
    sock = socket.create_connection(("127.0.0.1", int(host.rsplit(":", 1)[1])), timeout=60)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN_RW}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n")
    started = time.monotonic()
    sock.sendall(head.encode())

    def send():
        try:
            for piece in pieces:
                sock.sendall(piece)
            if end == "half":
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered early and closed: the answer is what counts

    sender = threading.Thread(target=send)
    sender.start()
    if end == "close":
        sender.join()
        time.sleep(0.3)
        sock.close()
        return None, None, time.monotonic() - started
    try:
        status, body = _read_answer(sock)
    finally:
        elapsed = time.monotonic() - started
        sock.close()
        sender.join()
    return status, (json.loads(body) if body else None), elapsed


def _read_answer(sock) -> tuple[int | None, bytes]:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None, b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                      if k.strip().lower() == "content-length")
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    except ConnectionResetError:
        return None, b""
    return int(lines[0].split()[1]), body[:length]


def error_code(answer: dict | None) -> str | None:
    return answer["error"]["code"] if answer and "error" in answer else None


def settled_storage(server, expected: dict, wait: float = 5.0) -> dict:
    """What is on disk, once it equals ``expected`` or ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    while (found := leftover_files(server.storage_dir)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def stored_bytes(server, file_id: str) -> bytes:
    response = requests.get(f"{server.url}/files/{file_id}/content", headers=AUTH, timeout=30)
    assert response.status_code == 200
    return response.content


def upload(server, body: bytes, ctype: str = content_type()) -> tuple[int, dict]:
    status, answer, _ = send_form(server, [body], length=len(body), ctype=ctype)
    return status, answer


# item 9: bounded part headers ------------------------------------------------

def test_huge_filename_refused_at_once_in_constant_memory(server):
    """A 64 MiB filename: refused after the first part-header bytes, not buffered, no answer
    the size of the name, nothing stored, and the server still takes uploads."""
    before = leftover_files(server.storage_dir)
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"").encode()
    name_block = b"n" * (1 << 20)
    tail = b'"\r\n\r\n' + FILE_BYTES + f"\r\n--{BOUNDARY}--\r\n".encode()
    length = len(head) + 64 * len(name_block) + len(tail)
    pieces = [head, *([name_block] * 64), tail]
    baseline = server.workers_rss_kib()
    peak, stop = baseline, threading.Event()

    def sample_rss():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, server.workers_rss_kib())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    try:
        status, answer, elapsed = send_form(server, pieces, length=length)
    finally:
        stop.set()
        sampler.join()
    assert (status, error_code(answer)) == (413, "part_headers_too_large"), answer
    assert elapsed < 5, f"answered after {elapsed:.1f} s"
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 16, f"worker RSS grew {growth_mib:.1f} MiB"
    assert settled_storage(server, before) == before
    assert upload(server, form(part("file", FILE_BYTES, filename="after.bin")))[0] == 201


def test_header_block_over_the_bound_refused_under_it_stored(server):
    before = leftover_files(server.storage_dir)
    pad = "X-Pad: " + "p" * 91  # 100 bytes a line with its CRLF
    over = tuple([pad] * (HEADERS_LIMIT // 100 + 1))
    status, answer = upload(server, form(part("file", FILE_BYTES, filename="a.bin",
                                              headers=over)))
    assert (status, error_code(answer)) == (413, "part_headers_too_large"), answer
    assert settled_storage(server, before) == before
    under = tuple([pad] * (HEADERS_LIMIT // 100 - 2))
    status, answer = upload(server, form(part("file", FILE_BYTES, filename="a.bin",
                                              headers=under)))
    assert status == 201, answer
    (stored,) = answer["files"]
    assert stored["sha256"] == hashlib.sha256(FILE_BYTES).hexdigest()


def test_filename_bound_counts_utf8_bytes(server):
    before = leftover_files(server.storage_dir)
    longest = "é" * (MAX_FILENAME_BYTES // 2)  # two bytes each in UTF-8
    status, answer = upload(server, form(part("file", FILE_BYTES, filename=longest)))
    assert status == 201, answer
    assert answer["files"][0]["filename"] == longest
    before = leftover_files(server.storage_dir)
    too_long = longest + "é"
    status, answer = upload(server, form(part("first", FILE_BYTES, filename="ok.bin"),
                                         part("file", FILE_BYTES, filename=too_long)))
    assert (status, error_code(answer)) == (400, "filename_too_long"), answer
    assert settled_storage(server, before) == before


@pytest.mark.parametrize("filename", [None, "f.bin"])
def test_field_name_bound(server, filename):
    before = leftover_files(server.storage_dir)
    data = FILE_BYTES if filename else b"v"
    status, answer = upload(server, form(part("n" * MAX_FIELD_NAME_BYTES, b"v"),
                                         part("x" * (MAX_FIELD_NAME_BYTES + 1), data,
                                              filename=filename)))
    assert (status, error_code(answer)) == (400, "field_name_too_long"), answer
    assert settled_storage(server, before) == before


# item 12: the end of the body -------------------------------------------------

def test_complete_body_without_closing_boundary_is_malformed(server):
    before = leftover_files(server.storage_dir)
    body = form(part("file", FILE_BYTES, filename="a.bin"), closing=False)
    status, answer = upload(server, body)
    assert (status, error_code(answer)) == (400, "malformed_multipart"), answer
    assert settled_storage(server, before) == before


@pytest.mark.parametrize("closing", [True, False])
def test_body_cut_short_is_truncated_and_keeps_nothing(server, closing):
    """Fewer bytes than Content-Length, even a whole form with its closing boundary: the
    client that only stopped sending hears truncated_body; nothing is stored."""
    before = leftover_files(server.storage_dir)
    body = form(part("file", FILE_BYTES, filename="a.bin"), closing=closing)
    status, answer, _ = send_form(server, [body], length=len(body) + 1000, end="half")
    assert (status, error_code(answer)) == (400, "truncated_body"), answer
    assert settled_storage(server, before) == before


def test_body_cut_short_by_a_hang_up_keeps_nothing(server):
    before = leftover_files(server.storage_dir)
    body = form(part("file", FILE_BYTES * 8, filename="a.bin"))
    send_form(server, [body[:len(body) // 2]], length=len(body), end="close")
    assert settled_storage(server, before) == before
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


@pytest.mark.parametrize("boundary", ["it's'a'boundary", "'", "a'b'c"])
def test_unquoted_boundary_with_an_apostrophe(server, boundary):
    status, answer = upload(server, form(part("file", FILE_BYTES, filename="q.bin"),
                                         boundary=boundary), content_type(boundary))
    assert status == 201, answer
    (stored,) = answer["files"]
    assert stored["sha256"] == hashlib.sha256(FILE_BYTES).hexdigest()
    assert stored_bytes(server, stored["id"]) == FILE_BYTES


def test_preamble_and_epilogue_are_ignored(server):
    preamble = (b"This is the preamble.  It is to be ignored.\r\n"
                b"--not-the-boundary\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n")
    body = preamble + form(part("file", FILE_BYTES, filename="p.bin"), part("note", b"hi"))
    status, answer = upload(server, body + b"This is the epilogue.\r\n")
    assert status == 201, answer
    (stored,) = answer["files"]
    assert stored["filename"] == "p.bin" and answer["fields"] == {"note": ["hi"]}
    assert stored_bytes(server, stored["id"]) == FILE_BYTES


def test_bad_boundaries_are_malformed(server):
    for ctype in ("multipart/form-data", "multipart/form-data; boundary=",
                  'multipart/form-data; boundary="a\\"b"'):
        status, answer = upload(server, form(part("a", b"v")), ctype)
        assert (status, error_code(answer)) == (400, "malformed_multipart"), ctype


# the proxy's relay parses with the same guard -----------------------------------

def test_relay_refuses_huge_part_headers(server, sink):
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"").encode()
    block = b"n" * (1 << 20)
    tail = b'"\r\n\r\nx\r\n' + f"--{BOUNDARY}--\r\n".encode()
    status, answer, elapsed = send_form(server, [head, *([block] * 32), tail],
                                        length=len(head) + 32 * len(block) + len(tail),
                                        path="/proxy/sink/huge")
    assert (status, error_code(answer)) == (413, "part_headers_too_large"), answer
    assert elapsed < 5


def test_relay_ignores_preamble_and_takes_apostrophe_boundary(server):
    boundary = "it's"
    body = b"preamble\r\n" + form(part("file", FILE_BYTES, filename="r.bin"), boundary=boundary)
    status, answer, _ = send_form(server, [body], length=len(body), ctype=content_type(boundary),
                                  path="/proxy/sink/relayed")
    assert status == 201 and answer["status"] == 201, answer  # the sink's answer
    (relayed,) = answer["files"]
    assert relayed["sha256"] == hashlib.sha256(FILE_BYTES).hexdigest()


# item 10: a full disk at commit leaves no temp file -----------------------------

def fail_from(monkeypatch, target: str, nth: int) -> None:
    """Make ``target`` (say "os.fsync", as app.storage.local calls it) raise ENOSPC from
    its ``nth`` call on: the calls before it (the data file's own) still work."""
    module, _, name = target.partition(".")
    real = getattr(__import__(module), name)
    calls = 0

    def failing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls >= nth:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(f"app.storage.local.{target}", failing)  # the module, for every caller


# Every filesystem call a commit or an adopt makes (fsync on, so all of them run) is made
# to fail in turn, from its n-th call on, until the operation gets through untouched.
FAILING_CALLS = ("json.dump", "os.fsync", "os.rename", "os.replace", "os.chmod")


def fail_each_call_in_turn(tmp_path, monkeypatch, operation) -> int:
    """Run ``operation(storage)`` with each of FAILING_CALLS failing from each n-th call on;
    every failed run must raise 507 and leave nothing.  The number of failures tried."""
    tried = 0
    for target in FAILING_CALLS:
        for nth in range(1, 50):
            storage = LocalStorage(str(tmp_path / f"store-{target}-{nth}"), fsync=True)
            with monkeypatch.context() as patch:
                fail_from(patch, target, nth)
                try:
                    operation(storage, tmp_path / f"body-{target}-{nth}")
                except InsufficientStorage:
                    tried += 1
                else:
                    break  # the n-th call is past the last one the operation makes
            assert leftover_files(storage.root) == {"tmp": [], "blobs": [], "meta": []}, \
                (target, nth)
    return tried


def commit_some_bytes(storage, _body_path) -> None:
    writer = storage.open_writer()
    writer.write(b"some bytes")
    writer.commit(filename="a.bin", content_type="application/octet-stream", sha256="0" * 64)


def adopt_a_body_file(storage, body_path) -> None:
    body_path.write_bytes(b"adopted bytes")
    storage.adopt(str(body_path), filename="a.bin", content_type="application/octet-stream",
                  sha256="0" * 64)


def test_full_disk_at_commit_leaves_nothing(tmp_path, monkeypatch):
    assert fail_each_call_in_turn(tmp_path, monkeypatch, commit_some_bytes) >= 5


def test_full_disk_while_adopting_leaves_nothing(tmp_path, monkeypatch):
    assert fail_each_call_in_turn(tmp_path, monkeypatch, adopt_a_body_file) >= 4



def test_a_later_file_failing_takes_back_the_earlier_ones_and_says_so(tmp_path, monkeypatch):
    """Files of one request are committed together: when the second one's commit fails the
    first is deleted again, and a hook that heard its post-finish hears post-terminate."""
    from app import Settings, create_app
    from app.storage.contract import OneShotWriter

    heard = []
    app = create_app(Settings(storage_dir=str(tmp_path / "store")),
                     hooks=[lambda name, payload: heard.append((name, payload["upload"]["id"]))])
    commits = 0
    real_commit = OneShotWriter.commit

    def second_fails(self, **kwargs):
        nonlocal commits
        commits += 1
        if commits == 2:  # as the backend says a full disk at commit
            raise InsufficientStorage("no space left on the storage volume")
        return real_commit(self, **kwargs)

    monkeypatch.setattr(OneShotWriter, "commit", second_fails)
    body = form(part("a", FILE_BYTES, filename="a.bin"), part("b", b"second", filename="b.bin"))
    answer = app.test_client().post("/upload", data=body, content_type=content_type())
    assert answer.status_code == 507
    assert answer.get_json()["error"]["code"] == "insufficient_storage"
    assert leftover_files(tmp_path / "store") == {"tmp": [], "blobs": [], "meta": []}
    deadline = time.monotonic() + 5
    while len([h for h in heard if h[0] == "post-terminate"]) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # post-* hooks are delivered from their own thread
    finished = [upload_id for name, upload_id in heard if name == "post-finish"]
    assert len(finished) == 1
    assert ("post-terminate", finished[0]) in heard

# the scanner in front of the parser, at every chunking ---------------------------

@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64, 4096, 1 << 20])
def test_preamble_epilogue_and_near_delimiters_at_any_chunking(tmp_path, chunk):
    """streaming-form-data alone drops the last part when an epilogue shares its chunk
    with the closing delimiter, and refuses a preamble; neither may reach it."""
    from app.core.multipart import MultipartUpload

    storage = LocalStorage(str(tmp_path / "store"))
    boundary = "it's b"
    near = f"\r\n--{boundary}-x\r\n--{boundary} \r\n--{boundary}\r".encode()
    body = (b"preamble\r\n--" + boundary.encode() + b"x\r\n"
            + form(part("a", FILE_BYTES, filename="a.bin"), part("n", b"v"),
                   part("b", near, filename="b.bin"), boundary=boundary)
            + b"an epilogue\r\n")
    upload = MultipartUpload(f'multipart/form-data; boundary="{boundary}"', storage,
                             max_file_size=1 << 20,
                             max_field_size=100, max_parts=10, max_part_headers=HEADERS_LIMIT,
                             threaded=False)
    result = upload.receive(body[i:i + chunk] for i in range(0, len(body), chunk))
    assert [(f.filename, f.size) for f in result.files] == [("a.bin", len(FILE_BYTES)),
                                                            ("b.bin", len(near))]
    assert result.fields == {"n": ["v"]}
    with storage.open_reader(result.files[1].id) as handle:
        assert handle.read() == near
