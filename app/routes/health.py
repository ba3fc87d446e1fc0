"""Liveness and readiness."""

from __future__ import annotations

import os

from flask import Blueprint, jsonify

from ..context import settings

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    directory = settings().storage_dir
    writable = os.access(directory, os.W_OK)
    status = 200 if writable else 503
    return jsonify({"status": "ok" if writable else "storage_not_writable"}), status
