"""tus behind a real nginx, from the shipped templates (proxy -> gunicorn, uwsgi -> uWSGI,
offload -> gunicorn): PATCH bodies stream, the auth check knows the tus routes and lets
the CORS preflight through, and Spillway's tus statuses reach the client as they were."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
from types import SimpleNamespace

import pytest
import requests

from tests.conftest import TOKEN_RO, TOKEN_RW
from app.testing.nginx import NO_NGINX, Nginx, nginx_binary
from app.testing.servers import ROOT, start_server
from tests.tus_wire import (AUTH, OCTETS, TUS, create, head, new_upload, offset, open_patch,
                            patch, read_status, resumable_offset, stored_sha256)

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason=NO_NGINX)
LIMIT = 256 << 20
MODES = {"proxy": "gunicorn", "uwsgi": "uwsgi-behind-nginx", "offload": "gunicorn"}


@pytest.fixture(scope="module", params=list(MODES))
def front(request, tmp_path_factory):
    mode = request.param
    base = tmp_path_factory.mktemp(f"tus-nginx-{mode}")
    store = base / "store"
    env = {"SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write,{TOKEN_RO}:read",
           "SPILLWAY_MAX_REQUEST_SIZE": str(LIMIT), "SPILLWAY_MAX_FILE_SIZE": str(LIMIT),
           "SPILLWAY_READ_TIMEOUT": "3"}
    if mode == "offload":
        env["SPILLWAY_NGINX_TEMP_DIR"] = str(store / "nginx-body")
    backend = start_server(MODES[mode], store, base, env=env, workers=2)
    nginx = None
    try:
        nginx = Nginx(mode, base / "nginx", BACKEND=backend.url.split("//", 1)[1],
                      STORAGE_DIR=str(store), MAX_BODY=str(LIMIT)).start()
        yield SimpleNamespace(url=nginx.url, nginx=nginx, backend=backend, mode=mode)
    finally:
        if nginx:
            nginx.stop()
        backend.stop()


def test_preflight_without_a_token_and_auth_before_the_body(front):
    preflight = requests.options(front.url + "/tus/", timeout=10, headers={
        "Origin": "http://page.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,tus-resumable,upload-length"})
    assert preflight.status_code == 204
    assert preflight.headers["Tus-Version"] == "1.0.0"
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Upload-Length" in preflight.headers["Access-Control-Allow-Headers"]
    anonymous = requests.post(front.url + "/tus/", headers=TUS | {"Upload-Length": "5"},
                              timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    # nginx answers the refusal itself: a page on another origin must still be let read it
    page = {"Origin": "http://page.example"}
    bad = requests.post(front.url + "/tus/", timeout=10, headers=TUS | page | {
        "Upload-Length": "5", "Authorization": "Bearer not-a-token-at-all"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
    assert bad.headers["Access-Control-Allow-Origin"] == "*"
    assert "Upload-Offset" in bad.headers["Access-Control-Expose-Headers"]
    elsewhere = requests.post(front.url + "/upload", timeout=10, headers=page)
    assert elsewhere.status_code == 401  # not a tus route: no CORS there, as without nginx
    assert "Access-Control-Allow-Origin" not in elsewhere.headers
    location = new_upload(front.url, 10)
    reader = {"Authorization": f"Bearer {TOKEN_RO}"}
    refused = requests.patch(front.url + location, data=b"hello", timeout=10,
                             headers=TUS | OCTETS | reader | {"Upload-Offset": "0"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert requests.head(front.url + location, headers=TUS | reader, timeout=10).status_code == 200


def test_tus_statuses_pass_through_nginx(front):
    location = new_upload(front.url, 10)
    assert patch(front.url, location, 0, b"hello").status_code == 204
    answers = {
        409: patch(front.url, location, 0, b"hello"),
        412: requests.head(front.url + location, headers=AUTH | {"Tus-Resumable": "0.9"},
                           timeout=10),
        413: patch(front.url, location, 5, b"x" * 6),
        415: patch(front.url, location, 5, b"x", {"Content-Type": "text/plain"}),
        460: patch(front.url, location, 5, b"world", {
            "Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(b"w").digest()).decode()}),
    }
    for status, answer in answers.items():
        assert answer.status_code == status, (status, answer.text)
        assert answer.headers["Tus-Resumable"] == "1.0.0"
        if status != 412:  # a HEAD answer has no body
            assert answer.json()["error"]["status"] == status
    assert offset(front.url, location) == 5
    assert patch(front.url, location, 5, b"world").status_code == 204
    assert stored_sha256(front.url, location) == hashlib.sha256(b"helloworld").hexdigest()


def test_patch_streams_through_nginx_and_a_cut_keeps_what_got_through(front):
    data = bytes(range(256)) * (64 << 12)  # 16 MiB
    location = new_upload(front.url, len(data))
    sock = open_patch(front.url, location, 0, len(data))
    sock.sendall(data[:4 << 20])
    time.sleep(1.2)
    sock.sendall(data[4 << 20:6 << 20])
    deadline = time.monotonic() + 5
    while offset(front.url, location) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert offset(front.url, location) > 0  # the backend has it while the PATCH goes on
    busy = patch(front.url, location, 0, b"x")
    assert busy.status_code == 423 and busy.json()["error"]["code"] == "upload_locked"
    sock.close()  # cut
    kept = resumable_offset(front.url, location)
    assert 0 < kept <= 6 << 20
    rest = open_patch(front.url, location, kept, len(data) - kept)
    rest.sendall(data[kept:])
    assert read_status(rest) == 204
    rest.close()
    assert stored_sha256(front.url, location) == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(shutil.which("node") is None
                    or not (ROOT / "tests/js/node_modules/tus-js-client").is_dir(),
                    reason="tus-js-client needs node and `npm ci --prefix tests/js`")
def test_tus_js_parallel_uploads_through_nginx(front, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * (40 << 12) + b"tail")
    arguments = {"endpoint": front.url + "/tus/", "file": str(source), "token": TOKEN_RW,
                 "parallelUploads": 3, "filename": "via-nginx.bin"}
    finished = subprocess.run(["node", str(ROOT / "tests/js/tus_upload.mjs"),
                               json.dumps(arguments)], capture_output=True, timeout=120)
    result = json.loads(finished.stdout.decode().strip().splitlines()[-1])
    assert result["status"] == "success", result
    location = "/tus/" + result["url"].rsplit("/", 1)[1]
    assert stored_sha256(front.url, location) == hashlib.sha256(source.read_bytes()).hexdigest()
