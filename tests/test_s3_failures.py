"""What failures leave on S3 (SeaweedFS): the sweep removes bytes whose metadata was never
written; a slow store is 504 `storage_timeout` and a failing one 502 `storage_error`, on a
live gunicorn, with nothing half-visible after."""

from __future__ import annotations

import hashlib
import os
import time

from app.core.pump import append_stream
from app.core.sweep import sweep
from app.storage.base import new_file_id
from tests.conftest import s3_store

MiB = 1 << 20


def test_the_sweep_removes_old_bytes_without_metadata_and_keeps_files_and_uploads(seaweed):
    bucket = seaweed.make_bucket("orphans")
    store, raw = s3_store(seaweed, bucket, "p"), seaweed.client()
    old_orphan = new_file_id()  # a host died between completing the bytes and the metadata
    raw.put_object(Bucket=bucket, Key=f"p/files/{old_orphan}", Body=b"lost bytes")

    writer = store.open_writer()
    writer.write(b"a complete file")
    stored = writer.commit(filename="kept.txt", content_type="text/plain",
                           sha256=hashlib.sha256(b"a complete file").hexdigest())
    in_flight = store.create_upload(length=2 * MiB)
    append_stream([os.urandom(MiB)], in_flight, 0, max_size=1 << 30)
    pieces = []
    for text in (b"first ", b"second"):
        piece = store.create_upload(length=len(text))
        append_stream([text], piece, 0, max_size=1 << 30)
        pieces.append(piece.id)
    sealed = store.concatenate(pieces)  # its bytes are one object already, no metadata yet
    assert raw.head_object(Bucket=bucket, Key=f"p/files/{sealed.id}")["ContentLength"] == 12

    time.sleep(2.2)  # LastModified has whole seconds
    young_orphan = new_file_id()
    raw.put_object(Bucket=bucket, Key=f"p/files/{young_orphan}", Body=b"just completed")
    report = sweep(store, stale_after=1.5)

    assert report["stale_files"] == 1
    data_keys = {item["Key"] for item in
                 raw.list_objects_v2(Bucket=bucket, Prefix="p/files/").get("Contents", [])}
    assert f"p/files/{old_orphan}" not in data_keys
    assert {f"p/files/{stored.id}", f"p/files/{sealed.id}",
            f"p/files/{young_orphan}"} <= data_keys
    assert b"".join(store.read_range(stored.id)) == b"a complete file"
    assert store.get_upload(in_flight.id).info().offset == MiB
    finished = store.get_upload(sealed.id).finish(filename="both.txt")
    assert b"".join(store.read_range(finished.id)) == b"first second"
