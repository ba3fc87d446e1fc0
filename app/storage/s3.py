"""Storage on an S3-compatible object store, shared by any number of hosts.

Layout under ``s3://bucket/prefix/``::

    files/<id>     stored bytes (one object, written by a multipart upload as they arrive)
    meta/<id>      the stored file's metadata (JSON); a file exists for readers iff this does
    uploads/...    uploads in progress (:mod:`.s3_uploads`)
    locks/<id>     upload leases (:mod:`.leases`)

The bytes are completed before the metadata is written, and the metadata is
deleted before the bytes, so a reader never finds metadata without bytes.
Listing is one ListObjectsV2 on ``meta/`` starting after the cursor's key (its
cost does not grow with the number of files) plus one small GET per listed
file, made in parallel.
"""

from __future__ import annotations

import ctypes

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterator
from urllib.parse import quote

from ..core.errors import Conflict, Locked, NotFound, SpillwayError
from .base import StoredFile, UploadInfo, is_file_id, new_file_id
from .contract import Health
from .s3_client import S3Client, S3Location
from .s3_reader import RangedObjectReader, read_object_range
from .s3_uploads import S3Upload, S3UploadWriter, empty_state, new_tail_token

log = logging.getLogger("spillway.s3")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
UPLOAD_TTL = 24 * 3600


