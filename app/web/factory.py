"""The application factory: settings, services, blueprints, error handlers."""

from __future__ import annotations

import logging

from flask import Flask

from ..core.pump import Hasher, new_sha256
from ..settings import Settings
from ..storage import open_storage
from .errors import register_error_handlers
from .request_body import check_request_head
from .routes import (auth_check, baseline, files, health, imports, offload, proxy, tus,
                     uploads)
from .servers.uwsgi import announce_close, threads_available

log = logging.getLogger("spillway")


def create_app(settings: Settings | None = None, *, hasher: Hasher = new_sha256) -> Flask:
    """Build the application; settings default to the ``SPILLWAY_*`` environment.

    ``hasher`` starts the running SHA-256 of each stored upload (the benchmark's no-hash
    variant, benchmark/nohash.py, hands in one that does nothing; never a setting).
    """
    settings = settings or Settings.from_env()
    settings.validate()
    app = Flask("app")
    app.json.sort_keys = False
    app.extensions["spillway"] = {
        "settings": settings,
        "storage": open_storage(settings),
        "threaded_pump": threads_available(),
        "hasher": hasher,
    }
    for blueprint in (uploads.bp, files.bp, health.bp, proxy.bp, imports.bp, auth_check.bp,
                      tus.bp):
        app.register_blueprint(blueprint)
    if settings.enable_baseline:  # the benchmark's request.files route; otherwise a 404
        app.register_blueprint(baseline.bp)
    if settings.offload_enabled:  # otherwise the adopt routes do not exist at all
        app.register_blueprint(offload.bp)
    register_error_handlers(app)
    app.before_request(check_request_head)
    app.after_request(announce_close)

    if not settings.auth_enabled:
        log.warning("SPILLWAY_TOKENS is empty: the server is OPEN, anyone who can reach it "
                    "may upload, read and delete files")
    return app
