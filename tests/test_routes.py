"""Routing, errors and headers through Flask's test client (no proof of streaming here)."""

import hashlib
import io
import subprocess

import pytest

from app import Settings, create_app
from app.core.digests import content_digest_value
from tests.conftest import TOKEN_RO, TOKEN_RW, leftover_files


def error_of(response):
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == response.status_code
    assert body["error"]["message"]
    return body["error"]["code"]


def upload(client, data: bytes, name="f.bin", **headers):
    return client.put(f"/upload/{name}", data=data, headers=headers)


def test_raw_upload_metadata_and_listing(client):
    response = upload(client, b"hello", name="h\u00e9llo.txt", **{"Content-Type": "text/plain"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["filename"] == "h\u00e9llo.txt"
    assert body["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert body["size"] == 5 and body["content_type"] == "text/plain"
    assert response.headers["Location"] == f"/files/{body['id']}"
    assert client.get(body["url"]).get_json() == body
    assert client.get("/files").get_json() == {"files": [body], "next": None}


def test_post_raw_takes_filename_from_query_or_disposition(client):
    a = client.post("/upload?filename=q.bin", data=b"1",
                    headers={"Content-Type": "application/octet-stream"}).get_json()
    b = client.post("/upload", data=b"2",
                    headers={"Content-Disposition": 'attachment; filename="d.bin"'}).get_json()
    c = client.post("/upload", data=b"3",
                    headers={"Content-Type": "application/x-www-form-urlencoded"}).get_json()
    assert (a["filename"], b["filename"], c["filename"]) == ("q.bin", "d.bin", "upload")
    assert c["content_type"] == "application/octet-stream"


def test_pagination(client):
    ids = [upload(client, bytes([i])).get_json()["id"] for i in range(5)]
    first = client.get("/files?limit=2").get_json()
    assert [f["id"] for f in first["files"]] == ids[:2] and first["next"] == ids[1]
    rest = client.get(f"/files?limit=10&after={first['next']}").get_json()
    assert [f["id"] for f in rest["files"]] == ids[2:] and rest["next"] is None
    assert error_of(client.get("/files?limit=0")) == "bad_limit"
    assert error_of(client.get("/files?limit=abc")) == "bad_limit"


def test_delete_then_404(client):
    file_id = upload(client, b"x").get_json()["id"]
    assert client.delete(f"/files/{file_id}").status_code == 204
    for response in (client.get(f"/files/{file_id}"), client.get(f"/files/{file_id}/content"),
                     client.delete(f"/files/{file_id}")):
        assert response.status_code == 404 and error_of(response) == "not_found"
    assert client.get("/files/..%2F..%2Fetc%2Fpasswd/content").status_code == 404


def test_content_digest_match_and_mismatch(client, settings):
    good = content_digest_value(hashlib.sha256(b"data").hexdigest())
    assert upload(client, b"data", **{"Content-Digest": good}).status_code == 201
    bad = upload(client, b"DATA", **{"Content-Digest": good})
    assert bad.status_code == 400 and error_of(bad) == "digest_mismatch"
    garbage = upload(client, b"DATA", **{"Content-Digest": "sha-256=:nope:"})
    assert garbage.status_code == 400 and error_of(garbage) == "bad_digest"
    other_algorithm = upload(client, b"DATA", **{"Content-Digest": "sha-512=:AAAA:"})
    assert other_algorithm.status_code == 201
    assert len(leftover_files(settings.storage_dir)["meta"]) == 2
    assert leftover_files(settings.storage_dir)["tmp"] == []


def test_length_required_and_media_type_errors(app, client):
    import json

    from werkzeug.test import EnvironBuilder, run_wsgi_app

    environ = EnvironBuilder(path="/upload", method="POST", data=b"abc").get_environ()
    del environ["CONTENT_LENGTH"]
    body, status, _ = run_wsgi_app(app, environ, buffered=True)
    assert status.startswith("411")
    assert json.loads(b"".join(body))["error"]["code"] == "length_required"
    response = client.post("/upload", data=b"x", content_type="multipart/mixed; boundary=x")
    assert response.status_code == 415 and error_of(response) == "unsupported_media_type"
    response = upload(client, b"x", **{"Content-Encoding": "gzip"})
    assert response.status_code == 415 and error_of(response) == "unsupported_content_encoding"


def test_oversize_content_length_is_413_and_closes(tmp_path):
    client = create_app(Settings(storage_dir=str(tmp_path), max_request_size=10)).test_client()
    response = upload(client, b"x" * 11)
    assert response.status_code == 413 and error_of(response) == "request_too_large"
    assert response.headers["Connection"] == "close"


def test_malformed_multipart_is_400(client, settings):
    no_boundary = client.post("/upload", data=b"--x\r\n", content_type="multipart/form-data")
    assert no_boundary.status_code == 400 and error_of(no_boundary) == "malformed_multipart"
    wrong = client.post("/upload", data=b"--other\r\nContent-Disposition: form-data; name=a"
                        b"\r\n\r\nv\r\n--other--\r\n", content_type="multipart/form-data; boundary=b")
    assert wrong.status_code == 400 and error_of(wrong) in ("malformed_multipart", "truncated_body")
    # the whole body arrived (Content-Length), it just has no closing boundary
    unclosed = client.post("/upload", data=b"--b\r\nContent-Disposition: form-data; name=f; "
                           b"filename=x\r\n\r\nhalf a fi", content_type="multipart/form-data; boundary=b")
    assert unclosed.status_code == 400 and error_of(unclosed) == "malformed_multipart"
    assert leftover_files(settings.storage_dir) == {"tmp": [], "blobs": [], "meta": []}


def test_auth_scopes(tmp_path):
    settings = Settings(storage_dir=str(tmp_path),
                        tokens=__import__("app.settings").settings.parse_tokens(
                            f"{TOKEN_RW}:read+write,{TOKEN_RO}:read"))
    client = create_app(settings).test_client()
    anonymous = upload(client, b"x")
    assert anonymous.status_code == 401 and error_of(anonymous) == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = upload(client, b"x", Authorization="Bearer not-a-real-token")
    assert wrong.status_code == 401 and error_of(wrong) == "invalid_token"
    reader = upload(client, b"x", Authorization=f"Bearer {TOKEN_RO}")
    assert reader.status_code == 403 and error_of(reader) == "forbidden"
    ok = upload(client, b"x", Authorization=f"Bearer {TOKEN_RW}")
    assert ok.status_code == 201
    assert client.get("/files", headers={"Authorization": f"Bearer {TOKEN_RO}"}).status_code == 200
    assert client.get("/files").status_code == 401
    assert client.get("/health").status_code == 200


def test_baseline_route_is_off_by_default_and_works_when_on(client, tmp_path):
    data = {"file": (io.BytesIO(b"base"), "b.bin")}
    assert client.post("/upload-baseline", data=data).status_code == 404
    on = create_app(Settings(storage_dir=str(tmp_path), enable_baseline=True)).test_client()
    response = on.post("/upload-baseline", data={"file": (io.BytesIO(b"base"), "b.bin")})
    assert response.status_code == 201
    assert response.get_json()["files"][0]["sha256"] == hashlib.sha256(b"base").hexdigest()


def test_unknown_route_and_method_are_json(client):
    assert error_of(client.get("/nope")) == "not_found"
    assert error_of(client.patch("/files")) == "method_not_allowed"


# downloads --------------------------------------------------------------------------

@pytest.fixture
def stored(client):
    data = bytes(range(256)) * 40
    body = upload(client, data, name="r\u00e9sum\u00e9 \"final\".pdf",
                  **{"Content-Type": "application/pdf"}).get_json()
    return body, data


def test_download_full_and_headers(client, stored):
    body, data = stored
    response = client.get(body["content_url"])
    assert response.status_code == 200 and response.data == data
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["ETag"] == f'"{body["sha256"]}"'
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"resume _final_.pdf\"; "
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf")
    head = client.head(body["content_url"])
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(data))


@pytest.mark.parametrize("header,status,expected", [
    ("bytes=0-9", 206, slice(0, 10)),
    ("bytes=10000-", 206, slice(10000, None)),
    ("bytes=-16", 206, slice(-16, None)),
    ("bytes=-999999", 206, slice(0, None)),
    ("bytes=100-99999", 206, slice(100, None)),
    ("bytes=0-1,5-6", 200, slice(None)),
])
def test_download_ranges(client, stored, header, status, expected):
    body, data = stored
    response = client.get(body["content_url"], headers={"Range": header})
    assert response.status_code == status
    assert response.data == data[expected]
    if status == 206:
        part = data[expected]
        start = len(data) - len(part) if expected.start and expected.start < 0 else (expected.start or 0)
        assert response.headers["Content-Range"] == f"bytes {start}-{start + len(part) - 1}/{len(data)}"


def test_download_unsatisfiable_and_conditionals(client, stored):
    body, data = stored
    response = client.get(body["content_url"], headers={"Range": f"bytes={len(data)}-"})
    assert response.status_code == 416 and error_of(response) == "range_not_satisfiable"
    assert response.headers["Content-Range"] == f"bytes */{len(data)}"
    etag = f'"{body["sha256"]}"'
    assert client.get(body["content_url"], headers={"If-None-Match": etag}).status_code == 304
    assert client.get(body["content_url"], headers={"If-None-Match": '"other"'}).status_code == 200
    last_modified = client.head(body["content_url"]).headers["Last-Modified"]
    assert client.get(body["content_url"],
                      headers={"If-Modified-Since": last_modified}).status_code == 304
    stale = client.get(body["content_url"], headers={"Range": "bytes=0-0", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.data == data
    fresh = client.get(body["content_url"], headers={"Range": "bytes=0-0", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.data == data[:1]


def test_full_disk_is_507_on_a_real_small_volume(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        client = create_app(Settings(storage_dir=str(mount_point / "store"))).test_client()
        small = upload(client, b"s" * 1000)
        assert small.status_code == 201
        full = upload(client, b"F" * (3 << 20))
        assert full.status_code == 507 and error_of(full) == "insufficient_storage"
        left = leftover_files(mount_point / "store")
        assert left["tmp"] == [] and left["meta"] == [small.get_json()["id"] + ".json"]
        again = upload(client, b"after")
        assert again.status_code == 201
    finally:
        # lazy: the app's SQLite index may still hold the volume open, and a mount left
        # behind outlives the run
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)
