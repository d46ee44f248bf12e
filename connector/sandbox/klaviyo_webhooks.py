"""The Klaviyo sandbox's engagement side: ``GET /api/metrics``, ``GET /api/events`` and signed system webhooks.

THIS IS A SANDBOX, NOT KLAVIYO. ``KlaviyoSandbox`` (klaviyo.py) routes these requests here (``self.engagement``).

- ``GET /api/metrics``: every metric the account has seen, with Klaviyo's ``integration`` object ("Klaviyo" for its
  own email metrics, "API" for metrics of events sent to it). Filter: ``equals(integration.name|category,"…")``.
- ``GET /api/events``: the account's events as ``EventResponseObjectResource`` documents. Filters (the spec's
  ``x-klaviyo-filters`` subset espbridge and the SDK use): ``equals(metric_id,"…")``, ``equals(profile_id,"…")``,
  ``greater-than|greater-or-equal|less-than|less-or-equal(datetime,<ISO 8601, unquoted>)`` and the same on
  ``timestamp`` (Unix seconds), joined by commas or ``and(…)``; ``sort`` (``datetime``, ``-datetime``,
  ``timestamp``, ``-timestamp``); ``include`` (``profile``, ``metric``); ``fields[event|profile|metric]``;
  ``page[size]`` (1 to 1,000, default 200) and ``page[cursor]`` (``links.next``). Anything else the spec allows
  (``has(profile)``, ``attributions``) is answered 400, naming the parameter, rather than ignored.
- ``POST /_sandbox/engagement`` (admin, no auth): ``{"email", "metric", "properties"?, "bounce_type"?, "time"?,
  "background"?}`` records an engagement event for the profile with that email (created if unknown), applies what
  Klaviyo applies (an unsubscribe sets the email consent to UNSUBSCRIBED with an UNSUBSCRIBE suppression, a hard
  bounce adds HARD_BOUNCE, a spam report SPAM_REPORT) and delivers it to every enabled webhook subscribed to the
  metric's topic (``event:klaviyo.opened_email``), the way Klaviyo's system webhooks do: ``POST endpoint_url`` with
  ``Content-Type: application/json``, ``Klaviyo-Webhook-Id``, ``Klaviyo-Timestamp`` (an HTTP-date) and
  ``Klaviyo-Signature`` = hex HMAC-SHA256(secret_key, raw body + Klaviyo-Timestamp); body ``{"data": [{"topic",
  "external_id", "payload": {"data": <event>, "links"}}], "meta": {"klaviyo_account_id", "klaviyo_webhook_id",
  "timestamp", "version"}}`` (https://developers.klaviyo.com/en/docs/working_with_system_webhooks; the signature
  input as ESP_NOTES 1.3 records it). Sent at once (answer 201, after the deliveries) or with ``"background": true``
  on a thread (answer 202). Each delivery is tried ``attempts`` times (transport errors, 429, 5xx), waiting
  ``retry_delay`` times 2^n between tries. Unlike Klaviyo, whose header clock has been seen wrong, the sandbox's
  ``Klaviyo-Timestamp`` is the true time; one event per delivery (Klaviyo may batch several).
- ``GET /_sandbox/webhook-deliveries[?event_id=…&webhook_id=…]``: every delivery, with its exact headers and body
  (so a test can redeliver it byte for byte) and each attempt's status or error.

Which event properties Klaviyo puts on its email events is only partly known: the sandbox adds "Bounce Type"
("hard"/"soft") to bounces and ``email_address`` to unsubscribes (as seen in a captured delivery), and whatever
``properties`` the request gives.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import operator as _op
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from werkzeug.wrappers import Request, Response

from .klaviyo import BASE, ApiError, Profile, _json, _norm, _now, _short_id

if TYPE_CHECKING:
    from .klaviyo import KlaviyoSandbox

__all__ = ["EngagementEmulator", "EngagementRequest", "sign"]

ACCOUNT_ID = "SNDBX1"
TOPIC_PREFIX = "event:klaviyo."
#: Klaviyo's own email metrics (integration "Klaviyo"), the ones ``POST /_sandbox/engagement`` can record.
KlaviyoMetric = Literal[
    "Received Email",
    "Opened Email",
    "Clicked Email",
    "Bounced Email",
    "Dropped Email",
    "Marked Email as Spam",
    "Subscribed to Email Marketing",
    "Unsubscribed from Email Marketing",
]
KLAVIYO_METRICS: tuple[str, ...] = get_args(KlaviyoMetric)
KLAVIYO_INTEGRATION = {"object": "integration", "id": "0rG4eQ", "name": "Klaviyo", "category": "Internal"}
API_INTEGRATION = {"object": "integration", "id": "7FtS4J", "name": "API", "category": "API"}
DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 1_000
_EVENT_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "greater-than": _op.gt,
    "greater-or-equal": _op.ge,
    "less-than": _op.lt,
    "less-or-equal": _op.le,
}
_CALL = re.compile(r"\s*([a-z-]+)\(\s*([a-z_.]+)\s*,\s*(\"[^\"]*\"|'[^']*'|[^,()]+?)\s*\)\s*")


def sign(secret: str, body: bytes, timestamp: str) -> str:
    """Klaviyo's webhook signature, as the sandbox makes it: hex HMAC-SHA256 over the body, then the timestamp."""
    return hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


