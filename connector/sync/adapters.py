"""Building a store's ESP adapter from its stored connection, with the account's shared rate limiter."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..credentials import CredentialCipher
from ..errors import InvalidInput, NotFound
from ..esp import connections
from ..esp.base import EspAdapter
from ..esp.connections import Connection
from ..esp.klaviyo import RATE_LIMITS, KlaviyoClient, ProfileMapping
from ..esp.klaviyo_adapter import KlaviyoAdapter
from ..store import EspConnection, SyncKind
from .ratelimit import SharedRateLimiter, Window, account_key

#: Settings every adapter reads (``espbridge esp connect … --setting``), with their meaning.
COMMON_SETTINGS = {
    "rate_limit_scale": "divides the documented rate-limit windows; only for the sandbox's --time-scale",
    "timeout": "HTTP timeout in seconds",
}

KLAVIYO_SETTINGS = {
    **COMMON_SETTINGS,
    "mapping": "Klaviyo field mapping (ProfileMapping.from_config)",
    "list_id": "the Klaviyo list subscriptions are made to",
}


def _check_common(settings: dict[str, Any]) -> None:
    for key in ("rate_limit_scale", "timeout"):
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise InvalidInput(f"setting.{key}", "must be a positive number")


def _check_klaviyo(settings: dict[str, Any]) -> None:
    list_id = settings.get("list_id")
    if list_id is not None and (not isinstance(list_id, str) or not list_id):
        raise InvalidInput("setting.list_id", "must be a Klaviyo list id")
    mapping = settings.get("mapping")
    if mapping is not None:
        if not isinstance(mapping, dict):
            raise InvalidInput("setting.mapping", "must be a JSON object")
        ProfileMapping.from_config(mapping)


KLAVIYO_WINDOWS = {op: (Window(burst, 1.0), Window(steady, 60.0)) for op, (burst, steady) in RATE_LIMITS.items()}


@dataclass(frozen=True)
class AdapterOptions:
    redis_client: redis.Redis | None = None
    #: Longest a request waits for the shared limiter inside a job before the job reschedules it.
    max_wait: float = 120.0
    job_timeout: float = 600.0
    #: An httpx transport for every adapter's client (tests route requests to an in-process sandbox).
    transport: httpx.BaseTransport | None = None


def _build_klaviyo(connection: Connection, options: AdapterOptions) -> EspAdapter:
    settings = connection.settings
    scale = float(settings.get("rate_limit_scale", 1.0))
    api_key = connection.api_key.get_secret_value()
    limiter = SharedRateLimiter(
        account_key("klaviyo", api_key),
        KLAVIYO_WINDOWS,
        redis_client=options.redis_client,
        time_scale=scale,
        max_wait=options.max_wait,
    )
    client = KlaviyoClient(
        api_key,
        base_url=connection.base_url,
        timeout=float(settings.get("timeout", 30.0)),
        transport=options.transport,
        limiter=limiter.acquire,
    )
    return KlaviyoAdapter(
        client,
        ProfileMapping.from_config(settings.get("mapping") or {}),
        list_id=settings.get("list_id"),
        job_timeout=options.job_timeout,
        poll_interval=min(1.0, 1.0 / scale) if scale > 0 else 1.0,
        pause=limiter.pause,
    )


@dataclass(frozen=True)
class EspSpec:
    """What the sync engine needs to know of one ESP: its settings, how to build its adapter, and how many sync
    items of each kind one job takes (about one bulk request's worth, or a few seconds of the account's budget)."""

    settings: Mapping[str, str]
    check: Callable[[dict[str, Any]], None]
    build: Callable[[Connection, AdapterOptions], EspAdapter]
    batch_sizes: Mapping[str, int]


ESPS: dict[str, EspSpec] = {
    "klaviyo": EspSpec(
        KLAVIYO_SETTINGS,
        _check_klaviyo,
        _build_klaviyo,
        {SyncKind.PROFILE: 500, SyncKind.CONSENT: 1000, SyncKind.EVENT: 1000, SyncKind.CART: 1000},
    ),
}


def spec(esp: str) -> EspSpec:
    try:
        return ESPS[esp]
    except KeyError:
        raise InvalidInput("esp", f"no adapter for {esp!r}; known: {', '.join(sorted(ESPS))}") from None


def check_settings(esp: str, settings: dict[str, Any]) -> None:
    """Refuse connection settings an adapter could not be built from (``InvalidInput`` naming the key)."""
    known = spec(esp).settings
    unknown = set(settings) - set(known)
    if unknown:
        raise InvalidInput("setting", f"unknown {sorted(unknown)}; known: {', '.join(sorted(known))}")
    _check_common(settings)
    spec(esp).check(settings)


def build_adapter(connection: Connection, options: AdapterOptions) -> EspAdapter:
    check_settings(connection.esp, connection.settings)
    return spec(connection.esp).build(connection, options)


def batch_size(esp: str, kind: str) -> int:
    return ESPS[esp].batch_sizes.get(kind, 100) if esp in ESPS else 100


def largest_batch(esp: str) -> int:
    return max(ESPS[esp].batch_sizes.values(), default=100) if esp in ESPS else 100


class AdapterCache:
    """One adapter per (store, ESP, connection version) per thread: adapters keep an HTTP connection open and
    are used by one thread at a time. A changed connection (new key or URL) builds a new one."""

    def __init__(self, cipher: CredentialCipher, options: AdapterOptions) -> None:
        self.cipher = cipher
        self.options = options
        self._local = threading.local()

    def get(self, session: Session, store_id: int, esp: str) -> EspAdapter:
        """The store's adapter for ``esp``; ``NotFound`` when the store is not connected to it."""
        row = session.scalar(
            sa.select(EspConnection).where(EspConnection.store_id == store_id, EspConnection.esp == esp)
        )
        if row is None:
            raise NotFound(f"store {store_id} is not connected to {esp}")
        cache: dict[tuple[int, str], tuple[object, EspAdapter]] = self._local.__dict__.setdefault("adapters", {})
        version = (row.updated_at, row.base_url, row.credentials)
        cached = cache.get((store_id, esp))
        if cached is not None and cached[0] == version:
            return cached[1]
        if cached is not None:
            cached[1].close()
        adapter = build_adapter(connections.load(session, self.cipher, store_id, esp), self.options)
        cache[(store_id, esp)] = (version, adapter)
        return adapter
