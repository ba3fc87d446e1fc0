"""POST /upload-baseline: the classic ``request.files`` upload, kept only as the benchmark's
baseline.  Registered only with ``SPILLWAY_ENABLE_BASELINE=true`` (app/web/factory.py).

werkzeug parses and spools every part to its own temporary file before this code runs;
only then are the bytes copied into storage.
"""

from __future__ import annotations

from flask import Blueprint, request

from ...core.auth import WRITE
from ...core.filenames import clean_filename
from ...core.multipart import MultipartResult
from ...core.pump import store_stream
from ..context import pump_options, requires, settings, storage
from ..responses import created_many

bp = Blueprint("baseline", __name__)


@bp.post("/upload-baseline")
@requires(WRITE)
def baseline_upload():
    config = settings()
    request.max_content_length = config.max_request_size
    stored = []
    for upload in request.files.getlist("file"):
        stored.append(store_stream(
            iter(lambda: upload.stream.read(config.chunk_size), b""),
            storage(),
            max_size=config.max_file_size,
            filename=clean_filename(upload.filename or "upload"),
            content_type=upload.mimetype or "application/octet-stream",
            **pump_options(),
        ))
    return created_many(MultipartResult(stored, {}))
