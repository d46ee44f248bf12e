"""Service configuration: one pydantic-settings class, read from ``ESPBRIDGE_*`` environment variables.

Nothing reads the environment anywhere else; a ``Settings`` instance is built once at the edge (CLI, app
factory, worker) and passed down explicitly.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./espbridge.db"


class Settings(BaseSettings):
    """Every knob of the service. The README's configuration table lists the same fields."""

    model_config = SettingsConfigDict(env_prefix="ESPBRIDGE_", extra="ignore", frozen=True)

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

    @property
    def embedded_broker(self) -> bool:
        """True when jobs run on an in-process broker (no Redis configured)."""
        return not self.redis_url
