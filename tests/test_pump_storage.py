"""Unit tests of the pump, the multipart parser and local storage with in-memory streams."""

import hashlib
import io
import os

import pytest

from app.core.body import RequestBody
from app.core.errors import (DigestMismatch, InsufficientStorage, MalformedMultipart, NotFound,
                        PayloadTooLarge, TruncatedBody)
from app.core.filenames import clean_filename
from app.core.multipart import MultipartUpload
from app.core.pump import store_stream
from app.storage import LocalStorage


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(str(tmp_path / "store"))


def body_of(data: bytes, *, declared=None, limit=1 << 30, chunk=4096):
    return RequestBody(io.BytesIO(data).read, declared_length=declared, limit=limit,
                       chunk_size=chunk)


def nothing_left(storage: LocalStorage) -> bool:
    return not any(os.listdir(os.path.join(storage.root, d)) for d in ("tmp", "blobs")) \
        and storage.list() == []


@pytest.mark.parametrize("threaded", [True, False])
def test_store_stream_hashes_and_commits(storage, threaded):
    data = os.urandom(300_000)
    stored = store_stream(body_of(data, declared=len(data)).chunks(), storage,
                          max_size=1 << 20, filename="a.bin", content_type="x/y",
                          threaded=threaded)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.size == len(data)
    with storage.open_reader(stored.id) as handle:
        assert handle.read() == data
    assert storage.stat(stored.id) == stored
    assert os.listdir(os.path.join(storage.root, "tmp")) == []


def test_fsync_mode_and_restart_keep_files(tmp_path):
    first = LocalStorage(str(tmp_path / "durable"), fsync=True)
    stored = store_stream([b"kept across restarts"], first, max_size=100, filename="k",
                          content_type="text/plain")
    again = LocalStorage(str(tmp_path / "durable"))
    assert again.stat(stored.id) == stored
    assert [f.id for f in again.list()] == [stored.id]
    with again.open_reader(stored.id) as handle:
        assert handle.read() == b"kept across restarts"


def test_short_body_is_truncated_and_leaves_nothing(storage):
    with pytest.raises(TruncatedBody):
        store_stream(body_of(b"x" * 100, declared=200).chunks(), storage, max_size=1000,
                     filename="t", content_type="x/y")
    assert nothing_left(storage)


def test_reader_errors_become_truncated_body(storage):
    def broken_read(_n):
        raise ConnectionResetError("peer gone")

    body = RequestBody(broken_read, declared_length=None, limit=10, chunk_size=4)
    with pytest.raises(TruncatedBody, match="ConnectionResetError"):
        list(body.chunks())


def test_request_and_file_limits(storage):
    with pytest.raises(PayloadTooLarge) as caught:
        store_stream(body_of(b"y" * 10_000, limit=5000).chunks(), storage, max_size=1 << 20,
                     filename="t", content_type="x/y")
    assert caught.value.code == "request_too_large"
    with pytest.raises(PayloadTooLarge) as caught:
        store_stream(body_of(b"y" * 10_000).chunks(), storage, max_size=5000,
                     filename="t", content_type="x/y")
    assert caught.value.code == "file_too_large"
    assert nothing_left(storage)


def test_digest_mismatch_keeps_nothing(storage):
    with pytest.raises(DigestMismatch):
        store_stream([b"abc"], storage, max_size=10, filename="t", content_type="x/y",
                     expected_sha256="0" * 64)
    assert nothing_left(storage)


def test_full_disk_is_507_and_cleans_up(storage, monkeypatch):
    import errno

    class FillingFile(io.RawIOBase):
        """A file that runs out of room after 8 KiB, as a full volume would."""

        def __init__(self, real):
            self.real, self.written = real, 0

        def write(self, data):
            if self.written + len(data) > 8192:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.real.write(data)

        def close(self):
            self.real.close()

    real_open_writer = storage.open_writer

    def open_writer():
        writer = real_open_writer()
        writer._file = FillingFile(writer._file)
        return writer

    monkeypatch.setattr(storage, "open_writer", open_writer)
    with pytest.raises(InsufficientStorage) as caught:
        store_stream([b"z" * 4096] * 10, storage, max_size=1 << 20, filename="t",
                     content_type="x/y")
    assert caught.value.status == 507
    assert nothing_left(storage)



