"""Filenames clients send (URL paths, multipart parts, Content-Disposition, remote URLs)."""

from __future__ import annotations


def clean_filename(raw: str) -> str:
    """The last path component, without control characters: metadata only, never a path."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch >= " " and ch != "\x7f").strip()
    return name if name not in ("", ".", "..") else "upload"
