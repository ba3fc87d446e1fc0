"""The S3 connection: configuration from ``s3://bucket/prefix`` and the standard AWS
variables, one boto3 client per process, and the store's failures as our errors.

boto3 over obstore: on the same SeaweedFS both moved a 512 MiB multipart upload and
a ranged GET at the same speed (the store is the bottleneck: 64-114 MB/s up, 400-700
MB/s down for either, depending on the part size), and only boto3 exposes what the
upload contract needs one request at a time: UploadPart/UploadPartCopy/ListParts,
ListMultipartUploads, conditional PutObject/DeleteObject and presigning.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

from ..core.errors import (Conflict, NotFound, SpillwayError, StorageFailed, StorageTimeout,
                      StorageUnavailable)

log = logging.getLogger("spillway.s3")

_MISSING = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}
_RACED = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
            "InvalidToken", "ExpiredToken"}


class StorageConfigError(RuntimeError):
    """The store named by SPILLWAY_STORAGE_URL cannot be used (a start-up error)."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> "S3Location":
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise StorageConfigError(f"SPILLWAY_STORAGE_URL: expected s3://bucket/prefix, "
                                     f"got {url!r}")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, prefix + "/" if prefix else "")


def is_missing(error: BaseException) -> bool:
    return _error_code(error) in _MISSING or _http_status(error) == 404


def _error_code(error: BaseException) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def _http_status(error: BaseException) -> int:
    return int(getattr(error, "response", {}).get("ResponseMetadata", {})
               .get("HTTPStatusCode", 0) or 0)


def translate(error: BaseException, what: str) -> SpillwayError:
    """The store's failure as the error the client gets (nothing of the store leaks)."""
    from botocore.exceptions import (ClientError, ConnectTimeoutError, EndpointConnectionError,
                                     ReadTimeoutError)

    if isinstance(error, ReadTimeoutError):
        return StorageTimeout(f"the object store did not answer in time ({what})")
    if isinstance(error, (EndpointConnectionError, ConnectTimeoutError)):
        return StorageUnavailable(f"the object store cannot be reached ({what})")
    if isinstance(error, ClientError):
        code, status = _error_code(error), _http_status(error)
        if code in _MISSING or status == 404:
            return NotFound(f"not found in the object store ({what})")
        if code in _RACED or status in (409, 412):
            return Conflict(f"another request changed it first ({what})",
                            code="concurrent_update")
        if status == 503 or code == "SlowDown":
            return StorageUnavailable(f"the object store is overloaded ({what})")
        if code in _REFUSED:
            return StorageFailed(f"the object store refused the credentials ({what}: {code})")
        return StorageFailed(f"the object store failed ({what}: {code or status})")
    return StorageUnavailable(f"the connection to the object store failed ({what})")


class S3Client:
    """``call("put_object", Key=...)``: the bucket filled in, errors translated.

    One boto3 client per process: uWSGI loads the app before it forks, and a
    connection pool must not be shared across a fork.
    """

    def __init__(self, location: S3Location, *, timeout: float, pool_size: int = 32):
        self.location = location
        self.bucket = location.bucket
        self.timeout = timeout
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._client = None
        self._pid = None

    @property
    def raw(self):
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._client, self._pid = self._new_client(), os.getpid()
        return self._client

    def _new_client(self):
        import boto3
        from botocore.config import Config

        config = Config(retries={"mode": "standard", "max_attempts": 3},
                        connect_timeout=min(5.0, self.timeout), read_timeout=self.timeout,
                        max_pool_connections=self.pool_size,
                        signature_version="s3v4",  # presigned URLs too (else SigV2 without a region)
                        # the SHA-256 comes from the stream; no second pass for a CRC per part
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        return boto3.session.Session().client("s3", config=config)

    def key(self, *parts: str) -> str:
        return self.location.prefix + "/".join(parts)

    def call(self, operation: str, **arguments):
        with translated(operation):
            return getattr(self.raw, operation)(Bucket=self.bucket, **arguments)

    def check_bucket(self) -> None:
        """At start-up: the bucket exists and the credentials may use it (a clear error)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"s3://{self.bucket}/{self.location.prefix}"
        try:
            self.raw.list_objects_v2(Bucket=self.bucket, Prefix=self.location.prefix,
                                     MaxKeys=1)
        except NoCredentialsError:
            raise StorageConfigError(f"{where}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                                     f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
        except ClientError as error:
            code = _error_code(error) or str(_http_status(error))
            hint = {"NoSuchBucket": "the bucket does not exist",
                    "InvalidAccessKeyId": "the access key is not known to the store",
                    "SignatureDoesNotMatch": "the secret key is wrong",
                    "AccessDenied": "these credentials may not list the bucket"}.get(code, code)
            raise StorageConfigError(f"{where}: {hint}") from None
        except BotoCoreError as error:
            raise StorageConfigError(f"{where}: cannot reach the object store at "
                                     f"{self.raw.meta.endpoint_url}: {error}") from None


@contextmanager
def translated(what: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise translate(error, what) from error
