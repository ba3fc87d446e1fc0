"""Resumable uploads over the tus 1.0.0 protocol at ``/tus/`` (:mod:`app.core.tus_protocol`).

An upload is an upload of the storage contract (``tmp/`` on local disk) whose metadata
says ``tus``; once its last byte is in, it becomes a stored file under the same id.
Bytes come in through :func:`app.web.request_body.open_body` and
:func:`app.core.pump.append_stream` like every other upload's, one request at a time per upload: the store's locker is
taken without waiting (``423 upload_locked`` at once), across worker processes.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from ...core import tus_protocol as tus
from ...core.auth import READ, WRITE
from ...core.errors import (BadRequest, ChecksumMismatch, Conflict, Forbidden, Gone,
                            MethodNotAllowed, NotFound, NotImplementedHere, PayloadTooLarge,
                            UnsupportedMediaType)
from ...core.framing import announces_body
from ...core.pump import append_stream
from ...storage import Concatenates, ListsUploads, StoredFile, Upload, UploadInfo
from ..admission import admits_upload
from ..context import page_limit, pump_options, reads_body, requires, settings, storage
from ..request_body import open_body
from ..tus_answers import PREFIX, no_content, parsed, progress_response, upload_json

bp = Blueprint("tus", __name__)
SAVE_EVERY_SECONDS = 1.0  # an append records its progress this often (HEAD shows it)
_NO_OPTIONS = {"provide_automatic_options": False}  # OPTIONS is the tus discovery route


@bp.after_request
def _protocol_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = tus.VERSION
    response.headers.update(tus.cors_headers(request.headers.get("Origin"),
                                              preflight=request.method == "OPTIONS",
                                              allowed=settings().cors_origins))
    return response


@bp.route(PREFIX, methods=["OPTIONS"])
@bp.route(PREFIX + "<upload_id>", methods=["OPTIONS"])
def discover(upload_id: str | None = None):
    """No token needed: a browser's CORS preflight carries none."""
    response = no_content()
    response.headers.update(tus.server_headers(settings().max_file_size))
    return response


@bp.post(PREFIX, **_NO_OPTIONS)
@requires(WRITE)
@admits_upload("tus")
@reads_body
def create():
    _check_version()
    config = settings()
    length = parsed(tus.parse_size, "Upload-Length", request.headers.get("Upload-Length"))
    deferred = parsed(tus.parse_defer_length, request.headers.get("Upload-Defer-Length"))
    concat = parsed(tus.parse_concat, request.headers.get("Upload-Concat"), PREFIX)
    metadata = parsed(tus.metadata_record, request.headers.get("Upload-Metadata"), concat)
    if concat is not None and not concat.partial:
        return _create_final(concat.upload_ids, metadata)
    if (length is None) == (not deferred):
        raise BadRequest("send either Upload-Length or Upload-Defer-Length: 1",
                         code="upload_length_required")
    if length is not None and length > config.max_file_size:
        raise PayloadTooLarge(f"Upload-Length {length} is over Tus-Max-Size "
                              f"{config.max_file_size}", code="file_too_large")
    with_upload = announces_body(request.environ)
    if with_upload:
        _check_offset_content_type()
        _check_fits(0, length)
    checksum = parsed(tus.parse_checksum, request.headers.get("Upload-Checksum"))
    store = storage()
    upload = store.create_upload(length=length, metadata=metadata)
    info = upload.info()
    if with_upload:
        with store.locker.acquire(upload.id, timeout=0):
            info = _append(upload, 0, checksum)
    stored = _finish_if_complete(upload, info)
    response = progress_response(201, info, stored)
    response.headers["Location"] = PREFIX + upload.id
    return response


@bp.get(PREFIX, **_NO_OPTIONS)
@requires(READ)
def listing():
    """Unfinished uploads, oldest first, paginated like ``GET /files``."""
    store = storage()
    if not isinstance(store, ListsUploads):
        raise NotImplementedHere("this store cannot list its uploads")
    limit = page_limit()
    page = store.list_uploads(after=request.args.get("after") or None, limit=limit,
                              where=lambda info: bool(info.metadata.get("tus")))
    return jsonify({"uploads": [upload_json(info) for info in page],
                    "next": page[-1].id if len(page) == limit else None})


