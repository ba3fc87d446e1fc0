"""Spillway: a Flask/WSGI server for multi-gigabyte uploads in constant memory."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .settings import Settings

__all__ = ["create_app", "Settings"]

log = logging.getLogger("spillway")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the application; settings default to the ``SPILLWAY_*`` environment."""
    # imported here, not at the top, so that `python -m app.client` loads no server code
    from flask import Flask

    from .body import check_request_head
    from .errors import register_error_handlers
    from .servers import announce_close
    from .settings import Settings
    from .storage import open_storage

    settings = settings or Settings.from_env()
    settings.validate()
    app = Flask(__name__)
    app.json.sort_keys = False
    app.extensions["spillway"] = {
        "settings": settings,
        "storage": open_storage(settings),
        "threaded_pump": _threads_available(),
    }

    from .routes import auth_check, files, health, imports, offload, proxy, tus, uploads

    for blueprint in (uploads.bp, files.bp, health.bp, proxy.bp, imports.bp, auth_check.bp,
                      tus.bp):
        app.register_blueprint(blueprint)
    if settings.offload_enabled:  # otherwise the adopt routes do not exist at all
        app.register_blueprint(offload.bp)
    register_error_handlers(app)
    app.before_request(check_request_head)
    app.after_request(announce_close)

    if not settings.auth_enabled:
        log.warning("SPILLWAY_TOKENS is empty: the server is OPEN, anyone who can reach it "
                    "may upload, read and delete files")
    return app


def __getattr__(name: str):
    if name == "Settings":  # `from app import Settings`, without importing Flask for others
        from .settings import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _threads_available() -> bool:
    """False only under a uWSGI started without threads, where a hash thread would never run."""
    try:
        import uwsgi
    except ImportError:
        return True
    options = uwsgi.opt
    threads = options.get("threads", b"1")
    if isinstance(threads, (bytes, str)) and threads.strip() not in (b"", "", b"1", "1"):
        return True
    return bool(options.get("enable-threads"))
