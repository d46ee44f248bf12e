"""Klaviyo adapter: a thin typed client over httpx, and the mapping from our contacts and events to Klaviyo's.

Why httpx and not the official SDK: DESIGN.md section 6. Request bodies follow the JSON:API shapes of the
official OpenAPI spec (revision ``REVISION``); tests/contract checks them against the spec extract the ESP
sandbox validates with (connector/sandbox/klaviyo_spec.json, from scripts/extract_klaviyo_sandbox_spec.py).

Two layers, kept apart:

- ``ProfileMapping`` (per store, no HTTP) turns a ``Contact`` / stored ``Event`` / consent state into
  ``KlaviyoProfile`` / ``KlaviyoEvent`` / ``ConsentUpdate`` values.
- ``KlaviyoClient`` sends those values. It splits calls at Klaviyo's documented batch limits, and maps every
  failure at the edge to the errors in ``connector.esp.errors``. It never retries or sleeps: the sync engine owns
  retries and the shared rate limiter (``limiter`` is called with the operation id before every request).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode

import httpx

from .. import phones
from ..errors import InvalidInput
from ..store import Channel, ConsentStatus, Contact, Event
from .errors import (
    Accepted,
    AuthFailed,
    EspError,
    Permanent,
    RateLimited,
    RecordError,
    Rejected,
    Transient,
    parse_retry_after,
    with_accepted,
)
from .http import http_client, send_request

log = logging.getLogger(__name__)

#: The API revision every request pins (the ``revision`` header); the spec the bodies are checked against.
REVISION = "2026-07-15"
BASE_URL = "https://a.klaviyo.com"
MEDIA_TYPE = "application/vnd.api+json"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

#: Documented per-request limits (specs/klaviyo/RATE_LIMITS.md, from the spec's descriptions).
MAX_BULK_PROFILES = 10_000
MAX_BULK_EVENTS = 1_000
MAX_SUBSCRIBE = 1_000
MAX_UNSUBSCRIBE = 100
MAX_SUPPRESS = 100
MAX_LIST_MEMBERS = 1_000
MAX_BULK_PAYLOAD_BYTES = 5_000_000
EVENTS_PAGE_SIZE = 200  # GET /api/events: default 200, at most 1,000 per page
MAX_EVENTS_PAGE_SIZE = 1_000

#: Burst (per second) and steady (per minute) limits per operation, for the shared limiter (x-klaviyo-ratelimit).
RATE_LIMITS: dict[str, tuple[int, int]] = {
    "create_or_update_profile": (75, 750),
    "bulk_import_profiles": (10, 150),
    "get_bulk_import_profiles_job": (10, 150),
    "get_errors_for_bulk_import_profiles_job": (10, 150),
    "create_event": (350, 3500),
    "bulk_create_events": (10, 150),
    "bulk_subscribe_profiles": (75, 750),
    "bulk_unsubscribe_profiles": (75, 750),
    "bulk_suppress_profiles": (75, 750),
    "bulk_unsuppress_profiles": (75, 750),
    "create_list": (10, 150),
    "add_profiles_to_list": (10, 150),
    "remove_profiles_from_list": (10, 150),
    "request_profile_deletion": (3, 60),
    "create_webhook": (1, 15),
    "get_metrics": (10, 150),
    "get_events": (350, 3500),
}
#: ``create_list`` also has a daily cap of 150.

LOCATION_FIELDS = frozenset(
    {"address1", "address2", "city", "country", "latitude", "longitude", "region", "zip", "timezone", "ip"}
)
PROFILE_ATTRIBUTES = ("email", "phone_number", "external_id", "first_name", "last_name", "organization", "title")
PROFILE_ATTRIBUTES_MORE = ("locale", "image")

T = TypeVar("T")


# --- values sent to Klaviyo --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KlaviyoProfile:
    """A Klaviyo profile as we send it. ``None`` means "leave unchanged" (the field is omitted).

    At least one identifier (``email``, ``phone_number`` in E.164, ``external_id``, ``id`` = Klaviyo's profile id,
    or, for events only, ``anonymous_id``) is required.
    """

    email: str | None = None
    phone_number: str | None = None
    external_id: str | None = None
    id: str | None = None
    anonymous_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    organization: str | None = None
    title: str | None = None
    locale: str | None = None
    image: str | None = None
    location: Mapping[str, str | float] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.email or self.phone_number or self.external_id or self.id or self.anonymous_id):
            raise InvalidInput("profile", "needs an email, phone_number, external_id, id or anonymous_id")
        unknown = set(self.location) - LOCATION_FIELDS
        if unknown:
            raise InvalidInput("location", f"unknown Klaviyo location fields: {sorted(unknown)}")

    def attributes(self, *, for_event: bool = False) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        for name in (*PROFILE_ATTRIBUTES, *PROFILE_ATTRIBUTES_MORE):
            value = getattr(self, name)
            if value is not None:
                attrs[name] = value
        if for_event and self.anonymous_id is not None:
            attrs["anonymous_id"] = self.anonymous_id
        if self.location:
            attrs["location"] = dict(self.location)
        if self.properties:
            attrs["properties"] = dict(self.properties)
        return attrs

    def resource(self, *, for_event: bool = False) -> dict[str, Any]:
        resource: dict[str, Any] = {"type": "profile", "attributes": self.attributes(for_event=for_event)}
        if self.id is not None:
            resource["id"] = self.id
        return resource


@dataclass(frozen=True)
class KlaviyoEvent:
    """One event (a Klaviyo metric occurrence). ``unique_id`` should always be set: our messageId.

    ``backfill`` records it without triggering flows (historical imports).
    """

    metric_name: str
    profile: KlaviyoProfile
    properties: Mapping[str, Any] = field(default_factory=dict)
    time: dt.datetime | None = None
    value: float | None = None
    value_currency: str | None = None
    unique_id: str | None = None
    backfill: bool = False

    def __post_init__(self) -> None:
        if not self.metric_name or len(self.metric_name) >= 128:
            raise InvalidInput("metric_name", "must be 1 to 127 characters")
        if self.time is not None and self.time.tzinfo is None:
            raise InvalidInput("time", "must be timezone-aware")

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "properties": dict(self.properties),
            "metric": {"data": {"type": "metric", "attributes": {"name": self.metric_name}}},
        }
        if self.time is not None:
            attrs["time"] = self.time.isoformat()
        if self.value is not None:
            attrs["value"] = self.value
        if self.value_currency is not None:
            attrs["value_currency"] = self.value_currency
        if self.unique_id is not None:
            attrs["unique_id"] = self.unique_id
        if self.backfill:
            attrs["backfill"] = True
        return attrs


@dataclass(frozen=True)
class ConsentUpdate:
    """Consent of one person for the channels flagged True (email needs ``email``, SMS needs ``phone_number``).

    ``consented_at`` is when consent was given; it is sent only with ``historical_import`` (imported consents),
    where Klaviyo requires it.
    """

    email: str | None = None
    phone_number: str | None = None
    email_marketing: bool = False
    sms_marketing: bool = False
    sms_transactional: bool = False
    consented_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not (self.email_marketing or self.sms_marketing or self.sms_transactional):
            raise InvalidInput("consent", "no channel selected")
        if self.email_marketing and not self.email:
            raise InvalidInput("email", "email marketing consent needs an email address")
        if (self.sms_marketing or self.sms_transactional) and not self.phone_number:
            raise InvalidInput("phone_number", "SMS consent needs a phone number")

    def resource(self, consent: Literal["SUBSCRIBED", "UNSUBSCRIBED"], *, historical: bool) -> dict[str, Any]:
        def parameters() -> dict[str, Any]:
            params: dict[str, Any] = {"consent": consent}
            if historical and self.consented_at is not None:
                params["consented_at"] = self.consented_at.isoformat()
            return params

        subscriptions: dict[str, Any] = {}
        if self.email_marketing:
            subscriptions["email"] = {"marketing": parameters()}
        sms: dict[str, Any] = {}
        if self.sms_marketing:
            sms["marketing"] = parameters()
        if self.sms_transactional:
            sms["transactional"] = parameters()
        if sms:
            subscriptions["sms"] = sms
        attrs: dict[str, Any] = {"subscriptions": subscriptions}
        if self.email:
            attrs["email"] = self.email
        if self.phone_number:
            attrs["phone_number"] = self.phone_number
        return {"type": "profile", "attributes": attrs}


# --- results ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRef:
    id: str
    created: bool


@dataclass(frozen=True)
class JobStatus:
    id: str
    status: str  # queued | processing | complete | cancelled
    total_count: int
    completed_count: int
    failed_count: int

    @property
    def finished(self) -> bool:
        return self.status in ("complete", "cancelled")


@dataclass(frozen=True)
class ImportFailure:
    """One profile a bulk import job could not import (``original_payload`` identifies it)."""

    code: str
    title: str
    detail: str
    original_payload: Mapping[str, Any] | None


@dataclass(frozen=True)
class EventBatchResult:
    """``accepted``: one entry per request sent; ``duplicates``: indexes dropped before sending (repeated unique_id)."""

    accepted: tuple[Accepted, ...]
    duplicates: tuple[int, ...]


@dataclass(frozen=True)
class Metric:
    id: str
    name: str
    integration: str | None  # "Klaviyo" for Klaviyo's own metrics (Opened Email, …), "API" for ones sent to it


@dataclass(frozen=True)
class EventPage:
    """One page of ``GET /api/events``: raw event resources, the included profiles' attributes by profile id, and
    the cursor of the next page (None on the last)."""

    events: tuple[Mapping[str, Any], ...]
    profiles: Mapping[str, Mapping[str, Any]]
    next_cursor: str | None


# --- the client ---------------------------------------------------------------------------------------------------


class KlaviyoClient:
    """Klaviyo's REST API, the operations espbridge needs.

    Parameters:
        api_key: the private key (``pk_…``); sent only in the Authorization header, never logged.
        base_url: ``https://a.klaviyo.com``, or the sandbox's URL.
        revision: the API revision header.
        timeout: seconds (or an ``httpx.Timeout``); always set, never None.
        transport: an httpx transport (tests pass ``httpx.MockTransport``).
        limiter: called with the operation id before every request (the shared rate limiter blocks there).

    Raises (every method): ``RateLimited``, ``AuthFailed``, ``Rejected``, ``Transient``, ``Permanent``.
    """

    name = "klaviyo"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = BASE_URL,
        revision: str = REVISION,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        limiter: Callable[[str], None] | None = None,
    ) -> None:
        if not api_key:
            raise InvalidInput("api_key", "empty")
        self.revision = revision
        self._limiter = limiter
        self._http = http_client(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            headers={
                "Authorization": f"Klaviyo-API-Key {api_key}",
                "revision": revision,
                "Accept": MEDIA_TYPE,
            },
        )

    def __repr__(self) -> str:
        return f"KlaviyoClient(base_url={str(self._http.base_url)!r}, revision={self.revision!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KlaviyoClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # profiles

    def import_profile(self, profile: KlaviyoProfile) -> ProfileRef:
        """Create or update one profile (``POST /api/profile-import``): for incremental changes."""
        body = {"data": profile.resource()}
        response = self._send("create_or_update_profile", "POST", "/api/profile-import", body, records=1)
        return ProfileRef(id=_data_id(response), created=response.status_code == 201)

    def bulk_import_profiles(
        self, profiles: Sequence[KlaviyoProfile], *, list_ids: Sequence[str] = ()
    ) -> list[Accepted]:
        """Queue bulk import jobs of up to 10,000 profiles / 5 MB each; ``list_ids`` adds every profile to them.

        Bulk import cannot clear fields; use ``import_profile`` for that. Per-profile failures show up later in
        ``bulk_import_errors(job_id)``.
        """
        resources = [p.resource() for p in profiles]
        relationships = {"lists": {"data": [{"type": "list", "id": i} for i in list_ids]}} if list_ids else None

        def send(chunk: Sequence[dict[str, Any]]) -> str | None:
            data: dict[str, Any] = {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": chunk}}}
            if relationships:
                data["relationships"] = relationships
            response = self._send(
                "bulk_import_profiles", "POST", "/api/profile-bulk-import-jobs", {"data": data}, records=len(chunk)
            )
            return _data_id(response)

        return self._in_chunks(resources, MAX_BULK_PROFILES, send, max_bytes=MAX_BULK_PAYLOAD_BYTES)

    def bulk_import_job(self, job_id: str) -> JobStatus:
        response = self._send(
            "get_bulk_import_profiles_job", "GET", f"/api/profile-bulk-import-jobs/{_segment(job_id)}", None
        )
        data = _json(response)["data"]
        attrs = data["attributes"]
        return JobStatus(
            id=data["id"],
            status=attrs["status"],
            total_count=attrs.get("total_count") or 0,
            completed_count=attrs.get("completed_count") or 0,
            failed_count=attrs.get("failed_count") or 0,
        )

    def bulk_import_errors(self, job_id: str) -> list[ImportFailure]:
        """Every per-profile error of a bulk import job (follows the cursor pages)."""
        errors: list[ImportFailure] = []
        url: str | None = f"/api/profile-bulk-import-jobs/{_segment(job_id)}/import-errors"
        while url:
            page = _json(self._send("get_errors_for_bulk_import_profiles_job", "GET", url, None))
            for item in page.get("data", []):
                attrs = item["attributes"]
                errors.append(
                    ImportFailure(attrs["code"], attrs["title"], attrs["detail"], attrs.get("original_payload"))
                )
            url = (page.get("links") or {}).get("next")
        return errors

    # events

    def create_event(self, event: KlaviyoEvent) -> None:
        """Send one event (``POST /api/events``); Klaviyo itself drops a repeated ``unique_id``."""
        attrs = event.attributes()
        attrs["profile"] = {"data": event.profile.resource(for_event=True)}
        self._send("create_event", "POST", "/api/events", {"data": {"type": "event", "attributes": attrs}}, records=1)

    def bulk_create_events(self, events: Sequence[KlaviyoEvent]) -> EventBatchResult:
        """Queue bulk event jobs of up to 1,000 events each, grouped per profile as the API wants.

        A ``unique_id`` repeated within one request fails the whole request at Klaviyo, so repeats are dropped
        here first, keeping the first occurrence; their indexes come back in ``duplicates``.
        ``Rejected.records`` indexes and ``Accepted`` ranges are positions in ``events``.
        """
        seen: set[str] = set()
        kept: list[int] = []
        duplicates: list[int] = []
        for index, event in enumerate(events):
            if event.unique_id is not None:
                if event.unique_id in seen:
                    duplicates.append(index)
                    continue
                seen.add(event.unique_id)
            kept.append(index)

        accepted: list[Accepted] = []
        start = 0
        for n, (_, chunk) in enumerate(_count_chunks(kept, MAX_BULK_EVENTS)):
            # Each request covers a contiguous range of the input (duplicates inside it included), so callers
            # can mark ranges done; the last range runs to the end of the input.
            end = len(events) if (n + 1) * MAX_BULK_EVENTS >= len(kept) else chunk[-1] + 1
            batch = [events[i] for i in chunk]
            try:
                self._send(
                    "bulk_create_events",
                    "POST",
                    "/api/event-bulk-create-jobs",
                    _bulk_events_body(batch),
                    records=len(batch),
                    record_index=functools.partial(_bulk_event_index, events=batch),
                )
            except EspError as error:
                if isinstance(error, Rejected):
                    error.records = tuple(
                        RecordError(chunk[r.index], r.detail, code=r.code, pointer=r.pointer)
                        for r in error.records
                        if 0 <= r.index < len(chunk)
                    )
                error.accepted = tuple(accepted)
                raise
            accepted.append(Accepted(offset=start, count=end - start))
            start = end
        return EventBatchResult(accepted=tuple(accepted), duplicates=tuple(duplicates))

    # consent

    def subscribe(
        self,
        updates: Sequence[ConsentUpdate],
        *,
        historical_import: bool = False,
        list_id: str | None = None,
        custom_source: str | None = None,
    ) -> list[Accepted]:
        """Subscribe (``consent: SUBSCRIBED``), up to 1,000 profiles per request.

        With ``historical_import`` (consents collected elsewhere, e.g. imported from our ledger) Klaviyo sends no
        double opt-in mail and triggers no flows, and each update's ``consented_at`` is required.
        This also lifts UNSUBSCRIBE / SPAM_REPORT / USER_SUPPRESSED suppressions at Klaviyo.
        """
        if historical_import:
            missing = [i for i, u in enumerate(updates) if u.consented_at is None]
            if missing:
                raise InvalidInput("consented_at", f"required with historical_import (updates {missing[:10]})")
        resources = [u.resource("SUBSCRIBED", historical=historical_import) for u in updates]

        def send(chunk: Sequence[dict[str, Any]]) -> str | None:
            attrs: dict[str, Any] = {"profiles": {"data": chunk}}
            if custom_source:
                attrs["custom_source"] = custom_source
            if historical_import:
                attrs["historical_import"] = True
            data: dict[str, Any] = {"type": "profile-subscription-bulk-create-job", "attributes": attrs}
            if list_id:
                data["relationships"] = {"list": {"data": {"type": "list", "id": list_id}}}
            path = "/api/profile-subscription-bulk-create-jobs"
            self._send("bulk_subscribe_profiles", "POST", path, {"data": data}, records=len(chunk))
            return None

        return self._in_chunks(resources, MAX_SUBSCRIBE, send)

    def unsubscribe(self, updates: Sequence[ConsentUpdate], *, list_id: str | None = None) -> list[Accepted]:
        """Unsubscribe (``consent: UNSUBSCRIBED``), up to 100 profiles per request.

        Without ``list_id`` this is a global unsubscribe from the channel; with it, Klaviyo still unsubscribes
        globally profiles that are not on that list (spec warning).
        """
        resources = [u.resource("UNSUBSCRIBED", historical=False) for u in updates]

        def send(chunk: Sequence[dict[str, Any]]) -> str | None:
            data: dict[str, Any] = {
                "type": "profile-subscription-bulk-delete-job",
                "attributes": {"profiles": {"data": chunk}},
            }
            if list_id:
                data["relationships"] = {"list": {"data": {"type": "list", "id": list_id}}}
            path = "/api/profile-subscription-bulk-delete-jobs"
            self._send("bulk_unsubscribe_profiles", "POST", path, {"data": data}, records=len(chunk))
            return None

        return self._in_chunks(resources, MAX_UNSUBSCRIBE, send)

    def suppress(self, emails: Sequence[str]) -> list[Accepted]:
        """Suppress email addresses (bounces, complaints): no email marketing whatever the consent. 100 per request."""
        return self._suppression("bulk_suppress_profiles", "profile-suppression-bulk-create-job", emails)

    def unsuppress(self, emails: Sequence[str]) -> list[Accepted]:
        """Lift USER_SUPPRESSED suppressions only (hard bounces and unsubscribes stay)."""
        return self._suppression("bulk_unsuppress_profiles", "profile-suppression-bulk-delete-job", emails)

    def _suppression(self, operation: str, job_type: str, emails: Sequence[str]) -> list[Accepted]:
        path = "/api/" + job_type.replace("-job", "-jobs")

        def send(chunk: Sequence[str]) -> str | None:
            data = {
                "type": job_type,
                "attributes": {"profiles": {"data": [{"type": "profile", "attributes": {"email": e}} for e in chunk]}},
            }
            response = self._send(operation, "POST", path, {"data": data}, records=len(chunk))
            return _data_id(response) if response.content else None

        return self._in_chunks(list(emails), MAX_SUPPRESS, send)

    # lists (segments are mirrored as lists, never as Klaviyo segments: 100/day cap)

    def create_list(self, name: str, *, opt_in_process: Literal["single_opt_in", "double_opt_in"] | None = None) -> str:
        attrs: dict[str, Any] = {"name": name}
        if opt_in_process:
            attrs["opt_in_process"] = opt_in_process
        response = self._send("create_list", "POST", "/api/lists", {"data": {"type": "list", "attributes": attrs}})
        return _data_id(response)

    def add_to_list(self, list_id: str, profile_ids: Sequence[str]) -> list[Accepted]:
        """Add profiles by Klaviyo profile id, 1,000 per request. Never changes consent."""
        return self._members("add_profiles_to_list", "POST", list_id, profile_ids)

    def remove_from_list(self, list_id: str, profile_ids: Sequence[str]) -> list[Accepted]:
        return self._members("remove_profiles_from_list", "DELETE", list_id, profile_ids)

    def _members(self, operation: str, method: str, list_id: str, profile_ids: Sequence[str]) -> list[Accepted]:
        path = f"/api/lists/{_segment(list_id)}/relationships/profiles"

        def send(chunk: Sequence[str]) -> str | None:
            body = {"data": [{"type": "profile", "id": i} for i in chunk]}
            self._send(operation, method, path, body, records=len(chunk))
            return None

        return self._in_chunks(list(profile_ids), MAX_LIST_MEMBERS, send)

    # erasure

    def request_deletion(
        self, *, email: str | None = None, phone_number: str | None = None, profile_id: str | None = None
    ) -> None:
        """Ask Klaviyo to delete a person and all their data (data-privacy deletion job). Exactly one identifier."""
        given = [(k, v) for k, v in (("email", email), ("phone_number", phone_number)) if v]
        if len(given) + (profile_id is not None) != 1:
            raise InvalidInput("identifier", "exactly one of email, phone_number, profile_id")
        profile: dict[str, Any] = {"type": "profile", "attributes": dict(given)}
        if profile_id is not None:
            profile["id"] = profile_id
        body = {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": profile}}}}
        self._send("request_profile_deletion", "POST", "/api/data-privacy-deletion-jobs", body, records=1)

    # engagement: webhook registration and polling (connector/esp/klaviyo_poll.py)

    def create_webhook(self, *, name: str, endpoint_url: str, secret_key: str, topics: Sequence[str]) -> str:
        """Register a system webhook (``POST /api/webhooks``) for ``topics``; returns its id."""
        body = {
            "data": {
                "type": "webhook",
                "attributes": {"name": name, "endpoint_url": endpoint_url, "secret_key": secret_key},
                "relationships": {"webhook-topics": {"data": [{"type": "webhook-topic", "id": t} for t in topics]}},
            }
        }
        return _data_id(self._send("create_webhook", "POST", "/api/webhooks", body))

    def get_metrics(self, *, integration_name: str | None = None) -> list[Metric]:
        """Every metric of the account (``GET /api/metrics``, all pages), or those of one integration."""
        params = {"filter": f'equals(integration.name,"{integration_name}")'} if integration_name else {}
        metrics: list[Metric] = []
        cursor: str | None = None
        while True:
            query = {**params, **({"page[cursor]": cursor} if cursor else {})}
            page = _json(self._send("get_metrics", "GET", _with_query("/api/metrics", query), None))
            for item in page.get("data") or []:
                attrs = item.get("attributes") or {}
                integration = attrs.get("integration")
                source = integration.get("name") if isinstance(integration, dict) else None
                metrics.append(Metric(str(item["id"]), str(attrs.get("name") or ""), source))
            cursor = _next_cursor(page)
            if cursor is None:
                return metrics

    def get_events(
        self,
        metric_id: str,
        *,
        since: dt.datetime | None = None,
        cursor: str | None = None,
        page_size: int = EVENTS_PAGE_SIZE,
    ) -> EventPage:
        """One page of a metric's events at or after ``since``, oldest first, with their profiles' emails
        (``GET /api/events?filter=equals(metric_id,…),greater-or-equal(datetime,…)&sort=datetime&include=profile``).
        """
        if since is not None and since.tzinfo is None:
            raise InvalidInput("since", "must be timezone-aware")
        if not 1 <= page_size <= MAX_EVENTS_PAGE_SIZE:
            raise InvalidInput("page_size", f"1 to {MAX_EVENTS_PAGE_SIZE}")
        conditions = [f'equals(metric_id,"{_filter_value(metric_id)}")']
        if since is not None:  # Klaviyo's filter syntax takes datetimes unquoted
            conditions.append(f"greater-or-equal(datetime,{since.astimezone(dt.UTC).isoformat(timespec='seconds')})")
        query = {
            "filter": ",".join(conditions),
            "sort": "datetime",
            "include": "profile",
            "fields[profile]": "email",
            "page[size]": str(page_size),
            **({"page[cursor]": cursor} if cursor else {}),
        }
        page = _json(self._send("get_events", "GET", _with_query("/api/events", query), None))
        profiles = {
            str(item["id"]): item.get("attributes") or {}
            for item in page.get("included") or []
            if isinstance(item, dict) and item.get("type") == "profile" and "id" in item
        }
        events = tuple(item for item in page.get("data") or [] if isinstance(item, dict))
        return EventPage(events=events, profiles=profiles, next_cursor=_next_cursor(page))

    # plumbing

    def _in_chunks(
        self,
        items: Sequence[T],
        limit: int,
        send: Callable[[Sequence[T]], str | None],
        *,
        max_bytes: int | None = None,
    ) -> list[Accepted]:
        accepted: list[Accepted] = []
        chunks = _byte_chunks(items, limit, max_bytes) if max_bytes else _count_chunks(items, limit)
        for offset, chunk in chunks:
            try:
                job_id = send(chunk)
            except EspError as error:
                raise with_accepted(error, accepted, offset) from None
            accepted.append(Accepted(offset=offset, count=len(chunk), job_id=job_id))
        return accepted

    def _send(
        self,
        operation: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        records: int | None = None,
        record_index: Callable[[str], int | Sequence[int] | None] | None = None,
    ) -> httpx.Response:
        if self._limiter is not None:
            self._limiter(operation)
        content: bytes | None = None
        headers: dict[str, str] = {}
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = MEDIA_TYPE
        where = f"{method} {_path(path)}"
        response = send_request(
            self._http, method, path, content=content, headers=headers, where=where, log=log, esp="klaviyo"
        )
        if response.is_success:
            return response
        error = map_error(response, method=method, records=records, record_index=record_index)
        if isinstance(error, RateLimited):
            error.operation = operation
        raise error


# --- error mapping: the one place HTTP failures become our errors -------------------------------------------------

_RECORD_POINTER = re.compile(r"^/data/(?:attributes/[a-z-]+/data/)?(\d+)(?:/|$)")


def map_error(
    response: httpx.Response,
    *,
    method: str = "",
    records: int | None = None,
    record_index: Callable[[str], int | Sequence[int] | None] | None = None,
    now: dt.datetime | None = None,
) -> EspError:
    """The error for a non-2xx Klaviyo response.

    ``records`` is how many records the request carried: a validation error (400/409/422) on a one-record
    request is a rejection of that record; on a batch, it is a rejection of the records its JSON pointers name
    (``/data/attributes/profiles/data/3/...``), or ``Permanent`` when some error names no record.
    ``record_index`` maps a pointer to the record(s) it names (several when it names a group, e.g. the profile
    of several bulk events).
    """
    status = response.status_code
    where = f"{method} {_path(response.request.url.path)}".strip()
    errors = _klaviyo_errors(response)
    text = "; ".join(_describe(e) for e in errors) or response.reason_phrase or "no detail"
    message = f"{where}: HTTP {status}: {text}"
    if status == 429:
        return RateLimited(message, retry_after=parse_retry_after(response.headers.get("Retry-After"), now=now))
    if status in (401, 403):
        return AuthFailed(message, status=status)
    if status == 408 or status >= 500:
        return Transient(message, status=status)
    if status in (400, 409, 422) and records:
        rejected: list[RecordError] = []
        for error in errors:
            pointer = _pointer(error)
            found: int | Sequence[int] | None = 0 if records == 1 else None
            if records > 1 and pointer:
                found = record_index(pointer) if record_index else _index_from_pointer(pointer)
            indexes = [found] if isinstance(found, int) else list(found or ())
            if not indexes:
                return Permanent(message, status=status)
            code = _str(error.get("code"))
            rejected.extend(RecordError(i, _describe(error), code=code, pointer=pointer) for i in indexes)
        if rejected:
            return Rejected(message, records=rejected, status=status)
    return Permanent(message, status=status)


def _klaviyo_errors(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _describe(error: Mapping[str, Any]) -> str:
    detail = _str(error.get("detail")) or _str(error.get("title")) or "error"
    code = _str(error.get("code"))
    pointer = _pointer(error)
    return f"{detail}" + (f" [{code}]" if code else "") + (f" at {pointer}" if pointer else "")


def _pointer(error: Mapping[str, Any]) -> str | None:
    source = error.get("source")
    return _str(source.get("pointer")) if isinstance(source, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _index_from_pointer(pointer: str) -> int | None:
    match = _RECORD_POINTER.match(pointer)
    return int(match.group(1)) if match else None


def _bulk_event_index(pointer: str, events: Sequence[KlaviyoEvent]) -> int | Sequence[int] | None:
    """Bulk event bodies nest events per profile: map ``…/events-bulk-create/data/P/attributes/events/data/E``
    back to the event's position in ``events``, or a whole profile entry P (e.g. its profile refused) to the
    positions of all its events."""
    match = re.match(r"^/data/attributes/events-bulk-create/data/(\d+)(?:/attributes/events/data/(\d+))?", pointer)
    if not match:
        return None
    groups = _group_events(events)
    p = int(match.group(1))
    if p >= len(groups):
        return None
    members = groups[p][1]
    if match.group(2) is None:
        return members
    e = int(match.group(2))
    return members[e] if e < len(members) else None


def _group_events(events: Sequence[KlaviyoEvent]) -> list[tuple[KlaviyoProfile, list[int]]]:
    groups: dict[str, tuple[KlaviyoProfile, list[int]]] = {}
    for index, event in enumerate(events):
        key = json.dumps(event.profile.resource(for_event=True), sort_keys=True, default=str)
        groups.setdefault(key, (event.profile, []))[1].append(index)
    return list(groups.values())


def _bulk_events_body(events: Sequence[KlaviyoEvent]) -> dict[str, Any]:
    entries = [
        {
            "type": "event-bulk-create",
            "attributes": {
                "profile": {"data": profile.resource(for_event=True)},
                "events": {"data": [{"type": "event", "attributes": events[i].attributes()} for i in members]},
            },
        }
        for profile, members in _group_events(events)
    ]
    return {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": entries}}}}


def _count_chunks(items: Sequence[T], limit: int) -> Iterator[tuple[int, Sequence[T]]]:
    for offset in range(0, len(items), limit):
        yield offset, items[offset : offset + limit]


def _byte_chunks(items: Sequence[T], limit: int, max_bytes: int) -> Iterator[tuple[int, Sequence[T]]]:
    """Chunks of at most ``limit`` items whose JSON stays under ``max_bytes`` (with room for the envelope)."""
    budget = max_bytes - 1024
    offset, size = 0, 0
    for index, item in enumerate(items):
        item_size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()) + 1
        if index > offset and (index - offset >= limit or size + item_size > budget):
            yield offset, items[offset:index]
            offset, size = index, 0
        size += item_size
    if offset < len(items):
        yield offset, items[offset:]


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise Permanent(
            f"{_path(response.request.url.path)}: response is not JSON", status=response.status_code
        ) from None
    if not isinstance(body, dict):
        raise Permanent(f"{_path(response.request.url.path)}: unexpected response", status=response.status_code)
    return body


def _data_id(response: httpx.Response) -> str:
    data = _json(response).get("data")
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise Permanent(f"{_path(response.request.url.path)}: response has no data.id", status=response.status_code)
    return str(data["id"])


def _with_query(path: str, query: Mapping[str, str]) -> str:
    return f"{path}?{urlencode(query, quote_via=quote)}" if query else path


def _next_cursor(page: Mapping[str, Any]) -> str | None:
    """The ``page[cursor]`` of a collection's ``links.next`` (followed against our base URL, not the link's host)."""
    link = (page.get("links") or {}).get("next")
    if not isinstance(link, str) or not link:
        return None
    return httpx.URL(link).params.get("page[cursor]") or None


def _filter_value(value: str) -> str:
    if not value or '"' in value or "\\" in value:
        raise InvalidInput("filter", f"not a usable value: {value!r}")
    return value


def _segment(value: str) -> str:
    """An id placed in a path segment: refuse anything that could change the path."""
    if not value or "/" in value or "?" in value or "#" in value or ".." in value:
        raise InvalidInput("id", f"not a usable id: {value!r}")
    return value


def _path(path: str) -> str:
    """A path for messages and logs: absolute pagination links are cut to their path, queries dropped."""
    return httpx.URL(path).path


# --- mapping: our data → Klaviyo values (per store, no HTTP) ------------------------------------------------------

CONTACT_SOURCES = ("email", "phone", "external_id", "first_name", "last_name", "timezone", "locale")
TARGETS = frozenset({*PROFILE_ATTRIBUTES, *PROFILE_ATTRIBUTES_MORE}) | {f"location.{f}" for f in LOCATION_FIELDS}

DEFAULT_FIELDS: dict[str, str] = {
    "email": "email",
    "phone": "phone_number",
    "external_id": "external_id",
    "first_name": "first_name",
    "last_name": "last_name",
    "locale": "locale",
    "timezone": "location.timezone",
}


@dataclass(frozen=True)
class ProfileMapping:
    """Which of our contact fields and properties become which Klaviyo attributes: configurable per store.

    Parameters:
        fields: source → target. Sources are contact columns (``email``, ``phone``, ``external_id``,
            ``first_name``, ``last_name``, ``timezone``, ``locale``) or ``properties.<name>``. Targets are Klaviyo
            profile attributes (``first_name``, ``organization``, ``location.city``, …) or
            ``properties.<name>`` (a Klaviyo custom property). Entries given replace the defaults with the same
            source; a target of ``""`` drops the source.
        pass_properties: send contact properties not named in ``fields`` as custom properties of the same name.
        property_prefix: prefix for passed-through custom properties (e.g. ``"eb_"``).
        metric_names: our event names → Klaviyo metric names (e.g. ``{"Order Completed": "Placed Order"}``).
        value_property: the event property whose number becomes the event's ``value`` (revenue).
    """

    fields: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_FIELDS))
    pass_properties: bool = True
    property_prefix: str = ""
    metric_names: Mapping[str, str] = field(default_factory=dict)
    value_property: str | None = "revenue"
    currency_property: str | None = "currency"

    def __post_init__(self) -> None:
        for source, target in self.fields.items():
            if source not in CONTACT_SOURCES and not (source.startswith("properties.") and len(source) > 11):
                raise InvalidInput(f"fields.{source}", "unknown source (a contact field or properties.<name>)")
            if target and target not in TARGETS and not (target.startswith("properties.") and len(target) > 11):
                raise InvalidInput(f"fields.{source}", f"unknown Klaviyo attribute {target!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProfileMapping:
        """Build from a store's stored configuration (JSON): ``fields`` extend/override the defaults."""
        known = {"fields", "pass_properties", "property_prefix", "metric_names", "value_property", "currency_property"}
        unknown = set(config) - known
        if unknown:
            raise InvalidInput("mapping", f"unknown keys {sorted(unknown)}")
        fields = dict(DEFAULT_FIELDS)
        fields.update(config.get("fields") or {})
        return cls(
            fields=fields,
            pass_properties=bool(config.get("pass_properties", True)),
            property_prefix=str(config.get("property_prefix", "")),
            metric_names=dict(config.get("metric_names") or {}),
            value_property=config.get("value_property", "revenue"),
            currency_property=config.get("currency_property", "currency"),
        )

    def profile(self, contact: Contact) -> KlaviyoProfile:
        attrs: dict[str, Any] = {}
        location: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        contact_props = contact.properties or {}
        mapped_props: set[str] = set()
        for source, target in self.fields.items():
            if source.startswith("properties."):
                name = source[len("properties.") :]
                mapped_props.add(name)
                value = contact_props.get(name)
            else:
                value = getattr(contact, source)
            if value is None or not target:
                continue
            if target.startswith("properties."):
                properties[target[len("properties.") :]] = value
            elif target.startswith("location."):
                location[target[len("location.") :]] = value
            else:
                attrs[target] = value if isinstance(value, str) else str(value)
        if self.pass_properties:
            for name, value in contact_props.items():
                if name not in mapped_props:
                    properties.setdefault(self.property_prefix + name, value)
        return KlaviyoProfile(**attrs, location=location, properties=properties)

    def event(self, event: Event, contact: Contact, *, backfill: bool = False) -> KlaviyoEvent:
        """A stored track event as a Klaviyo event: ``unique_id`` is its messageId (exactly-once at Klaviyo)."""
        props = dict(event.payload.get("properties") or {})
        value = props.get(self.value_property) if self.value_property else None
        currency = props.get(self.currency_property) if self.currency_property else None
        name = event.name or event.type
        return KlaviyoEvent(
            metric_name=self.metric_names.get(name, name),
            profile=self.identifiers(contact),
            properties=props,
            time=event.timestamp if event.timestamp.tzinfo else event.timestamp.replace(tzinfo=dt.UTC),
            value=float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None,
            value_currency=currency if isinstance(currency, str) and value is not None else None,
            unique_id=event.message_id,
            backfill=backfill,
        )

    def identifiers(self, contact: Contact) -> KlaviyoProfile:
        """Only the identifying attributes of ``contact`` (what an event or a consent call needs)."""
        full = self.profile(contact)
        return KlaviyoProfile(email=full.email, phone_number=full.phone_number, external_id=full.external_id)


