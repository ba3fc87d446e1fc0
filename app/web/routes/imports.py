"""URL import: POST /import stores a remote URL; GET /fetch streams one through."""

from __future__ import annotations

from flask import Blueprint, Response, request, stream_with_context

from ...core.auth import READ, WRITE
from ...core.errors import BadRequest, PayloadTooLarge
from ...core.url_import import fetch, import_url
from ..admission import admits_upload
from ..context import pump_options, requires, settings, storage
from ..responses import created

bp = Blueprint("imports", __name__)

_MAX_JSON = 64 * 1024


@bp.post("/import")
@requires(WRITE)
@admits_upload("import")
def import_route():
    if (request.content_length or 0) > _MAX_JSON:
        raise PayloadTooLarge(f"the import request is larger than {_MAX_JSON} bytes")
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not isinstance(payload.get("url"), str):
        raise BadRequest('send JSON {"url": "...", "filename"?: "...", "sha256"?: "..."}',
                         code="bad_import_request")
    for key in ("filename", "sha256"):
        if payload.get(key) is not None and not isinstance(payload[key], str):
            raise BadRequest(f"{key} must be a string", code="bad_import_request")
    stored, remote = import_url(payload["url"], filename=payload.get("filename"),
                                sha256=payload.get("sha256"), config=settings(),
                                storage=storage(), **pump_options())
    return created(stored, {"source": {"url": remote.url, "redirects": remote.redirects}})


@bp.get("/fetch")
@requires(READ)
def fetch_route():
    url = request.args.get("url")
    if not url:
        raise BadRequest("give the URL as ?url=", code="bad_import_request")
    body, headers = fetch(url, settings())
    return Response(stream_with_context(body), status=200, headers=headers,
                    direct_passthrough=True)
