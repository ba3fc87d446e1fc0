"""Concatenation on S3 (tus ``Upload-Concat: final``): the sources' bytes are copied inside
the store with UploadPartCopy, so none pass through the host that does it -- except
pieces under S3's 5 MiB minimum part size, which are gathered in memory (at most one
part) until they make a part.  The SHA-256 continues the first source's saved state;
every later source is read once to hash it (SHA-256 states cannot be joined).

A source still in a multipart upload is first completed into one object (its state
then says ``sealed``: it takes no more bytes, and terminating it deletes the object).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import Conflict, SpillwayError
from ..core.sha256 import Sha256, resume_sha256
from .s3_reader import read_object_range
from .s3_uploads import S3Upload, empty_state

if TYPE_CHECKING:
    from .s3 import S3Storage

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_COPY_SIZE = 5 * 1024 ** 3  # S3's largest part
READ_CHUNK = 1 << 20


def concatenate_uploads(store: "S3Storage", upload_ids: list[str],
                        metadata: dict | None) -> S3Upload:
    sources = [_source(store, S3Upload(store, upload_id)) for upload_id in upload_ids]
    total = sum(size for _, size, _ in sources)
    combined = store.create_upload(length=total, metadata=metadata)
    info, _, etag = combined.load()
    assembler = _PartAssembler(store, combined.id)
    try:
        first_key, first_size, first_state = sources[0]
        hasher = resume_sha256(first_state, lambda: read_object_range(
            store.client, first_key, 0, first_size, READ_CHUNK))
        for number, (key, size, _) in enumerate(sources):
            assembler.add(key, size, None if number == 0 else hasher)
        assembler.complete()
        store.put_state(info.moved(offset=total, sha256_state=hasher.state(), expires=None),
                        empty_state() | {"sealed": True}, etag)
    except BaseException:
        assembler.abort()
        combined.terminate()
        raise
    return combined


def _source(store: "S3Storage", upload: S3Upload) -> tuple[str | None, int, str | None]:
    """(key of one object with the source's bytes, their size, the saved hash state)."""
    info, state, etag = upload.load()
    if info.length is None or info.offset != info.length:
        raise Conflict(f"upload {upload.id} is not complete", code="upload_incomplete")
    key = upload.bytes_object(state)
    if state["mpu"] is not None:  # completed just now: record that it is one object
        store.put_state(info.moved(expires=None),
                        empty_state() | {"sealed": True}, etag)
        store.delete_quietly(state["tail"])
    return key, info.offset, info.sha256_state


class _PartAssembler:
    """Parts of the combined upload's multipart upload, in order."""

    def __init__(self, store: "S3Storage", upload_id: str):
        self.store = store
        self.key = store.data_key(upload_id)
        self.mpu: str | None = None
        self.parts: list = []
        self.buffer = bytearray()

    def add(self, key: str | None, size: int, hasher: Sha256 | None) -> None:
        position = 0
        part_size = self.store.part_size
        while position < size:
            left = size - position
            if self.buffer or left < MIN_PART_SIZE:  # through memory, up to a part
                take = min(left, part_size - len(self.buffer))
                for chunk in read_object_range(self.store.client, key, position,
                                               position + take, READ_CHUNK):
                    self.buffer += chunk
                    if hasher is not None:
                        hasher.update(chunk)
                if len(self.buffer) >= part_size:
                    self._upload_buffer()
            else:  # inside the store; a remainder under the minimum goes through memory
                take = min(left, MAX_COPY_SIZE)
                if 0 < left - take < MIN_PART_SIZE:
                    take = left - MIN_PART_SIZE
                self._copy(key, position, take)
                if hasher is not None:
                    for chunk in read_object_range(self.store.client, key, position,
                                                   position + take, READ_CHUNK):
                        hasher.update(chunk)
            position += take

    def complete(self) -> None:
        """The bytes as one object ``files/<id>``."""
        if self.mpu is None:  # under one part in all: one PUT
            self.store.client.call("put_object", Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._upload_buffer()
        self.store.complete(self.key, self.mpu, self.parts)
        self.mpu = None

    def abort(self) -> None:
        if self.mpu is not None:
            try:
                self.store.client.call("abort_multipart_upload", Key=self.key, UploadId=self.mpu)
            except SpillwayError:  # the sweep aborts multipart uploads nothing records
                pass
        self.store.delete_quietly(self.key)

    def _begin(self) -> str:
        if self.mpu is None:
            self.mpu = self.store.client.call("create_multipart_upload",
                                              Key=self.key)["UploadId"]
        return self.mpu

    def _upload_buffer(self) -> None:
        answer = self.store.client.call("upload_part", Key=self.key, UploadId=self._begin(),
                                        PartNumber=len(self.parts) + 1,
                                        Body=bytes(self.buffer))
        self.parts.append([answer["ETag"], len(self.buffer)])
        self.buffer.clear()

    def _copy(self, key: str, start: int, count: int) -> None:
        answer = self.store.client.call(
            "upload_part_copy", Key=self.key, UploadId=self._begin(),
            PartNumber=len(self.parts) + 1, CopySourceRange=f"bytes={start}-{start + count - 1}",
            CopySource={"Bucket": self.store.client.bucket, "Key": key})
        self.parts.append([answer["CopyPartResult"]["ETag"], count])
