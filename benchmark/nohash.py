"""Spillway with the pump's SHA-256 stage replaced by a no-op: the benchmark's hash-cost probe.

Served as ``gunicorn -c gunicorn.conf.py benchmark.nohash:app`` next to the normal app, so
"raw upload with hashing" and "without" differ in nothing else.  Never deploy this: stored
files get a fake digest.  It is not a setting on purpose; no user should be able to turn
integrity off.
"""

from app.core import pump


class _NoHash:
    def update(self, chunk: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 64  # transfers.NO_HASH: proves the patch reached the pump

    def state(self) -> None:
        return None


pump.new_sha256 = lambda writer: _NoHash()  # FileSink looks it up when each upload starts

from wsgi import app  # noqa: E402  (the patch must be in place first)
