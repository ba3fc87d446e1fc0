"""The error catalogue: one exception family, each with a stable code, a status and a message.

Every error body has the same shape::

    {"error": {"code": "file_too_large", "message": "...", "status": 413}}

``code`` is stable (clients may switch on it); ``message`` is for people.  Plain
Python: :mod:`app.web.errors` turns these into JSON answers.
"""

from __future__ import annotations


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


class FilenameTooLong(BadRequest):
    code, message = "filename_too_long", "a part's filename is too long"


class FieldNameTooLong(BadRequest):
    code, message = "field_name_too_long", "a part's field name is too long"


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


class RequestTooSlow(RequestTimeout):
    code, message = "request_too_slow", "the request body arrived below the minimum rate"


class RequestHeadTimeout(RequestTimeout):
    code, message = "request_head_timeout", "the request head was not complete in time"


class UploadRefused(Forbidden):
    code, message = "upload_refused", "the pre-create hook refused this upload"

    def __init__(self, message: str | None = None, *, status: int = 403, **kwargs):
        super().__init__(message, **kwargs)
        self.status = status if 400 <= status < 500 else 403


class TooManyRequests(SpillwayError):
    status, code, message = 429, "too_many_requests", "this token is over its request rate"

    def __init__(self, message: str | None = None, *, retry_after: float, **kwargs):
        super().__init__(message, **kwargs)
        self.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))


class Conflict(SpillwayError):
    status, code, message = 409, "conflict", "the request conflicts with the resource's state"


class Locked(SpillwayError):
    status, code, message = 423, "upload_locked", "another request is writing this upload"


class Gone(SpillwayError):
    status, code, message = 410, "gone", "the resource existed but is gone"


class LengthRequired(SpillwayError):
    status, code, message = 411, "length_required", (
        "send Content-Length or Transfer-Encoding: chunked"
    )


class PreconditionFailed(SpillwayError):
    status, code, message = 412, "precondition_failed", "a precondition header did not hold"


class PayloadTooLarge(SpillwayError):
    status, code, message = 413, "payload_too_large", "the request body is too large"


class PartHeadersTooLarge(PayloadTooLarge):
    # 413, not 431: these headers are request content, not the request's header section
    code, message = "part_headers_too_large", "a multipart part's headers are too long"


class ChecksumMismatch(SpillwayError):  # tus checksum extension: its own status
    status, code, message = 460, "checksum_mismatch", "the body does not match Upload-Checksum"


class URITooLong(SpillwayError):  # nginx's own answer (deploy/nginx error pages)
    status, code, message = 414, "uri_too_long", "the request line is too long"


class UnsupportedMediaType(SpillwayError):
    status, code, message = 415, "unsupported_media_type", "this content type is not accepted"


class RangeNotSatisfiable(SpillwayError):
    status, code, message = 416, "range_not_satisfiable", "the requested range is outside the file"


class RequestHeadersTooLarge(SpillwayError):  # also nginx's own answer (deploy/nginx error pages)
    status, code, message = 431, "request_headers_too_large", "the request head is too large"


class NotImplementedHere(SpillwayError):
    status, code, message = 501, "not_implemented", "the server does not implement this"


class BadGateway(SpillwayError):
    status, code, message = 502, "bad_gateway", "the downstream server failed"


class StorageFailed(BadGateway):
    code, message = "storage_error", "the object store failed"


class StorageUnavailable(SpillwayError):
    status, code, message = 503, "storage_unavailable", "the object store cannot be reached"


class GatewayTimeout(SpillwayError):
    status, code, message = 504, "gateway_timeout", "the downstream server did not answer in time"


class StorageTimeout(GatewayTimeout):
    code, message = "storage_timeout", "the object store did not answer in time"


class HookFailed(SpillwayError):
    status, code, message = 503, "hook_failed", "the pre-create hook could not be asked"


class InsufficientStorage(SpillwayError):
    status, code, message = 507, "insufficient_storage", "the server has no room for this upload"


def error_body(error: SpillwayError) -> dict:
    return {"error": {"code": error.code, "message": error.message, "status": error.status}}
