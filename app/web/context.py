"""What every handler needs from the application: settings and storage."""

from __future__ import annotations

from functools import wraps

from flask import current_app, request

from ..core.auth import authorize
from ..settings import Settings
from ..storage import Storage


def settings() -> Settings:
    return current_app.extensions["spillway"]["settings"]


def storage() -> Storage:
    return current_app.extensions["spillway"]["storage"]


def threaded_pump() -> bool:
    return current_app.extensions["spillway"]["threaded_pump"]


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
    """Mark a view that reads its body through :func:`app.body.open_body` (put it under
    ``@requires``): nginx's auth check applies open_body's header checks to it too."""
    view.reads_body = True
    return view
