"""Spillway behind a real nginx, configured from the shipped deploy/nginx templates.

Streaming proxy mode in front of gunicorn (proxy_pass) and uWSGI (uwsgi_pass), and the
direct-upload offload mode (auth_request, nginx writes the body, Spillway adopts the
file) with X-Accel-Redirect downloads.
"""

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from app import Settings, create_app
from app.settings import SettingsError
from app.storage import LocalStorage
from deploy.nginx.render import RenderError, render_text
from tests.conftest import TOKEN_RO, TOKEN_RW, leftover_files, sha256_of
from app.testing.nginx import Nginx, nginx_binary
from app.testing.servers import start_server, uwsgi_get

AUTH = {"Authorization": f"Bearer {TOKEN_RW}"}
LIMIT = 400 << 20  # the backends' request and file limit
OFFLOAD_MAX_BODY = 320 << 20  # nginx's client_max_body_size in offload mode
TOKENS = f"{TOKEN_RW}:read+write,{TOKEN_RO}:read"

needs_nginx = pytest.mark.skipif(nginx_binary() is None,
                                 reason="nginx is not installed (.ci/run installs it with apt-get)")


def backend_env(**extra) -> dict:
    return {"SPILLWAY_TOKENS": TOKENS, "SPILLWAY_MAX_REQUEST_SIZE": str(LIMIT),
            "SPILLWAY_MAX_FILE_SIZE": str(LIMIT), **extra}


def address(server) -> str:
    return server.url.split("//", 1)[1]


def curl(*args) -> subprocess.CompletedProcess:
    result = subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True)
    assert result.returncode == 0, f"curl {args} failed: {result.stderr.decode()}"
    return result


def curl_json(*args) -> tuple[int, dict]:
    body, _, status = curl("-w", "\n%{http_code}", *args).stdout.rpartition(b"\n")
    return int(status), json.loads(body) if body.strip() else {}


def files_in(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return [path for path in directory.rglob("*") if not path.is_dir()]


def patterned_file(path: Path, mib: int) -> Path:
    block = hashlib.sha256(path.name.encode()).digest() * 32768  # 1 MiB, not all zeros
    with path.open("wb") as out:
        for index in range(mib):
            out.write(index.to_bytes(4, "big") + block[4:])
    return path


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory) -> Path:
    return patterned_file(tmp_path_factory.mktemp("nginx-data") / "upload.bin", 24)


@pytest.fixture(scope="module")
def huge_sparse_file(tmp_path_factory) -> Path:
    """512 MiB of zeros that costs no disk: the body of refused uploads."""
    path = tmp_path_factory.mktemp("nginx-sparse") / "huge.bin"
    with path.open("wb") as out:
        out.truncate(512 << 20)
    return path


# --- mode 1: streaming reverse proxy ---------------------------------------------------

@pytest.fixture(scope="module", params=["gunicorn", "uwsgi"])
def proxied(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"proxy-{request.param}")
    kind, mode = (("gunicorn", "proxy") if request.param == "gunicorn"
                  else ("uwsgi-behind-nginx", "uwsgi"))
    backend = start_server(kind, base / "store", base, env=backend_env())
    nginx = None
    try:
        nginx = Nginx(mode, base / "nginx", BACKEND=address(backend),
                      STORAGE_DIR=str(base / "store"), MAX_BODY=str(LIMIT)).start()
        yield SimpleNamespace(url=nginx.url, nginx=nginx, backend=backend, kind=request.param)
    finally:
        if nginx:
            nginx.stop()
        backend.stop()


def put_and_check(url: str, path, chunked: bool) -> dict:
    """curl -T the file (Content-Length or chunked); the 201 record, its size and SHA-256 right."""
    framing = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    status, record = curl_json("-T", str(path), *framing,
                               "-H", f"Authorization: Bearer {TOKEN_RW}", url)
    assert status == 201, record
    assert record["sha256"] == sha256_of(path)
    assert record["size"] == path.stat().st_size
    return record


@needs_nginx
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_proxy_upload_keeps_every_byte(proxied, upload_file, chunked):
    put_and_check(f"{proxied.url}/upload/up.bin", upload_file, chunked)
    assert leftover_files(proxied.backend.storage_dir)["tmp"] == []
    assert files_in(proxied.nginx.prefix / "tmp" / "body") == []


