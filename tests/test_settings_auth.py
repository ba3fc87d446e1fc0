import pytest

from app.auth import READ, WRITE, authorize, parse_tokens
from app.errors import Forbidden, Unauthorized
from app.settings import GiB, MiB, Settings, SettingsError, parse_size


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


def test_no_tokens_means_open():
    authorize((), None, WRITE)
