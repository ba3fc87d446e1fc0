"""Retries with exponential backoff for steps that are safe to repeat."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import requests

from .errors import ClientError, NetworkError

T = TypeVar("T")

TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class Backoff:
    def __init__(self, retries: int = 3, base: float = 0.5, cap: float = 30.0):
        self.retries = retries
        self.base = base
        self.cap = cap

    def delay(self, attempt: int) -> float:
        return min(self.base * (2 ** attempt), self.cap)

    def run(self, step: Callable[[], T], retryable: Callable[[BaseException], bool] | None = None,
            what: str = "request") -> T:
        """Run step; on a transient failure wait and run it again, at most `retries` times."""
        retryable = retryable or is_transient
        attempt = 0
        while True:
            try:
                return step()
            except BaseException as error:  # noqa: B036 - re-raised below unless retryable
                if not isinstance(error, Exception) or not retryable(error) \
                        or attempt >= self.retries:
                    converted = as_client_error(error, what)
                    if converted is error:
                        raise
                    raise converted from error
                time.sleep(self.delay(attempt))
                attempt += 1


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TRANSIENT):
        return True
    return isinstance(error, NetworkError) and (error.status or 0) >= 500 \
        and error.status not in (501, 507)


def as_client_error(error: BaseException, what: str) -> BaseException:
    if isinstance(error, ClientError) or not isinstance(error, Exception):
        return error
    if isinstance(error, requests.Timeout):
        return NetworkError(f"{what} timed out ({_innermost(error)})", code="timeout")
    if isinstance(error, requests.RequestException):
        return NetworkError(f"{what} failed: {_innermost(error)}", code="connection_error")
    return error


def _innermost(error: BaseException) -> str:
    """'[Errno 111] Connection refused' rather than urllib3's nested retry story."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    error = getattr(error, "reason", None) or error
    return str(error).rsplit("): ", 1)[-1]
