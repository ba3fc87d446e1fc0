"""tus requests at the wire level for the tests: requests for whole ones, raw sockets for
PATCH bodies that are cut, stalled or held open."""

from __future__ import annotations

import hashlib
import socket
from urllib.parse import urlsplit

import requests

from tests.conftest import TOKEN_RW

TUS = {"Tus-Resumable": "1.0.0"}
AUTH = {"Authorization": f"Bearer {TOKEN_RW}"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def create(url: str, length: int | None, *, metadata: str | None = None, headers=None,
           data: bytes | None = None) -> requests.Response:
    sent = TUS | AUTH | dict(headers or {})
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    if metadata is not None:
        sent["Upload-Metadata"] = metadata
    if data is not None:
        sent |= OCTETS
    return requests.post(url + "/tus/", headers=sent, data=data, timeout=30)


def new_upload(url: str, length: int | None, **kwargs) -> str:
    response = create(url, length, **kwargs)
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def head(url: str, location: str) -> requests.Response:
    return requests.head(url + location, headers=TUS | AUTH, timeout=30)


def offset(url: str, location: str) -> int:
    response = head(url, location)
    assert response.status_code == 200, (response.status_code, response.headers)
    return int(response.headers["Upload-Offset"])


def patch(url: str, location: str, at: int, data: bytes, headers=None) -> requests.Response:
    return requests.patch(url + location, data=data, timeout=60,
                          headers=TUS | AUTH | OCTETS | {"Upload-Offset": str(at)}
                          | dict(headers or {}))


def stored_sha256(url: str, location: str) -> str:
    file_id = location.rsplit("/", 1)[1]
    response = requests.get(f"{url}/files/{file_id}", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["sha256"]


def downloaded_sha256(url: str, location: str) -> str:
    file_id = location.rsplit("/", 1)[1]
    digest = hashlib.sha256()
    with requests.get(f"{url}/files/{file_id}/content", headers=AUTH, stream=True,
                      timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_content(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def open_patch(url: str, location: str, at: int, length: int, headers=None) -> socket.socket:
    """A PATCH whose head is sent and whose ``length``-byte body the caller sends."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    fields = TUS | AUTH | OCTETS | {"Upload-Offset": str(at), "Content-Length": str(length),
                                    "Host": parts.netloc} | dict(headers or {})
    head_text = f"PATCH {location} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.items()) + "\r\n"
    sock.sendall(head_text.encode())
    return sock


def read_status(sock: socket.socket) -> int:
    """The status of the answer on ``sock`` (0 when the server closed without one)."""
    received = b""
    try:
        while b"\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    line = received.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 else 0


def resumable_offset(url: str, location: str, *, timeout: float = 30,
                     arrived: int = 0) -> int:
    """After a cut: the offset to resume from, once the cut request let go of the upload.

    ``arrived``: how many bytes the client knows it sent.  A loaded server may not have
    picked the cut request up yet (the bytes wait in its socket), and an empty PATCH
    would then pass before the cut request takes the lock; so wait for the offset to get
    there first (or the deadline: then the caller's assertion says what was lost).

    The server records what arrived before it releases the upload's lock, so HEAD can show
    the new offset a moment before a PATCH would get through (it gets 423 then, and a
    client retries).  An empty PATCH at the offset is answered 204 once the lock is free.
    """
    import time

    deadline = time.monotonic() + timeout
    while offset(url, location) < arrived and time.monotonic() < deadline:
        time.sleep(0.05)
    while True:
        at = offset(url, location)
        answer = patch(url, location, at, b"")
        if answer.status_code == 204:
            return at
        assert answer.status_code in (409, 423), (answer.status_code, answer.text)
        assert time.monotonic() < deadline, "the upload stayed locked after the cut"
        time.sleep(0.05)
