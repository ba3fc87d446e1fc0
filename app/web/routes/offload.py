"""nginx offload mode: the adopt routes nginx hands the finished body file to (before
it reads the body, nginx asks ``GET /auth/check``, app/web/routes/auth_check.py).

Registered only when ``SPILLWAY_NGINX_TEMP_DIR`` is set.  Clients never call these
routes: nginx maps ``PUT /upload/<name>`` and ``POST /upload`` onto them
(``deploy/nginx/offload.conf.template``) and answers ``/offload/`` from outside with 404.
"""

from __future__ import annotations

from flask import Blueprint, request

from ...core.auth import WRITE
from ...core.errors import BadRequest
from ...core.filenames import clean_filename
from ...core.offload import adopt_body_file, parse_multipart_body_file
from ..admission import admits_upload
from ..context import pump_options, requires, settings, storage
from ..responses import created, created_many
from ..upload_request import (announced_sha256, multipart_upload, raw_content_type,
                              raw_or_multipart)

bp = Blueprint("offload", __name__, url_prefix="/offload")

FILE_HEADER = "X-File"  # nginx: proxy_set_header X-File $request_body_file
LENGTH_HEADER = "X-Content-Length"  # nginx: proxy_set_header X-Content-Length $content_length


@bp.put("/adopt/<path:filename>")
@requires(WRITE)
@admits_upload("offload")
def adopt_put(filename: str):
    return _adopt_raw(filename)


@bp.post("/adopt")
@requires(WRITE)
@admits_upload("offload")
def adopt_post():
    return raw_or_multipart(_adopt_raw, _adopt_multipart)


def _adopt_raw(filename: str):
    config = settings()
    stored = adopt_body_file(
        request.headers.get(FILE_HEADER),
        temp_dir=config.nginx_temp_dir,
        declared_length=_declared_length(),
        expected_sha256=announced_sha256(),
        storage=storage(),
        max_size=config.max_file_size,
        filename=clean_filename(filename),
        content_type=raw_content_type(),
        chunk_size=config.chunk_size,
        **pump_options(),
    )
    return created(stored)


def _adopt_multipart(content_type: str):
    config = settings()
    upload = multipart_upload(content_type)
    return created_many(parse_multipart_body_file(
        request.headers.get(FILE_HEADER),
        temp_dir=config.nginx_temp_dir,
        declared_length=_declared_length(),
        upload=upload,
        chunk_size=config.chunk_size,
    ))


def _declared_length() -> int | None:
    value = request.headers.get(LENGTH_HEADER, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BadRequest(f"{LENGTH_HEADER} must be a whole number", code="bad_request")
    return int(value)
