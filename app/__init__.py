"""Spillway: a Flask/WSGI server for multi-gigabyte uploads in constant memory.

The layers (README, "Architecture"): :mod:`app.core` (plain Python), :mod:`app.storage`
(the storage contract and its backends), :mod:`app.web` (Flask and the WSGI server glue).
Both names below are imported lazily, so that ``python -m app.client`` loads no server code.
"""

from __future__ import annotations

__all__ = ["create_app", "Settings"]


def __getattr__(name: str):
    if name == "create_app":
        from .web.factory import create_app

        return create_app
    if name == "Settings":  # `from app import Settings`, without importing Flask for others
        from .settings import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
