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
from ..esp.activecampaign import (
    API_OPERATIONS,
    BULK_IMPORT_MULTI,
    BULK_IMPORT_SINGLE,
    TRACK_EVENT,
    TRACK_URL,
    ActiveCampaignClient,
)
from ..esp.activecampaign_adapter import ActiveCampaignAdapter
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
        poll_interval=min(1.0, 1.0 / scale),  # check_settings made scale positive
        pause=limiter.pause,
    )


ACTIVECAMPAIGN_SETTINGS = {
    **COMMON_SETTINGS,
    "list_id": "the ActiveCampaign list email subscriptions go to (its id); without it email consent is not sent",
    "sms_list_id": "the ActiveCampaign list sms subscriptions go to (its id); without it sms consent is not sent",
    "actid": "the event-tracking account id (Settings → Tracking → Event Tracking); with --event-key for events",
    "track_url": f"trackcmp's event URL (default {TRACK_URL}; the sandbox's <url>/event)",
    "field_map": "our contact property (or external_id, timezone, locale) → ActiveCampaign custom field title; "
    "missing fields are created on first use",
    "segment_mirror": '"tags" (default: a tag per segment) or "lists" (a list per segment)',
    "full_sync_method": '"bulk_import" (default: the bulk importer, 250 contacts a request) or "contact_sync" '
    "(one contact/sync per contact)",
    "ecom_connection": 'the name of the Deep Data connection shown in ActiveCampaign (default "espbridge")',
}


def _check_id(settings: dict[str, Any], key: str) -> None:
    value = settings.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit() or int(value) <= 0:
        raise InvalidInput(f"setting.{key}", "must be an ActiveCampaign id (a positive whole number)")


def _check_activecampaign(settings: dict[str, Any]) -> None:
    for key in ("list_id", "sms_list_id", "actid"):
        _check_id(settings, key)
    track_url = settings.get("track_url")
    if track_url is not None and (not isinstance(track_url, str) or not track_url.startswith(("https://", "http://"))):
        raise InvalidInput("setting.track_url", "must be an http(s) URL")
    field_map = settings.get("field_map")
    if field_map is not None:
        if not isinstance(field_map, dict):
            raise InvalidInput("setting.field_map", "must be a JSON object of property → field title")
        for source, title in field_map.items():
            if not source or not isinstance(title, str) or not title.strip():
                raise InvalidInput("setting.field_map", f"{source!r} must map to a field title (text)")
    for key, allowed in (("segment_mirror", ("tags", "lists")), ("full_sync_method", ("bulk_import", "contact_sync"))):
        value = settings.get(key)
        if value is not None and value not in allowed:
            raise InvalidInput(f"setting.{key}", f"must be one of {', '.join(allowed)}")
    name = settings.get("ecom_connection")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InvalidInput("setting.ecom_connection", "must be a non-empty name")


#: One budget of 5 requests/s for the whole account, shared by every key, worker and operation; the bulk importer
#: also 100/min for multi-contact and 20/min for single-contact requests (ESP_NOTES.md §2.1).
_AC_ACCOUNT = Window(5, 1.0, "account")
ACTIVECAMPAIGN_WINDOWS: dict[str, tuple[Window, ...]] = {
    **{op: (_AC_ACCOUNT,) for op in API_OPERATIONS},
    BULK_IMPORT_MULTI: (_AC_ACCOUNT, Window(100, 60.0, "bulk_multi")),
    BULK_IMPORT_SINGLE: (_AC_ACCOUNT, Window(20, 60.0, "bulk_single")),
    # trackcmp's limit is NOT documented: 5/s of its own is a conservative guess, not a documented limit.
    TRACK_EVENT: (Window(5, 1.0, "trackcmp"),),
}


def _build_activecampaign(connection: Connection, options: AdapterOptions) -> EspAdapter:
    settings = connection.settings
    scale = float(settings.get("rate_limit_scale", 1.0))
    limiter = SharedRateLimiter(
        # the limit is per ACCOUNT, shared by all its keys: the budget is keyed by the account's URL, not the key
        account_key("activecampaign", connection.base_url.rstrip("/").lower()),
        ACTIVECAMPAIGN_WINDOWS,
        redis_client=options.redis_client,
        time_scale=scale,
        max_wait=options.max_wait,
        shared_pause=True,
    )
    event_key = connection.secrets.get("event_key")
    client = ActiveCampaignClient(
        connection.api_key.get_secret_value(),
        base_url=connection.base_url,
        track_url=str(settings.get("track_url") or TRACK_URL),
        actid=None if settings.get("actid") is None else str(settings["actid"]),
        event_key=None if event_key is None else event_key.get_secret_value(),
        timeout=float(settings.get("timeout", 30.0)),
        transport=options.transport,
        limiter=limiter.acquire,
    )

    def optional(key: str) -> str | None:
        return None if settings.get(key) is None else str(settings[key])

    return ActiveCampaignAdapter(
        client,
        list_id=optional("list_id"),
        sms_list_id=optional("sms_list_id"),
        field_map=settings.get("field_map") or {},
        segment_mirror=str(settings.get("segment_mirror") or "tags"),
        full_sync_method=str(settings.get("full_sync_method") or "bulk_import"),
        ecom_connection=str(settings.get("ecom_connection") or "espbridge"),
        job_timeout=options.job_timeout,
        poll_interval=min(1.0, 1.0 / scale),  # check_settings made scale positive
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
        {
            SyncKind.PROFILE: 500,
            SyncKind.CONSENT: 1000,
            SyncKind.EVENT: 1000,
            SyncKind.CART: 1000,
            SyncKind.ERASE: 10,  # one data-privacy deletion request each, on a small rate limit
            SyncKind.SEGMENT: 1000,  # list relationships take 1,000 profiles a request
        },
    ),
    # A job holds a worker thread (shared with other ESPs) while it waits on the account's 5/s: each kind's batch
    # is a few seconds of that budget. Profiles: one contact/sync each (a full sync's bulk import takes its own
    # page size); consent: up to 3 requests each (find, read the list status, set it); events: trackcmp has its
    # own budget, orders cost one request once the connection and customer are cached; carts up to 2 each;
    # segment mirrors up to 3 each (find the contact, tag it or read its tags and remove one).
    "activecampaign": EspSpec(
        ACTIVECAMPAIGN_SETTINGS,
        _check_activecampaign,
        _build_activecampaign,
        {
            SyncKind.PROFILE: 25,
            SyncKind.CONSENT: 10,
            SyncKind.EVENT: 50,
            SyncKind.CART: 10,
            SyncKind.ERASE: 10,
            SyncKind.SEGMENT: 10,
        },
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
