"""Uploads: raw bodies (PUT /upload/<name>, POST /upload) and multipart (POST /upload)."""

from __future__ import annotations

from typing import Callable

from flask import Blueprint, Response, jsonify, request, url_for

from ...core.auth import WRITE
from ...core.body import open_body
from ..context import reads_body, requires, settings, storage, threaded_pump
from ...core.digests import sha256_from_content_digest
from ...core.errors import NotFound
from ...core.multipart import MultipartResult, MultipartUpload, clean_filename, form_data_type
from ...core.pump import store_stream
from ...storage import StoredFile

bp = Blueprint("uploads", __name__)


def file_json(stored: StoredFile) -> dict:
    record = stored.to_record()
    record["created"] = stored.created_iso
    record["url"] = url_for("files.metadata", file_id=stored.id)
    record["content_url"] = url_for("files.content", file_id=stored.id)
    return record


@bp.put("/upload/<path:filename>")
@requires(WRITE)
@reads_body
def put_raw(filename: str):
    return _raw_upload(filename)


@bp.post("/upload")
@requires(WRITE)
@reads_body
def post_upload():
    return raw_or_multipart(_raw_upload, _multipart_upload)


def raw_or_multipart(raw: Callable[[str], Response], multipart: Callable[[str], Response]):
    """A POST body is multipart/form-data (``multipart(content_type)``) or one raw file
    (``raw(filename)``, named by :func:`raw_filename`); other multipart is a 415."""
    form_data = form_data_type(request.headers.get("Content-Type"))
    if form_data:
        return multipart(form_data)
    return raw(raw_filename())


def _raw_upload(filename: str):
    config = settings()
    expected = sha256_from_content_digest(request.headers.get("Content-Digest"))
    body = open_body(limit=config.max_request_size, chunk_size=config.chunk_size)
    stored = store_stream(
        body.chunks(),
        storage(),
        max_size=config.max_file_size,
        filename=clean_filename(filename),
        content_type=raw_content_type(),
        expected_sha256=expected,
        threaded=threaded_pump(),
    )
    return created(stored)


def _multipart_upload(content_type: str):
    upload = multipart_upload(content_type)
    config = settings()
    body = open_body(limit=config.max_request_size, chunk_size=config.chunk_size)
    return created_many(upload.receive(body.chunks()))


def multipart_upload(content_type: str) -> MultipartUpload:
    """A multipart upload into storage, bounded by the settings."""
    config = settings()
    return MultipartUpload(
        content_type,
        storage(),
        max_file_size=config.max_file_size,
        max_field_size=config.max_field_size,
        max_parts=config.max_parts,
        max_part_headers=config.max_part_headers_size,
        threaded=threaded_pump(),
    )


def created(stored: StoredFile):
    """201 for one stored file, with its Location."""
    response = jsonify(file_json(stored))
    response.status_code = 201
    response.headers["Location"] = url_for("files.metadata", file_id=stored.id)
    return response


def created_many(result: MultipartResult):
    """201 for a multipart upload: every stored file and the text fields."""
    response = jsonify({"files": [file_json(f) for f in result.files], "fields": result.fields})
    response.status_code = 201
    return response


def raw_filename() -> str:
    """A raw POST's filename: ?filename=, else Content-Disposition, else "upload"."""
    return request.args.get("filename") or _disposition_filename() or "upload"


def raw_content_type() -> str:
    value = request.headers.get("Content-Type", "").strip()
    # curl --data-binary defaults to a form type; that is never what a raw file is
    if not value or value.startswith("application/x-www-form-urlencoded"):
        return "application/octet-stream"
    return value


def _disposition_filename() -> str | None:
    header = request.headers.get("Content-Disposition")
    if not header:
        return None
    from werkzeug.http import parse_options_header

    _, options = parse_options_header(header)
    return options.get("filename")


@bp.post("/upload-baseline")
@requires(WRITE)
def baseline_upload():
    """The classic request.files upload, kept only as the benchmark's baseline.

    werkzeug parses and spools every part to its own temporary file before this
    code runs; only then are the bytes copied into storage.
    """
    config = settings()
    if not config.enable_baseline:
        raise NotFound("the baseline route is off (SPILLWAY_ENABLE_BASELINE)")
    request.max_content_length = config.max_request_size
    stored = []
    for upload in request.files.getlist("file"):
        stored.append(store_stream(
            iter(lambda: upload.stream.read(config.chunk_size), b""),
            storage(),
            max_size=config.max_file_size,
            filename=clean_filename(upload.filename or "upload"),
            content_type=upload.mimetype or "application/octet-stream",
            threaded=threaded_pump(),
        ))
    return created_many(MultipartResult(stored, {}))
