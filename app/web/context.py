"""The services the factory set up (settings, storage, how to pump, the upload lifecycle,
limits, metrics), looked up from the current Flask app: the one place that does; the core
gets them as arguments.  And the decorators that mark what a view needs before it runs."""

from __future__ import annotations

from functools import wraps

from flask import current_app, request

from ..core.auth import authorize
from ..core.errors import BadRequest
from ..core.events import Lifecycle, request_info
from ..core.limits import Limits
from ..settings import Settings
from ..storage import Storage


MAX_PAGE = 1000  # the most files or uploads one listing page holds


def settings() -> Settings:
    return current_app.extensions["spillway"]["settings"]


def storage() -> Storage:
    return current_app.extensions["spillway"]["storage"]


def lifecycle() -> Lifecycle:
    return current_app.extensions["spillway"]["lifecycle"]


def limits() -> Limits | None:
    """The per-token limits; None when none is set."""
    return current_app.extensions["spillway"]["limits"]


def service(name: str):
    """Any other service the factory set up (``metrics``, ``hooks``, ``sweeper``), or None."""
    return current_app.extensions["spillway"].get(name)


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
    """Check the bearer token first thing, before anything touches the body; then the
    token's request rate."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            token = authorize(settings().tokens, request.headers.get("Authorization"), scope)
            info = request_info()
            if token is not None and info is not None:
                info.token_name = token.name
            if token is not None and limits() is not None:
                limits().check_request(token.name)
            return view(*args, **kwargs)

        wrapped.required_scope = scope  # read by the auth check nginx asks (routes/auth_check)
        return wrapped

    return decorate


def reads_body(view):
    """Mark a view that reads its body through :func:`app.web.request_body.open_body` (put
    it under ``@requires``): nginx's auth check applies open_body's header checks to it too."""
    view.reads_body = True
    return view
