"""What the tus routes answer: progress headers, the JSON of an upload, protocol errors."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Response, jsonify

from ..core import tus_protocol as tus
from ..core.errors import SpillwayError
from ..storage import StoredFile, UploadInfo
from .responses import file_json

PREFIX = "/tus/"


def progress_response(status: int, info: UploadInfo | None, stored: StoredFile | None):
    """``status`` with the upload's tus headers; a JSON body unless 204.  A finished
    upload (``stored``) answers as complete: offset = length."""
    if stored is not None:
        response = jsonify(file_json(stored)) if status != 204 else no_content()
        response.headers["Upload-Offset"] = str(stored.size)
        response.headers["Upload-Length"] = str(stored.size)
    else:
        response = jsonify(upload_json(info)) if status != 204 else no_content()
        response.headers["Upload-Offset"] = str(info.offset)
        if info.length is None:
            response.headers["Upload-Defer-Length"] = "1"
        else:
            response.headers["Upload-Length"] = str(info.length)
        if info.metadata.get("upload_metadata"):
            response.headers["Upload-Metadata"] = info.metadata["upload_metadata"]
        if info.metadata.get("concat"):
            response.headers["Upload-Concat"] = "partial"
        if info.expires is not None:
            response.headers["Upload-Expires"] = tus.http_date(info.expires)
    response.status_code = status
    return response


def no_content() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


def upload_json(info: UploadInfo) -> dict:
    return {"id": info.id, "url": PREFIX + info.id, "offset": info.offset,
            "length": info.length, "filename": info.filename,
            "content_type": info.content_type, "partial": bool(info.metadata.get("concat")),
            "created": _iso(info.created), "expires": _iso(info.expires)}


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, tz=timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def parsed(parse, *args):
    """A :mod:`app.core.tus_protocol` parser's result; its HeaderError as our JSON error."""
    try:
        return parse(*args)
    except tus.HeaderError as error:
        headers = {"Tus-Version": tus.VERSION} if error.status == 412 else None
        refusal = SpillwayError(str(error), code=error.code, headers=headers)
        refusal.status = error.status
        raise refusal from None