class EngagementRequest(BaseModel):
    """The body of ``POST /_sandbox/engagement``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str = Field(min_length=3, max_length=320)
    metric: KlaviyoMetric
    properties: dict[str, Any] = Field(default_factory=dict)
    bounce_type: Literal["hard", "soft"] | None = Field(None, description="Sets the event's 'Bounce Type'.")
    time: datetime | None = Field(None, description="When it happened (default: now); timezone-aware.")
    background: bool = Field(False, description="Deliver the webhooks on a thread and answer 202 at once.")

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a timezone offset")
        return value


class EngagementEmulator:
    """Metrics, events and webhook deliveries of one ``KlaviyoSandbox`` (its state, under its lock).

    ``transport``: an httpx transport for the deliveries (tests may pass ``httpx.WSGITransport(app=…)``).
    """

    def __init__(
        self,
        sandbox: KlaviyoSandbox,
        *,
        attempts: int = 3,
        retry_delay: float = 0.5,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.transport = transport
        self.started = _now()
        self._metric_created: dict[str, str] = {}
        self._threads: list[threading.Thread] = []

    # ---- GET /api/metrics, GET /api/events (called under the sandbox's lock) --------------------------------

    def get_metrics(self, request: Request) -> Response:
        wanted: tuple[str, str] | None = None
        if "filter" in request.args:
            match = re.fullmatch(r"equals\(integration\.(name|category),(\"[^\"]*\"|'[^']*')\)", request.args["filter"])
            if match is None:
                raise _bad_parameter("filter", "Allowed: equals(integration.name,…), equals(integration.category,…).")
            wanted = (match[1], match[2][1:-1])
        data = []
        for name, metric_id in self.sandbox.metrics.items():
            resource = self._metric_resource(name, metric_id)
            if wanted is None or resource["attributes"]["integration"][wanted[0]] == wanted[1]:
                data.append(resource)
        return _json({"data": data, "links": {"self": request.url}}, 200)

    def get_events(self, request: Request) -> Response:
        args = request.args
        include = _listed(args.get("include"), {"metric", "profile"}, "include")
        size = _page_size(args.get("page[size]"))
        sort = args.get("sort", "datetime")
        if sort not in ("datetime", "-datetime", "timestamp", "-timestamp"):
            raise _bad_parameter("sort", f"Invalid sort {sort!r}.")
        checks = _event_filter(args.get("filter"))
        events = [(when, e) for e in self.sandbox.events if (when := _event_time(e)) is not None]
        chosen = [(when, e) for when, e in events if all(check(when, e) for check in checks)]
        chosen.sort(key=lambda pair: pair[0], reverse=sort.startswith("-"))
        offset = _offset(args.get("page[cursor]"))
        page = chosen[offset : offset + size]
        fields = {kind: _listed(args.get(f"fields[{kind}]"), None, f"fields[{kind}]") for kind in ("event", "profile")}
        data = [self._event_resource(e, when, fields["event"]) for when, e in page]
        document: dict[str, Any] = {"data": data, "links": {"self": request.url}}
        if offset + size < len(chosen):
            document["links"]["next"] = _page_link(request, _cursor(offset + size))
        if offset > 0:
            document["links"]["prev"] = _page_link(request, _cursor(max(0, offset - size)))
        if include:
            document["included"] = self._included(page, include, fields["profile"])
        return _json(document, 200)

    # ---- POST /_sandbox/engagement, GET /_sandbox/webhook-deliveries -----------------------------------------

    def record(self, request: Request) -> Response:
        try:
            asked = EngagementRequest.model_validate_json(request.get_data() or b"{}")
        except ValidationError as exc:
            return Response(exc.json(), status=400, content_type="application/json")
        sandbox = self.sandbox
        with sandbox._lock:
            try:
                profile = self._profile(asked.email)
            except ApiError as error:
                return error.response()
            event = self._add_event(profile, asked)
            when = _event_time(event) or datetime.now(UTC)
            resource = self._event_resource(event, when, None)
            topic = TOPIC_PREFIX + asked.metric.lower().replace(" ", "_")
            deliveries = [self._delivery(webhook, topic, resource) for webhook in sandbox.webhook_subscribers(topic)]
            sandbox.webhook_deliveries.extend(deliveries)
        if asked.background:
            thread = threading.Thread(target=self._deliver_all, args=(deliveries,), daemon=True)
            self._threads.append(thread)
            thread.start()
        else:
            self._deliver_all(deliveries)
        with sandbox._lock:
            summaries = [_summary(d) for d in deliveries]
        status = 202 if asked.background else 201
        return Response(
            json.dumps({"data": resource, "topic": topic, "deliveries": summaries}),
            status=status,
            content_type="application/json",
        )

    def deliveries(self, request: Request) -> Response:
        event_id, webhook_id = request.args.get("event_id"), request.args.get("webhook_id")
        with self.sandbox._lock:
            found = [
                json.loads(json.dumps(d))  # a copy: a background delivery may still be adding attempts
                for d in self.sandbox.webhook_deliveries
                if (event_id is None or d["event_id"] == event_id)
                and (webhook_id is None or d["webhook_id"] == webhook_id)
            ]
        return Response(json.dumps({"deliveries": found}), content_type="application/json")

    def join(self, timeout: float = 30.0) -> None:
        """Wait for background deliveries to finish (tests)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    # ---- internals ------------------------------------------------------------------------------------------

    def _profile(self, email_address: str) -> Profile:
        sandbox = self.sandbox
        profile_id = sandbox._index.get(("email", _norm("email", email_address) or ""))
        if profile_id is not None:
            return sandbox.profiles[profile_id]
        profile, _ = sandbox._upsert({"email": email_address}, clear_nulls=False, pointer="/email")
        return profile

    def _add_event(self, profile: Profile, asked: EngagementRequest) -> dict[str, Any]:
        sandbox = self.sandbox
        if asked.metric not in sandbox.metrics:
            sandbox.metrics[asked.metric] = _short_id()
            self._metric_created[asked.metric] = _now()
        properties: dict[str, Any] = dict(asked.properties)
        properties.setdefault("$message", _short_id())
        if asked.metric == "Bounced Email" and asked.bounce_type is not None:
            properties["Bounce Type"] = asked.bounce_type
        if asked.metric == "Unsubscribed from Email Marketing":
            properties.setdefault("email_address", profile.attributes.get("email"))
            profile.consent["email"] = "UNSUBSCRIBED"
            profile.suppressions.add("UNSUBSCRIBE")
        elif asked.metric == "Marked Email as Spam":
            profile.suppressions.add("SPAM_REPORT")
        elif asked.metric == "Bounced Email" and asked.bounce_type == "hard":
            profile.suppressions.add("HARD_BOUNCE")
        when = (asked.time or datetime.now(UTC)).astimezone(UTC)
        event: dict[str, Any] = {
            "id": "".join(secrets.choice(_EVENT_ID_ALPHABET) for _ in range(11)),
            "uuid": str(uuid.uuid1()),
            "metric": asked.metric,
            "metric_id": sandbox.metrics[asked.metric],
            "profile_id": profile.id,
            "time": when.isoformat(timespec="seconds"),
            "unique_id": None,
            "value": None,
            "value_currency": None,
            "properties": properties,
            "backfill": False,
        }
        sandbox.events.append(event)
        return event

    def _metric_resource(self, name: str, metric_id: str) -> dict[str, Any]:
        created = self._metric_created.get(name, self.started)
        integration = KLAVIYO_INTEGRATION if name in KLAVIYO_METRICS else API_INTEGRATION
        return {
            "type": "metric",
            "id": metric_id,
            "attributes": {"name": name, "created": created, "updated": created, "integration": dict(integration)},
            "links": {"self": f"{BASE}/api/metrics/{metric_id}/"},
        }

    def _event_resource(self, event: dict[str, Any], when: datetime, fields: set[str] | None) -> dict[str, Any]:
        event_id = event["id"]
        attributes = {
            "timestamp": int(when.timestamp()),
            "event_properties": dict(event.get("properties") or {}),
            "datetime": when.isoformat(timespec="seconds"),
            "uuid": event.get("uuid") or event_id,
        }
        if fields is not None:
            attributes = {name: value for name, value in attributes.items() if name in fields}
        link = f"{BASE}/api/events/{event_id}"
        return {
            "type": "event",
            "id": event_id,
            "attributes": attributes,
            "relationships": {
                kind: {
                    "data": {"type": kind, "id": event[f"{kind}_id"]},
                    "links": {"self": f"{link}/relationships/{kind}/", "related": f"{link}/{kind}/"},
                }
                for kind in ("profile", "metric")
            },
            "links": {"self": f"{link}/"},
        }

    def _included(
        self, page: list[tuple[datetime, dict[str, Any]]], include: set[str], profile_fields: set[str] | None
    ) -> list[dict[str, Any]]:
        included: list[dict[str, Any]] = []
        if "profile" in include:
            for profile_id in dict.fromkeys(e["profile_id"] for _, e in page):
                profile = self.sandbox.profiles.get(profile_id)
                if profile is None:
                    continue
                resource = profile.resource()
                if profile_fields is not None:
                    resource["attributes"] = {k: v for k, v in resource["attributes"].items() if k in profile_fields}
                included.append(resource)
        if "metric" in include:
            names = {metric_id: name for name, metric_id in self.sandbox.metrics.items()}
            for metric_id in dict.fromkeys(e["metric_id"] for _, e in page):
                if metric_id in names:
                    included.append(self._metric_resource(names[metric_id], metric_id))
        return included

    def _delivery(self, webhook: dict[str, Any], topic: str, resource: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC)
        body = {
            "data": [
                {
                    "topic": topic,
                    "external_id": resource["id"],
                    "payload": {"data": resource, "links": {"self": resource["links"]["self"]}},
                }
            ],
            "meta": {
                "klaviyo_account_id": ACCOUNT_ID,
                "klaviyo_webhook_id": webhook["id"],
                "timestamp": now.isoformat(),
                "version": self.sandbox.revision,
            },
        }
        raw = json.dumps(body, separators=(",", ":"))
        timestamp = email.utils.format_datetime(now, usegmt=True)
        headers = {
            "Content-Type": "application/json",
            "Klaviyo-Webhook-Id": webhook["id"],
            "Klaviyo-Timestamp": timestamp,
            "Klaviyo-Signature": sign(webhook.get("secret_key") or "", raw.encode(), timestamp),
            "User-Agent": "espbridge-sandbox/klaviyo (NOT Klaviyo)",
            "X-Espbridge-Sandbox": "klaviyo",
        }
        return {
            "id": str(uuid.uuid4()),
            "webhook_id": webhook["id"],
            "endpoint_url": webhook["endpoint_url"],
            "topic": topic,
            "event_id": resource["id"],
            "headers": headers,
            "body": raw,
            "attempts": [],
            "delivered": False,
            "status": None,
        }

    def _deliver_all(self, deliveries: list[dict[str, Any]]) -> None:
        if not deliveries:
            return
        with httpx.Client(transport=self.transport, timeout=self.timeout) as http:
            for delivery in deliveries:
                self._deliver(http, delivery)

    def _deliver(self, http: httpx.Client, delivery: dict[str, Any]) -> None:
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.retry_delay * 2 ** (attempt - 1))
            status: int | None = None
            error: str | None = None
            try:
                response = http.post(
                    delivery["endpoint_url"], content=delivery["body"].encode(), headers=delivery["headers"]
                )
                status = response.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self.sandbox._lock:
                delivery["attempts"].append({"time": _now(), "status": status, "error": error})
                delivery["status"] = status
                delivery["delivered"] = status is not None and 200 <= status < 300
            if status is not None and status != 429 and status < 500:
                return  # delivered, or refused for good (a 4xx other than 429 is not retried)


