"""Liveness and readiness: the store says whether it can take uploads."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ...storage import ChecksHealth
from ..context import storage

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    store = storage()
    if not isinstance(store, ChecksHealth):
        return jsonify({"status": "ok"}), 200
    state = store.health()
    return jsonify({"status": state.status}), 200 if state.ok else 503
