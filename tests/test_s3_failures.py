"""What failures leave on S3 (SeaweedFS): the sweep removes bytes whose metadata was never
written; a slow store is 504 `storage_timeout` and a failing one 502 `storage_error`, on a
live gunicorn, with nothing half-visible after."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest
import requests

from app.core.pump import append_stream
from app.core.sweep import sweep
from app.storage.base import new_file_id
from app.testing.servers import start_server
from tests.conftest import s3_store

MiB = 1 << 20


def test_the_sweep_removes_old_bytes_without_metadata_and_keeps_files_and_uploads(seaweed):
    bucket = seaweed.make_bucket("orphans")
    store, raw = s3_store(seaweed, bucket, "p"), seaweed.client()
    old_orphan = new_file_id()  # a host died between completing the bytes and the metadata
    raw.put_object(Bucket=bucket, Key=f"p/files/{old_orphan}", Body=b"lost bytes")

    writer = store.open_writer()
    writer.write(b"a complete file")
    stored = writer.commit(filename="kept.txt", content_type="text/plain",
                           sha256=hashlib.sha256(b"a complete file").hexdigest())
    in_flight = store.create_upload(length=2 * MiB)
    append_stream([os.urandom(MiB)], in_flight, 0, max_size=1 << 30)
    pieces = []
    for text in (b"first ", b"second"):
        piece = store.create_upload(length=len(text))
        append_stream([text], piece, 0, max_size=1 << 30)
        pieces.append(piece.id)
    sealed = store.concatenate(pieces)  # its bytes are one object already, no metadata yet
    assert raw.head_object(Bucket=bucket, Key=f"p/files/{sealed.id}")["ContentLength"] == 12

    time.sleep(2.2)  # LastModified has whole seconds
    young_orphan = new_file_id()
    raw.put_object(Bucket=bucket, Key=f"p/files/{young_orphan}", Body=b"just completed")
    report = sweep(store, stale_after=1.5)

    assert report["stale_files"] == 1
    data_keys = {item["Key"] for item in
                 raw.list_objects_v2(Bucket=bucket, Prefix="p/files/").get("Contents", [])}
    assert f"p/files/{old_orphan}" not in data_keys
    assert {f"p/files/{stored.id}", f"p/files/{sealed.id}",
            f"p/files/{young_orphan}"} <= data_keys
    assert b"".join(store.read_range(stored.id)) == b"a complete file"
    assert store.get_upload(in_flight.id).info().offset == MiB
    finished = store.get_upload(sealed.id).finish(filename="both.txt")
    assert b"".join(store.read_range(finished.id)) == b"first second"


# --- a store that stalls or fails, behind a loopback proxy --------------------------------

class StoreProxy:
    """TCP proxy in front of SeaweedFS. ``mode``: "pass" (relay), "stall" (swallow the
    request, never answer) or "fail" (answer 500). Changing the mode closes every open
    connection, so pooled connections cannot keep the old behaviour."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.mode, self.open = "pass", set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode: str) -> None:
        with self.lock:
            self.mode, sockets, self.open = mode, self.open, set()
        for sock in sockets:
            self._close(sock)

    def stop(self) -> None:
        self.listener.close()
        self.set_mode("closed")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self.lock:
            mode = self.mode
            self.open.add(client)
        client.settimeout(20)  # bounds every thread of the proxy
        try:
            if mode == "pass":
                upstream = socket.create_connection(self.upstream, timeout=20)
                with self.lock:
                    self.open.add(upstream)
                threading.Thread(target=self._relay, args=(upstream, client),
                                 daemon=True).start()
                self._relay(client, upstream)
            elif mode == "fail":
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                               b"Connection: close\r\n\r\n")
            else:  # stall: read and drop everything, answer nothing
                while client.recv(65536):
                    pass
        except OSError:
            pass
        finally:
            self._close(client)

    def _relay(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(target)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


@pytest.fixture
def proxied_server(seaweed, tmp_path):
    bucket = seaweed.make_bucket("failing")
    proxy = StoreProxy(seaweed.endpoint)
    server = start_server("gunicorn", tmp_path / "unused", tmp_path, env=seaweed.env(
        bucket, AWS_ENDPOINT_URL=proxy.url, SPILLWAY_S3_TIMEOUT="1"))
    server.proxy, server.bucket = proxy, bucket
    try:
        yield server
    finally:
        server.stop()
        proxy.stop()


def assert_error(answer, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["error"]["code"] == code and answer.json()["error"]["status"] == status


def test_a_slow_store_is_504_a_failing_one_502_and_nothing_is_left_half_visible(
        proxied_server, seaweed):
    server, proxy = proxied_server, proxied_server.proxy
    kept = requests.put(f"{server.url}/upload/kept.bin", data=b"kept bytes")
    assert kept.status_code == 201, kept.text
    content = f"{server.url}/files/{kept.json()['id']}/content"
    data = os.urandom(3 * MiB)

    proxy.set_mode("stall")
    started = time.monotonic()
    assert_error(requests.put(f"{server.url}/upload/slow.bin", data=data, timeout=60),
                 504, "storage_timeout")
    assert time.monotonic() - started < 20  # SPILLWAY_S3_TIMEOUT=1 s, three attempts

    proxy.set_mode("fail")
    assert_error(requests.put(f"{server.url}/upload/failed.bin", data=data, timeout=60),
                 502, "storage_error")
    assert_error(requests.get(content, timeout=60), 502, "storage_error")

    proxy.set_mode("pass")
    listing = requests.get(f"{server.url}/files", timeout=30)
    assert listing.status_code == 200
    assert [f["filename"] for f in listing.json()["files"]] == ["kept.bin"]
    assert requests.get(content, timeout=30).content == b"kept bytes"
    objects = seaweed.client().list_objects_v2(Bucket=server.bucket).get("Contents", [])
    assert sorted(o["Key"].split("/")[1] for o in objects) == ["files", "meta"]
