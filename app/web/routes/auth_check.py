"""GET /auth/check: what nginx's ``auth_request`` asks before it reads a request's body.

nginx passes the client's headers and, in ``X-Original-*``, the method, URI and body
framing.  The answer is what Spillway itself would decide from those headers alone: the
route exists and takes the method, the token has the route's scope, and for a route that
streams its body, a length within ``SPILLWAY_MAX_REQUEST_SIZE`` and no content coding.
204 lets nginx go on and read the body.

``auth_request`` passes only 401 and 403 back and turns any other status into 500, so
every other refusal is answered 403, and the real status and Spillway's JSON body travel
in ``X-Spillway-Status`` and ``X-Spillway-Error`` for nginx to answer with
(``deploy/nginx/*.template``, ``@spillway_refused``).  The deploy configs keep this
route to nginx (``internal``); asked directly it only tells what the request would.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect
from werkzeug.sansio.utils import get_content_length

from ...core.auth import authorize
from ...core.body import refuse_by_headers
from ...core.errors import BadRequest, SpillwayError, error_body
from ...core.tus_protocol import cors_headers
from ..context import settings
from ..errors import from_http_exception
from ..tus_answers import PREFIX as TUS_PREFIX

bp = Blueprint("auth_check", __name__)

STATUS_HEADER = "X-Spillway-Status"
ERROR_HEADER = "X-Spillway-Error"


@bp.route("/auth/check", methods=["GET"])
def check():
    try:
        _check(request.headers.get("X-Original-Method"), request.headers.get("X-Original-URI"))
    except SpillwayError as refusal:
        return _refused(refusal)
    return "", 204


def _check(method: str | None, uri: str | None) -> None:
    if not method or not uri:
        raise BadRequest("X-Original-Method and X-Original-URI are required")
    view = _view_for(method, unquote(urlsplit(uri).path))
    if view is None:
        return
    scope = getattr(view, "required_scope", None)
    if scope:
        authorize(settings().tokens, request.headers.get("Authorization"), scope)
    if getattr(view, "reads_body", False):
        refuse_by_headers(
            chunked="chunked" in request.headers.get("X-Original-Transfer-Encoding", "").lower(),
            # nginx's $content_length, empty when the client sent none
            declared=get_content_length(request.headers.get("X-Original-Content-Length") or None),
            content_encoding=request.headers.get("Content-Encoding"),
            limit=settings().max_request_size)


def _view_for(method: str, path: str):
    """The view the request would reach; None when the routing answers it (a redirect)."""
    try:
        endpoint, _ = current_app.url_map.bind("spillway").match(path, method)
    except RequestRedirect:
        return None
    except HTTPException as error:  # 404, 405: the same answer the request itself would get
        raise from_http_exception(error) from None
    return current_app.view_functions[endpoint]


def _refused(error: SpillwayError) -> Response:
    response = Response(status=401 if error.status == 401 else 403)
    response.headers.update(error.headers)  # WWW-Authenticate: auth_request passes it on
    response.headers[STATUS_HEADER] = str(error.status)
    response.headers[ERROR_HEADER] = json.dumps(error_body(error), separators=(",", ":"))
    if urlsplit(request.headers.get("X-Original-URI", "")).path.startswith(TUS_PREFIX):
        # the nginx templates pass these on with the refusal, so a page can read it
        response.headers.update(cors_headers(request.headers.get("Origin"), preflight=False,
                                             allowed=settings().cors_origins))
    return response
