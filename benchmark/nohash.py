"""Spillway with the pump's SHA-256 stage replaced by a no-op: the benchmark's hash-cost probe.

Served as ``gunicorn -c gunicorn.conf.py benchmark.nohash:app`` next to the normal app, so
"raw upload with hashing" and "without" differ in nothing else.  Never deploy this: stored
files get a fake digest.  It is not a setting on purpose; no user should be able to turn
integrity off: the factory takes the hasher as an argument (``create_app(hasher=...)``).
"""

import logging

from app import create_app


class _NoHash:
    def update(self, chunk: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 64  # transfers.NO_HASH: proves the no-op reached the pump

    def state(self) -> None:
        return None


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app(hasher=lambda writer: _NoHash())
