"""Service configuration: one pydantic-settings class, read from ``ESPBRIDGE_*`` environment variables.

Nothing reads the environment anywhere else; a ``Settings`` instance is built once at the edge (CLI, app
factory, worker) and passed down explicitly.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Self

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./espbridge.db"
ENV_PREFIX = "ESPBRIDGE_"

#: Four whole numbers, given as "a,b,c,d" in the environment (not JSON: NoDecode leaves the string to the validator).
Four = Annotated[tuple[int, int, int, int], NoDecode]
#: The direction each list of thresholds must run in, strictly (two equal thresholds would leave a score unreachable).
_ORDER = {
    "rfm_frequency_thresholds": "ascending",
    "rfm_fixed_recency_days": "descending",
    "rfm_fixed_monetary_cents": "ascending",
}


def env_name(field: str) -> str:
    """The environment variable that sets a Settings field."""
    return f"{ENV_PREFIX}{field.upper()}"


class ConfigurationError(ValueError):
    """Settings that cannot be used; the message names each offending ESPBRIDGE_* variable and why."""


def load() -> Settings:
    """The settings from the environment, or a ConfigurationError naming every invalid variable (startup)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = env_name(str(error["loc"][0])) if error["loc"] else "configuration"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(message if message.startswith(ENV_PREFIX) else f"{name}: {message}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


class Settings(BaseSettings):
    """Every knob of the service. The README's configuration table lists the same fields."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the local store (SQLite file or postgresql+psycopg://…).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL of the Dramatiq broker. Unset: an embedded in-process broker with worker threads.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Flask secret key for signed cookies. Unset: a random key per process (not shared by workers).",
    )
    credentials_key: SecretStr | None = Field(
        None,
        description="Fernet key(s), comma-separated, encrypting ESP credentials at rest; the first encrypts "
        "(`espbridge esp keygen` makes one).",
    )
    host: str = Field("127.0.0.1", description="Address `espbridge serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `espbridge serve` listens on.")
    web_workers: int = Field(2, ge=1, description="gunicorn worker processes for `espbridge serve`.")
    web_threads: int = Field(
        16, ge=1, description="Threads per gunicorn worker; requests mostly wait on a shared commit, so many pay."
    )
    worker_threads: int = Field(4, ge=1, description="Dramatiq worker threads (embedded broker or `espbridge worker`).")
    db_pool_size: int = Field(5, ge=1, description="Connections per process in the PostgreSQL pool.")
    relay_interval: float = Field(
        1.0, gt=0, description="Seconds between relay ticks (enqueue due outbox rows, project pending events)."
    )
    outbox_visibility_timeout: float = Field(
        300.0, gt=0, description="Seconds after which an enqueued outbox row not marked done is enqueued again."
    )
    retry_min_backoff: float = Field(15.0, gt=0, description="Seconds before the first retry of a failed ESP delivery.")
    retry_max_backoff: float = Field(3600.0, gt=0, description="Longest wait between two retries, in seconds.")
    retry_max_age: float = Field(
        86400.0, gt=0, description="Seconds after which a delivery that keeps failing is marked dead (24 h)."
    )
    cart_abandon_after: float = Field(
        3600.0, gt=0, description="Seconds without activity after which a shopper's cart counts as abandoned."
    )
    projection_batch_size: int = Field(
        100, ge=1, description="Raw events projected per transaction (bounds how long SQLite's write lock is held)."
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="The service's public base URL; double opt-in confirmation and unsubscribe links start with it.",
    )
    double_opt_in_ttl: float = Field(
        7 * 86400.0, gt=0, description="Seconds a double opt-in confirmation link stays valid (7 days)."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    rfm_window_days: int = Field(
        365, ge=1, description="RFM frequency and monetary count the completed orders of this many days up to as_of."
    )
    rfm_frequency_thresholds: Four = Field(
        (2, 3, 5, 10),
        description="Orders in the window from which F scores 2, 3, 4, 5: four ascending whole numbers.",
    )
    rfm_min_scored: int = Field(
        500, ge=1, description="Stores with fewer scored contacts use the fixed R and M thresholds, not percentiles."
    )
    rfm_fixed_recency_days: Four = Field(
        (365, 180, 90, 30),
        description="Fixed thresholds: R scores 2, 3, 4, 5 at most this many days after the last order (descending).",
    )
    rfm_fixed_monetary_cents: Four = Field(
        (5000, 10000, 25000, 50000),
        description="Fixed thresholds: M scores 2, 3, 4, 5 from this net revenue in cents (ascending).",
    )
    rfm_drift_alert_pct: float = Field(
        10.0, ge=0, le=100, description="A run alerts when an RFM group's share moved more than this many points."
    )
    rfm_keep_runs: int = Field(
        14,
        ge=0,
        description="Per-contact RFM scores are kept for this many newest runs per store (older runs keep their "
        "summary); 0: all.",
    )
    lifecycle_new_days: int = Field(30, ge=0, description="A customer whose first order is at most this old is new.")
    lifecycle_at_risk_days: int = Field(
        45, ge=1, description="A customer with no order for more than this many days is at risk."
    )
    lifecycle_churned_days: int = Field(
        90, ge=1, description="A customer with no order for more than this many days is churned (unless engaged)."
    )
    lifecycle_engaged_days: int = Field(
        30,
        ge=0,
        description="Opened or clicked within this many days: engaged (not churned, churn risk halved); 0: off.",
    )

    @field_validator(*_ORDER, mode="before")
    @classmethod
    def _four_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        name = env_name(str(info.field_name))
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"{name} must be four comma-separated whole numbers, e.g. 2,3,5,10 (got {value!r})")
        return tuple(int(p) for p in parts)

    @field_validator(*_ORDER)
    @classmethod
    def _ordered(cls, value: tuple[int, int, int, int], info: ValidationInfo) -> tuple[int, int, int, int]:
        field = str(info.field_name)
        order = _ORDER[field]
        pairs = itertools.pairwise(value)
        if min(value) < 0 or not all(a < b if order == "ascending" else a > b for a, b in pairs):
            got = ",".join(str(v) for v in value)
            raise ValueError(f"{env_name(field)} must be four {order} whole numbers of at least 0 (got {got})")
        return value

    @model_validator(mode="after")
    def _churned_after_at_risk(self) -> Self:
        if self.lifecycle_churned_days <= self.lifecycle_at_risk_days:
            raise ValueError(
                f"{env_name('lifecycle_churned_days')} ({self.lifecycle_churned_days}) must exceed "
                f"{env_name('lifecycle_at_risk_days')} ({self.lifecycle_at_risk_days})"
            )
        return self

    @property
    def embedded_broker(self) -> bool:
        """True when jobs run on an in-process broker (no Redis configured)."""
        return not self.redis_url