def _summary(delivery: dict[str, Any]) -> dict[str, Any]:
    names = ("id", "webhook_id", "endpoint_url", "topic", "event_id", "delivered", "status")
    return {name: delivery[name] for name in names} | {"attempts": len(delivery["attempts"])}


def _bad_parameter(parameter: str, detail: str) -> ApiError:
    return ApiError(400, "invalid", "Invalid input.", detail, parameter=parameter)


def _listed(value: str | None, allowed: set[str] | None, parameter: str) -> set[str] | None:
    if value is None:
        return None
    names = {name.strip() for name in value.split(",") if name.strip()}
    if allowed is not None and not names <= allowed:
        raise _bad_parameter(parameter, f"Unsupported value(s) {sorted(names - allowed)}; allowed: {sorted(allowed)}.")
    return names


def _page_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise _bad_parameter("page[size]", f"page[size] must be an integer from 1 to {MAX_PAGE_SIZE}.")
    return int(value)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not re.fullmatch(r"o\d{1,9}", text):
        raise _bad_parameter("page[cursor]", "Invalid page cursor.")
    return int(text[1:])


def _page_link(request: Request, cursor: str) -> str:
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "page[cursor]"] + [("page[cursor]", cursor)]
    return str(httpx.URL(request.base_url, params=args))


