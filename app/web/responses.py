"""The JSON answers that describe stored files, shared by every route that returns them."""

from __future__ import annotations

from flask import jsonify, url_for

from ..core.multipart import MultipartResult
from ..storage import StoredFile


def file_json(stored: StoredFile) -> dict:
    record = stored.to_record()
    record["created"] = stored.created_iso
    record["url"] = url_for("files.metadata", file_id=stored.id)
    record["content_url"] = url_for("files.content", file_id=stored.id)
    return record


def created(stored: StoredFile, extra: dict | None = None):
    """201 for one stored file, with its Location (and ``extra`` keys in the record)."""
    response = jsonify({**file_json(stored), **(extra or {})})
    response.status_code = 201
    response.headers["Location"] = url_for("files.metadata", file_id=stored.id)
    return response


def created_many(result: MultipartResult):
    """201 for a multipart upload: every stored file and the text fields."""
    response = jsonify({"files": [file_json(f) for f in result.files], "fields": result.fields})
    response.status_code = 201
    return response
