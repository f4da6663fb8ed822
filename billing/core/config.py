"""Settings: the BILLING_* environment, optionally seeded from a file under config/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing.core.forwarding import TrustedProxies
from billing.core.parsing import MAX_EXPIRES_IN
from billing.core.roles import ROLES
from billing.core.timefmt import load_zone

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Defaults of what the command line sets rather than the environment.
SERVE_HOST, SERVE_PORT = "127.0.0.1", 8080  # billing serve --host, --port
DRAIN_TIMEOUT_SECONDS = 30.0  # reconcile, rebuild --force: how long to project the outbox first
LOG_LEVEL = "INFO"  # BILLING_LOG_LEVEL unset (read before the settings, so that their errors are logged)
# The most ledger partitions there can ever be: a transaction id is its partition's sequence * MAX_PARTITIONS
# + the partition number (billing/ledger/scripts.py), so this bound is part of every id ever issued.
MAX_PARTITIONS = 1024


def _env_file() -> str | None:
    explicit = os.environ.get("BILLING_CONFIG_FILE")
    if explicit:
        return explicit
    default = PROJECT_ROOT / "config" / "billing.env"
    return str(default) if default.exists() else None


def default_reports_dir() -> Path:
    """The report cache's default: billing/reports under the user's cache directory (XDG Base Directory:
    $XDG_CACHE_HOME when it is an absolute path, else ~/.cache), never inside the source tree."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "billing" / "reports"


class Settings(BaseSettings):
    """Every knob of the service; the environment wins over the config file."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", env_file=_env_file(), extra="ignore")

    redis_url: str | None = None
    # single: BILLING_REDIS_URL names one Redis; cluster: any node of a Redis Cluster (docs/operations.md)
    redis_mode: Literal["single", "cluster"] = "single"
    # N > 0: each money write waits (WAIT N) until N replicas of its node have it, at most redis_wait_timeout_ms
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    mongo_url: str | None = None
    mongo_db: str = "billing"
    redis_prefix: str = "billing:"
    # Ledger partitions users are spread over (billing/ledger/scripts.py RedisKeys); stored in Redis at the
    # first start, and changing it later is a migration (docs/operations.md)
    partitions: int = 16
    tokens: dict[str, list[str]] = Field(default_factory=dict)
    secret: str | None = None
    public_url: str | None = None
    # X-Forwarded-For/-Proto/-Host count only from these peers (addresses and CIDR networks, comma-separated)
    trusted_proxies: TrustedProxies = ()
    report_tz: str = "Europe/Moscow"
    reports_dir: Path = Field(default_factory=default_reports_dir)
    report_link_ttl_seconds: int = 3600
    report_bom: bool = False
    idempotency_ttl_seconds: int = 90_000
    # A reservation's lifetime when reserve names no expires_in (1 .. billing/core/parsing.py MAX_EXPIRES_IN)
    reservation_ttl_seconds: int = 604_800
    # How long a closed reservation's record stays in Redis, counted from its closing: while it does, the order
    # is reserved once ever (docs/api.md). Cancelled and expired ones: past the idempotency window and any
    # reservation lifetime a caller is likely to retry within (30 days)
    reservation_closed_ttl_seconds: int = 2_592_000
    # Recognized ones: refunds of a charge need its reservation (180 days)
    reservation_recognized_ttl_seconds: int = 15_552_000
    # How often each worker's sweeper looks for reservations past their deadline (billing/ledger/expiry.py)
    reservation_sweep_interval_ms: int = 250
    request_timeout_seconds: float = 5.0
    # Entries per projector read: reading, converting and acknowledging 100 holds the worker's event loop
    # about 2.5 ms (500: about 13 ms, which showed in request p99); MongoDB gets one insert_many per read.
    projector_batch: int = 100
    projector_block_ms: int = 200
    projector_claim_idle_ms: int = 10_000
    # false: `billing serve` leaves projection to a separate `billing project` process
    projector_enabled: bool = True
    log_requests: bool = True
    # The console's audit log keeps about this many newest entries (XADD MAXLEN ~)
    console_audit_maxlen: int = 1_000_000
    # true: webhook URLs may point at loopback, private and link-local addresses (tests, one private network)
    webhook_allow_private: bool = False

    @property
    def embedded(self) -> bool:
        return not (self.redis_url and self.mongo_url)


def default(name: str) -> Any:
    """A setting's default, for code that takes the setting as an argument (the field above is its one place)."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


