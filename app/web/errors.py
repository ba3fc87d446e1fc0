"""The error catalogue (:mod:`app.core.errors`) answered as JSON, in one place.

Every error body has the same shape (:func:`app.core.errors.error_body`); an answer sent
before the body was read closes the connection (:mod:`app.web.servers.linger`).
"""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ..core.errors import (BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge,
                           RangeNotSatisfiable, SpillwayError, UnsupportedMediaType, error_body)
from .request_body import unread_body_size
from .servers.linger import close_after_response

log = logging.getLogger("spillway")


def error_response(error: SpillwayError):
    response = jsonify(error_body(error))
    response.status_code = error.status
    response.headers.update(error.headers)
    g.spillway_error_code = error.code  # for the request's log line
    unread = unread_body_size()
    if unread != 0:
        # Answering before the body is drained: close the connection so the server
        # does not read (or the client keep sending) gigabytes nobody will use.
        response.headers["Connection"] = "close"
        close_after_response(unread)
    return response


_WERKZEUG_CODES = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    416: RangeNotSatisfiable,
}


def from_http_exception(error: HTTPException) -> SpillwayError:
    """werkzeug's routing errors (404, 405, ...) as ours."""
    family = _WERKZEUG_CODES.get(error.code or 500)
    if family is None:
        wrapped = SpillwayError(error.description or error.name)
        wrapped.status = error.code or 500
        wrapped.code = (error.name or "error").lower().replace(" ", "_")
        return wrapped
    return family(error.description if family is not NotFound else None)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(SpillwayError)
    def _spillway(error: SpillwayError):
        if error.status >= 500:
            log.warning("%s %s -> %s %s: %s", request.method, request.path,
                        error.status, error.code, error.message)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException):
        return error_response(from_http_exception(error))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(SpillwayError())