@needs_nginx
def test_proxy_streams_the_body_while_it_arrives(proxied):
    """Request buffering is off: with half the body sent and the client paused, the backend
    is already writing it to storage, and nginx has spooled nothing to disk."""
    size, half = 32 << 20, 16 << 20
    block = bytes(range(256)) * 4096  # 1 MiB
    sock = socket.create_connection(("127.0.0.1", proxied.nginx.port), timeout=30)
    sock.sendall(f"PUT /upload/streamed.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_RW}"
                 f"\r\nContent-Length: {size}\r\n\r\n".encode())
    for _ in range(half >> 20):
        sock.sendall(block)
    temp_dir = Path(proxied.backend.storage_dir) / "tmp"
    written, deadline = 0, time.monotonic() + 10
    while time.monotonic() < deadline and written < (8 << 20):
        written = max((path.stat().st_size for path in files_in(temp_dir)), default=0)
        time.sleep(0.05)
    assert written >= (8 << 20), "the backend saw nothing before the body was complete"
    assert files_in(proxied.nginx.prefix / "tmp" / "body") == []
    for _ in range((size - half) >> 20):
        sock.sendall(block)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), answer[:300]
    assert json.loads(body)["sha256"] == hashlib.sha256(block * (size >> 20)).hexdigest()


@needs_nginx
def test_proxy_download(proxied, upload_file, tmp_path):
    _, record = curl_json("-T", str(upload_file), "-H", f"Authorization: Bearer {TOKEN_RW}",
                          f"{proxied.url}/upload/down.bin")
    url = f"{proxied.url}/files/{record['id']}/content"
    out = tmp_path / "out.bin"
    curl("-H", f"Authorization: Bearer {TOKEN_RW}", "-o", str(out), url)
    assert sha256_of(out) == record["sha256"]
    data = upload_file.read_bytes()
    ranged = requests.get(url, headers={**AUTH, "Range": "bytes=1000000-1999999"})
    assert ranged.status_code == 206 and ranged.content == data[1000000:2000000]
    cached = requests.get(url, headers={**AUTH, "If-None-Match": f'"{record["sha256"]}"'})
    assert cached.status_code == 304


@needs_nginx
def test_proxy_refuses_oversize_content_length_in_nginx(proxied, huge_sparse_file):
    # the backend's limit and nginx's client_max_body_size are the same (rendered from it)
    result = curl("-T", str(huge_sparse_file), "-H", f"Authorization: Bearer {TOKEN_RW}",
                  "-H", f"Content-Length: {LIMIT + 1}", "-H", "Expect:", "-o", "-",
                  "-w", "\n%{http_code}", f"{proxied.url}/upload/too-big.bin")
    body, _, status = result.stdout.rpartition(b"\n")
    assert int(status) == 413 and json.loads(body)["error"]["code"] == "request_too_large"


# --- mode 2: direct upload offload + X-Accel-Redirect --------------------------------

@pytest.fixture(scope="module")
def offload(tmp_path_factory):
    base = tmp_path_factory.mktemp("offload")
    store = base / "store"
    temp_dir = store / "nginx-body"  # the renderer's default: same filesystem as storage
    backend = start_server("gunicorn", store, base, env=backend_env(
        SPILLWAY_NGINX_TEMP_DIR=str(temp_dir), SPILLWAY_X_ACCEL_PREFIX="/_spillway_blobs/"))
    nginx = None
    try:
        nginx = Nginx("offload", base / "nginx", BACKEND=address(backend), STORAGE_DIR=str(store),
                      MAX_BODY=str(OFFLOAD_MAX_BODY))
        assert nginx.upload_temp_dir == temp_dir
        nginx.start()
        yield SimpleNamespace(url=nginx.url, nginx=nginx, backend=backend, store=store,
                              temp_dir=temp_dir)
    finally:
        if nginx:
            nginx.stop()
        backend.stop()