# --- consent state → the Klaviyo call that mirrors it ------------------------------------------------------------


@dataclass(frozen=True)
class ConsentPlan:
    """What to send for one contact's consent on one channel: ``action`` is the client method to call."""

    action: Literal["subscribe", "unsubscribe", "suppress", "none"]
    update: ConsentUpdate | None = None
    email: str | None = None
    historical_import: bool = False


def plan_consent(
    contact: Contact,
    channel: str,
    status: str,
    *,
    occurred_at: dt.datetime,
    ledger_action: str | None = None,
    imported: bool = False,
) -> ConsentPlan:
    """Which Klaviyo call mirrors our consent state (DESIGN.md section 11).

    - bounce / complaint on email → ``suppress`` (no email marketing whatever the consent);
    - subscribed → ``subscribe``; consents we did not collect live (``imported``) go as a historical import
      carrying ``consented_at`` = when the person consented, so Klaviyo sends no opt-in mail and runs no flows;
    - unsubscribed → ``unsubscribe``; pending, push/WhatsApp, or no usable identifier → ``none``.
    """
    if channel == Channel.EMAIL and ledger_action in ("bounce", "complaint"):
        return ConsentPlan("suppress", email=contact.email) if contact.email else ConsentPlan("none")
    if channel == Channel.EMAIL and contact.email:
        update = ConsentUpdate(email=contact.email, email_marketing=True)
    elif channel == Channel.SMS and phones.e164(contact.phone):  # Klaviyo texts E.164 numbers only
        update = ConsentUpdate(phone_number=phones.e164(contact.phone), sms_marketing=True)
    else:
        return ConsentPlan("none")
    if status == ConsentStatus.SUBSCRIBED:
        if imported:
            at = occurred_at if occurred_at.tzinfo else occurred_at.replace(tzinfo=dt.UTC)
            update = dataclasses.replace(update, consented_at=at)
        return ConsentPlan("subscribe", update=update, historical_import=imported)
    if status == ConsentStatus.UNSUBSCRIBED:
        return ConsentPlan("unsubscribe", update=update)
    return ConsentPlan("none")
