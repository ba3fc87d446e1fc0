"""Prometheus metrics: defined once per process, fed by upload events and the web layer.

``prometheus_client`` is imported on first use, not with this module: in multiprocess
mode it reads ``PROMETHEUS_MULTIPROC_DIR`` when imported, and the launcher may set that
after the app's modules are loaded (:mod:`app.core.metrics_files`).

Nothing here runs per chunk: byte counts are added once per request, upload events
once per upload (or per post-receive interval).
"""

from __future__ import annotations

import threading

from . import metrics_files
from .events import UploadEvent

_SECONDS_LONG = (0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
_SECONDS_SHORT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

_lock = threading.Lock()
_metrics: "Metrics | None" = None


def metrics() -> "Metrics":
    """This process's metrics (built on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("spillway_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.received = Counter("spillway_received_bytes", "request body bytes read",
                                registry=r)
        self.sent = Counter("spillway_sent_bytes", "response body bytes (as announced)",
                            registry=r)
        self.started = Counter("spillway_uploads_started", "uploads created", registry=r)
        self.finished = Counter("spillway_uploads_finished", "uploads stored as files",
                                registry=r)
        self.failed = Counter("spillway_uploads_failed",
                              "one-shot uploads that kept nothing, by error code",
                              ["code"], registry=r)
        self.terminated = Counter("spillway_uploads_terminated",
                                  "resumable uploads terminated (tus DELETE, expiry)",
                                  registry=r)
        self.in_flight = Gauge("spillway_uploads_in_flight", "upload bodies being received",
                               registry=r, multiprocess_mode="livesum")
        self.upload_seconds = Histogram("spillway_upload_duration_seconds",
                                        "from creating an upload to storing it",
                                        buckets=_SECONDS_LONG, registry=r)
        self.download_seconds = Histogram("spillway_download_duration_seconds",
                                          "file content responses, until the last byte",
                                          buckets=_SECONDS_LONG, registry=r)
        self.patches = Counter("spillway_tus_patches", "appends to resumable uploads "
                               "(one per tus PATCH)", registry=r)
        self.storage_seconds = Histogram("spillway_storage_operation_duration_seconds",
                                         "storage calls by backend and operation",
                                         ["backend", "operation"], buckets=_SECONDS_SHORT,
                                         registry=r)
        self.storage_errors = Counter("spillway_storage_operation_errors",
                                      "storage calls that raised", ["backend", "operation"],
                                      registry=r)
        self.lock_seconds = Histogram("spillway_lock_wait_seconds", "waiting for upload locks",
                                      buckets=_SECONDS_SHORT, registry=r)
        self.lock_conflicts = Counter("spillway_lock_conflicts",
                                      "lock waits that gave up (423 upload_locked)", registry=r)
        self.hook_calls = Counter("spillway_hook_calls", "hook deliveries attempted",
                                  ["hook"], registry=r)
        self.hook_failures = Counter("spillway_hook_failures", "hook deliveries that failed",
                                     ["hook"], registry=r)
        self.limited = Counter("spillway_limit_refusals", "requests refused by a per-token "
                               "limit (429)", ["limit"], registry=r)

    # events ------------------------------------------------------------------
    def upload_event(self, event: UploadEvent) -> None:
        name = event.name
        if name == "post-create":
            self.started.inc()
        elif name == "receiving":
            self.in_flight.inc()
        elif name == "received":
            self.in_flight.dec()
        elif name == "append":
            self.patches.inc()
        elif name == "post-finish":
            self.finished.inc()
            if event.duration is not None:
                self.upload_seconds.observe(event.duration)
        elif name == "failed":
            self.failed.labels(event.error_code or "internal_error").inc()
        elif name == "post-terminate":
            self.terminated.inc()

    def storage_call(self, backend: str, operation: str, seconds: float, error: bool) -> None:
        self.storage_seconds.labels(backend, operation).observe(seconds)
        if error:
            self.storage_errors.labels(backend, operation).inc()

    def lock_wait(self, seconds: float, acquired: bool) -> None:
        self.lock_seconds.observe(seconds)
        if not acquired:
            self.lock_conflicts.inc()

    # web ---------------------------------------------------------------------
    def request_done(self, route: str, method: str, status: int, received: int,
                     sent: int) -> None:
        self.requests.labels(route, method, str(status)).inc()
        if received:
            self.received.inc(received)
        if sent:
            self.sent.inc(sent)

    def exposition(self) -> tuple[bytes, str]:
        """The text format, merged over every worker process when there are several."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        path = metrics_files.directory()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        metrics_files.reap_dead(path)
        registry = CollectorRegistry()  # per scrape, as the multiprocess docs require
        MultiProcessCollector(registry, path)
        with metrics_files.reading(path):
            return generate_latest(registry), CONTENT_TYPE_LATEST