def assert_nothing_left(offload) -> None:
    # nginx removes a refused body's file when it frees the request, which after an
    # early error waits for its lingering close of the connection
    deadline = time.monotonic() + 10
    while files_in(offload.temp_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert files_in(offload.temp_dir) == []
    assert leftover_files(offload.store)["tmp"] == []


@needs_nginx
@pytest.mark.parametrize("token,status,expect", [
    (None, 401, " 100-continue"), ("wrong-token-xyz", 401, ""), (TOKEN_RO, 403, " 100-continue"),
])
def test_offload_refuses_a_bad_token_before_the_body(offload, huge_sparse_file, token, status,
                                                     expect):
    before = leftover_files(offload.store)
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    result = curl("-T", str(huge_sparse_file), *auth, "-H", f"Expect:{expect}",
                  "-H", f"Content-Length: {32 << 20}",  # under client_max_body_size
                  "-o", "-", "-w", "\n%{http_code} %{size_upload} %{time_total}",
                  f"{offload.url}/upload/refused.bin")
    body, _, tail = result.stdout.rpartition(b"\n")
    code, uploaded, elapsed = tail.split()
    assert int(code) == status and json.loads(body)["error"]["status"] == status
    if status == 401:
        head = curl("-sI", "-X", "PUT", *auth, f"{offload.url}/upload/x").stdout.decode().lower()
        assert head.count("www-authenticate: bearer") == 1, head
    assert float(elapsed) < 0.1, f"answered after {elapsed} s"
    if expect:  # nginx says "100 Continue" only once auth passed: curl sent nothing
        assert int(uploaded) == 0
    else:  # at most what fits in the socket buffers before the 401 arrived
        assert int(uploaded) < (8 << 20), uploaded
    assert leftover_files(offload.store) == before
    assert_nothing_left(offload)


@needs_nginx
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_offload_upload_is_adopted(offload, upload_file, chunked):
    record = put_and_check(f"{offload.url}/upload/r%C3%A9sum%C3%A9.bin", upload_file, chunked)
    assert record["filename"] == "r\u00e9sum\u00e9.bin"
    blob = offload.store / "blobs" / record["id"]
    assert sha256_of(blob) == record["sha256"]
    assert oct(blob.stat().st_mode & 0o777) != oct(0o600)  # not nginx's private temp mode
    assert_nothing_left(offload)
    listed = requests.get(f"{offload.url}/files/{record['id']}", headers=AUTH).json()
    assert listed["sha256"] == record["sha256"]


@needs_nginx
def test_offload_adopts_a_big_file_in_constant_memory(offload, big_file):
    """300 MB: the worker hashes the file nginx wrote and renames it; its RSS stays flat."""
    warm = requests.put(f"{offload.url}/upload/warm.bin", data=b"w" * (4 << 20), headers=AUTH)
    assert warm.status_code == 201
    baseline = peak = offload.backend.workers_rss_kib()
    stop = threading.Event()

    def sample_rss():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, offload.backend.workers_rss_kib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    try:
        status, record = curl_json("-T", str(big_file), "-H", f"Authorization: Bearer {TOKEN_RW}",
                                   f"{offload.url}/upload/big.bin")
    finally:
        stop.set()
        sampler.join()
    assert status == 201, record
    assert record["sha256"] == sha256_of(big_file) and record["size"] == big_file.stat().st_size
    growth_mb = (peak - baseline) / 1024
    assert growth_mb < 30, f"worker RSS grew {growth_mb:.1f} MB"
    assert_nothing_left(offload)


@needs_nginx
def test_offload_post_raw_and_multipart(offload, tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes(range(256)) * 1000)
    status, record = curl_json("--data-binary", f"@{raw}",
                               "-H", "Content-Type: application/x-thing",
                               "-H", f"Authorization: Bearer {TOKEN_RW}",
                               f"{offload.url}/upload?filename=raw.bin")
    assert status == 201 and record["filename"] == "raw.bin"
    assert record["sha256"] == sha256_of(raw) and record["content_type"] == "application/x-thing"
    second = tmp_path / "second.txt"
    second.write_bytes(b"--boundary-like\r\n" * 500)
    status, result = curl_json("-F", f"file=@{raw}", "-F", f"file=@{second}", "-F", "note=hello",
                               "-H", f"Authorization: Bearer {TOKEN_RW}", f"{offload.url}/upload")
    assert status == 201, result
    assert [f["sha256"] for f in result["files"]] == [sha256_of(raw), sha256_of(second)]
    assert result["fields"] == {"note": ["hello"]}
    assert_nothing_left(offload)


@needs_nginx
def test_offload_digest_mismatch_keeps_nothing(offload, tmp_path):
    path = tmp_path / "digest.bin"
    path.write_bytes(b"d" * 100000)
    before = leftover_files(offload.store)
    status, body = curl_json("-T", str(path), "-H", f"Authorization: Bearer {TOKEN_RW}",
                             "-H", "Content-Digest: sha-256=:" + "A" * 43 + "=:",
                             f"{offload.url}/upload/digest.bin")
    assert status == 400 and body["error"]["code"] == "digest_mismatch"
    assert leftover_files(offload.store) == before
    assert_nothing_left(offload)


@needs_nginx
def test_offload_oversize_is_refused_by_nginx(offload, huge_sparse_file):
    before = leftover_files(offload.store)
    # Content-Length over client_max_body_size: 413 before auth and before the body
    result = curl("-T", str(huge_sparse_file), "-H", f"Authorization: Bearer {TOKEN_RW}",
                  "-H", "Expect:", "-o", "-", "-w", "\n%{http_code} %{size_upload} %{time_total}",
                  f"{offload.url}/upload/too-big.bin")
    body, _, tail = result.stdout.rpartition(b"\n")
    code, uploaded, elapsed = tail.split()
    assert int(code) == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert float(elapsed) < 0.5 and int(uploaded) < (16 << 20)
    # chunked: refused as soon as it passes the limit, the partial file removed
    result = curl("-T", str(huge_sparse_file), "-H", f"Authorization: Bearer {TOKEN_RW}",
                  "-H", "Transfer-Encoding: chunked", "-o", "/dev/null", "-w", "%{http_code}",
                  f"{offload.url}/upload/too-big.bin")
    assert result.stdout == b"413"
    assert leftover_files(offload.store) == before
    assert_nothing_left(offload)


@needs_nginx
def test_x_accel_download(offload, upload_file, tmp_path):
    _, record = curl_json("-T", str(upload_file), "-H", f"Authorization: Bearer {TOKEN_RW}",
                          f"{offload.url}/upload/na%C3%AFve.bin")
    path = f"/files/{record['id']}/content"
    # the backend itself answers with headers only and names the blob for nginx
    direct = requests.get(offload.backend.url + path, headers=AUTH)
    assert direct.headers["X-Accel-Redirect"] == f"/_spillway_blobs/{record['id']}"
    assert direct.content == b""
    # through nginx: the bytes, sent by nginx from the blob
    out = tmp_path / "out.bin"
    curl("-H", f"Authorization: Bearer {TOKEN_RW}", "-o", str(out), offload.url + path)
    assert sha256_of(out) == record["sha256"]
    full = requests.head(offload.url + path, headers=AUTH)
    assert full.status_code == 200 and int(full.headers["Content-Length"]) == record["size"]
    assert full.headers["ETag"] == f'"{record["sha256"]}"'
    assert "filename*=UTF-8''na%C3%AFve.bin" in full.headers["Content-Disposition"]
    assert full.headers["Content-Type"] == "application/octet-stream"
    assert "X-Accel-Redirect" not in full.headers
    assert full.headers["Accept-Ranges"] == "bytes"  # once: nginx's, not also the app's
    data = upload_file.read_bytes()
    ranged = requests.get(offload.url + path, headers={**AUTH, "Range": "bytes=5000000-5999999"})
    assert ranged.status_code == 206 and ranged.content == data[5000000:6000000]
    assert ranged.headers["Content-Range"] == f"bytes 5000000-5999999/{record['size']}"
    suffix = requests.get(offload.url + path, headers={**AUTH, "Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == data[-100:]
    if_range = requests.get(offload.url + path, headers={
        **AUTH, "Range": "bytes=0-9", "If-Range": f'"{record["sha256"]}"'})
    assert if_range.status_code == 206 and if_range.content == data[:10]
    cached = requests.get(offload.url + path,
                          headers={**AUTH, "If-None-Match": f'"{record["sha256"]}"'})
    assert cached.status_code == 304 and cached.content == b""
    outside = requests.get(offload.url + path,
                           headers={**AUTH, "Range": f"bytes={record['size']}-"})
    assert outside.status_code == 416 and outside.json()["error"]["code"] == "range_not_satisfiable"
    assert requests.get(offload.url + path).status_code == 401
    blob = requests.get(f"{offload.url}/_spillway_blobs/{record['id']}")
    assert blob.status_code == 404  # internal: only reachable through X-Accel-Redirect


@needs_nginx
def test_x_accel_download_through_uwsgi_pass(tmp_path, upload_file):
    backend = start_server("uwsgi-behind-nginx", tmp_path / "store", tmp_path,
                           env=backend_env(SPILLWAY_X_ACCEL_PREFIX="/_spillway_blobs/"))
    nginx = None
    try:
        nginx = Nginx("uwsgi", tmp_path / "nginx", BACKEND=address(backend),
                      STORAGE_DIR=str(tmp_path / "store"), MAX_BODY=str(LIMIT)).start()
        _, record = curl_json("-T", str(upload_file), "-H", f"Authorization: Bearer {TOKEN_RW}",
                              f"{nginx.url}/upload/u.bin")
        url = f"{nginx.url}/files/{record['id']}/content"
        full = requests.get(url, headers=AUTH)
        assert full.status_code == 200 and full.headers["ETag"] == f'"{record["sha256"]}"'
        assert hashlib.sha256(full.content).hexdigest() == record["sha256"]
        ranged = requests.get(url, headers={**AUTH, "Range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == upload_file.read_bytes()[10:20]
        # what uWSGI itself answers (asked in the uwsgi protocol, as nginx does): no bytes
        host, port = address(backend).split(":")
        answer = uwsgi_get(host, int(port), f"/files/{record['id']}/content", headers=AUTH)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert f"X-Accel-Redirect: /_spillway_blobs/{record['id']}".encode() in head
        assert body == b""
    finally:
        if nginx:
            nginx.stop()
        backend.stop()


@needs_nginx
def test_offload_routes_are_closed_to_clients_of_nginx(offload):
    victim = offload.store / "nginx-body" / "forged"
    for method, path in [("PUT", "/offload/adopt/x.bin"), ("POST", "/offload/adopt"),
                         ("GET", "/auth/check")]:
        response = requests.request(method, offload.url + path, data=b"x",
                                    headers={**AUTH, "X-File": str(victim)})
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@needs_nginx
def test_adopt_refuses_paths_outside_the_temp_dir(offload, tmp_path):
    """A client that reaches the backend directly can send any X-File: only regular files
    strictly inside SPILLWAY_NGINX_TEMP_DIR are ever touched."""
    before = leftover_files(offload.store)
    offload.temp_dir.mkdir(exist_ok=True)
    outside = tmp_path / "secret.txt"
    outside.write_text("do not adopt me")
    link = offload.temp_dir / "link"
    link.symlink_to(outside)
    fifo = offload.temp_dir / "fifo"
    os.mkfifo(fifo)
    subdir = offload.temp_dir / "sub"
    subdir.mkdir()
    cases = [
        ("/etc/passwd", 403, "path_outside_temp_dir"),
        (str(outside), 403, "path_outside_temp_dir"),
        (f"{offload.temp_dir}/../blobs/x", 403, "path_outside_temp_dir"),
        (f"{offload.temp_dir}/sub/../../../secret", 403, "path_outside_temp_dir"),
        ("nginx-body/relative", 403, "path_outside_temp_dir"),
        (str(offload.temp_dir), 403, "path_outside_temp_dir"),
        (str(link), 403, "path_outside_temp_dir"),
        (str(fifo), 400, "not_a_regular_file"),
        (str(subdir), 400, "not_a_regular_file"),
        (str(offload.temp_dir / "missing"), 400, "no_body_file"),
        (None, 400, "no_body_file"),
    ]
    try:
        for named, status, code in cases:
            headers = {**AUTH, **({"X-File": named} if named else {})}
            response = requests.put(f"{offload.backend.url}/offload/adopt/x.bin", headers=headers,
                                    timeout=10)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), named
        assert outside.read_text() == "do not adopt me" and fifo.exists()
        assert leftover_files(offload.store) == before
        # the check lets nginx's own files through: a real file inside is adopted by rename
        inside = offload.temp_dir / "sub" / "0000000042"
        inside.write_bytes(b"adopt me")
        response = requests.put(f"{offload.backend.url}/offload/adopt/ok.bin",
                                headers={**AUTH, "X-File": str(inside), "X-Content-Length": "8"})
        assert response.status_code == 201
        assert response.json()["sha256"] == hashlib.sha256(b"adopt me").hexdigest()
        assert not inside.exists()
        # a length that does not match the file: refused, file left to nginx's cleanup
        inside.write_bytes(b"short")
        response = requests.put(f"{offload.backend.url}/offload/adopt/bad.bin",
                                headers={**AUTH, "X-File": str(inside), "X-Content-Length": "9"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "truncated_body"
        assert inside.exists()
        no_token = requests.put(f"{offload.backend.url}/offload/adopt/x.bin",
                                headers={"X-File": str(inside)})
        assert no_token.status_code == 401 and inside.exists()
    finally:
        for path in (link, fifo, offload.temp_dir / "sub" / "0000000042"):
            path.unlink(missing_ok=True)
        subdir.rmdir()


# --- units: settings, routing, storage.adopt, the renderer ----------------------------

def test_offload_routes_exist_only_when_enabled(tmp_path):
    off = create_app(Settings(storage_dir=str(tmp_path / "a"))).test_client()
    assert off.put("/offload/adopt/x", headers={"X-File": "/etc/passwd"}).status_code == 404
    on = create_app(Settings(storage_dir=str(tmp_path / "b"), nginx_temp_dir=str(tmp_path / "t"),
                             tokens=Settings.from_env({"SPILLWAY_TOKENS": TOKENS}).tokens))
    client = on.test_client()
    assert client.put("/offload/adopt/x", headers={"X-File": "/etc/passwd"}).status_code == 401


def test_offload_settings_are_checked():
    with pytest.raises(SettingsError):
        Settings.from_env({"SPILLWAY_NGINX_TEMP_DIR": "relative/dir"})
    with pytest.raises(SettingsError):
        Settings.from_env({"SPILLWAY_NGINX_TEMP_DIR": "/"})
    with pytest.raises(SettingsError):
        Settings.from_env({"SPILLWAY_X_ACCEL_PREFIX": "/no-trailing-slash"})
    settings = Settings.from_env({"SPILLWAY_NGINX_TEMP_DIR": "/var/lib/nginx/spillway",
                                  "SPILLWAY_X_ACCEL_PREFIX": "/_spillway_blobs/"})
    assert settings.offload_enabled and settings.x_accel_prefix == "/_spillway_blobs/"
    assert not Settings().offload_enabled


def test_storage_adopt_renames_on_the_same_filesystem(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    source = tmp_path / "body"
    source.write_bytes(b"nginx wrote this")
    source.chmod(0o600)
    inode = source.stat().st_ino
    digest = hashlib.sha256(b"nginx wrote this").hexdigest()
    stored = storage.adopt(str(source), filename="n.txt", content_type="text/plain", sha256=digest)
    assert stored is not None and not source.exists()
    blob = Path(storage.blob_path(stored.id))
    assert blob.stat().st_ino == inode  # moved, not copied
    assert blob.stat().st_mode & 0o777 == storage.file_mode
    assert storage.stat(stored.id) == stored and stored.size == 16


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm to be another filesystem")
def test_adopt_across_filesystems_copies_through_the_pump(tmp_path):
    """/dev/shm is a tmpfs: rename(2) fails with EXDEV and the file is copied in instead."""
    from app.core.offload import adopt_body_file

    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test storage")
    temp_dir = Path("/dev/shm") / f"spillway-test-{os.getpid()}"
    temp_dir.mkdir(exist_ok=True)
    try:
        source = temp_dir / "0000000001"
        source.write_bytes(b"x" * 3_000_000)
        storage = LocalStorage(str(tmp_path / "store"))
        assert storage.adopt(str(source), filename="a", content_type="b", sha256="0" * 64) is None
        stored = adopt_body_file(str(source), temp_dir=str(temp_dir), declared_length=3_000_000,
                                 expected_sha256=None, storage=storage, max_size=1 << 30,
                                 filename="far.bin", content_type="application/octet-stream",
                                 chunk_size=1 << 20)
        assert stored.sha256 == hashlib.sha256(b"x" * 3_000_000).hexdigest()
        assert sha256_of(Path(storage.blob_path(stored.id))) == stored.sha256
        assert source.exists()  # a copy: nginx removes its own file when the request ends
        assert leftover_files(storage.root)["tmp"] == []
    finally:
        for path in temp_dir.iterdir():
            path.unlink()
        temp_dir.rmdir()


def test_renderer_fills_placeholders_and_leaves_nginx_variables():
    text = render_text("listen ${LISTEN}; proxy_set_header Host $host; x ${A_B2};",
                       {"LISTEN": "127.0.0.1:1", "A_B2": "y"})
    assert text == "listen 127.0.0.1:1; proxy_set_header Host $host; x y;"
    with pytest.raises(RenderError, match="PREFIX"):
        render_text("pid ${PREFIX}/nginx.pid;", {})
