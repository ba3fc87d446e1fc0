"""Refusals behind a real nginx, in each of deploy/nginx's three modes: every refused
request reaches the client as Spillway's JSON, with Spillway's code, and a request
refused from its headers is refused before nginx reads (or the client sends) its body.

Each mode is nginx (rendered from the shipped template) in front of the backend it is
made for: ``proxy`` -> gunicorn, ``uwsgi`` -> ``uwsgi.ini:behind-nginx``, ``offload`` ->
gunicorn with SPILLWAY_NGINX_TEMP_DIR.  ``direct`` is gunicorn with no nginx, the answer
the others must match (README, "Behind nginx", says where they cannot).
"""

import json
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from app.core import errors
from deploy.nginx.render import MODES, HERE as TEMPLATES
from tests.conftest import TOKEN_RO, TOKEN_RW, leftover_files
from app.testing.nginx import Nginx, nginx_binary
from app.testing.servers import free_port, start_server

LIMIT = 256 << 20  # SPILLWAY_MAX_REQUEST_SIZE and client_max_body_size
BODY = 64 << 20
TOKENS = f"{TOKEN_RW}:read+write,{TOKEN_RO}:read"
BAD_TOKEN = "not-a-token-at-all"
BACKENDS = {"proxy": "gunicorn", "uwsgi": "uwsgi-behind-nginx", "offload": "gunicorn",
            "direct": "gunicorn"}

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")


@pytest.fixture(scope="module")
def body_file(tmp_path_factory) -> Path:
    """64 MiB of zeros that costs no disk, made once: the body of every refused upload."""
    path = tmp_path_factory.mktemp("refusal-body") / "body.bin"
    with path.open("wb") as out:
        out.truncate(BODY)
    return path


@pytest.fixture(scope="module", params=["proxy", "uwsgi", "offload", "direct"])
def front(request, tmp_path_factory):
    mode = request.param
    base = tmp_path_factory.mktemp(f"refusals-{mode}")
    store = base / "store"
    env = {"SPILLWAY_TOKENS": TOKENS, "SPILLWAY_MAX_REQUEST_SIZE": str(LIMIT),
           "SPILLWAY_MAX_FILE_SIZE": str(LIMIT)}
    if mode == "offload":
        env["SPILLWAY_NGINX_TEMP_DIR"] = str(store / "nginx-body")
    backend = start_server(BACKENDS[mode], store, base, env=env)
    nginx = None
    try:
        if mode != "direct":
            nginx = Nginx(mode, base / "nginx", BACKEND=backend.url.split("//", 1)[1],
                          STORAGE_DIR=str(store), MAX_BODY=str(LIMIT)).start()
        yield SimpleNamespace(mode=mode, url=nginx.url if nginx else backend.url, nginx=nginx,
                              backend=backend, store=store)
    finally:
        if nginx:
            nginx.stop()
        backend.stop()


def send(url: str, *args: str, token: str | None = TOKEN_RW, expect: bool = False):
    """One curl request; its (status, JSON body or None, bytes of body sent, curl exit)."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "60", *auth, "-H", "Expect: 100-continue" if expect
         else "Expect:", "-o", "-", "-w", "\n%{http_code} %{size_upload}", *args, url],
        capture_output=True)
    body, _, tail = result.stdout.rpartition(b"\n")
    status, uploaded = (int(value) for value in tail.split())
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    return status, answer, uploaded, result.returncode


def code_of(answer) -> str | None:
    return answer["error"]["code"] if isinstance(answer, dict) and "error" in answer else None


def assert_refused(outcome, status: int, code: str) -> None:
    got_status, answer, _, _ = outcome
    assert (got_status, code_of(answer)) == (status, code), outcome
    assert answer["error"]["status"] == status and answer["error"]["message"]


def test_bad_token_without_expect_every_client_reads_the_401(front, body_file):
    before = leftover_files(front.store)
    outcomes = [send(f"{front.url}/upload/refused.bin", "-T", str(body_file), token=BAD_TOKEN)
                for _ in range(20)]
    got = [(status, code_of(answer)) for status, answer, _, _ in outcomes]
    assert got == [(401, "invalid_token")] * 20, got
    assert leftover_files(front.store) == before


def assert_nothing_sent(front, outcome) -> None:
    if front.mode == "direct":
        return  # gunicorn says 100 Continue before the app runs (tests/test_refusals.py)
    assert outcome[2] == 0, f"{outcome[2]} body bytes sent before the answer"


def test_bad_token_with_expect_sends_no_body_byte(front, body_file):
    for _ in range(10):
        outcome = send(f"{front.url}/upload/refused.bin", "-T", str(body_file), token=BAD_TOKEN,
                       expect=True)
        assert_refused(outcome, 401, "invalid_token")
        assert_nothing_sent(front, outcome)


@pytest.mark.parametrize("token,status,code", [(None, 401, "unauthorized"),
                                               (TOKEN_RO, 403, "forbidden")])
def test_missing_or_read_only_token(front, body_file, token, status, code):
    outcome = send(f"{front.url}/upload/refused.bin", "-T", str(body_file), token=token,
                   expect=True)
    assert_refused(outcome, status, code)
    assert_nothing_sent(front, outcome)


def test_oversize_content_length(front, body_file):
    outcome = send(f"{front.url}/upload/big.bin", "-T", str(body_file),
                   "-H", f"Content-Length: {LIMIT + 1}", expect=True)
    assert_refused(outcome, 413, "request_too_large")
    assert_nothing_sent(front, outcome)


def test_no_body_is_length_required(front):
    before = leftover_files(front.store)
    assert_refused(send(f"{front.url}/upload/empty.bin", "-X", "PUT"), 411, "length_required")
    assert leftover_files(front.store) == before


def test_content_encoding_is_refused(front, tmp_path):
    packed = tmp_path / "packed.gz"
    packed.write_bytes(b"\x1f\x8b" + b"z" * 1000)
    before = leftover_files(front.store)
    outcome = send(f"{front.url}/upload/packed.bin", "-T", str(packed),
                   "-H", "Content-Encoding: gzip")
    assert_refused(outcome, 415, "unsupported_content_encoding")
    assert leftover_files(front.store) == before


def test_bad_digest_on_a_streamed_body_is_spillways_400(front, body_file):
    """Spillway refuses this only after reading all of it: JSON 400, never nginx's 502."""
    for _ in range(3):
        outcome = send(f"{front.url}/upload/digest.bin", "-T", str(body_file),
                       "-H", "Content-Digest: sha-256=:" + "A" * 43 + "=:")
        assert_refused(outcome, 400, "digest_mismatch")


