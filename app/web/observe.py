"""Every request seen: its id, one log line (JSON with ``SPILLWAY_LOG_FORMAT=json``) and
its metrics, written when the response's last byte went out.

The request id is the client's ``X-Request-ID`` when it is a sane token (letters,
digits, ``-._:``, at most 128), else a new one; either way it is sent back in
``X-Request-ID`` and carried by logs and hook payloads.  The token's name is logged,
never the token.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from ..core.events import RequestInfo, current_request
from .context import service, settings
from .request_body import body_state

access_log = logging.getLogger("spillway.access")

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DOWNLOAD_ENDPOINT = "files.content"


def register(app: Flask) -> None:
    app.before_request(_begin)
    app.after_request(_answer)


def _begin() -> None:
    offered = request.headers.get("X-Request-ID", "")
    info = RequestInfo(offered if _SANE_ID.match(offered) else uuid.uuid4().hex)
    g.spillway_request = info
    current_request.set(info)
    sweeper = service("sweeper")
    if sweeper is not None:
        sweeper.ensure_started()


def _answer(response: Response) -> Response:
    info: RequestInfo | None = g.get("spillway_request")
    if info is None:  # a request refused before _begin (head bounds): still one id
        info = RequestInfo(uuid.uuid4().hex)
    response.headers["X-Request-ID"] = info.request_id
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    facts = {"method": request.method, "path": request.path, "route": route,
             "endpoint": request.endpoint, "error": g.get("spillway_error_code")}
    body, metrics, as_json = body_state(), service("metrics"), settings().log_format == "json"
    # runs outside the app context, once the last byte went out
    response.call_on_close(lambda: _done(info, facts, response, body, metrics, as_json))
    return response


def _done(info: RequestInfo, facts: dict, response: Response, body, metrics,
          as_json: bool) -> None:
    seconds = time.monotonic() - info.started
    received = body.received if body is not None else 0
    sent = (response.content_length or 0) if facts["method"] != "HEAD" else 0
    if metrics is not None:
        metrics.request_done(facts["route"], facts["method"], response.status_code,
                             received, sent)
        if facts["endpoint"] == _DOWNLOAD_ENDPOINT and response.status_code in (200, 206):
            metrics.download_seconds.observe(seconds)
    if as_json:
        access_log.info("request", extra={"fields": {
            "request_id": info.request_id, "method": facts["method"], "path": facts["path"],
            "status": response.status_code, "bytes_in": received, "bytes_out": sent,
            "duration_ms": round(seconds * 1000, 2), "token": info.token_name,
            "file_id": info.file_id, "error": facts["error"]}})
