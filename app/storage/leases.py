"""Upload locks across hosts: leases that a dead holder cannot keep.

:class:`S3Locker` takes a lease object ``locks/<id>`` with ``If-None-Match: *``
(exactly one of any number of racing hosts gets it).  The holder renews it every
third of the lease time with ``If-Match`` on the ETag it wrote, and releases it
with a conditional delete.  A lease nobody renewed for ``lease_time`` is stale, and
a waiter takes it over with ``If-Match`` on the stale ETag (again exactly one
wins).  Staleness is judged by the store's clock only -- the lease's Last-Modified
against the Date of the store's own answer -- so hosts' clocks do not matter.

:class:`RedisLocker` does the same with ``SET NX PX`` and compare-and-set scripts,
for deployments that already run Redis (``SPILLWAY_REDIS_URL``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Callable

from ..core.errors import Conflict, Locked, NotFound

log = logging.getLogger("spillway.leases")


def _locked(upload_id: str, timeout: float) -> Locked:
    return Locked(f"upload {upload_id} is busy: another request held its lock for "
                  f"more than {timeout:g} s")


class Lease:
    """A held lock, renewed on a daemon thread until released."""

    def __init__(self, renew: Callable[[], bool], release: Callable[[], None],
                 interval: float):
        self._renew, self._release = renew, release
        self._stopped = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._keep, args=(interval,), daemon=True,
                                        name="lease-renewal")
        self._thread.start()

    def _keep(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            try:
                if not self._renew():
                    self.lost = True
                    log.warning("an upload lease was taken over: its holder stalled too long")
                    return
            except Exception as error:  # the store is failing: try again next interval
                log.warning("could not renew an upload lease: %s", error)

    def release(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join()
        if not self.lost:
            try:
                self._release()
            except Exception as error:  # it expires by itself
                log.warning("could not release an upload lease: %s", error)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _wait_loop(upload_id: str, timeout: float, attempt: Callable[[], Lease | None]) -> Lease:
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        lease = attempt()
        if lease is not None:
            return lease
        left = deadline - time.monotonic()
        if left <= 0:
            raise _locked(upload_id, timeout)
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.2)


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class S3Locker:
    def __init__(self, client, *, lease_time: float = 30.0):
        self.client = client
        self.lease_time = lease_time

    def acquire(self, upload_id: str, timeout: float) -> Lease:
        return _wait_loop(upload_id, timeout, lambda: self._try(upload_id))

    def _try(self, upload_id: str) -> Lease | None:
        key = self.client.key("locks", upload_id)
        try:
            etag = self._write(key, {"IfNoneMatch": "*"})
        except Conflict:
            etag = self._take_over_if_stale(key)
            if etag is None:
                return None
        return self._lease(key, etag)

    def _take_over_if_stale(self, key: str) -> str | None:
        try:
            head = self.client.call("head_object", Key=key)
        except NotFound:  # released meanwhile: the next attempt creates it
            return None
        store_now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (store_now - head["LastModified"]).total_seconds()
        if age <= self.lease_time + 1:  # Last-Modified has whole seconds
            return None
        try:
            return self._write(key, {"IfMatch": head["ETag"]})
        except (Conflict, NotFound):  # another waiter took it first
            return None

    def _write(self, key: str, condition: dict) -> str:
        body = json.dumps({"holder": _holder(), "lease_time": self.lease_time}).encode()
        return self.client.call("put_object", Key=key, Body=body, **condition)["ETag"]

    def _lease(self, key: str, etag: str) -> Lease:
        current = [etag]

        def renew() -> bool:
            try:
                current[0] = self._write(key, {"IfMatch": current[0]})
                return True
            except (Conflict, NotFound):
                return False

        def release() -> None:
            try:
                self.client.call("delete_object", Key=key, IfMatch=current[0])
            except (Conflict, NotFound):
                pass

        return Lease(renew, release, self.lease_time / 3)


_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end"""


class RedisLocker:
    def __init__(self, url: str, *, lease_time: float = 30.0, namespace: str = "spillway"):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.lease_time = lease_time
        self.namespace = namespace
        self._renew_script = self.redis.register_script(_RENEW)
        self._release_script = self.redis.register_script(_RELEASE)

    def acquire(self, upload_id: str, timeout: float) -> Lease:
        return _wait_loop(upload_id, timeout, lambda: self._try(upload_id))

    def _try(self, upload_id: str) -> Lease | None:
        key, token = f"{self.namespace}:lock:{upload_id}", _holder()
        milliseconds = int(self.lease_time * 1000)
        if not self.redis.set(key, token, nx=True, px=milliseconds):
            return None
        return Lease(lambda: bool(self._renew_script(keys=[key], args=[token, milliseconds])),
                     lambda: self._release_script(keys=[key], args=[token]),
                     self.lease_time / 3)
