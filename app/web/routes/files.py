"""Stored files: list, metadata, content (download), delete."""

from __future__ import annotations

import os

from flask import Blueprint, jsonify, request

from ...core.auth import READ, WRITE
from ...storage import LocalPaths, Presigns
from ..context import page_limit, requires, settings, storage
from ..downloads import accel_response, file_response, redirect_response
from ..responses import file_json

bp = Blueprint("files", __name__)

@bp.get("/files")
@requires(READ)
def listing():
    limit = page_limit()
    after = request.args.get("after") or None
    page = storage().list(after=after, limit=limit)
    next_cursor = page[-1].id if len(page) == limit else None
    return jsonify({"files": [file_json(f) for f in page], "next": next_cursor})


@bp.get("/files/<file_id>")
@requires(READ)
def metadata(file_id: str):
    return jsonify(file_json(storage().stat(file_id)))


@bp.route("/files/<file_id>/content", methods=["GET", "HEAD"])
@requires(READ)
def content(file_id: str):
    store = storage()
    stored = store.stat(file_id)
    if settings().s3_presigned_downloads and isinstance(store, Presigns):
        # the bytes go from the store to the client; the URL carries no token of ours
        url = store.presigned_url(stored.id, expires_in=settings().s3_presign_expiry)
        return redirect_response(stored, url)
    prefix = settings().x_accel_prefix
    if prefix and isinstance(store, LocalPaths):
        # nginx serves the bytes (deploy/nginx: location prefix -> the store's local root)
        relative = os.path.relpath(store.local_path(stored.id), store.local_root())
        return accel_response(stored, prefix + relative)
    return file_response(stored, store.open_reader(file_id), chunk_size=settings().chunk_size)


@bp.delete("/files/<file_id>")
@requires(WRITE)
def delete(file_id: str):
    storage().delete(file_id)
    return "", 204