class S3Storage:
    def __init__(self, client: S3Client, *, part_size: int, locker,
                 upload_ttl: float = UPLOAD_TTL):
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"an S3 part must be at least {MIN_PART_SIZE} bytes")
        self.client = client
        self.part_size = part_size
        self.upload_ttl = upload_ttl
        self.locker = locker
        self._pool_lock = threading.Lock()
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    # keys ------------------------------------------------------------------
    def data_key(self, file_id: str) -> str:
        return self.client.key("files", file_id)

    def meta_key(self, file_id: str) -> str:
        return self.client.key("meta", file_id)

    def info_key(self, upload_id: str) -> str:
        return self.client.key("uploads", f"{upload_id}.info")

    def tail_key(self, upload_id: str) -> str:
        return self.client.key("uploads", f"{upload_id}.part.{new_tail_token()}")

    # uploads ---------------------------------------------------------------
    def create_upload(self, *, length: int | None = None,
                      metadata: dict | None = None) -> S3Upload:
        info = UploadInfo(id=new_file_id(), length=length, metadata=dict(metadata or {}),
                          created=time.time())
        self.put_state(info, empty_state(), None)
        return S3Upload(self, info.id)

    def get_upload(self, upload_id: str) -> S3Upload:
        self._check_id(upload_id)
        upload = S3Upload(self, upload_id)
        upload.info()
        return upload

    def open_writer(self) -> S3UploadWriter:
        info = UploadInfo(id=new_file_id(), created=time.time())
        return S3UploadWriter(S3Upload(self, info.id), info, empty_state(), None)

    def put_state(self, info: UploadInfo, state: dict, etag: str | None) -> str:
        """Write an upload's .info: If-Match ``etag``, or If-None-Match: * when None."""
        record = info.to_record() | {"s3": state}
        record.pop("expires", None)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            return self.client.call("put_object", Key=self.info_key(info.id),
                                    Body=json.dumps(record).encode(), **condition)["ETag"]
        except Conflict:
            raise Conflict(f"upload {info.id} was changed by another request",
                           code="concurrent_update") from None

    def complete(self, key: str, upload_id: str, parts: list) -> None:
        self.client.call("complete_multipart_upload", Key=key, UploadId=upload_id,
                         MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag}
                                                    for n, (etag, _) in enumerate(parts, 1)]})

    def forget_upload(self, upload_id: str, tail: str | None) -> None:
        """After finishing: the upload's state goes (best effort: the sweep is the backstop)."""
        self.delete_quietly(self.info_key(upload_id))
        self.delete_quietly(tail)

    def discard_upload(self, upload_id: str, state: dict, *, persisted: bool) -> None:
        """Terminate: nothing of the upload is left (the multipart upload aborted first)."""
        if state.get("mpu"):
            try:
                self.client.call("abort_multipart_upload", Key=self.data_key(upload_id),
                                 UploadId=state["mpu"])
            except NotFound:
                pass
        if state.get("sealed") and not self._exists(self.meta_key(upload_id)):
            self.delete_quietly(self.data_key(upload_id))
        if state.get("tail"):
            self.client.call("delete_object", Key=state["tail"])
        if persisted:
            self.client.call("delete_object", Key=self.info_key(upload_id))

    def delete_quietly(self, key: str | None) -> None:
        if key is None:
            return
        try:
            self.client.call("delete_object", Key=key)
        except SpillwayError as error:
            log.warning("could not delete %s: %s", key, error.message)

    # stored files ----------------------------------------------------------
    def put_meta(self, stored: StoredFile) -> None:
        self.client.call("put_object", Key=self.meta_key(stored.id),
                         Body=json.dumps(stored.to_record()).encode(),
                         ContentType="application/json")

    def stat(self, file_id: str) -> StoredFile:
        self._check_id(file_id)
        try:
            body = self.client.call("get_object", Key=self.meta_key(file_id))["Body"].read()
        except NotFound:
            raise NotFound(f"no file with id {file_id}") from None
        return StoredFile.from_record(json.loads(body))

    def open_reader(self, file_id: str) -> BinaryIO:
        stored = self.stat(file_id)
        return RangedObjectReader(self.client, self.data_key(file_id), stored.size)

    def read_range(self, file_id: str, start: int = 0, stop: int | None = None,
                   chunk_size: int = 1 << 20) -> Iterator[bytes]:
        size = self.stat(file_id).size
        stop = size if stop is None else min(stop, size)
        return read_object_range(self.client, self.data_key(file_id), start, stop, chunk_size)

    def list(self, *, after: str | None = None, limit: int = 100) -> list[StoredFile]:
        arguments = {"Prefix": self.client.key("meta", ""), "MaxKeys": limit}
        if after:
            arguments["StartAfter"] = self.meta_key(after)
        keys = [item["Key"] for item in
                self.client.call("list_objects_v2", **arguments).get("Contents", [])]
        ids = [key.rpartition("/")[2] for key in keys]
        found = self._executor().map(self._stat_or_none, ids)
        return [stored for stored in found if stored is not None]

    def _stat_or_none(self, file_id: str) -> StoredFile | None:
        try:
            return self.stat(file_id)
        except NotFound:  # deleted between the listing and the read
            return None

    def delete(self, file_id: str) -> None:
        self.stat(file_id)  # NotFound unless it exists
        self.client.call("delete_object", Key=self.meta_key(file_id))  # invisible from here
        self.client.call("delete_object", Key=self.data_key(file_id))

    # capabilities ----------------------------------------------------------
    def concatenate(self, upload_ids: list[str], *, metadata: dict | None = None) -> S3Upload:
        from .s3_concat import concatenate_uploads

        return concatenate_uploads(self, upload_ids, metadata)

    def presigned_url(self, file_id: str, *, expires_in: float) -> str:
        """A GET URL for the bytes that answers with the file's type and name."""
        params = {"Bucket": self.client.bucket, "Key": self.data_key(file_id)}
        try:
            stored = self.stat(file_id)
            params |= {"ResponseContentType": stored.content_type,
                       "ResponseContentDisposition":
                           "attachment; filename*=UTF-8''" + quote(stored.filename, safe="")}
        except NotFound:
            pass  # a URL that will answer 404
        return self.client.raw.generate_presigned_url("get_object", Params=params,
                                                      ExpiresIn=int(expires_in))

    def delete_expired(self, now: float | None = None) -> int:
        """Terminate uploads idle for ``upload_ttl``; abort multipart uploads that no upload
        records (a host died between creating and recording one)."""
        now = time.time() if now is None else now
        removed, recorded = 0, set()
        for upload_id in self.upload_ids():
            try:
                info, state, _ = S3Upload(self, upload_id).load()
                recorded.add(state["mpu"])
                if info.expires is not None and info.expires < now:
                    with self.locker.acquire(upload_id, timeout=0):
                        self.discard_upload(upload_id, state, persisted=True)
                        removed += 1
            except (NotFound, Locked):
                continue
        listed = self.client.call("list_multipart_uploads", Prefix=self.client.key("files", ""))
        for pending in listed.get("Uploads", []):
            if pending["UploadId"] not in recorded and \
                    pending["Initiated"].timestamp() + self.upload_ttl < now:
                try:
                    self.client.call("abort_multipart_upload", Key=pending["Key"],
                                     UploadId=pending["UploadId"])
                except NotFound:
                    pass
        return removed

    def upload_ids(self) -> Iterator[str]:
        """Every unfinished upload's id (its state is ``uploads/<id>.info``)."""
        for key in self._keys(self.client.key("uploads", "")):
            upload_id, _, kind = key.rpartition("/")[2].partition(".")
            if kind == "info" and is_file_id(upload_id):
                yield upload_id

    def sweep_stale(self, older_than: float) -> int:
        """Remove ``files/<id>`` objects with no metadata and no upload, last written over
        ``older_than`` seconds ago: a host that died between completing the bytes and
        writing the metadata leaves one (invisible, but billed)."""
        cutoff, removed = time.time() - older_than, 0
        for item in self._objects(self.client.key("files", "")):
            file_id = item["Key"].rpartition("/")[2]
            if item["LastModified"].timestamp() >= cutoff or not is_file_id(file_id):
                continue
            if self._exists(self.meta_key(file_id)) or self._exists(self.info_key(file_id)):
                continue  # a stored file, or an upload (sealed by concatenation) in flight
            self.delete_quietly(item["Key"])
            removed += 1
        return removed

    def health(self) -> Health:
        try:
            self.client.call("list_objects_v2", Prefix=self.client.key("meta", ""), MaxKeys=1)
        except SpillwayError as error:
            return Health(False, error.code)
        return Health(True, "ok")

    # helpers ---------------------------------------------------------------
    def _keys(self, prefix: str) -> Iterator[str]:
        return (item["Key"] for item in self._objects(prefix))

    def _objects(self, prefix: str) -> Iterator[dict]:
        token = None
        while True:
            arguments = {"Prefix": prefix} | ({"ContinuationToken": token} if token else {})
            page = self.client.call("list_objects_v2", **arguments)
            yield from page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not token:
                return

    def _exists(self, key: str) -> bool:
        try:
            self.client.call("head_object", Key=key)
            return True
        except NotFound:
            return False

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None or self._pool[0] != os.getpid():
                self._pool = (os.getpid(), ThreadPoolExecutor(16, thread_name_prefix="s3-list"))
            return self._pool[1]

    @staticmethod
    def _check_id(file_id: str) -> None:
        if not is_file_id(file_id):
            raise NotFound(f"no file with id {file_id}")


def open_s3_storage(url: str, *, part_size: int, timeout: float, lease_time: float,
                    redis_url: str = "", upload_ttl: float = UPLOAD_TTL) -> S3Storage:
    """The store at ``url`` (s3://bucket/prefix), its bucket checked now: a wrong setting
    stops the server at start-up, not at the first upload."""
    from .leases import RedisLocker, S3Locker

    client = S3Client(S3Location.parse(url), timeout=timeout)
    client.check_bucket()
    return_freed_buffers()
    locker = (RedisLocker(redis_url, lease_time=lease_time) if redis_url
              else S3Locker(client, lease_time=lease_time))
    return S3Storage(client, part_size=part_size, locker=locker, upload_ttl=upload_ttl)


def return_freed_buffers() -> None:
    """Keep glibc's mmap threshold at 1 MiB: blocks above it are mapped and unmapped as
    they come and go.  By default it rises to the largest block freed (up to 32 MiB), after
    which part buffers come from the heap and the RSS keeps their high-water mark (the
    S3 benchmark: +48..75 MiB for 16 MiB parts, +52..54 with the threshold fixed)."""
    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; not glibc: no mallopt
    except (OSError, AttributeError):
        pass