class ConfigError(ValueError):
    """A setting the service cannot run with; its message is one line naming the variable."""


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's error for Settings() as one line: BILLING_<FIELD>: what is wrong."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error.get("loc") else "?"
        parts.append(f"BILLING_{field.upper()}: {error.get('msg', 'invalid')}")
    return "; ".join(parts).replace("\n", " ")


def check_settings(settings: Settings) -> None:
    """Everything a worker would otherwise fail on at its start, checked before any socket or fork."""

    for token, roles in settings.tokens.items():
        unknown = sorted(set(roles) - ROLES)
        if not token or unknown:
            raise ConfigError(
                f"BILLING_TOKENS: {'an empty token' if not token else f'unknown roles {unknown}'}; "
                f"roles are {', '.join(sorted(ROLES))}"
            )
    if settings.redis_url:
        _check_redis_url(settings.redis_url)
    if settings.redis_mode == "cluster" and not settings.redis_url:
        raise ConfigError("BILLING_REDIS_MODE: cluster needs BILLING_REDIS_URL (a node of the Redis Cluster)")
    if settings.redis_wait_replicas < 0:
        raise ConfigError(f"BILLING_REDIS_WAIT_REPLICAS: must be 0 or more, not {settings.redis_wait_replicas}")
    wait_ms = settings.redis_wait_timeout_ms
    if wait_ms <= 0 or (settings.redis_wait_replicas and wait_ms >= settings.request_timeout_seconds * 1000):
        # WAIT 0 blocks forever; a WAIT longer than the socket timeout would drop the connection
        raise ConfigError(
            "BILLING_REDIS_WAIT_TIMEOUT_MS: must be above 0 (and with BILLING_REDIS_WAIT_REPLICAS below "
            f"BILLING_REQUEST_TIMEOUT_SECONDS), not {wait_ms}"
        )
    if settings.mongo_url:
        _check_mongo_url(settings.mongo_url)
    try:
        load_zone(settings.report_tz)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    positive = {
        "report_link_ttl_seconds": settings.report_link_ttl_seconds,
        "idempotency_ttl_seconds": settings.idempotency_ttl_seconds,
        "reservation_closed_ttl_seconds": settings.reservation_closed_ttl_seconds,
        "reservation_recognized_ttl_seconds": settings.reservation_recognized_ttl_seconds,
        "reservation_sweep_interval_ms": settings.reservation_sweep_interval_ms,
        "request_timeout_seconds": settings.request_timeout_seconds,
        "projector_batch": settings.projector_batch,
        "projector_block_ms": settings.projector_block_ms,
        "projector_claim_idle_ms": settings.projector_claim_idle_ms,
        "console_audit_maxlen": settings.console_audit_maxlen,
    }
    for name, value in positive.items():
        if not value > 0 or value != value or value == float("inf"):
            raise ConfigError(f"BILLING_{name.upper()}: must be a positive number, not {value!r}")
    if not 1 <= settings.reservation_ttl_seconds <= MAX_EXPIRES_IN:
        raise ConfigError(
            f"BILLING_RESERVATION_TTL_SECONDS: must be 1 .. {MAX_EXPIRES_IN}, not {settings.reservation_ttl_seconds}"
        )
    if not settings.redis_prefix:
        raise ConfigError("BILLING_REDIS_PREFIX: must not be empty")
    if "{" in settings.redis_prefix or "}" in settings.redis_prefix:
        # a brace would change the hash tag that keeps each partition's keys in one Redis Cluster slot
        raise ConfigError(f"BILLING_REDIS_PREFIX: must not contain '{{' or '}}', not {settings.redis_prefix!r}")
    if not 1 <= settings.partitions <= MAX_PARTITIONS:
        raise ConfigError(f"BILLING_PARTITIONS: must be 1 .. {MAX_PARTITIONS}, not {settings.partitions}")


def _check_redis_url(url: str) -> None:
    from redis.asyncio.connection import ConnectionPool

    try:
        ConnectionPool.from_url(url)  # parses only: nothing connects until a command
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"BILLING_REDIS_URL: {exc}".replace("\n", " ")) from None


def _check_mongo_url(url: str) -> None:
    from pymongo.errors import PyMongoError
    from pymongo.uri_parser import parse_uri

    if url.startswith("mongodb+srv://"):
        return  # its hosts come from DNS at connection time
    try:
        parse_uri(url)
    except (PyMongoError, ValueError) as exc:
        raise ConfigError(f"BILLING_MONGO_URL: {exc}".replace("\n", " ")) from None
