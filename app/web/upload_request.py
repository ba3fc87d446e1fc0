"""What an upload request says about its file, shared by the upload routes and nginx's
adopt routes: raw or multipart, the raw file's name and type, the digest it announces,
and the multipart upload into storage, bounded by the settings."""

from __future__ import annotations

from typing import Callable

from flask import Response, request
from werkzeug.http import parse_options_header

from ..core.digests import sha256_from_content_digest
from ..core.multipart import MultipartUpload, form_data_type
from .context import pump_options, settings, storage


def raw_or_multipart(raw: Callable[[str], Response], multipart: Callable[[str], Response]):
    """A POST body is multipart/form-data (``multipart(content_type)``) or one raw file
    (``raw(filename)``, named by :func:`raw_filename`); other multipart is a 415."""
    form_data = form_data_type(request.headers.get("Content-Type"))
    if form_data:
        return multipart(form_data)
    return raw(raw_filename())


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
        **pump_options(),
    )


def announced_sha256() -> str | None:
    """The hex SHA-256 of ``Content-Digest: sha-256=:…:``, None when the client sent none."""
    return sha256_from_content_digest(request.headers.get("Content-Digest"))


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
    _, options = parse_options_header(header)
    return options.get("filename")
