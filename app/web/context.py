"""The services the factory set up (settings, storage, how to pump), looked up from the
current Flask app: the one place that does; the core gets them as arguments.  And the
decorators that mark what a view needs before it runs."""

from __future__ import annotations

from functools import wraps

from flask import current_app, request

from ..core.auth import authorize
from ..core.errors import BadRequest
from ..settings import Settings
from ..storage import Storage


MAX_PAGE = 1000  # the most files or uploads one listing page holds


def settings() -> Settings:
    return current_app.extensions["spillway"]["settings"]


def storage() -> Storage:
    return current_app.extensions["spillway"]["storage"]


def threaded_pump() -> bool:
    return current_app.extensions["spillway"]["threaded_pump"]


def pump_options() -> dict:
    """``threaded`` and ``hasher``, for every call into :mod:`app.core.pump`."""
    services = current_app.extensions["spillway"]
    return {"threaded": services["threaded_pump"], "hasher": services["hasher"]}


def page_limit() -> int:
    """``?limit=`` of a listing, within 1..MAX_PAGE (default SPILLWAY_PAGE_SIZE)."""
    try:
        limit = int(request.args.get("limit", settings().page_size))
    except ValueError:
        raise BadRequest("limit must be a whole number", code="bad_limit") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", code="bad_limit")
    return limit


def requires(scope: str):
    """Check the bearer token first thing, before anything touches the body."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            authorize(settings().tokens, request.headers.get("Authorization"), scope)
            return view(*args, **kwargs)

        wrapped.required_scope = scope  # read by the auth check nginx asks (routes/auth_check)
        return wrapped

    return decorate


def reads_body(view):
    """Mark a view that reads its body through :func:`app.web.request_body.open_body` (put
    it under ``@requires``): nginx's auth check applies open_body's header checks to it too."""
    view.reads_body = True
    return view
