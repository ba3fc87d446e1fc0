"""The values of ``SPILLWAY_*`` variables: sizes, booleans, lists, proxy targets, tokens,
parsed from their text (:class:`app.settings.Settings` holds them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from .core.auth import SCOPES, Token

MiB = 1024 * 1024
GiB = 1024 * MiB

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A ``SPILLWAY_*`` variable holds a value we cannot use."""


def parse_size(text: str) -> int:
    """Parse ``1048576``, ``64K``, ``1M``, ``16G`` (binary multiples) into bytes."""
    units = {"K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = 1
    if value and value[-1] in units:
        factor = units[value[-1]]
        value = value[:-1]
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"not a size: {text!r}") from None
    if number < 0:
        raise SettingsError(f"a size cannot be negative: {text!r}")
    return number * factor


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"not a boolean: {text!r}")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


HOOK_EVENTS = ("pre-create", "post-create", "post-receive", "post-finish", "post-terminate")

_TARGET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ProxyTarget:
    """A downstream the proxy route may call: clients name it, they never give a host."""

    name: str
    base_url: str
    authorization: str | None = None  # sent as the downstream's Authorization header

    def __repr__(self) -> str:  # keep the credential out of logs and tracebacks
        return f"ProxyTarget({self.name!r}, {self.base_url!r})"


def parse_targets(text: str) -> tuple[ProxyTarget, ...]:
    """``name=https://host/base,other=http://...`` into targets (auth comes separately)."""
    targets = []
    for item in parse_list(text):
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not _TARGET_NAME.match(name):
            raise SettingsError(f"expected name=URL with a name of letters, digits, - or _: "
                                f"{item!r}")
        if not check_base_url(url):
            raise SettingsError(f"not an http(s) base URL without credentials: {url!r}")
        targets.append(ProxyTarget(name, url.rstrip("/")))
    if len({t.name for t in targets}) != len(targets):
        raise SettingsError("proxy target names must be unique")
    return tuple(targets)


def check_base_url(url: str) -> bool:
    parts = urlsplit(url)
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and parts.username is None and parts.password is None
            and not parts.query and not parts.fragment)


def check_origin(origin: str) -> bool:
    """``*``, or an origin as a browser sends it: ``scheme://host[:port]``, nothing more."""
    if origin == "*":
        return True
    parts = urlsplit(origin)
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and f"{parts.scheme}://{parts.netloc}" == origin and "@" not in parts.netloc)


def target_auth_variable(name: str) -> str:
    return "SPILLWAY_PROXY_AUTH_" + name.upper().replace("-", "_")


def parse_tokens(raw: str) -> tuple[Token, ...]:
    """``SPILLWAY_TOKENS``: comma-separated ``[name=]token:scopes`` entries (app/core/auth.py)."""
    tokens = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, equals, rest = item.partition("=")
        if not equals:
            name, rest = "", item
        elif not _TARGET_NAME.match(name.strip()):
            raise SettingsError(f"a token name is letters, digits, - or _: {name!r}")
        secret, sep, scope_text = rest.partition(":")
        scopes = frozenset(s.strip() for s in scope_text.split("+")) if sep else SCOPES
        if not scopes <= SCOPES:
            raise SettingsError(f"unknown scope in {scope_text!r}: use read, write or read+write")
        if len(secret) < 8:
            raise SettingsError("tokens must be at least 8 characters long")
        tokens.append(Token(secret, frozenset(scopes), name.strip()))
    if len({t.name for t in tokens}) != len(tokens):
        raise SettingsError("token names must be unique")
    return tuple(tokens)


_RATES = {"min_body_rate", "limit_bytes_per_second"}


def convert(name: str, raw: str, current):
    """The value of the setting `name` from its text (`current`: its default, for the type)."""
    if name == "tokens":
        return parse_tokens(raw)
    if name == "proxy_targets":
        return parse_targets(raw)
    if (name.endswith("_size") and name != "page_size") or name in _RATES:
        return parse_size(raw)
    if isinstance(current, bool):
        return parse_bool(raw)
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"not a whole number: {raw!r}") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"not a number: {raw!r}") from None
    if isinstance(current, tuple):
        return parse_list(raw)
    return raw

