"""Uploads: raw bodies (PUT /upload/<name>, POST /upload) and multipart (POST /upload)."""

from __future__ import annotations

from flask import Blueprint

from ...core.auth import WRITE
from ...core.filenames import clean_filename
from ...core.pump import store_stream
from ..admission import admits_upload
from ..context import pump_options, reads_body, requires, settings, storage
from ..request_body import open_body
from ..responses import created, created_many
from ..upload_request import (announced_sha256, multipart_upload, raw_content_type,
                              raw_or_multipart)

bp = Blueprint("uploads", __name__)


@bp.put("/upload/<path:filename>")
@requires(WRITE)
@admits_upload("raw")
@reads_body
def put_raw(filename: str):
    return _raw_upload(filename)


@bp.post("/upload")
@requires(WRITE)
@admits_upload("auto")
@reads_body
def post_upload():
    return raw_or_multipart(_raw_upload, _multipart_upload)


def _raw_upload(filename: str):
    config = settings()
    expected = announced_sha256()
    body = open_body(limit=config.max_request_size, chunk_size=config.chunk_size)
    stored = store_stream(
        body.chunks(),
        storage(),
        max_size=config.max_file_size,
        filename=clean_filename(filename),
        content_type=raw_content_type(),
        expected_sha256=expected,
        **pump_options(),
    )
    return created(stored)


def _multipart_upload(content_type: str):
    upload = multipart_upload(content_type)
    config = settings()
    body = open_body(limit=config.max_request_size, chunk_size=config.chunk_size)
    return created_many(upload.receive(body.chunks()))