@bp.route(PREFIX + "<upload_id>", methods=["GET", "HEAD"], **_NO_OPTIONS)
@requires(READ)
def status(upload_id: str):
    """HEAD is tus's offset query; GET is the same as JSON, for people."""
    if request.method == "HEAD":
        _check_version()
    _upload, info, stored = _lookup(upload_id)
    response = progress_response(200, info, stored)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.patch(PREFIX + "<upload_id>", **_NO_OPTIONS)
@requires(WRITE)
@admits_upload("tus", create=False)
@reads_body
def patch(upload_id: str):
    return _patch(upload_id)


@bp.delete(PREFIX + "<upload_id>", **_NO_OPTIONS)
@requires(WRITE)
def terminate(upload_id: str):
    return _terminate(upload_id)


@bp.post(PREFIX + "<upload_id>", **_NO_OPTIONS)
@requires(WRITE)
@admits_upload("tus", create=False)
@reads_body
def method_override(upload_id: str):
    """``X-HTTP-Method-Override``: PATCH and DELETE for clients that can only POST."""
    method = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
    if method == "PATCH":
        return _patch(upload_id)
    if method == "DELETE":
        return _terminate(upload_id)
    raise MethodNotAllowed("POST to an upload needs X-HTTP-Method-Override: PATCH or DELETE")


def _patch(upload_id: str):
    _check_version()
    _check_offset_content_type()
    offset = parsed(tus.parse_size, "Upload-Offset", request.headers.get("Upload-Offset"))
    if offset is None:
        raise BadRequest("Upload-Offset is required", code="upload_offset_required")
    new_length = parsed(tus.parse_size, "Upload-Length", request.headers.get("Upload-Length"))
    checksum = parsed(tus.parse_checksum, request.headers.get("Upload-Checksum"))
    store = storage()
    _lookup(upload_id)  # 404 / 410 before the lock
    with store.locker.acquire(upload_id, timeout=0):
        upload, info, stored = _lookup(upload_id)  # again, as it is now ours
        if stored is not None:
            return _patch_finished(stored, offset)
        if info.metadata.get("concat") == "final":
            raise Forbidden("a final (concatenated) upload cannot be patched",
                            code="upload_is_final")
        if new_length is not None and new_length != info.length:
            if info.length is not None:
                raise BadRequest(f"the upload's length is {info.length} already",
                                 code="length_mismatch")
            if new_length > settings().max_file_size:
                raise PayloadTooLarge(f"Upload-Length {new_length} is over Tus-Max-Size",
                                      code="file_too_large")
            upload.declare_length(new_length)
            info = upload.info()
        if offset != info.offset:
            raise Conflict(f"the upload is at offset {info.offset}, not {offset}",
                           code="offset_mismatch",
                           headers={"Upload-Offset": str(info.offset)})
        _check_fits(offset, info.length)
        info = _append(upload, offset, checksum)
        stored = _finish_if_complete(upload, info)
    return progress_response(204, info, stored)


def _patch_finished(stored: StoredFile, offset: int):
    if offset != stored.size:
        raise Conflict(f"the upload is complete at {stored.size} bytes, not {offset}",
                       code="offset_mismatch", headers={"Upload-Offset": str(stored.size)})
    _check_fits(offset, stored.size)
    return progress_response(204, None, stored)


def _terminate(upload_id: str):
    _check_version()
    store = storage()
    upload, _info, stored = _lookup(upload_id, allow_expired=True)
    with store.locker.acquire(upload_id, timeout=0):
        if upload is not None:
            try:
                upload.terminate()
                return no_content()
            except NotFound:  # finished meanwhile: delete the file it became
                pass
        store.delete(upload_id)
    return no_content()


