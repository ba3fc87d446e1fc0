import hashlib

import pytest
import requests

from app.core.auth import READ, WRITE, authorize
from app.core.errors import Forbidden, Unauthorized
from app.settings import GiB, MiB, Settings, SettingsError, parse_size, parse_tokens


def test_sizes_parse_binary_units():
    assert parse_size("1048576") == MiB
    assert parse_size("64K") == 64 * 1024
    assert parse_size("1MiB") == MiB
    assert parse_size("16g") == 16 * GiB
    with pytest.raises(SettingsError):
        parse_size("lots")


def test_from_env_reads_each_kind_once():
    settings = Settings.from_env({
        "SPILLWAY_STORAGE_DIR": "/srv/spillway",
        "SPILLWAY_CHUNK_SIZE": "256K",
        "SPILLWAY_MAX_PARTS": "7",
        "SPILLWAY_FSYNC": "yes",
        "SPILLWAY_READ_TIMEOUT": "2.5",
        "SPILLWAY_TOKENS": "aaaaaaaa1:read,bbbbbbbb2",
        "UNRELATED": "x",
    })
    assert settings.storage_dir == "/srv/spillway"
    assert settings.chunk_size == 256 * 1024
    assert settings.max_parts == 7
    assert settings.fsync is True
    assert settings.read_timeout == 2.5
    assert [sorted(t.scopes) for t in settings.tokens] == [["read"], ["read", "write"]]


def test_bad_values_name_the_variable():
    with pytest.raises(SettingsError, match="SPILLWAY_FSYNC"):
        Settings.from_env({"SPILLWAY_FSYNC": "perhaps"})
    with pytest.raises(SettingsError, match="SPILLWAY_CHUNK_SIZE"):
        Settings.from_env({"SPILLWAY_CHUNK_SIZE": "12"})


def test_tokens_scopes_and_errors():
    with pytest.raises(SettingsError):
        parse_tokens("short")
    with pytest.raises(SettingsError):
        parse_tokens("longenough:admin")
    tokens = parse_tokens("writer-123:write, reader-456:read")
    authorize(tokens, "Bearer writer-123", WRITE)
    authorize(tokens, "bearer reader-456", READ)
    with pytest.raises(Forbidden):
        authorize(tokens, "Bearer reader-456", WRITE)
    with pytest.raises(Unauthorized):
        authorize(tokens, "Bearer nope-nope-nope", READ)
    with pytest.raises(Unauthorized):
        authorize(tokens, None, READ)
    with pytest.raises(Unauthorized):
        authorize(tokens, "Basic d3JpdGVyLTEyMw==", READ)
    assert "writer-123" not in repr(tokens)


def test_no_tokens_means_open(gunicorn_server):
    """No SPILLWAY_TOKENS: every route answers anyone, with no token or any token, and the
    server's log says loudly that it is open (conftest's gunicorn_server has no tokens)."""
    assert Settings.from_env({}).tokens == () and Settings.from_env({"SPILLWAY_TOKENS": ""}).tokens == ()
    assert authorize((), None, WRITE) is None
    url = gunicorn_server.url
    body = b"open to anyone\n" * 1000
    for headers in ({}, {"Authorization": "Bearer not-a-configured-token"}):
        stored = requests.put(f"{url}/upload/open.bin", data=body, headers=headers, timeout=10)
        assert stored.status_code == 201, stored.text
        record = stored.json()
        assert record["size"] == len(body) and record["sha256"] == hashlib.sha256(body).hexdigest()
        listed = requests.get(f"{url}/files", params={"limit": 1000}, headers=headers, timeout=10)
        assert listed.status_code == 200
        assert record["id"] in [f["id"] for f in listed.json()["files"]]
        content = f"{url}/files/{record['id']}/content"
        assert requests.get(content, headers=headers, timeout=10).content == body
        assert requests.delete(f"{url}/files/{record['id']}", headers=headers,
                               timeout=10).status_code == 204
        assert requests.get(content, headers=headers, timeout=10).status_code == 404
    assert "SPILLWAY_TOKENS is empty: the server is OPEN" in gunicorn_server.log()


def test_cors_origins_any_listed_or_none(tmp_path):
    from app import create_app

    preflight = {"Access-Control-Request-Method": "PATCH"}

    def options(settings, origin):
        client = create_app(settings.replace(storage_dir=str(tmp_path / "store"))).test_client()
        return client.options("/tus/", headers={"Origin": origin, **preflight})

    default = options(Settings(), "http://anywhere.example")
    assert default.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in default.headers

    listed = Settings.from_env({"SPILLWAY_CORS_ORIGINS":
                                "https://app.example, http://127.0.0.1:8080"})
    allowed = options(listed, "https://app.example")
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "PATCH" in allowed.headers["Access-Control-Allow-Methods"]
    assert allowed.headers["Vary"] == "Origin"
    other = options(listed, "https://evil.example")
    assert other.status_code == 204 and other.headers["Vary"] == "Origin"
    assert not any(name.startswith("Access-Control-") for name in other.headers.keys())

    nobody = options(Settings.from_env({"SPILLWAY_CORS_ORIGINS": ""}), "https://app.example")
    assert "Access-Control-Allow-Origin" not in nobody.headers

    for bad in ("app.example", "https://app.example/", "https://user@app.example", "ftp://x"):
        with pytest.raises(SettingsError, match="SPILLWAY_CORS_ORIGINS"):
            Settings.from_env({"SPILLWAY_CORS_ORIGINS": bad})
