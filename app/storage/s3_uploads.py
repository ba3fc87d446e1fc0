"""Uploads on S3: the bytes go into one multipart upload while they arrive; the state
lives in the store, so any host can continue an upload.

Per upload, under the store's prefix::

    uploads/<id>.info          UploadInfo + the multipart upload's id, its recorded parts
                               (ETag, size) and the tail object; rewritten only with
                               If-Match on the ETag it was read at (If-None-Match: * to create)
    uploads/<id>.part.<token>  the tail: bytes after the last full part (an S3 part must
                               be >= 5 MiB unless it is the last), so a PATCH may end anywhere
    files/<id>                 the multipart upload's key: the stored bytes once completed

The offset is the recorded parts plus the tail.  Parts sent after the last save are
not recorded: the next append overwrites them (same part numbers), and completing
uses the recorded ETags, so a stale writer whose lock expired cannot slip bytes in.
A one-shot upload (``open_writer``) writes no ``.info`` at all: it is created, written
and completed (or aborted) by one request.  A file smaller than a part is one
PutObject carrying its ``ChecksumSHA256``; a larger one is completed from its parts.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator

from ..core.errors import Conflict, NotFound, NotImplementedHere, PayloadTooLarge, SpillwayError
from .base import StoredFile, UploadInfo
from .contract import OneShotWriter
from .s3_reader import read_object_range
from ..core.sha256 import resume_sha256

if TYPE_CHECKING:
    from .s3 import S3Storage

log = logging.getLogger("spillway.s3")


def empty_state() -> dict:
    return {"mpu": None, "parts": [], "tail": None, "tail_size": 0, "sealed": False}


class S3Upload:
    def __init__(self, store: "S3Storage", upload_id: str):
        self._store = store
        self.id = upload_id

    def load(self) -> tuple[UploadInfo, dict, str]:
        """(info, S3 state, ETag of the .info object); NotFound once finished or gone."""
        response = self._store.client.call("get_object", Key=self._store.info_key(self.id))
        record = json.loads(response["Body"].read())
        last_write = response["LastModified"].timestamp()
        info = UploadInfo.from_record(record).moved(expires=last_write + self._store.upload_ttl)
        return info, record["s3"], response["ETag"]

    def info(self) -> UploadInfo:
        return self.load()[0]

    def writer(self, offset: int) -> "S3UploadWriter":
        info, state, etag = self.load()
        info.check_offset(offset)
        return S3UploadWriter(self, info, state, etag)

    def declare_length(self, length: int) -> None:
        info, state, etag = self.load()
        self._store.put_state(info.with_length(length), state, etag)

    def read(self, start: int = 0, stop: int | None = None,
             chunk_size: int = 1 << 20) -> Iterator[bytes]:
        info, state, _ = self.load()
        stop = info.offset if stop is None else min(stop, info.offset)
        if state["sealed"]:
            return read_object_range(self._store.client, self._store.data_key(self.id),
                                     start, stop, chunk_size)
        in_parts = sum(size for _, size in state["parts"])
        if start < in_parts and start < stop:
            raise NotImplementedHere("S3 cannot read back the parts of an unfinished "
                                     "multipart upload", code="not_readable_yet")
        return read_object_range(self._store.client, state["tail"], start - in_parts,
                                 stop - in_parts, chunk_size)

    def finish(self, *, filename: str | None = None, content_type: str | None = None,
               sha256: str | None = None) -> StoredFile:
        info, state, etag = self.load()
        if info.length is not None and info.offset != info.length:
            raise Conflict(f"upload {self.id} holds {info.offset} of {info.length} bytes",
                           code="upload_incomplete")
        if sha256 is None:
            sha256 = resume_sha256(info.sha256_state,
                                   lambda: self.read(0, info.offset)).hexdigest()
        store, key = self._store, self._store.data_key(self.id)
        holder = self.bytes_object(state)
        if holder is None:
            store.client.call("put_object", Key=key, Body=b"")
        elif holder != key:  # the tail alone: copied inside the store
            store.client.call("copy_object", Key=key,
                              CopySource={"Bucket": store.client.bucket, "Key": holder})
        stored = StoredFile(id=self.id, filename=filename or info.filename, size=info.offset,
                            sha256=sha256, content_type=content_type or info.content_type,
                            created=time.time())
        store.put_meta(stored)
        store.forget_upload(self.id, state["tail"])
        return stored

    def bytes_object(self, state: dict) -> str | None:
        """The key of one object holding all the upload's bytes (None: it has none).  A
        multipart upload is completed into ``files/<id>`` for it, its tail as the last part
        (copied inside the store); the caller records the state as ``sealed`` then."""
        store, key = self._store, self._store.data_key(self.id)
        if state["sealed"]:
            return key
        if state["mpu"] is None:
            return state["tail"]
        parts = list(state["parts"])
        if state["tail"]:
            copied = store.client.call(
                "upload_part_copy", Key=key, UploadId=state["mpu"], PartNumber=len(parts) + 1,
                CopySource={"Bucket": store.client.bucket, "Key": state["tail"]})
            parts.append([copied["CopyPartResult"]["ETag"], state["tail_size"]])
        store.complete(key, state["mpu"], parts)
        return key

    def terminate(self) -> None:
        _, state, _ = self.load()
        self._store.discard_upload(self.id, state, persisted=True)


class S3UploadWriter(OneShotWriter):
    """Appends: full parts go to the store on a sender thread while the next one fills
    (at most two parts in memory); the tail stays in memory until ``save``."""

    def __init__(self, upload: S3Upload, info: UploadInfo, state: dict, etag: str | None):
        self.upload = upload
        self.id = info.id
        self.offset = info.offset
        self.sha256_state = info.sha256_state
        self._store = upload._store
        self._info = info
        self._state = dict(state, parts=list(state["parts"]))
        self._etag = etag  # None: a one-shot upload with no .info
        self._buffer = bytearray()
        self._sending: Future | None = None
        self._sender: ThreadPoolExecutor | None = None
        if state["sealed"]:
            raise Conflict(f"upload {self.id} is sealed (concatenated)", code="upload_sealed")
        if state["tail"]:  # continue the tail: it and what follows make the next part
            self._buffer += b"".join(read_object_range(self._store.client, state["tail"], 0,
                                                       state["tail_size"], 1 << 20))

    def write(self, chunk: bytes) -> None:
        length = self._info.length
        if length is not None and self.offset + len(chunk) > length:
            raise PayloadTooLarge(f"upload {self.id} is declared as {length} bytes",
                                  code="upload_length_exceeded")
        self._buffer += chunk
        self.offset += len(chunk)
        part_size = self._store.part_size
        while len(self._buffer) >= part_size:
            # the buffer itself becomes the part (botocore takes a bytearray): a copy of
            # each part would add a part's worth of memory per upload
            part, self._buffer = self._buffer, self._buffer[part_size:]
            del part[part_size:]
            self._send(part)

    def _send(self, part: bytearray) -> None:
        self._wait_for_send()
        if self._state["mpu"] is None:
            self._state["mpu"] = self._store.client.call(
                "create_multipart_upload", Key=self._store.data_key(self.id))["UploadId"]
            if self._etag is not None:  # recorded at once: a crash cannot orphan it
                self._etag = self._store.put_state(self._info, self._state, self._etag)
        if self._sender is None:
            self._sender = ThreadPoolExecutor(1, thread_name_prefix="s3-part")
        number = len(self._state["parts"]) + 1
        self._sending = self._sender.submit(self._upload_part, number, part)

    def _upload_part(self, number: int, part: bytearray) -> list:
        answer = self._store.client.call("upload_part", Key=self._store.data_key(self.id),
                                         UploadId=self._state["mpu"], PartNumber=number,
                                         Body=part)
        return [answer["ETag"], len(part)]

    def _wait_for_send(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None:
            self._state["parts"].append(sending.result())

    def save(self, sha256_state: str | None) -> UploadInfo:
        self._wait_for_send()
        store, old_tail = self._store, self._state["tail"]
        tail = store.tail_key(self.id) if self._buffer else None
        if tail:
            store.client.call("put_object", Key=tail, Body=bytes(self._buffer))
        info = self._info.moved(offset=self.offset, sha256_state=sha256_state, expires=None)
        state = dict(self._state, tail=tail, tail_size=len(self._buffer))
        try:
            self._etag = store.put_state(info, state, self._etag)
        except BaseException:
            store.delete_quietly(tail)
            raise
        store.delete_quietly(old_tail)
        self._info, self._state = info, state
        return info

    def commit(self, *, filename: str, content_type: str, sha256: str) -> StoredFile:
        store, key = self._store, self._store.data_key(self.id)
        try:
            if self._state["mpu"] is None:  # smaller than a part: one PUT, checked by the store
                store.client.call("put_object", Key=key, Body=bytes(self._buffer),
                                  ContentType=content_type,
                                  ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode())
            else:
                if self._buffer:
                    part, self._buffer = self._buffer, bytearray()
                    self._send(part)
                self._wait_for_send()
                store.complete(key, self._state["mpu"], self._state["parts"])
            self._state["sealed"] = True  # from here on the bytes are one object
            stored = StoredFile(id=self.id, filename=filename, size=self.offset, sha256=sha256,
                                content_type=content_type, created=time.time())
            store.put_meta(stored)
        except BaseException:
            self.abort()
            raise
        if self._etag is not None:
            store.forget_upload(self.id, self._state["tail"])
        self.close()
        return stored

    def close(self) -> None:
        try:
            self._wait_for_send()
        except BaseException:
            pass  # the failure was raised to the writer's caller already
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None

    def abort(self) -> None:
        self.close()
        try:
            self._store.discard_upload(self.id, self._state, persisted=self._etag is not None)
        except NotFound:
            pass
        except SpillwayError as error:  # the store is failing: the sweep and lifecycle rule
            log.warning("could not clean up upload %s: %s", self.id, error.message)


def new_tail_token() -> str:
    return secrets.token_hex(6)
