"""The browser upload page at ``/`` and its static files (app/web/static/): plain files,
no build step, nothing loaded from another host (README, "Browser page")."""

from __future__ import annotations

import os

from flask import Blueprint, Response, jsonify, send_from_directory

from ..context import settings

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")

# the page's own scripts and styles only: no inline code, no other origin, no framing
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' blob:",
    "connect-src 'self'", "font-src 'self'", "base-uri 'none'", "form-action 'none'",
    "frame-ancestors 'none'"))

bp = Blueprint("page", __name__, static_folder=STATIC_DIR, static_url_path="/static")


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.get("/")
def index():
    response = send_from_directory(STATIC_DIR, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/page/config")
def config():
    """What the page needs to know before its first call: whether to ask for a token."""
    return jsonify({"tokens_required": settings().auth_enabled})
