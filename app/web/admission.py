"""The one entry every upload route passes before its body is read: the token's upload
slot (``SPILLWAY_LIMIT_CONCURRENT_UPLOADS``) and the ``pre-create`` hook.

Put ``@admits_upload(kind)`` under ``@requires(WRITE)``: it runs after the token check
and before the view opens the body, so a refusal (429, or the hook's 4xx/503) is answered
before "100 Continue" and before any body byte.  The slot is given back when the
request ends.  A tus route marks its creation request ``admits_upload("tus")`` and its
PATCH ``admits_upload("tus", create=False)`` (slot only: the upload was admitted once).
"""

from __future__ import annotations

from functools import wraps

from flask import g, request

from ..core.events import Admission, request_info
from ..core.multipart import form_data_type
from .context import lifecycle, limits


def admits_upload(kind: str, *, create: bool = True):
    """``kind``: raw, multipart, tus, import, offload; ``auto``: raw or multipart by the
    request's Content-Type (POST /upload)."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            admit(kind, kwargs.get("filename"), create)
            return view(*args, **kwargs)

        return wrapped

    return decorate


def admit(kind: str, filename: str | None, create: bool) -> None:
    info = request_info()
    token = info.token_name if info else None
    shared = limits()
    if shared is not None:
        release = shared.begin_upload(token)
        if release is not None:
            g.spillway_release_slot = release
    if create:
        lifecycle().admit(_admission(kind, filename))


def release_upload_slot(_error=None) -> None:
    """teardown_request: give the token's upload slot back."""
    release = g.pop("spillway_release_slot", None)
    if release is not None:
        release()


def _admission(kind: str, filename: str | None) -> Admission:
    content_type = request.headers.get("Content-Type")
    if kind in ("auto", "offload"):
        multipart = form_data_type(content_type) is not None
        kind = "multipart" if multipart and kind == "auto" else kind
        kind = "raw" if kind == "auto" else kind
    length = request.headers.get("Upload-Length") or request.headers.get("Content-Length")
    if kind == "offload":
        length = request.headers.get("X-Content-Length") or length
    metadata = {}
    if kind == "import":
        payload = request.get_json(silent=True) if (request.content_length or 0) <= 65536 \
            else None
        if isinstance(payload, dict):
            metadata = {"url": payload.get("url")}
            filename = filename or payload.get("filename")
    return Admission(
        kind=kind,
        filename=(filename or request.args.get("filename")) if kind != "multipart" else None,
        length=int(length) if length and length.strip().isdigit() else None,
        content_type=content_type,
        metadata=metadata)
