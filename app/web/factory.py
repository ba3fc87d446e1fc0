"""The application factory: settings, services, blueprints, error handlers."""

from __future__ import annotations

import logging
import os
from typing import Sequence

from flask import Flask

from ..core import metrics_files
from ..core.events import Lifecycle
from ..core.hooks import HookCallable, Hooks, Webhook
from ..core.lifecycle import ObservedStore
from ..core.limits import Limits, SqliteLimitState
from ..core.metrics import metrics
from ..core.pump import Hasher, new_sha256
from ..core.sweep import PeriodicSweep, sweep
from ..settings import Settings
from ..storage import open_storage
from . import cli, observe
from .admission import release_upload_slot
from .errors import register_error_handlers
from .request_body import check_request_head
from .routes import (auth_check, baseline, files, health, imports, metrics as metrics_route,
                     offload, page, proxy, tus, uploads)
from .servers.uwsgi import announce_close, reload_problem, threads_available, uwsgi_master_pid

log = logging.getLogger("spillway")


def create_app(settings: Settings | None = None, *, hasher: Hasher = new_sha256,
               hooks: Sequence[HookCallable] = ()) -> Flask:
    """Build the application; settings default to the ``SPILLWAY_*`` environment.

    ``hasher`` starts the running SHA-256 of each stored upload (the benchmark's no-hash
    variant, benchmark/nohash.py, hands in one that does nothing; never a setting).
    ``hooks``: callables ``(hook name, payload)`` told what SPILLWAY_HOOK_URL is told
    (README, "Operations"); a ``pre-create`` one refuses by raising
    :class:`app.core.errors.UploadRefused`.
    """
    settings = settings or Settings.from_env()
    settings.validate()
    app = Flask("app", static_folder=None)  # the page blueprint serves app/web/static
    app.json.sort_keys = False
    lifecycle = Lifecycle(settings.hook_progress_interval)
    services = {"settings": settings, "threaded_pump": threads_available(), "hasher": hasher,
                "lifecycle": lifecycle}
    master = uwsgi_master_pid()
    problem = reload_problem() if master == os.getpid() else None
    if problem:
        log.warning(problem)
    if settings.metrics:
        if master:  # uWSGI: its master is the launcher (gunicorn: gunicorn.conf.py)
            metrics_files.prepare_launch(master)
        services["metrics"] = metrics()
        lifecycle.listeners.append(services["metrics"])
    services["hooks"] = _hooks(settings, hooks, services.get("metrics"))
    if services["hooks"] is not None:
        lifecycle.listeners.append(services["hooks"])
        lifecycle.admitters.append(services["hooks"].admit)
        lifecycle.wants_progress = "post-receive" in services["hooks"].events
    store = open_storage(settings)
    services["storage"] = ObservedStore(store, lifecycle, type(store).__name__.lower()
                                        .removesuffix("storage") or "store")
    services["limits"] = _limits(settings, services.get("metrics"))
    if settings.sweep_every:
        services["sweeper"] = PeriodicSweep(
            lambda: sweep(services["storage"], services["hooks"]),
            interval=settings.sweep_every, state_dir=settings.storage_dir)
    app.extensions["spillway"] = services

    for blueprint in (uploads.bp, files.bp, health.bp, proxy.bp, imports.bp, auth_check.bp,
                      tus.bp, page.bp):
        app.register_blueprint(blueprint)
    if settings.metrics:
        app.register_blueprint(metrics_route.bp)
    if settings.enable_baseline:  # the benchmark's request.files route; otherwise a 404
        app.register_blueprint(baseline.bp)
    if settings.offload_enabled:  # otherwise the adopt routes do not exist at all
        app.register_blueprint(offload.bp)
    register_error_handlers(app)
    observe.register(app)
    app.before_request(check_request_head)
    app.after_request(announce_close)
    app.teardown_request(release_upload_slot)
    cli.register(app)

    if not settings.auth_enabled:
        log.warning("SPILLWAY_TOKENS is empty: the server is OPEN, anyone who can reach it "
                    "may upload, read and delete files")
    return app


def _hooks(settings: Settings, callables: Sequence[HookCallable], metric_set) -> Hooks | None:
    targets = list(callables)
    if settings.hook_url:
        targets.append(Webhook(settings.hook_url, settings.hook_secret, settings.hook_timeout))
    if not targets:
        return None

    def delivered(name: str, ok: bool) -> None:
        if metric_set is not None:
            metric_set.hook_calls.labels(name).inc()
            if not ok:
                metric_set.hook_failures.labels(name).inc()

    return Hooks(targets, events=settings.hook_events, retries=settings.hook_retries,
                 backoff=settings.hook_backoff, on_delivery=delivered,
                 spool_dir=os.path.join(settings.storage_dir, "hook-spool"))


def _limits(settings: Settings, metric_set) -> Limits | None:
    if not (settings.limit_concurrent_uploads or settings.limit_bytes_per_second
            or settings.limit_requests_per_minute):
        return None
    if settings.redis_url:
        from ..core.limits_redis import RedisLimitState

        state = RedisLimitState(settings.redis_url)
    else:
        os.makedirs(settings.storage_dir, exist_ok=True)
        state = SqliteLimitState(os.path.join(settings.storage_dir, "limits.sqlite3"))
    return Limits(state, concurrent_uploads=settings.limit_concurrent_uploads,
                  bytes_per_second=settings.limit_bytes_per_second,
                  requests_per_minute=settings.limit_requests_per_minute,
                  on_refusal=(lambda limit: metric_set.limited.labels(limit).inc())
                  if metric_set is not None else (lambda limit: None))
