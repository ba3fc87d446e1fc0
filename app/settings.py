"""Typed settings, read once from ``SPILLWAY_*`` environment variables.

Every field is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

# the parsers, and names other modules import from here
from .core.auth import Token
from .settings_values import (GiB, HOOK_EVENTS, MiB, ProxyTarget, SettingsError,  # noqa: F401
                              check_base_url, check_origin, convert, parse_size, parse_tokens,
                              target_auth_variable)

@dataclass(frozen=True)
class Settings:
    storage_dir: str = "./spillway-data"
    # s3://bucket/prefix: the S3 backend (with the standard AWS_* variables); empty, a
    # path or file://path: local disk (a path here overrides storage_dir)
    storage_url: str = ""
    s3_part_size: int = 8 * MiB
    s3_timeout: float = 30.0
    s3_presigned_downloads: bool = False  # downloads: 302 to a presigned URL (S3 only)
    s3_presign_expiry: float = 300.0
    lease_time: float = 30.0
    redis_url: str = ""
    chunk_size: int = 1 * MiB
    max_request_size: int = 16 * GiB
    max_file_size: int = 16 * GiB
    max_field_size: int = 64 * 1024
    max_parts: int = 100
    max_part_headers_size: int = 16 * 1024
    fsync: bool = False
    tokens: tuple[Token, ...] = ()
    enable_baseline: bool = False
    page_size: int = 100
    read_timeout: float = 60.0
    # after an early answer (401, 413, ...): at most this much of the unwanted body is
    # read and discarded, for at most this long, so the answer is not lost to a reset
    linger_size: int = 256 * MiB
    linger_time: float = 30.0
    head_timeout: float = 10.0
    min_body_rate: int = 1024
    min_body_rate_window: float = 30.0
    nginx_temp_dir: str = ""
    x_accel_prefix: str = ""
    proxy_targets: tuple[ProxyTarget, ...] = ()
    import_allow: tuple[str, ...] = ()
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 60.0
    cors_origins: tuple[str, ...] = ("*",)  # pages of other origins allowed to use /tus/
    # operations (README "Operations"): logs, metrics, hooks, limits per token, cleanup
    log_format: str = "text"  # "json": one JSON line per request
    metrics: bool = True  # GET /metrics
    metrics_token: str = field(default="", repr=False)  # else /metrics wants the read scope
    hook_url: str = ""
    hook_secret: str = field(default="", repr=False)
    hook_events: tuple[str, ...] = HOOK_EVENTS
    hook_timeout: float = 5.0
    hook_retries: int = 5  # post-* deliveries, with backoff doubling from hook_backoff
    hook_backoff: float = 1.0
    hook_progress_interval: float = 5.0  # post-receive at most this often per upload
    limit_concurrent_uploads: int = 0  # per token; 0: no limit
    limit_bytes_per_second: int = 0
    limit_requests_per_minute: int = 0
    # seconds an unfinished upload (tus) may go without a byte written before it expires
    upload_ttl: float = 24 * 3600.0
    sweep_interval: float = -1.0  # seconds between in-process sweeps; 0: none; < 0: automatic

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    @property
    def offload_enabled(self) -> bool:
        """nginx writes upload bodies to files and Spillway adopts them (deploy/nginx)."""
        return bool(self.nginx_temp_dir)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def sweep_every(self) -> float:
        """Seconds between in-process sweeps (0: none): SPILLWAY_SWEEP_INTERVAL, or by default
        a quarter of SPILLWAY_UPLOAD_TTL, within 0.5 s .. 5 min, so an expired upload's bytes
        go soon after it expires."""
        if self.sweep_interval >= 0:
            return self.sweep_interval
        return max(0.5, min(self.upload_ttl / 4, 300.0))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        defaults = cls()
        values: dict = {}
        for spec in dataclasses.fields(cls):
            key = "SPILLWAY_" + spec.name.upper()
            if key not in env:
                continue
            raw = env[key]
            current = getattr(defaults, spec.name)
            try:
                values[spec.name] = convert(spec.name, raw, current)
            except SettingsError as error:
                raise SettingsError(f"{key}: {error}") from None
        if "proxy_targets" in values:
            values["proxy_targets"] = tuple(
                dataclasses.replace(t, authorization=env.get(target_auth_variable(t.name)))
                for t in values["proxy_targets"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.chunk_size < 4096:
            raise SettingsError("SPILLWAY_CHUNK_SIZE must be at least 4096 bytes")
        if self.max_parts < 1:
            raise SettingsError("SPILLWAY_MAX_PARTS must be at least 1")
        if self.max_part_headers_size < 1024:
            raise SettingsError("SPILLWAY_MAX_PART_HEADERS_SIZE must be at least 1024 bytes")
        if self.page_size < 1:
            raise SettingsError("SPILLWAY_PAGE_SIZE must be at least 1")
        if self.nginx_temp_dir and (not os.path.isabs(self.nginx_temp_dir)
                                    or os.path.realpath(self.nginx_temp_dir) == "/"):
            raise SettingsError("SPILLWAY_NGINX_TEMP_DIR must be an absolute directory below /")
        if self.x_accel_prefix and not (self.x_accel_prefix.startswith("/")
                                        and self.x_accel_prefix.endswith("/")):
            raise SettingsError("SPILLWAY_X_ACCEL_PREFIX must start and end with '/'")
        for prefix in self.import_allow:
            if not check_base_url(prefix):
                raise SettingsError(f"SPILLWAY_IMPORT_ALLOW: not an http(s) URL prefix: "
                                    f"{prefix!r}")
        if self.linger_time < 0:
            raise SettingsError("SPILLWAY_LINGER_TIME cannot be negative")
        if self.head_timeout <= 0 or self.min_body_rate_window <= 0:
            raise SettingsError("SPILLWAY_HEAD_TIMEOUT and SPILLWAY_MIN_BODY_RATE_WINDOW must be "
                                "positive")
        if self.storage_url and urlsplit(self.storage_url).scheme not in ("", "file", "s3"):
            raise SettingsError("SPILLWAY_STORAGE_URL must be s3://bucket/prefix, file://path "
                                "or a path")
        if self.s3_part_size < 5 * MiB or self.s3_part_size > 5 * GiB:
            raise SettingsError("SPILLWAY_S3_PART_SIZE must be between 5M and 5G (S3's limits)")
        if self.s3_timeout <= 0 or self.lease_time <= 0:
            raise SettingsError("SPILLWAY_S3_TIMEOUT and SPILLWAY_LEASE_TIME must be positive")
        if not 1 <= self.s3_presign_expiry <= 7 * 24 * 3600:  # S3's limits
            raise SettingsError("SPILLWAY_S3_PRESIGN_EXPIRY must be between 1 s and 7 days")
        longest_gap = max(self.read_timeout,
                          self.min_body_rate_window if self.min_body_rate else 0.0)
        if self.upload_ttl <= longest_gap:
            # a body read may go that long between two writes: an upload that is being
            # written to must never look expired to the sweep
            raise SettingsError("SPILLWAY_UPLOAD_TTL must be longer than SPILLWAY_READ_TIMEOUT "
                                "and SPILLWAY_MIN_BODY_RATE_WINDOW")
        if self.upstream_connect_timeout <= 0 or self.upstream_read_timeout <= 0:
            raise SettingsError("SPILLWAY_UPSTREAM_*_TIMEOUT must be positive")
        bad = [origin for origin in self.cors_origins if not check_origin(origin)]
        if bad:
            raise SettingsError(f"SPILLWAY_CORS_ORIGINS: {bad[0]!r} is not * or an origin "
                                "(scheme://host[:port])")
        self._validate_operations()

    def _validate_operations(self) -> None:
        if self.log_format not in ("text", "json"):
            raise SettingsError("SPILLWAY_LOG_FORMAT is text or json")
        if self.metrics_token and len(self.metrics_token) < 8:
            raise SettingsError("SPILLWAY_METRICS_TOKEN must be at least 8 characters long")
        if self.hook_url and not check_base_url(self.hook_url):
            raise SettingsError("SPILLWAY_HOOK_URL: not an http(s) URL without credentials")
        if self.hook_url and len(self.hook_secret) < 16:
            raise SettingsError("SPILLWAY_HOOK_SECRET (16 characters or more) signs every "
                                "hook sent to SPILLWAY_HOOK_URL")
        unknown = set(self.hook_events) - set(HOOK_EVENTS)
        if unknown:
            raise SettingsError(f"SPILLWAY_HOOK_EVENTS: unknown {sorted(unknown)}; "
                                f"known: {', '.join(HOOK_EVENTS)}")
        if self.hook_timeout <= 0 or self.hook_retries < 0 or self.hook_backoff < 0:
            raise SettingsError("SPILLWAY_HOOK_TIMEOUT must be positive, SPILLWAY_HOOK_RETRIES "
                                "and SPILLWAY_HOOK_BACKOFF not negative")
        if min(self.limit_concurrent_uploads, self.limit_bytes_per_second,
               self.limit_requests_per_minute) < 0:
            raise SettingsError("SPILLWAY_LIMIT_* cannot be negative (0: no limit)")
        if self.redis_url and urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise SettingsError("SPILLWAY_REDIS_URL: redis://, rediss:// or unix://")
        if self.upload_ttl <= 0:
            raise SettingsError("SPILLWAY_UPLOAD_TTL must be positive")

    def proxy_target(self, name: str) -> ProxyTarget | None:
        return next((t for t in self.proxy_targets if t.name == name), None)
