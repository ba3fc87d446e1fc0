"""GET /metrics: Prometheus' text format, merged over every worker process.

Open when the server is (no SPILLWAY_TOKENS and no SPILLWAY_METRICS_TOKEN); otherwise
it takes SPILLWAY_METRICS_TOKEN or any token with the read scope.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from ...core.auth import READ, authorize, bearer_from_header
from ...core.errors import Unauthorized
from ..context import service, settings

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def exposition():
    _check_access(request.headers.get("Authorization"))
    body, content_type = service("metrics").exposition()
    return Response(body, content_type=content_type)


def _check_access(header: str | None) -> None:
    config = settings()
    presented = (bearer_from_header(header) or "").encode()
    if config.metrics_token and hmac.compare_digest(presented, config.metrics_token.encode()):
        return
    if config.tokens:
        authorize(config.tokens, header, READ)
    elif config.metrics_token:
        raise Unauthorized("GET /metrics takes SPILLWAY_METRICS_TOKEN")
