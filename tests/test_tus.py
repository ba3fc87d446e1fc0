"""The tus server (/tus/) at the wire: every status, locks across worker processes, cuts,
stalls, expiry.  Real gunicorn and uWSGI with 2 worker processes each."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import TOKEN_RO, TOKEN_RW, sha256_of
from app.testing.servers import start_server
from tests.tus_wire import (AUTH, OCTETS, TUS, create, head, new_upload, offset, open_patch,
                            patch, read_status, resumable_offset, stored_sha256)

MAX_SIZE = 64 << 20
READ_TIMEOUT = 2
# gunicorn's access log with the worker's pid (uWSGI's request log has it already)
PID_LOG = {"GUNICORN_ACCESSLOG": "-",
           "GUNICORN_CMD_ARGS": "--access-logformat '%(p)s \"%(r)s\" %(s)s'"}


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    running = start_server(request.param, base / "store", base, workers=2, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write,{TOKEN_RO}:read",
        "SPILLWAY_MAX_REQUEST_SIZE": str(MAX_SIZE),
        "SPILLWAY_MAX_FILE_SIZE": str(MAX_SIZE),
        "SPILLWAY_READ_TIMEOUT": str(READ_TIMEOUT),
        **PID_LOG,
    })
    yield running
    running.stop()


def data_of(size: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def error_code(response: requests.Response) -> str:
    return response.json()["error"]["code"]


def test_options_needs_no_token_and_announces_the_protocol(server):
    response = requests.options(server.url + "/tus/", timeout=10,
                                headers={"Origin": "http://page.example",
                                         "Access-Control-Request-Method": "PATCH"})
    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "creation-defer-length", "termination", "checksum",
        "expiration", "concatenation"}
    assert response.headers["Tus-Max-Size"] == str(MAX_SIZE)
    assert {"sha1", "sha256", "md5"} <= set(response.headers["Tus-Checksum-Algorithm"].split(","))
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    assert "Upload-Offset" in response.headers["Access-Control-Allow-Headers"]
    assert "Upload-Offset" in response.headers["Access-Control-Expose-Headers"]


def test_upload_in_two_patches_becomes_a_stored_file(server):
    data = data_of(3 << 20)
    metadata = "filename " + base64.b64encode("résumé.bin".encode()).decode() + \
        ",filetype " + base64.b64encode(b"application/x-test").decode() + ",empty"
    location = new_upload(server.url, len(data), metadata=metadata)
    assert re.fullmatch(r"/tus/[0-9a-f]{32}", location)
    first = head(server.url, location)
    assert first.headers["Upload-Offset"] == "0"
    assert first.headers["Upload-Length"] == str(len(data))
    assert first.headers["Upload-Metadata"] == metadata
    assert first.headers["Cache-Control"] == "no-store"
    assert "GMT" in first.headers["Upload-Expires"]
    answer = patch(server.url, location, 0, data[:1 << 20])
    assert answer.status_code == 204 and answer.headers["Upload-Offset"] == str(1 << 20)
    assert answer.headers["Tus-Resumable"] == "1.0.0" and "Upload-Expires" in answer.headers
    answer = patch(server.url, location, 1 << 20, data[1 << 20:])
    assert answer.status_code == 204 and answer.headers["Upload-Offset"] == str(len(data))
    assert "Upload-Expires" not in answer.headers  # finished
    file_id = location.rsplit("/", 1)[1]
    record = requests.get(f"{server.url}/files/{file_id}", headers=AUTH, timeout=10).json()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["filename"] == "résumé.bin" and record["content_type"] == "application/x-test"
    listed = requests.get(f"{server.url}/files?limit=1000", headers=AUTH, timeout=10).json()
    assert file_id in [f["id"] for f in listed["files"]]
    ranged = requests.get(f"{server.url}/files/{file_id}/content", timeout=10,
                          headers=AUTH | {"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == data[100:200]
    assert ranged.headers["ETag"].strip('"') == record["sha256"]
    finished = head(server.url, location)  # a finished upload still answers its offset
    assert finished.status_code == 200 and finished.headers["Upload-Offset"] == str(len(data))
    assert requests.delete(f"{server.url}/files/{file_id}", headers=AUTH,
                           timeout=10).status_code == 204


def test_empty_metadata_header_is_valid_and_zero_length_finishes_at_once(server):
    response = create(server.url, 0, metadata="")
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == "0"
    assert stored_sha256(server.url, response.headers["Location"]) == hashlib.sha256().hexdigest()


def test_wrong_version_is_412(server):
    location = new_upload(server.url, 10)
    for response in (
        requests.post(server.url + "/tus/", headers=AUTH | {"Tus-Resumable": "0.2.2",
                                                             "Upload-Length": "5"}, timeout=10),
        requests.head(server.url + location, headers=AUTH | {"Tus-Resumable": "2.0.0"},
                      timeout=10),
        requests.patch(server.url + location, data=b"x", timeout=10,
                       headers=AUTH | OCTETS | {"Upload-Offset": "0"}),
    ):
        assert response.status_code == 412
        assert response.headers["Tus-Version"] == "1.0.0"
        assert response.headers["Tus-Resumable"] == "1.0.0"
    assert offset(server.url, location) == 0


def test_wrong_content_type_is_415(server):
    location = new_upload(server.url, 10)
    response = patch(server.url, location, 0, b"hello", {"Content-Type": "text/plain"})
    assert response.status_code == 415 and error_code(response) == "tus_content_type"
    assert offset(server.url, location) == 0


def test_wrong_offset_is_409_and_nothing_is_written(server):
    location = new_upload(server.url, 10)
    assert patch(server.url, location, 0, b"hello").status_code == 204
    for wrong in (0, 3, 6):
        response = patch(server.url, location, wrong, b"XXXXX")
        assert response.status_code == 409 and error_code(response) == "offset_mismatch"
        assert response.headers["Upload-Offset"] == "5"
    assert patch(server.url, location, 5, b"world").status_code == 204
    assert stored_sha256(server.url, location) == hashlib.sha256(b"helloworld").hexdigest()


def test_past_length_and_over_max_size_are_413(server):
    too_big = create(server.url, MAX_SIZE + 1)
    assert too_big.status_code == 413 and error_code(too_big) == "file_too_large"
    location = new_upload(server.url, 10)
    announced = patch(server.url, location, 0, b"x" * 11)
    assert announced.status_code == 413 and error_code(announced) == "upload_length_exceeded"
    chunked = requests.patch(server.url + location, data=iter([b"x" * 6, b"y" * 6]), timeout=10,
                             headers=TUS | AUTH | OCTETS | {"Upload-Offset": "0"})
    assert chunked.status_code == 413 and error_code(chunked) == "upload_length_exceeded"
    assert offset(server.url, location) == 0
    deferred = new_upload(server.url, None)
    over = patch(server.url, deferred, 0, b"", {"Upload-Length": str(MAX_SIZE + 1)})
    assert over.status_code == 413 and error_code(over) == "file_too_large"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_checksum_mismatch_is_460_and_keeps_nothing(server, algorithm):
    data = data_of(2 << 20, seed=7)
    location = new_upload(server.url, len(data))

    def checksum(body: bytes) -> dict:
        digest = base64.b64encode(hashlib.new(algorithm, body).digest()).decode()
        return {"Upload-Checksum": f"{algorithm} {digest}"}

    half = len(data) // 2
    assert patch(server.url, location, 0, data[:half], checksum(data[:half])).status_code == 204
    wrong = patch(server.url, location, half, data[half:], checksum(b"something else"))
    assert wrong.status_code == 460 and error_code(wrong) == "checksum_mismatch"
    assert offset(server.url, location) == half
    # a checksummed PATCH cut short cannot be verified: none of it is kept either
    sock = open_patch(server.url, location, half, len(data) - half, checksum(data[half:]))
    sock.sendall(data[half:half + 300_000])
    sock.shutdown(socket.SHUT_WR)
    read_status(sock)
    sock.close()
    assert offset(server.url, location) == half
    right = patch(server.url, location, half, data[half:], checksum(data[half:]))
    assert right.status_code == 204, right.text
    assert stored_sha256(server.url, location) == hashlib.sha256(data).hexdigest()


def test_unknown_bad_algorithm_and_unknown_id(server):
    location = new_upload(server.url, 10)
    odd = patch(server.url, location, 0, b"x", {"Upload-Checksum": "crc99 AAAA"})
    assert odd.status_code == 400 and error_code(odd) == "checksum_algorithm_unsupported"
    for method in ("HEAD", "PATCH", "DELETE"):
        response = requests.request(method, server.url + "/tus/" + "0" * 32,
                                    data=b"x" if method == "PATCH" else None,
                                    headers=TUS | AUTH | OCTETS | {"Upload-Offset": "0"},
                                    timeout=10)
        assert response.status_code == 404, method
        assert response.headers["Tus-Resumable"] == "1.0.0"


def test_token_checked_before_the_body_and_scopes(server):
    response = requests.post(server.url + "/tus/", headers=TUS | {"Upload-Length": "5"},
                             timeout=10)
    assert response.status_code == 401 and error_code(response) == "unauthorized"
    reader = {"Authorization": f"Bearer {TOKEN_RO}"}
    response = requests.post(server.url + "/tus/", timeout=10,
                             headers=TUS | reader | {"Upload-Length": "5"})
    assert response.status_code == 403
    location = new_upload(server.url, 5)
    assert requests.head(server.url + location, headers=TUS | reader,
                         timeout=10).status_code == 200
    response = requests.patch(server.url + location, data=b"hello", timeout=10,
                              headers=TUS | reader | OCTETS | {"Upload-Offset": "0"})
    assert response.status_code == 403 and offset(server.url, location) == 0


def test_creation_with_upload_and_deferred_length(server):
    data = data_of(1 << 20, seed=3)
    whole = create(server.url, len(data), data=data)
    assert whole.status_code == 201 and whole.headers["Upload-Offset"] == str(len(data))
    assert stored_sha256(server.url, whole.headers["Location"]) == hashlib.sha256(data).hexdigest()
    part = create(server.url, len(data), data=data[:1000])
    assert part.status_code == 201 and part.headers["Upload-Offset"] == "1000"
    deferred = new_upload(server.url, None)
    assert head(server.url, deferred).headers["Upload-Defer-Length"] == "1"
    assert patch(server.url, deferred, 0, data[:500]).status_code == 204
    done = patch(server.url, deferred, 500, data[500:], {"Upload-Length": str(len(data))})
    assert done.status_code == 204 and done.headers["Upload-Length"] == str(len(data))
    assert stored_sha256(server.url, deferred) == hashlib.sha256(data).hexdigest()


def test_method_override_and_termination(server):
    location = new_upload(server.url, 10)
    override = requests.post(server.url + location, data=b"hello", timeout=10,
                             headers=TUS | AUTH | OCTETS | {"Upload-Offset": "0",
                                                            "X-HTTP-Method-Override": "PATCH"})
    assert override.status_code == 204 and override.headers["Upload-Offset"] == "5"
    upload_id = location.rsplit("/", 1)[1]
    tmp = server.storage_dir / "tmp"
    assert (tmp / f"{upload_id}.part").stat().st_size == 5
    gone = requests.delete(server.url + location, headers=TUS | AUTH, timeout=10)
    assert gone.status_code == 204
    assert not list(tmp.glob(f"{upload_id}.*"))
    assert head(server.url, location).status_code == 404
    other = new_upload(server.url, 10)
    deleted = requests.post(server.url + other, timeout=10,
                            headers=TUS | AUTH | {"X-HTTP-Method-Override": "DELETE"})
    assert deleted.status_code == 204 and head(server.url, other).status_code == 404


def test_listing_unfinished_uploads(server):
    reader = {"Authorization": f"Bearer {TOKEN_RO}"}
    first = new_upload(server.url, 100)
    second = new_upload(server.url, 100)
    patch(server.url, second, 0, b"x" * 40)
    every = requests.get(server.url + "/tus/?limit=1000", headers=reader, timeout=10).json()
    by_url = {item["url"]: item for item in every["uploads"]}
    assert by_url[first]["offset"] == 0 and by_url[second]["offset"] == 40
    assert by_url[second]["length"] == 100 and by_url[second]["expires"]
    page = requests.get(server.url + "/tus/?limit=1", headers=reader, timeout=10).json()
    assert len(page["uploads"]) == 1 and page["next"]
    patch(server.url, second, 40, b"y" * 60)
    every = requests.get(server.url + "/tus/?limit=1000", headers=reader, timeout=10).json()
    assert second not in [item["url"] for item in every["uploads"]]


def test_concatenation_of_partial_uploads(server):
    pieces = [data_of(700_000, seed=s) for s in range(3)]
    partials = []
    for piece in pieces:
        response = create(server.url, len(piece), headers={"Upload-Concat": "partial"})
        assert response.status_code == 201 and response.headers["Upload-Concat"] == "partial"
        partials.append(response.headers["Location"])
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda pair: patch(server.url, pair[0], 0, pair[1]),
                                zip(partials, pieces)))
    assert [a.status_code for a in answers] == [204] * 3
    assert head(server.url, partials[0]).status_code == 200  # complete, but not a file
    early = create(server.url, None, headers={"Upload-Concat": "final;" + partials[0]})
    assert early.status_code == 201  # (a final of one part is fine)
    missing = create(server.url, None, headers={"Upload-Concat": "final;" + " ".join(partials)})
    assert missing.status_code == 404  # partials[0] was used up by the final above
    partials[0] = create(server.url, len(pieces[0]), data=pieces[0],
                         headers={"Upload-Concat": "partial"}).headers["Location"]
    final = create(server.url, None, metadata="filename " + base64.b64encode(b"joined").decode(),
                   headers={"Upload-Concat": "final;" + " ".join(
                       server.url + p for p in partials)})  # absolute URLs, as clients send
    assert final.status_code == 201, final.text
    assert final.headers["Upload-Offset"] == str(sum(map(len, pieces)))
    assert final.json()["filename"] == "joined"
    assert stored_sha256(server.url, final.headers["Location"]) == \
        hashlib.sha256(b"".join(pieces)).hexdigest()
    assert all(head(server.url, p).status_code == 404 for p in partials)


def test_patch_cut_mid_body_keeps_every_byte_that_arrived(server):
    data = data_of(8 << 20, seed=11)
    location = new_upload(server.url, len(data))
    at = 0
    for cut in (3_000_001, 5_500_000):
        sock = open_patch(server.url, location, at, len(data) - at)
        sock.sendall(data[at:cut])
        sock.close()  # gone, without waiting for an answer
        assert resumable_offset(server.url, location, arrived=cut) == cut
        at = cut
    assert patch(server.url, location, at, data[at:]).status_code == 204
    assert stored_sha256(server.url, location) == hashlib.sha256(data).hexdigest()


def test_stalled_patch_holds_the_lock_until_the_read_timeout(server):
    data = data_of(4 << 20, seed=12)
    location = new_upload(server.url, len(data))
    sock = open_patch(server.url, location, 0, len(data))
    sock.sendall(data[:1_000_000])
    time.sleep(0.5)
    busy = patch(server.url, location, 0, data)
    assert busy.status_code == 423 and error_code(busy) == "upload_locked"
    deleting = requests.delete(server.url + location, headers=TUS | AUTH, timeout=10)
    assert deleting.status_code == 423
    assert read_status(sock) == 408  # the server gave up on the stalled body ...
    sock.close()
    assert offset(server.url, location) == 1_000_000  # ... and kept what arrived
    assert patch(server.url, location, 1_000_000, data[1_000_000:]).status_code == 204
    assert stored_sha256(server.url, location) == hashlib.sha256(data).hexdigest()


def test_head_shows_progress_of_a_patch_in_flight(server):
    data = data_of(3 << 20, seed=13)
    location = new_upload(server.url, len(data))
    sock = open_patch(server.url, location, 0, len(data))
    sock.sendall(data[:1 << 20])
    time.sleep(1.3)
    sock.sendall(data[1 << 20:2 << 20])
    deadline = time.monotonic() + 5
    while offset(server.url, location) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = offset(server.url, location)
    assert 0 < seen <= 2 << 20
    sock.sendall(data[2 << 20:])
    assert read_status(sock) == 204
    sock.close()
    assert stored_sha256(server.url, location) == hashlib.sha256(data).hexdigest()


def _lock_holder(server, upload_id: str) -> int | None:
    lock = str(server.storage_dir.resolve() / "locks" / f"{upload_id}.lock")
    for pid in server.worker_pids():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == lock:
                    return pid
            except OSError:
                continue
    return None


def _pids_answering(server, upload_id: str, status: int) -> set[int]:
    pids = set()
    for line in server.log().splitlines():
        if f"/tus/{upload_id}" not in line or f" {status}" not in line:
            continue
        found = re.match(r"<?(\d+)>? \"PATCH", line) or re.search(r"\[pid: (\d+)\|", line)
        if found and (f"HTTP/1.1 {status})" in line or line.rstrip().endswith(f" {status}")):
            pids.add(int(found.group(1)))
    return pids


def test_concurrent_patches_across_workers_one_proceeds_the_others_are_refused(server):
    """Two worker processes: the second PATCH is answered at once, in either process."""
    crossed = False
    for attempt in range(5):
        data = os.urandom(4 << 20)
        location = new_upload(server.url, len(data))
        upload_id = location.rsplit("/", 1)[1]
        first = open_patch(server.url, location, 0, len(data))
        first.sendall(data[:1 << 20])
        deadline = time.monotonic() + 5
        while (holder := _lock_holder(server, upload_id)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert holder is not None

        def second(index: int) -> tuple[int, str, float]:
            started = time.monotonic()
            response = patch(server.url, location, 0, bytes([index]) * (64 << 10))
            return response.status_code, error_code(response), time.monotonic() - started

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(second, range(6)))
        assert all(status == 423 and code == "upload_locked" for status, code, _ in results)
        assert max(seconds for *_, seconds in results) < 5
        first.sendall(data[1 << 20:])
        assert read_status(first) == 204
        first.close()
        assert stored_sha256(server.url, location) == hashlib.sha256(data).hexdigest()
        time.sleep(0.2)  # the access log line of the last answer
        if _pids_answering(server, upload_id, 423) - {holder}:
            crossed = True
            break
    assert crossed, "no refused PATCH landed in the other worker process in 5 tries"


@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def expiring_server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("expiry-" + request.param)
    running = start_server(request.param, base / "store", base, workers=2, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write",
        "SPILLWAY_UPLOAD_TTL": "3",
        "SPILLWAY_READ_TIMEOUT": "1",
        "SPILLWAY_MIN_BODY_RATE": "0",  # (its window, 30 s, would outlast the expiry)
    })
    yield running
    running.stop()


def test_expired_uploads_are_refused_and_swept(expiring_server):
    server = expiring_server
    idle = new_upload(server.url, 100)
    patch(server.url, idle, 0, b"x" * 10)
    busy = new_upload(server.url, 100)
    idle_id = idle.rsplit("/", 1)[1]
    expires = head(server.url, idle).headers["Upload-Expires"]
    assert expires.endswith("GMT")
    for step in range(12):  # the busy one gets a byte every 0.5 s: never expires
        assert patch(server.url, busy, step, b"b").status_code == 204
        time.sleep(0.5)
    answer = head(server.url, idle)
    assert answer.status_code in (404, 410)
    refused = patch(server.url, idle, 10, b"y")
    assert refused.status_code in (404, 410)
    assert not list((server.storage_dir / "tmp").glob(f"{idle_id}.*"))  # swept
    assert offset(server.url, busy) == 12


# --- the protocol module, sans I/O ---------------------------------------------------

def test_protocol_parsers():
    from app.core import tus_protocol as tus

    assert tus.parse_metadata("") == {} and tus.parse_metadata(None) == {}
    assert tus.parse_metadata("a aGk=, b ,c") == {"a": b"hi", "b": None, "c": None}
    for bad in ("a !!!", "a aGk= x", "a aGk=,a aGk=", "bad key aGk="):
        with pytest.raises(tus.HeaderError):
            tus.parse_metadata(bad)
    concat = tus.parse_concat("final;http://h:1/tus/aa /tus/bb", "/tus/")
    assert concat == tus.Concat(partial=False, upload_ids=("aa", "bb"))
    assert tus.parse_concat("partial", "/tus/").partial
    for bad in ("final;", "final;/files/aa", "final;/tus/a/b", "whole"):
        with pytest.raises(tus.HeaderError):
            tus.parse_concat(bad, "/tus/")
    digest = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    assert tus.parse_checksum(f"sha256 {digest}").digest == hashlib.sha256(b"x").digest()
    for bad in ("crc32 AAAA", "sha1 !!", f"sha1 {digest}"):  # unknown, not base64, wrong size
        with pytest.raises(tus.HeaderError):
            tus.parse_checksum(bad)
    with pytest.raises(tus.HeaderError) as refused:
        tus.check_version("0.2.2")
    assert refused.value.status == 412
    assert tus.parse_size("Upload-Offset", " 12 ") == 12
    for bad in ("-1", "1e3", "", "0x10"):
        with pytest.raises(tus.HeaderError):
            tus.parse_size("Upload-Offset", bad)
