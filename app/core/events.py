"""What happens to uploads, told to whoever listens (metrics, hooks, an embedder's callable).

Events are emitted from ONE place, :mod:`app.core.lifecycle`, which wraps the store every
upload path goes through (raw, multipart, tus, import, offload), so each fires once per
upload whatever the route.  ``pre-create`` is the exception: it must run before a body
byte is read, so the web layer's one upload entry asks :func:`Lifecycle.admit`.

The request an event belongs to (its id and token name) travels in a context variable
set by the web layer; the pump's writer thread gets it from the writer, which captured it
when the upload was opened.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

log = logging.getLogger("spillway.events")


@dataclass
class RequestInfo:
    """The request being served: set by the web layer, read by the core."""

    request_id: str
    token_name: str | None = None
    started: float = field(default_factory=time.monotonic)
    file_id: str | None = None  # the upload or file the request touched, for the log


current_request: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "spillway_request", default=None)


def request_info() -> RequestInfo | None:
    return current_request.get()


@dataclass(frozen=True)
class Admission:
    """An upload about to start, before any body byte: what ``pre-create`` judges."""

    kind: str  # raw, multipart, tus, import, offload
    filename: str | None
    length: int | None  # declared body or upload length, None when unknown
    content_type: str | None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class UploadEvent:
    """One thing that happened to an upload.

    ``name`` is the hook name (post-create, post-receive, post-finish, post-terminate)
    or ``failed`` (a one-shot upload that kept nothing; no hook, a metric).
    """

    name: str
    upload_id: str
    offset: int = 0
    length: int | None = None
    metadata: dict = field(default_factory=dict)
    stored: dict | None = None  # the stored file's record (post-finish)
    error_code: str | None = None  # failed
    duration: float | None = None  # post-finish, failed: since the upload was opened
    request_id: str | None = None
    token_name: str | None = None


class Listener(Protocol):
    def upload_event(self, event: UploadEvent) -> None: ...

    def storage_call(self, backend: str, operation: str, seconds: float,
                     error: bool) -> None: ...

    def lock_wait(self, seconds: float, acquired: bool) -> None: ...


# pre-create: raises a SpillwayError (UploadRefused, HookFailed) to refuse the upload
Admitter = Callable[[Admission, RequestInfo | None], None]


class Lifecycle:
    """The listeners and admitters of one application."""

    def __init__(self, progress_interval: float = 5.0):
        self.listeners: list[Listener] = []
        self.admitters: list[Admitter] = []
        self.progress_interval = progress_interval
        self.wants_progress = False  # post-receive costs a clock read per chunk: only if asked

    def admit(self, admission: Admission) -> None:
        """Run every pre-create check; the first refusal is raised."""
        info = request_info()
        for admitter in self.admitters:
            admitter(admission, info)

    def emit(self, event: UploadEvent) -> None:
        for listener in self.listeners:
            try:
                listener.upload_event(event)
            except Exception:  # a listener's failure never fails the upload
                log.exception("listener %r failed on %s", listener, event.name)

    def storage_call(self, backend: str, operation: str, seconds: float, error: bool) -> None:
        for listener in self.listeners:
            listener.storage_call(backend, operation, seconds, error)

    def lock_wait(self, seconds: float, acquired: bool) -> None:
        for listener in self.listeners:
            listener.lock_wait(seconds, acquired)
