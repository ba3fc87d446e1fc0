"""One exception family, mapped to JSON error bodies in one place.

Every error body has the same shape::

    {"error": {"code": "file_too_large", "message": "...", "status": 413}}

``code`` is stable (clients may switch on it); ``message`` is for people.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from .framing import announces_body
from .servers import close_after_response

log = logging.getLogger("spillway")


class SpillwayError(Exception):
    status = 500
    code = "internal_error"
    message = "internal server error"

    def __init__(self, message: str | None = None, *, code: str | None = None, headers=None):
        super().__init__(message or self.message)
        self.message = message or self.message
        if code:
            self.code = code
        self.headers = dict(headers or {})


class BadRequest(SpillwayError):
    status, code, message = 400, "bad_request", "the request is malformed"


class TruncatedBody(BadRequest):
    code, message = "truncated_body", "the request body ended before it was complete"


class MalformedChunkedBody(BadRequest):
    code, message = "malformed_chunked_body", "the chunked body is not valid chunked coding"


class MalformedMultipart(BadRequest):
    code, message = "malformed_multipart", "the multipart body could not be parsed"


class DigestMismatch(BadRequest):
    code, message = "digest_mismatch", "the body does not match the digest the client sent"


class Unauthorized(SpillwayError):
    status, code, message = 401, "unauthorized", "a valid bearer token is required"

    def __init__(self, message: str | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="spillway"')


class Forbidden(SpillwayError):
    status, code, message = 403, "forbidden", "this token may not do that"


class NotFound(SpillwayError):
    status, code, message = 404, "not_found", "no such resource"


class MethodNotAllowed(SpillwayError):
    status, code, message = 405, "method_not_allowed", "method not allowed here"


class RequestTimeout(SpillwayError):
    status, code, message = 408, "request_timeout", "the client stopped sending the request body"


class Conflict(SpillwayError):
    status, code, message = 409, "conflict", "the request conflicts with the resource's state"


class LengthRequired(SpillwayError):
    status, code, message = 411, "length_required", (
        "send Content-Length or Transfer-Encoding: chunked"
    )


class PreconditionFailed(SpillwayError):
    status, code, message = 412, "precondition_failed", "a precondition header did not hold"


class PayloadTooLarge(SpillwayError):
    status, code, message = 413, "payload_too_large", "the request body is too large"


class UnsupportedMediaType(SpillwayError):
    status, code, message = 415, "unsupported_media_type", "this content type is not accepted"


class RangeNotSatisfiable(SpillwayError):
    status, code, message = 416, "range_not_satisfiable", "the requested range is outside the file"


class HeaderFieldsTooLarge(SpillwayError):
    status, code, message = 431, "request_header_fields_too_large", "the request head is too large"


class NotImplementedHere(SpillwayError):
    status, code, message = 501, "not_implemented", "the server does not implement this"


class BadGateway(SpillwayError):
    status, code, message = 502, "bad_gateway", "the downstream server failed"


class GatewayTimeout(SpillwayError):
    status, code, message = 504, "gateway_timeout", "the downstream server did not answer in time"


class InsufficientStorage(SpillwayError):
    status, code, message = 507, "insufficient_storage", "the server has no room for this upload"


def error_response(error: SpillwayError):
    body = {"error": {"code": error.code, "message": error.message, "status": error.status}}
    response = jsonify(body)
    response.status_code = error.status
    response.headers.update(error.headers)
    if _body_left_unread():
        # Answering before the body is drained: close the connection so the server
        # does not read (or the client keep sending) gigabytes nobody will use.
        response.headers["Connection"] = "close"
        close_after_response()
    return response


def _body_left_unread() -> bool:
    from .body import body_state  # late: body imports errors

    state = body_state()
    if state is not None:
        return not state.complete
    return announces_body(request.environ)


_WERKZEUG_CODES = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    416: RangeNotSatisfiable,
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(SpillwayError)
    def _spillway(error: SpillwayError):
        if error.status >= 500:
            log.warning("%s %s -> %s %s: %s", request.method, request.path,
                        error.status, error.code, error.message)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException):
        family = _WERKZEUG_CODES.get(error.code or 500)
        if family is None:
            wrapped = SpillwayError(error.description or error.name)
            wrapped.status = error.code or 500
            wrapped.code = (error.name or "error").lower().replace(" ", "_")
        else:
            wrapped = family(error.description if family is not NotFound else None)
        return error_response(wrapped)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(SpillwayError())