def test_a_writer_truncates_only_bytes_past_the_last_save(storage, monkeypatch):
    """Truncating a file to 0 makes ext4 (auto_da_alloc) flush it when it is closed: an
    upload then waited for its whole body to reach the disk (raw uploads ran at half
    speed).  A fresh upload, or one whose file ends at its offset, is not truncated."""
    import app.storage.local_uploads as local_uploads

    truncated = []

    class Recording(io.FileIO):
        def truncate(self, size=None):
            truncated.append(size)
            return super().truncate(size)

    monkeypatch.setattr(local_uploads, "open", lambda path, mode, buffering: Recording(
        path, mode.replace("b", "")), raising=False)
    upload = storage.create_upload()
    writer = upload.writer(0)
    writer.write(b"saved")
    writer.save(None)
    writer.write(b" lost in a crash")
    writer.close()
    assert truncated == []
    again = storage.get_upload(upload.id).writer(5)  # the file is longer than the save
    again.close()
    assert truncated == [5]
    assert os.path.getsize(storage.temp_path(upload.id)) == 5

def test_list_pages_and_delete(storage):
    ids = [store_stream([bytes([i])], storage, max_size=10, filename=f"{i}",
                        content_type="x/y").id for i in range(5)]
    assert [f.id for f in storage.list(limit=3)] == ids[:3]
    assert [f.id for f in storage.list(after=ids[2], limit=3)] == ids[3:]
    storage.delete(ids[0])
    with pytest.raises(NotFound):
        storage.stat(ids[0])
    with pytest.raises(NotFound):
        storage.open_reader(ids[0])
    with pytest.raises(NotFound):
        storage.stat("../../etc/passwd")


def test_sweep_removes_only_stale_leftovers(storage):
    writer = storage.open_writer()
    writer.write(b"partial")
    old = os.path.getmtime(writer._path) - 2 * 86400
    os.utime(writer._path, (old, old))
    fresh = storage.open_writer()
    assert storage.sweep_stale() == 1
    assert os.path.exists(fresh._path)
    fresh.abort()


# multipart --------------------------------------------------------------------------

BOUNDARY = "spillwayBoundary42"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(*parts) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def upload_of(storage, **limits):
    options = dict(max_file_size=1 << 20, max_field_size=100, max_parts=10,
                   max_part_headers=16 << 10)
    options.update(limits)
    return MultipartUpload(CONTENT_TYPE, storage, **options)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_multipart_files_and_fields_any_chunking(storage, chunk):
    tricky = b"\r\n--" + BOUNDARY.encode()[:-1] + b"x\r\n--" + BOUNDARY.encode()[:5]
    body = multipart(("file", "a.bin", bytes(range(256))), ("note", None, "héllo".encode()),
                     ("file", "../../etc/passwd", tricky), ("file", "empty", b""))
    result = upload_of(storage).receive(body_of(body, chunk=chunk).chunks())
    assert [f.filename for f in result.files] == ["a.bin", "passwd", "empty"]
    assert [f.size for f in result.files] == [256, len(tricky), 0]
    with storage.open_reader(result.files[1].id) as handle:
        assert handle.read() == tricky
    assert result.fields == {"note": ["héllo"]}


def test_multipart_truncated_anywhere_keeps_nothing(storage):
    body = multipart(("file", "a.bin", b"a" * 5000), ("file", "b.bin", b"b" * 5000))
    for cut in (10, 200, 5100, 5300, len(body) - 3):
        with pytest.raises((TruncatedBody, MalformedMultipart)):
            upload_of(storage).receive(body_of(body[:cut], chunk=1000).chunks())
        assert nothing_left(storage), cut


