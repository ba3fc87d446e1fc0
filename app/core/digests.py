"""Digests a client announces for its upload (RFC 9530 ``Content-Digest``)."""

from __future__ import annotations

import base64
import binascii
import re

from .errors import BadRequest

_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def sha256_from_content_digest(header: str | None) -> str | None:
    """Hex SHA-256 from ``Content-Digest: sha-256=:<base64>:``; None when absent.

    Other algorithms in the dictionary are ignored, as RFC 9530 allows.
    """
    if not header:
        return None
    for member in header.split(","):
        key, sep, value = member.strip().partition("=")
        if not sep or key.strip().lower() != "sha-256":
            continue
        value = value.split(";", 1)[0].strip()  # drop any parameters
        if len(value) < 2 or value[0] != ":" or value[-1] != ":":
            raise BadRequest("Content-Digest sha-256 must be a byte sequence :<base64>:",
                             code="bad_digest")
        try:
            raw = base64.b64decode(value[1:-1], validate=True)
        except binascii.Error:
            raise BadRequest("Content-Digest sha-256 is not valid base64",
                             code="bad_digest") from None
        if len(raw) != 32:
            raise BadRequest("Content-Digest sha-256 must be 32 bytes", code="bad_digest")
        return raw.hex()
    return None


def check_hex_sha256(text: str) -> str:
    """Validate a hex SHA-256 sent in a form field."""
    text = text.strip()
    if not _HEX_SHA256.match(text):
        raise BadRequest(f"not a hex SHA-256 digest: {text[:80]!r}", code="bad_digest")
    return text.lower()


def content_digest_value(sha256_hex: str) -> str:
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"
