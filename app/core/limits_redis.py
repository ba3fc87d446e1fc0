"""Limits per token shared across hosts through Redis (``SPILLWAY_REDIS_URL``).

The same three counters as :class:`app.core.limits.SqliteLimitState`, each one atomic
script.  An upload slot is a member of a sorted set scored by its lease's end; the
process holding it renews its slots every third of the lease, so a host or worker that
dies stops renewing and its slots lapse within ``LEASE_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

from .limits import BURST_SECONDS

log = logging.getLogger("spillway.limits")

LEASE_SECONDS = 30.0
_PREFIX = "spillway:limits:"

_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

_RESERVE = """
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + tonumber(ARGV[2])
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
return tostring(tat)
"""


class RedisLimitState:
    def __init__(self, url: str):
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5)
        self._take = self._redis.register_script(_TAKE_SLOT)
        self._reserve = self._redis.register_script(_RESERVE)
        self._held: dict[str, str] = {}  # slot -> token, renewed by this process
        self._held_lock = threading.Lock()
        self._renewer_pid: int | None = None

    def take_slot(self, token: str, limit: int) -> str | None:
        now = time.time()
        slot = uuid.uuid4().hex
        key = _PREFIX + "slots:" + token
        taken = self._take(keys=[key], args=[now, limit, now + LEASE_SECONDS, slot,
                                             int(LEASE_SECONDS * 2000)])
        if not taken:
            return None
        with self._held_lock:
            self._held[slot] = token
            if self._renewer_pid != os.getpid():
                self._renewer_pid = os.getpid()
                threading.Thread(target=self._renew, daemon=True,
                                 name="limit-slot-renewal").start()
        return slot

    def release_slot(self, token: str, slot: str) -> None:
        with self._held_lock:
            self._held.pop(slot, None)
        self._redis.zrem(_PREFIX + "slots:" + token, slot)

    def count_request(self, token: str, limit: int) -> float:
        now = time.time()
        minute = int(now // 60)
        key = f"{_PREFIX}rpm:{token}:{minute}"
        with self._redis.pipeline() as pipe:
            count, _ = pipe.incr(key).expire(key, 120).execute()
        return 0.0 if count <= limit else (minute + 1) * 60 - now

    def reserve_bytes(self, token: str, size: int, rate: int) -> float:
        now = time.time()
        tat = float(self._reserve(keys=[_PREFIX + "rate:" + token], args=[now, size / rate]))
        return max(0.0, tat - now - BURST_SECONDS)

    def _renew(self) -> None:
        while True:
            time.sleep(LEASE_SECONDS / 3)
            with self._held_lock:
                held = list(self._held.items())
            for slot, token in held:
                try:
                    self._redis.zadd(_PREFIX + "slots:" + token,
                                     {slot: time.time() + LEASE_SECONDS}, xx=True)
                except Exception as error:  # Redis away: the slot may lapse meanwhile
                    log.warning("could not renew an upload slot: %s", error)
