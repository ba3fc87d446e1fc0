"""The proxy route: POST/PUT /proxy/<target>/<path> re-streams the body to a configured target."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ...core.auth import WRITE
from ..context import reads_body, requires
from ..proxy import forward

bp = Blueprint("proxy", __name__)

# 1xx, 204 and 304 cannot carry the JSON report; the downstream's status is in it anyway
_NO_BODY = {204, 304}


# merge_slashes off: "//host" in the path is refused as such, not redirected to "/host"
@bp.route("/proxy/<target>/<path:subpath>", methods=["POST", "PUT", "PATCH"],
          merge_slashes=False)
@requires(WRITE)
@reads_body
def proxy(target: str, subpath: str):
    result = forward(target, subpath)
    response = jsonify(result.to_json())
    status = result.status
    response.status_code = 200 if status < 200 or status in _NO_BODY else status
    response.headers["X-Downstream-Status"] = str(status)
    return response
