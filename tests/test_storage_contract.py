"""The storage contract, run against every backend (local disk, and S3 on SeaweedFS).

Each backend is a factory ``make(location) -> store``: calling it again on the same
location is a restart (a new process's view of the same data)."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from app.core.errors import Conflict, Locked, NotFound, PayloadTooLarge, TruncatedBody
from app.core.pump import append_stream, store_stream
from app.storage import (Adopts, ChecksHealth, Concatenates, ExpiresUploads, LocalPaths,
                         LocalStorage, Presigns, StoredFile)
from app.storage.locks import MemoryLocker
from app.core.sha256 import Sha256, resume_sha256
from tests.conftest import s3_store

BACKENDS = {
    "local": lambda request, location: LocalStorage(str(location)),
    # the boto3 client reads AWS_*; the bytes are S3 parts of 5 MiB, the minimum
    "s3": lambda request, location: s3_store(request.getfixturevalue("seaweed"), "contract",
                                             location.parent.name),
}


@pytest.fixture(params=sorted(BACKENDS))
def make(request, tmp_path):
    factory = BACKENDS[request.param]
    return lambda: factory(request, tmp_path / "store")


@pytest.fixture
def store(make):
    return make()


def pieces(data: bytes, rng: random.Random, most: int) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(most)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


# --- the resumable SHA-256 ----------------------------------------------------------

def test_saved_sha256_state_continues_to_hashlib_digest_on_random_splits():
    assert Sha256.resumable, "libcrypto not found: uploads fall back to re-reading bytes"
    rng = random.Random(12)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 3000))
        hasher = Sha256()
        for piece in pieces(data, rng, 6):
            kind = rng.randrange(3)
            hasher.update(piece if kind == 0 else bytearray(piece) if kind == 1
                          else memoryview(piece))
            hasher = Sha256(hasher.state())  # through text, as it is saved with an upload
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_hexdigest_does_not_end_the_hash_and_bad_states_are_refused():
    hasher = Sha256()
    hasher.update(b"abc")
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    hasher.update(b"def")
    assert hasher.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    for bad in ("nonsense", "sha256-v1:AAAA"):
        with pytest.raises(ValueError):
            Sha256(bad)
    # an unusable state falls back to hashing what is stored
    assert resume_sha256("nonsense", lambda: [b"abc", b"def"]).hexdigest() == \
        hashlib.sha256(b"abcdef").hexdigest()


# --- uploads ------------------------------------------------------------------------

def test_create_and_info(store):
    upload = store.create_upload(length=10, metadata={"filename": "a.txt", "note": "x"})
    info = store.get_upload(upload.id).info()
    assert (info.id, info.offset, info.length) == (upload.id, 0, 10)
    assert info.metadata == {"filename": "a.txt", "note": "x"} and info.filename == "a.txt"
    assert abs(info.created - time.time()) < 60 and info.expires > info.created
    with pytest.raises(NotFound):
        store.get_upload("0" * 32)
    with pytest.raises(NotFound):
        store.get_upload("../../etc/passwd")


def test_append_at_the_wrong_offset_is_a_conflict_and_writes_nothing(store):
    upload = store.create_upload()
    append_stream([b"hello"], upload, 0, max_size=100)
    for wrong in (0, 3, 6):
        with pytest.raises(Conflict) as caught:
            append_stream([b"XXXX"], upload, wrong, max_size=100)
        assert caught.value.code == "offset_mismatch" and caught.value.status == 409
    assert upload.info().offset == 5 and b"".join(upload.read()) == b"hello"


def test_sha256_across_appends_and_restarts_comes_from_the_saved_state(make, monkeypatch):
    data = os.urandom(300_000)
    rng = random.Random(7)
    upload_id = make().create_upload(metadata={"filename": "r.bin",
                                               "content_type": "x/y"}).id
    offset = 0
    for piece in pieces(data, rng, 8):
        store = make()  # every append in a "new process"
        info = append_stream([piece[:1000], piece[1000:]], store.get_upload(upload_id), offset,
                             max_size=1 << 20, threaded=bool(rng.randrange(2)))
        offset = info.offset
        assert offset == data.index(piece) + len(piece) if piece else True
    store = make()
    upload = store.get_upload(upload_id)
    monkeypatch.setattr(type(upload), "read", lambda *a, **k: pytest.fail("re-read the bytes"))
    stored = upload.finish()
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    assert (stored.id, stored.filename, stored.content_type) == (upload_id, "r.bin", "x/y")
    assert make().stat(upload_id) == stored
    assert b"".join(make().read_range(upload_id)) == data
    with pytest.raises(NotFound):
        store.get_upload(upload_id)  # an upload no longer


def test_without_a_saved_state_the_bytes_are_hashed_once_more(store):
    upload = store.create_upload()
    writer = upload.writer(0)
    writer.write(b"first half, ")
    writer.save(None)  # what a backend without libcrypto records
    writer.close()
    append_stream([b"second half"], upload, 12, max_size=100)
    assert upload.finish().sha256 == hashlib.sha256(b"first half, second half").hexdigest()


def test_an_interrupted_append_keeps_what_arrived(make):
    store = make()
    upload = store.create_upload()

    def broken_body():
        yield b"a" * 1000
        yield b"b" * 500
        raise TruncatedBody("client went away")

    with pytest.raises(TruncatedBody):
        append_stream(broken_body(), upload, 0, max_size=1 << 20)
    upload = make().get_upload(upload.id)
    assert upload.info().offset == 1500
    append_stream([b"c" * 10], upload, 1500, max_size=1 << 20)
    stored = upload.finish()
    assert stored.sha256 == hashlib.sha256(b"a" * 1000 + b"b" * 500 + b"c" * 10).hexdigest()


def test_bytes_written_after_the_last_save_are_dropped_after_a_crash(make):
    store = make()
    upload = store.create_upload()
    append_stream([b"saved "], upload, 0, max_size=100)
    writer = upload.writer(6)
    writer.write(b"never saved")  # the process dies here: no save
    upload = make().get_upload(upload.id)
    assert upload.info().offset == 6
    append_stream([b"resumed"], upload, 6, max_size=100)
    stored = upload.finish()
    assert b"".join(make().read_range(stored.id)) == b"saved resumed"
    assert stored.sha256 == hashlib.sha256(b"saved resumed").hexdigest()


def test_declared_length(store):
    upload = store.create_upload()
    append_stream([b"12345"], upload, 0, max_size=100)
    with pytest.raises(Conflict):
        upload.declare_length(4)  # less than it holds
    upload.declare_length(8)
    assert upload.info().length == 8
    with pytest.raises(Conflict):
        upload.declare_length(9)
    with pytest.raises(Conflict) as caught:
        upload.finish()
    assert caught.value.code == "upload_incomplete"
    with pytest.raises(PayloadTooLarge):
        append_stream([b"6789"], upload, 5, max_size=100)
    assert upload.info().offset == 5  # the refused append changed nothing
    append_stream([b"678"], upload, 5, max_size=100)
    assert upload.finish().size == 8


def test_terminate_leaves_nothing(store):
    upload = store.create_upload()
    append_stream([b"x" * 100], upload, 0, max_size=1000)
    upload.terminate()
    with pytest.raises(NotFound):
        store.get_upload(upload.id)
    with pytest.raises(NotFound):
        upload.terminate()
    assert store.list() == []


def test_one_shot_path_is_create_append_finish(store):
    data = os.urandom(50_000)
    stored = store_stream([data[:100], data[100:]], store, max_size=1 << 20, filename="o.bin",
                          content_type="a/b")
    assert stored == store.stat(stored.id)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()


# --- stored files -------------------------------------------------------------------

def test_range_reads(store):
    data = bytes(range(256)) * 100
    stored = store_stream([data], store, max_size=1 << 20, filename="r", content_type="a/b")
    assert b"".join(store.read_range(stored.id, 1000, 1010)) == data[1000:1010]
    assert b"".join(store.read_range(stored.id, 25_000, None, chunk_size=7)) == data[25_000:]
    assert list(store.read_range(stored.id, 5, 5)) == []
    with store.open_reader(stored.id) as handle:
        handle.seek(300)
        assert handle.read(4) == data[300:304]
    with pytest.raises(NotFound):
        store.read_range("f" * 32, 0, 1)


def test_list_with_a_cursor_and_delete(make):
    store = make()
    ids = [store_stream([bytes([i])], store, max_size=10, filename=str(i),
                        content_type="a/b").id for i in range(7)]
    seen, cursor = [], None
    while page := make().list(after=cursor, limit=3):
        seen += [f.id for f in page]
        cursor = page[-1].id
    assert seen == ids
    store.delete(ids[3])
    assert [f.id for f in store.list(after=ids[2], limit=2)] == [ids[4], ids[5]]
    with pytest.raises(NotFound):
        store.delete(ids[3])
    with pytest.raises(NotFound):
        store.stat(ids[3])


# --- capabilities -------------------------------------------------------------------

def test_capabilities_are_checked_at_run_time(store):
    assert isinstance(store, ChecksHealth) and store.health().ok
    if isinstance(store, LocalPaths):
        stored = store_stream([b"p"], store, max_size=10, filename="p", content_type="a/b")
        path = store.local_path(stored.id)
        assert path.startswith(store.local_root()) and open(path, "rb").read() == b"p"
    assert not isinstance(store, Presigns) or store.presigned_url("0" * 32, expires_in=60)


def test_local_disk_capabilities(tmp_path):
    store = LocalStorage(str(tmp_path / "s"))
    for capability in (Adopts, ChecksHealth, Concatenates, ExpiresUploads, LocalPaths):
        assert isinstance(store, capability), capability
    assert not isinstance(store, Presigns)


def test_concatenate(store):
    if not isinstance(store, Concatenates):
        pytest.skip("no concatenation")
    parts = []
    for text in (b"one ", b"two ", b"three"):
        upload = store.create_upload(length=len(text))
        append_stream([text], upload, 0, max_size=100)
        parts.append(upload.id)
    with pytest.raises(Conflict):
        store.concatenate(parts + [store.create_upload(length=5).id])
    combined = store.concatenate(parts, metadata={"filename": "all"})
    assert combined.info().length == combined.info().offset == 13
    stored = combined.finish()
    assert stored.sha256 == hashlib.sha256(b"one two three").hexdigest()


def test_expired_uploads_are_deleted(store):
    if not isinstance(store, ExpiresUploads):
        pytest.skip("no expiry")
    idle, busy = store.create_upload(), store.create_upload()
    expires = idle.info().expires
    with store.locker.acquire(busy.id, timeout=1):  # being written: left alone
        assert store.delete_expired(now=expires + 1) == 1
    with pytest.raises(NotFound):
        idle.info()
    assert busy.info().offset == 0
    assert store.delete_expired(now=time.time()) == 0


def test_adopt(store, tmp_path):
    if not isinstance(store, Adopts):
        pytest.skip("no adoption")
    source = tmp_path / "store" / "incoming"
    source.write_bytes(b"written by nginx")
    digest = hashlib.sha256(b"written by nginx").hexdigest()
    stored = store.adopt(str(source), filename="n", content_type="a/b", sha256=digest)
    assert store.stat(stored.id) == stored and not source.exists()
    assert b"".join(store.read_range(stored.id)) == b"written by nginx"


# --- the locker ---------------------------------------------------------------------

LOCK_HOLDER = """
import sys, time
from app.storage import LocalStorage
lock = LocalStorage(sys.argv[1]).locker.acquire(sys.argv[2], timeout=5)
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("locker_of", ["store", "memory"])
def test_lock_timeout_and_release(store, locker_of):
    locker = store.locker if locker_of == "store" else MemoryLocker()
    lock = locker.acquire("a" * 32, timeout=1)
    started = time.monotonic()
    with pytest.raises(Locked) as caught:
        locker.acquire("a" * 32, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 5 and caught.value.status == 423
    with locker.acquire("b" * 32, timeout=0.1):  # other uploads are not held up
        pass
    lock.release()
    lock.release()  # twice is harmless
    locker.acquire("a" * 32, timeout=0.1).release()


def test_lock_of_a_killed_holder_in_another_process_is_free(store, tmp_path):
    if not isinstance(store, LocalStorage):
        pytest.skip("flock: local disk only (the S3 lease has its own test in test_s3.py)")
    upload_id = "c" * 32
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, store.root, upload_id],
                              stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(
                                  os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(Locked):
            store.locker.acquire(upload_id, timeout=0.3)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        store.locker.acquire(upload_id, timeout=2).release()
    finally:
        holder.kill()
        holder.wait()


# --- local disk specifics -----------------------------------------------------------

def test_old_json_metadata_is_migrated_into_the_index(tmp_path):
    root = tmp_path / "old"
    (root / "meta").mkdir(parents=True)
    (root / "blobs").mkdir()
    files = [StoredFile(f"{i:032x}", f"f{i}", 1, "0" * 64, "a/b", 1000.0 + i) for i in range(5)]
    for stored in files:
        (root / "blobs" / stored.id).write_bytes(b"x")
        (root / "meta" / f"{stored.id}.json").write_text(__import__("json").dumps(
            stored.to_record()))
    store = LocalStorage(str(root))
    assert store.list() == files and not (root / "meta").exists()
    assert LocalStorage(str(root)).list() == files


def test_a_finish_cut_short_by_a_crash_is_rolled_forward(tmp_path):
    store = LocalStorage(str(tmp_path / "s"))
    upload = store.create_upload()
    append_stream([b"almost"], upload, 0, max_size=100)
    stored = StoredFile(upload.id, "f", 6, hashlib.sha256(b"almost").hexdigest(), "a/b", 1.0)
    store.write_state(upload.info().to_record() | {"finished": stored.to_record()})
    # the process died before the rename: on the next start the finish completes
    LocalStorage(str(tmp_path / "s")).sweep_stale()
    assert store.stat(upload.id) == stored
    assert os.listdir(tmp_path / "s" / "tmp") == []
