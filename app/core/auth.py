"""Bearer tokens with read/write scopes, checked before any body byte is read.

``SPILLWAY_TOKENS`` holds comma-separated ``[name=]token:scopes`` entries, scopes being
``read``, ``write`` or ``read+write`` (the default when ``:scopes`` is left out);
tokens cannot contain ``,``, ``=`` or ``:`` (parsed by :func:`app.settings.parse_tokens`).
The name is what logs, metrics, hooks and limits show; without one it is ``t-`` and the
first 8 hex digits of the token's SHA-256, never the token itself::

    SPILLWAY_TOKENS="ci=ci-9f2c0d1e:read+write,dashboard=dash-77ab90c1:read"
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from .errors import Forbidden, Unauthorized

READ = "read"
WRITE = "write"
SCOPES = frozenset({READ, WRITE})


@dataclass(frozen=True)
class Token:
    secret: str
    scopes: frozenset[str]
    name: str = field(default="")

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", default_token_name(self.secret))

    def __repr__(self) -> str:  # never print secrets into logs
        return f"Token({self.name!r}, scopes={sorted(self.scopes)})"


def default_token_name(secret: str) -> str:
    """A name that tells tokens apart in logs without revealing them."""
    return "t-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def bearer_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def authorize(tokens: tuple[Token, ...], header: str | None, scope: str) -> Token | None:
    """The token ``header`` carries; Unauthorized/Forbidden unless it has ``scope``.
    None when no tokens are configured (an open server)."""
    if not tokens:
        return None
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
    return match
