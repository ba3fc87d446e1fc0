"""Bearer tokens with read/write scopes, checked before any body byte is read.

``SPILLWAY_TOKENS`` holds comma-separated ``token:scopes`` entries, scopes being
``read``, ``write`` or ``read+write`` (the default when ``:scopes`` is left out);
tokens cannot contain ``,`` or ``:`` (parsed by :func:`app.settings.parse_tokens`)::

    SPILLWAY_TOKENS="ci-9f2c:read+write,dashboard-77ab:read"
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .errors import Forbidden, Unauthorized

READ = "read"
WRITE = "write"
SCOPES = frozenset({READ, WRITE})


@dataclass(frozen=True)
class Token:
    secret: str
    scopes: frozenset[str]

    def __repr__(self) -> str:  # never print secrets into logs
        return f"Token(scopes={sorted(self.scopes)})"


def bearer_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def authorize(tokens: tuple[Token, ...], header: str | None, scope: str) -> None:
    """Raise Unauthorized/Forbidden unless ``header`` carries a token with ``scope``."""
    if not tokens:
        return
    presented = bearer_from_header(header)
    if presented is None:
        raise Unauthorized()
    match = None
    for token in tokens:
        # compare against every token so timing does not reveal which one matched
        if hmac.compare_digest(token.secret.encode(), presented.encode()):
            match = token
    if match is None:
        raise Unauthorized("the bearer token is not valid", code="invalid_token")
    if scope not in match.scopes:
        raise Forbidden(f"this token lacks the '{scope}' scope")
