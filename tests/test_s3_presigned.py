"""SPILLWAY_S3_PRESIGNED_DOWNLOADS on gunicorn + SeaweedFS: after auth (and the ETag check),
a download is a 302 to a presigned URL of the store, which serves the bytes and ranges."""

from __future__ import annotations

import hashlib
import os
from urllib.parse import urlsplit

import pytest
import requests

from app.testing.servers import start_server
from tests.conftest import TOKEN_RO, TOKEN_RW

MiB = 1 << 20


@pytest.fixture(scope="module")
def presigning_server(seaweed, tmp_path_factory):
    bucket = seaweed.make_bucket("presigned")
    base = tmp_path_factory.mktemp("s3-presigned")
    server = start_server("gunicorn", base / "unused", base, env=seaweed.env(
        bucket, SPILLWAY_S3_PRESIGNED_DOWNLOADS="1", SPILLWAY_S3_PRESIGN_EXPIRY="120",
        SPILLWAY_TOKENS=f"{TOKEN_RW}:read+write,{TOKEN_RO}:read"))
    yield server
    server.stop()


def test_download_is_a_redirect_to_the_store(presigning_server, seaweed):
    server, reader = presigning_server, {"Authorization": f"Bearer {TOKEN_RO}"}
    data = os.urandom(3 * MiB + 7)
    created = requests.put(f"{server.url}/upload/report%20%C3%A9.bin", data=data,
                           headers={"Authorization": f"Bearer {TOKEN_RW}"})
    assert created.status_code == 201, created.text
    file_id, etag_hex = created.json()["id"], hashlib.sha256(data).hexdigest()
    content = f"{server.url}/files/{file_id}/content"

    refused = requests.get(content, allow_redirects=False)
    assert refused.status_code == 401 and "Location" not in refused.headers

    answer = requests.get(content, headers=reader, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(seaweed.endpoint + "/")
    assert TOKEN_RO not in location and TOKEN_RW not in location
    assert "X-Amz-Expires=120" in location
    assert answer.headers["ETag"] == f'"{etag_hex}"'
    assert answer.content == b""

    followed = requests.get(location)  # no Authorization: the URL is the credential
    assert followed.status_code == 200 and followed.content == data
    assert "report%20%C3%A9.bin" in followed.headers["Content-Disposition"]
    ranged = requests.get(location, headers={"Range": "bytes=1048570-1048589"})
    assert ranged.status_code == 206 and ranged.content == data[1048570:1048590]

    # requests follows the 302 itself and drops our Authorization on the other host
    through = requests.get(content, headers=reader)
    assert through.status_code == 200 and hashlib.sha256(through.content).hexdigest() == etag_hex
    assert through.history[0].status_code == 302

    unchanged = requests.get(content, headers=reader | {"If-None-Match": f'"{etag_hex}"'},
                             allow_redirects=False)
    assert unchanged.status_code == 304 and "Location" not in unchanged.headers
    head = requests.head(content, headers=reader)
    assert head.status_code == 302 and head.headers["Location"].startswith(seaweed.endpoint)
    missing = requests.get(f"{server.url}/files/{'0' * 32}/content", headers=reader,
                           allow_redirects=False)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
