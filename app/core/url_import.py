"""Streaming a remote URL into storage (``POST /import``) or through to the client (``GET /fetch``).

Only URLs under ``SPILLWAY_IMPORT_ALLOW`` are fetched.  Redirects are followed
here, one hop at a time, and every hop must be on the allowlist too; ``requests``
is never allowed to follow one on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote, urljoin, urlsplit

import requests

from ..settings import Settings
from ..storage import Storage, StoredFile
from .digests import check_hex_sha256
from .errors import BadGateway, Forbidden, PayloadTooLarge
from .filenames import clean_filename
from .pump import store_stream
from .upstream import BASE_HEADERS, new_session, timeouts, upstream_errors, url_allowed

log = logging.getLogger("spillway")

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass
class Remote:
    response: requests.Response
    url: str  # after redirects
    redirects: int
    session: requests.Session

    @property
    def length(self) -> int | None:
        value = self.response.headers.get("Content-Length", "")
        return int(value) if value.isdigit() else None

    def chunks(self, size: int) -> Iterator[bytes]:
        # the bytes as sent: no gzip decoding behind our back
        return self.response.raw.stream(size, decode_content=False)

    def close(self) -> None:
        self.response.close()
        self.session.close()


def _where(url: str) -> str:
    return f"upstream {urlsplit(url).netloc}"


def open_remote(url: str, config: Settings) -> Remote:
    """GET an allowlisted URL, following allowlisted redirects; a 2xx response or an error."""
    allow = config.import_allow
    if not isinstance(url, str) or not url_allowed(url, allow):
        raise Forbidden(f"this URL is not on the import allowlist: {str(url)[:200]!r}",
                        code="url_not_allowed")
    session = new_session()
    try:
        for hop in range(MAX_REDIRECTS + 1):
            with upstream_errors(_where(url)):
                response = session.get(url, headers=BASE_HEADERS, timeout=timeouts(config),
                                       stream=True, allow_redirects=False)
            status = response.status_code
            if status in _REDIRECTS and response.headers.get("Location"):
                response.close()
                target = urljoin(url, response.headers["Location"])
                if not url_allowed(target, allow):
                    raise BadGateway(f"{_where(url)} redirected to {target[:200]!r}, which is "
                                     "not on the import allowlist", code="redirect_not_allowed")
                url = target
                continue
            if not 200 <= status < 300:
                response.close()
                raise BadGateway(f"{_where(url)} answered {status} {response.reason or ''}"
                                 .strip(), code="upstream_status")
            return Remote(response, url, hop, session)
        raise BadGateway(f"more than {MAX_REDIRECTS} redirects", code="too_many_redirects")
    except BaseException:
        session.close()
        raise


def import_url(url: str, *, filename: str | None, sha256: str | None, config: Settings,
               storage: Storage, **pump_options) -> tuple[StoredFile, Remote]:
    """Store the remote file; ``pump_options`` go to :func:`app.core.pump.store_stream`."""
    expected = check_hex_sha256(sha256) if sha256 else None
    remote = open_remote(url, config)
    try:
        if remote.length is not None and remote.length > config.max_file_size:
            raise PayloadTooLarge(f"the remote file has {remote.length} bytes, more than the "
                                  f"limit of {config.max_file_size}", code="file_too_large")
        name = clean_filename(filename or unquote(urlsplit(remote.url).path) or "download")
        content_type = remote.response.headers.get("Content-Type") or "application/octet-stream"
        with upstream_errors(_where(remote.url)):
            stored = store_stream(remote.chunks(config.chunk_size), storage,
                                  max_size=config.max_file_size, filename=name,
                                  content_type=content_type, expected_sha256=expected,
                                  **pump_options)
        return stored, remote
    finally:
        remote.close()


PASSED_RESPONSE_HEADERS = ("Content-Type", "Content-Length", "ETag")


def fetch(url: str, config: Settings) -> tuple[Iterator[bytes], dict]:
    """The remote body as an iterator for a streamed response, and the headers to send."""
    remote = open_remote(url, config)
    headers = {name: remote.response.headers[name] for name in PASSED_RESPONSE_HEADERS
               if name in remote.response.headers}

    def body() -> Iterator[bytes]:
        try:
            with upstream_errors(_where(remote.url)):
                yield from remote.chunks(config.chunk_size)
        except Exception as error:
            # too late for a status: re-raise so the server cuts the connection and the
            # client sees a short body instead of a complete-looking one
            log.warning("fetch of %s failed mid-body: %s", remote.url, error)
            raise
        finally:
            remote.close()

    return body(), headers