def test_malformed_multipart_refused_mid_body_is_spillways_400(front, body_file):
    """Spillway answers as soon as the first bytes fail to parse, with most of the body
    still on its way through nginx: the client must get that JSON, not a 502."""
    outcomes = [send(f"{front.url}/upload", "-T", str(body_file), "-X", "POST",
                     "-H", "Content-Type: multipart/form-data; boundary=nothing-like-this")
                for _ in range(5)]
    got = [(status, code_of(answer)) for status, answer, _, _ in outcomes]
    assert got == [(400, "malformed_multipart")] * 5, got


def test_encoded_dot_dot_name(front):
    """Without nginx the name is stored as its last component; nginx refuses the URI
    (it decodes it and it climbs above the root) with a JSON 400 before Spillway sees it."""
    status, answer, _, _ = send(f"{front.url}/upload/..%2F..%2Fetc%2Fpasswd", "--data-binary",
                                "x", "-X", "PUT")
    if front.mode == "direct":
        assert status == 201 and answer["filename"] == "passwd", answer
    else:
        assert (status, code_of(answer)) == (400, "bad_request"), answer


def test_python_requests_that_does_not_read_while_sending(front, body_file):
    """requests sends the whole body before it reads: the refusal must still arrive, as
    JSON, not as a reset or a 502, and in about a second (nginx lingers 1 s; Spillway
    drains what the client sends) rather than after the linger bound of 30 s; 10 s leaves
    room for a loaded two-core machine (3.6 s seen under load, 0.01-1 s alone)."""
    started = time.monotonic()
    with body_file.open("rb") as body:
        answer = requests.put(f"{front.url}/upload/requests.bin", data=body, timeout=30,
                              headers={"Authorization": f"Bearer {BAD_TOKEN}"})
    elapsed = time.monotonic() - started
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_token"
    assert elapsed < 10, f"answered after {elapsed:.1f} s"


def test_nginx_own_errors_are_json(front):
    if front.mode == "direct":
        pytest.skip("nginx's own refusals")
    long_uri = requests.get(f"{front.url}/files?x={'a' * 10000}")
    assert long_uri.status_code == 414 and long_uri.json()["error"]["code"] == "uri_too_long"
    big_header = requests.get(f"{front.url}/files", headers={"X-Big": "b" * 10000})
    assert big_header.status_code == 431
    assert big_header.json()["error"]["code"] == "request_headers_too_large"
    hidden = requests.get(f"{front.url}/auth/check", headers={"X-Original-URI": "/files"})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"


def test_nginx_without_a_backend_answers_json_502(tmp_path):
    nginx = Nginx("proxy", tmp_path / "nginx", BACKEND=f"127.0.0.1:{free_port()}",
                  STORAGE_DIR=str(tmp_path / "store")).start()
    try:
        answer = requests.get(f"{nginx.url}/files", timeout=10)
    finally:
        nginx.stop()
    # the auth check cannot be asked either: nginx's 500 for a failed auth_request
    assert answer.status_code in (500, 502), answer.text
    assert answer.json()["error"]["code"] in ("internal_error", "bad_gateway")


# --- the templates ---------------------------------------------------------------------

_RETURN = re.compile(r"return (\d{3}) '(\{.*?\})\\n';")


def _error_block(text: str) -> str:
    start = text.index("        # Every answer is JSON")
    return text[start:text.index("        location = /_spillway_auth", start)]


def test_the_error_block_is_the_same_in_every_template():
    blocks = {mode: _error_block((TEMPLATES / name).read_text()) for mode, name in MODES.items()}
    assert len(set(blocks.values())) == 1, "the templates' error pages drifted apart"


def test_every_json_answer_in_the_templates_is_in_spillways_shape():
    known = {cls.code for cls in [errors.SpillwayError, *_subclasses(errors.SpillwayError)]}
    known.add("request_too_large")  # PayloadTooLarge(code=...) in app/core/body.py
    for name in MODES.values():
        for status, body in _RETURN.findall((TEMPLATES / name).read_text()):
            if "$" in body.replace("${MAX_BODY}", ""):
                continue  # passed on from the auth check
            error = json.loads(body.replace("${MAX_BODY}", "1"))["error"]
            assert error["status"] == int(status) and error["code"] in known, (name, body)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