def _append(upload: Upload, offset: int, checksum: tus.Checksum | None) -> UploadInfo:
    """The request body onto the upload (the caller holds its lock)."""
    config = settings()
    body = open_body(limit=config.max_request_size, chunk_size=config.chunk_size)
    chunks = body.chunks()
    if checksum is not None:
        chunks = _verified(chunks, checksum)
    append_stream(chunks, upload, offset, max_size=config.max_file_size,
                  **pump_options(), keep_partial=checksum is None,
                  save_every=SAVE_EVERY_SECONDS)
    return upload.info()  # with the expiry, which counts from this write


def _verified(chunks, checksum: tus.Checksum):
    """The chunks, then ChecksumMismatch instead of their end when they do not match
    (append_stream, told not to keep a partial body, then keeps none of them)."""
    digest = checksum.new_hash()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if digest.digest() != checksum.digest:
        raise ChecksumMismatch(f"the body's {checksum.algorithm} does not match Upload-Checksum; "
                               "none of it was kept")


def _finish_if_complete(upload: Upload, info: UploadInfo) -> StoredFile | None:
    if info.length is None or info.offset != info.length or info.metadata.get("concat"):
        return None  # partial uploads wait for their final upload
    return upload.finish()


def _create_final(upload_ids: tuple[str, ...], metadata: dict):
    store = storage()
    if not isinstance(store, Concatenates):
        raise NotImplementedHere("this store cannot concatenate uploads")
    if len(set(upload_ids)) != len(upload_ids):
        raise BadRequest("Upload-Concat names an upload twice", code="bad_upload_concat")
    locks = []
    try:
        for upload_id in upload_ids:
            _lookup(upload_id)
            locks.append(store.locker.acquire(upload_id, timeout=0))
        parts = [_lookup(upload_id) for upload_id in upload_ids]
        for upload, info, _stored in parts:
            if upload is None or info.metadata.get("concat") != "partial":
                raise BadRequest(f"{PREFIX}{(info or _stored).id} is not a partial upload",
                                 code="not_a_partial_upload")
            if info.length is None or info.offset != info.length:
                raise Conflict(f"partial upload {info.id} holds {info.offset} of "
                               f"{info.length} bytes", code="upload_incomplete")
        total = sum(info.offset for _, info, _ in parts)
        if total > settings().max_file_size:
            raise PayloadTooLarge(f"the parts add up to {total} bytes, over Tus-Max-Size",
                                  code="file_too_large")
        combined = store.concatenate(list(upload_ids),
                                     metadata=metadata | {"parts": list(upload_ids)})
        stored = combined.finish()
        for upload, _, _ in parts:
            upload.terminate()  # used up (the protocol lets the server remove them)
    finally:
        for lock in locks:
            lock.release()
    response = progress_response(201, None, stored)
    response.headers["Location"] = PREFIX + stored.id
    return response


def _lookup(upload_id: str, *, allow_expired: bool = False
            ) -> tuple[Upload | None, UploadInfo | None, StoredFile | None]:
    """(upload, its info, None) while unfinished; (None, None, the file) once finished."""
    store = storage()
    try:
        upload = store.get_upload(upload_id)
        info = upload.info()
    except NotFound:
        return None, None, store.stat(upload_id)  # NotFound when neither
    if not info.metadata.get("tus"):
        raise NotFound(f"no upload with id {upload_id}")  # a one-shot upload in flight
    if not allow_expired and info.expires is not None and info.expires < time.time():
        raise Gone(f"upload {upload_id} expired: nothing was written to it for "
                   f"{settings().upload_ttl:g} s", code="upload_expired")
    return upload, info, None


def _check_version() -> None:
    parsed(tus.check_version, request.headers.get("Tus-Resumable"))


def _check_offset_content_type() -> None:
    media_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type != tus.OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType(f"upload bytes are sent as {tus.OFFSET_CONTENT_TYPE}, "
                                   f"not {media_type or 'nothing'!r}", code="tus_content_type")


def _check_fits(offset: int, length: int | None) -> None:
    """Refuse, before reading it, a body announced to run past the upload's length."""
    declared = request.headers.get("Content-Length", "").strip()
    if length is not None and declared.isdigit() and offset + int(declared) > length:
        raise PayloadTooLarge(f"{declared} bytes at offset {offset} run past the upload's "
                              f"length of {length}", code="upload_length_exceeded")