def _event_time(event: dict[str, Any]) -> datetime | None:
    value = event.get("time")
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


Check = Callable[[datetime, dict[str, Any]], bool]


def _event_filter(text: str | None) -> list[Check]:
    """The checks of a ``GET /api/events`` filter: comma-joined (and ``and(…)``-wrapped) comparisons."""
    if text is None:
        return []
    body = text.strip()
    while body.startswith("and(") and body.endswith(")"):
        body = body[4:-1]
    checks: list[Check] = []
    position = 0
    while position < len(body):
        match = _CALL.match(body, position)
        if match is None:
            raise _bad_parameter("filter", f"Invalid filter {text!r}.")
        checks.append(_check(match[1], match[2], match[3], text))
        position = match.end()
        if position < len(body):
            if body[position] != ",":
                raise _bad_parameter("filter", f"Invalid filter {text!r}.")
            position += 1
    return checks


def _check(operator: str, field: str, raw: str, text: str) -> Check:
    quoted = raw[:1] in "\"'" and raw[-1:] == raw[:1] and len(raw) >= 2
    if operator == "equals" and field in ("metric_id", "profile_id") and quoted:
        wanted = raw[1:-1]
        return lambda when, event: event[field] == wanted
    if operator in _COMPARISONS and field == "datetime" and not quoted:
        try:
            bound = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise _bad_parameter("filter", f"Invalid datetime {raw!r} (datetimes go unquoted).") from None
        bound = bound.replace(tzinfo=UTC) if bound.tzinfo is None else bound
        compare = _COMPARISONS[operator]
        return lambda when, event: compare(when, bound)
    if operator in _COMPARISONS and field == "timestamp" and re.fullmatch(r"\d+", raw):
        seconds, compare = int(raw), _COMPARISONS[operator]
        return lambda when, event: compare(int(when.timestamp()), seconds)
    raise _bad_parameter("filter", f"Unsupported filter {operator}({field},…) in {text!r} (not emulated or invalid).")
