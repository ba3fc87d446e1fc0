"""Outbound HTTP for the proxy and URL import: timeouts, the allowlist, error mapping.

Every failure of a server we call is turned into :class:`BadGateway` (502) or
:class:`GatewayTimeout` (504) here, so the routes never see ``requests`` or
``urllib3`` exceptions.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator
from urllib.parse import unquote, urlsplit

import requests
import urllib3.exceptions

from ..settings import Settings
from .errors import BadGateway, GatewayTimeout

log = logging.getLogger("spillway")

# what we ask upstreams for: the bytes as they are, so sizes and hashes mean the same
# thing on both sides
BASE_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "spillway"}

_TIMEOUTS = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
_FAILURES = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


def timeouts(config: Settings) -> tuple[float, float]:
    return (config.upstream_connect_timeout, config.upstream_read_timeout)


def new_session() -> requests.Session:
    """A session that ignores proxy environment variables and .netrc (no surprise hops)."""
    session = requests.Session()
    session.trust_env = False
    return session


@contextlib.contextmanager
def upstream_errors(what: str) -> Iterator[None]:
    """Map what can go wrong talking to an upstream onto 502/504."""
    try:
        yield
    except _TIMEOUTS as error:
        raise GatewayTimeout(f"{what} did not answer within the timeout ({_reason(error)})",
                             code="upstream_timeout") from error
    except _FAILURES as error:
        if _is_timeout(error):
            raise GatewayTimeout(f"{what} stopped sending within the read timeout",
                                 code="upstream_timeout") from error
        if isinstance(error, requests.exceptions.ConnectionError) and not _mid_response(error):
            raise BadGateway(f"{what} is unreachable ({_reason(error)})",
                             code="upstream_unreachable") from error
        raise BadGateway(f"{what} failed mid-response ({_reason(error)})",
                         code="upstream_failed") from error


def _is_timeout(error: BaseException) -> bool:
    # requests wraps a read timeout while streaming a body as a ConnectionError
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, urllib3.exceptions.NewConnectionError):
            return False  # a refused connection (urllib3 files it under connect timeouts)
        if isinstance(error, _TIMEOUTS):
            return True
        if error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
        else:
            error = error.__cause__ or error.__context__
        seen += 1
    return False


def _mid_response(error: BaseException) -> bool:
    text = repr(error)
    return "Connection broken" in text or "IncompleteRead" in text


def _reason(error: BaseException) -> str:
    text = str(error)
    return text if len(text) < 300 else text[:300] + "…"


# the allowlist ----------------------------------------------------------------

def _origin(parts) -> tuple[str, str, int]:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.scheme, (parts.hostname or "").lower(), port)


def url_allowed(url: str, prefixes: tuple[str, ...]) -> bool:
    """Same scheme, host and port as a prefix, and a path at or below the prefix's path.

    Whole path segments are compared (``/data`` allows ``/data/x``, not ``/database``);
    URLs with credentials, dot segments or backslashes are never allowed.
    """
    try:
        parts = urlsplit(url)
        _origin(parts)  # a bad port raises here
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.username is not None or parts.password is not None or "\\" in url:
        return False
    segments = unquote(parts.path).split("/")
    if any(segment in (".", "..") for segment in segments):
        return False
    path = parts.path or "/"
    for prefix in prefixes:
        allowed = urlsplit(prefix)
        if _origin(allowed) != _origin(parts):
            continue
        base = allowed.path.rstrip("/")
        if path == base or path.startswith(base + "/") or not base:
            return True
    return False