def test_multipart_limits(storage):
    with pytest.raises(PayloadTooLarge) as caught:
        upload_of(storage, max_parts=2).receive(
            [multipart(("a", None, b"1"), ("b", None, b"2"), ("c", None, b"3"))])
    assert caught.value.code == "too_many_parts"
    with pytest.raises(PayloadTooLarge) as caught:
        upload_of(storage).receive([multipart(("a", None, b"x" * 101))])
    assert caught.value.code == "field_too_large"
    with pytest.raises(PayloadTooLarge) as caught:
        upload_of(storage, max_file_size=10).receive([multipart(("f", "f", b"x" * 11))])
    assert caught.value.code == "file_too_large"
    assert nothing_left(storage)


def test_multipart_digest_fields(storage):
    data = b"payload"
    good = hashlib.sha256(data).hexdigest()
    result = upload_of(storage).receive(
        [multipart(("file", "p", data), ("sha256", None, good.encode()))])
    assert result.files[0].sha256 == good and "sha256" not in result.fields
    with pytest.raises(DigestMismatch):
        upload_of(storage).receive(
            [multipart(("file", "p", data), ("file", "q", data),
                       ("sha256", None, good.encode()), ("sha256", None, b"1" * 64))])
    assert [f.id for f in storage.list()] == [result.files[0].id]


def test_multipart_bad_content_type(storage):
    with pytest.raises(MalformedMultipart):
        MultipartUpload("multipart/form-data", storage, max_file_size=1, max_field_size=1,
                        max_parts=1, max_part_headers=1024)


def test_clean_filename():
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\Users\\me\\x.txt") == "x.txt"
    assert clean_filename("..") == "upload"
    assert clean_filename("a\x00b\nc") == "abc"


def _gunicorn_request_on(sock, length: int):
    """gunicorn's own objects for a Content-Length body, as its worker builds them."""
    from types import SimpleNamespace

    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader

    unreader = SocketUnreader(sock)
    return SimpleNamespace(body=Body(LengthReader(unreader, length))), unreader


def test_gunicorn_body_reader_reads_exactly_the_body(monkeypatch):
    """The fast reader still fits the installed gunicorn (else uploads would silently fall
    back to the slow path), and leaves the next request's bytes to gunicorn."""
    import socket
    import threading

    from app.web.servers import gunicorn as servers

    body = os.urandom(3 * (1 << 20) + 5)
    after = b"PUT /next HTTP/1.1\r\n"
    client, server_side = socket.socketpair()
    try:
        req, unreader = _gunicorn_request_on(server_side, len(body))
        client.sendall(body[:100])
        unreader.unread(unreader.chunk(8192))  # the bytes read along with the headers
        monkeypatch.setattr(servers._local, "gunicorn_request", req, raising=False)
        read = servers.gunicorn_body_reader({"gunicorn.socket": server_side}, len(body))
        assert read is not None, "gunicorn's body reader changed shape: the fast path is off"
        sender = threading.Thread(target=client.sendall, args=(body[100:] + after,))
        sender.start()
        got = b"".join(iter(lambda: bytes(read(1 << 20)), b""))
        sender.join()
        assert got == body
        assert req.body.reader.length == 0 and req.body.read() == b""
        assert unreader.read(len(after)) == after
        assert not req.body.failed
    finally:
        client.close()
        server_side.close()


def test_gunicorn_body_reader_marks_a_short_body_failed(monkeypatch):
    import socket

    from app.web.servers import gunicorn as servers

    client, server_side = socket.socketpair()
    try:
        req, _ = _gunicorn_request_on(server_side, 1000)
        monkeypatch.setattr(servers._local, "gunicorn_request", req, raising=False)
        read = servers.gunicorn_body_reader({"gunicorn.socket": server_side}, 1000)
        client.sendall(b"x" * 600)
        client.shutdown(socket.SHUT_WR)
        assert bytes(read(4096)) == b"x" * 600
        assert bytes(read(4096)) == b""
        assert req.body.failed and req.body.reader.length == 400
    finally:
        client.close()
        server_side.close()
