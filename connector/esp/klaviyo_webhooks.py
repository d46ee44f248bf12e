"""Klaviyo system webhooks: verifying a delivery, and reading Klaviyo events as engagement reports.

What this follows, and where it comes from:

- Request format (https://developers.klaviyo.com/en/docs/working_with_system_webhooks; ../shared/specs/ESP_NOTES.md
  section 1.3): headers ``Klaviyo-Webhook-Id``, ``Klaviyo-Signature`` and ``Klaviyo-Timestamp``; body
  ``{"data": [{"external_id": <event id>, "topic": "event:klaviyo.<metric>", "payload": <a Get Event response>}],
  "meta": {"klaviyo_account_id", "klaviyo_webhook_id", "timestamp"}}``. ``meta.klaviyo_webhook_id`` must equal the
  ``Klaviyo-Webhook-Id`` header, "otherwise … do not process the webhook" (Klaviyo's page).
- Signature: the official page names HMAC-SHA256 and the headers; the signed string is from third parties
  (ESP_NOTES 1.3: hookdeck/webhook-skills ``skills/klaviyo-webhooks/references/verification.md``, and the PHP SDK
  nickdnk/klaviyo-php-sdk ``src/APIClient.php``): lowercase hex of HMAC-SHA256(secret_key, raw body bytes followed by
  the ``Klaviyo-Timestamp`` header value), compared in constant time, over the raw body (never a re-serialisation).
  Not yet confirmed against a live Klaviyo delivery (ESP_NOTES asks for that); the sandbox signs the same way.
- Replay window (``REPLAY_WINDOW``, 5 minutes either way): checked on ``meta.timestamp`` (ISO 8601), which the
  signature covers. Not on the ``Klaviyo-Timestamp`` header: the PHP SDK above reports (observed 2026-09-04) that
  Klaviyo sends it as an HTTP-date on a wrong clock (local time labelled GMT), so a header-based window would refuse
  real deliveries. A delivery without ``meta.timestamp`` falls back to the header (HTTP-date, ISO 8601 or Unix
  seconds).
- Payload: the shape of ``GET /api/events/{id}`` (``EventResponseObjectResource`` in specs/klaviyo/stable.json):
  ``attributes.datetime`` / ``timestamp`` / ``event_properties``, ``relationships.profile.data.id``. Metric names:
  "Received Email", "Opened Email", "Clicked Email", "Bounced Email" (event property "Bounce Type": the property
  Klaviyo's metric-aggregates API groups by), "Marked Email as Spam", "Unsubscribed from Email Marketing" (and the
  older "Unsubscribed"); a topic is ``event:klaviyo.`` + the metric name in snake case
  (``event:klaviyo.marked_email_as_spam``).

Answers (raised as ``WebhookRejected`` with its HTTP status): 401 when the signature headers are missing or the
signature does not verify (the sender is not authenticated); 403 when a correctly signed delivery is refused (outside
the replay window, or the webhook id in the body is not the header's); 400 when a signed body is not a webhook
delivery (not JSON, no ``data`` list). Events inside a valid delivery that cannot be read are skipped one by one
(``Delivery.skipped``), never failing the batch: a refused batch would be redelivered forever.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engagement import EngagementReport
from ..errors import EspbridgeError
from ..store import EngagementKind

ESP = "klaviyo"
SIGNATURE_HEADER = "Klaviyo-Signature"
TIMESTAMP_HEADER = "Klaviyo-Timestamp"
WEBHOOK_ID_HEADER = "Klaviyo-Webhook-Id"
REPLAY_WINDOW = dt.timedelta(minutes=5)
TOPIC_PREFIX = "event:klaviyo."

#: Klaviyo's email metrics espbridge records, by name. "Received Email" is "when a recipient receives an email"
#: (help.klaviyo.com, email metrics reference): delivered. Klaviyo has no separate "sent" metric for email.
METRIC_KINDS: dict[str, EngagementKind] = {
    "Received Email": EngagementKind.DELIVERED,
    "Opened Email": EngagementKind.OPENED,
    "Clicked Email": EngagementKind.CLICKED,
    "Bounced Email": EngagementKind.BOUNCED,
    "Marked Email as Spam": EngagementKind.MARKED_SPAM,
    "Unsubscribed from Email Marketing": EngagementKind.UNSUBSCRIBED,
    "Unsubscribed": EngagementKind.UNSUBSCRIBED,  # the metric's older name (global email unsubscribe)
}

#: The webhook topics to subscribe to (one per metric above, in its current name).
TOPICS: tuple[str, ...] = tuple(
    TOPIC_PREFIX + name.lower().replace(" ", "_") for name in METRIC_KINDS if name != "Unsubscribed"
)

#: Event properties kept in ``engagement.details`` (message, campaign and flow references, the clicked URL, the
#: unsubscribe method). Anything else is left out: ``email_address``, and subjects (often personalised).
KEPT_PROPERTIES = {
    "$message": "message_id",
    "$flow": "flow_id",
    "$message_interaction": "message_interaction",
    "Campaign Name": "campaign_name",
    "URL": "url",
    "method": "method",
    "List": "list",
}
_EMAIL_PROPERTIES = ("email_address", "$email", "email", "Email")
_BOUNCE_PROPERTIES = ("Bounce Type", "bounce_type", "$bounce_type", "BounceType")


class WebhookRejected(EspbridgeError):
    """A delivery espbridge refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Delivery:
    """A verified webhook delivery: the engagement it reports, and how many of its events were not read."""

    webhook_id: str
    reports: tuple[EngagementReport, ...]
    received: int  # events in the delivery
    ignored: int  # events of metrics espbridge does not record (subscribed, dropped, SMS, …)
    skipped: tuple[str, ...]  # why unreadable events were skipped


def sign(secret: str, body: bytes, timestamp: str) -> str:
    """Klaviyo's signature: hex HMAC-SHA256 of the raw body followed by the ``Klaviyo-Timestamp`` value."""
    mac = hmac.new(secret.encode(), body, hashlib.sha256)
    mac.update(timestamp.encode())
    return mac.hexdigest()


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    now: dt.datetime,
    window: dt.timedelta = REPLAY_WINDOW,
) -> Delivery:
    """Check a delivery's signature, freshness and webhook id, then read its events.

    ``headers``: the request's headers (names in any case).

    Raises:
        WebhookRejected: 401 (signature headers missing, signature wrong), 403 (stale, webhook id mismatch),
            400 (signed, but not a webhook delivery).
    """
    named = {name.lower(): value for name, value in headers.items()}
    signature = (named.get(SIGNATURE_HEADER.lower()) or "").strip()
    timestamp = named.get(TIMESTAMP_HEADER.lower()) or ""
    header_webhook_id = (named.get(WEBHOOK_ID_HEADER.lower()) or "").strip()
    missing = [
        name
        for name, value in (
            (SIGNATURE_HEADER, signature),
            (TIMESTAMP_HEADER, timestamp),
            (WEBHOOK_ID_HEADER, header_webhook_id),
        )
        if not value
    ]
    if missing:
        raise WebhookRejected(401, f"missing header(s): {', '.join(missing)}")
    if not hmac.compare_digest(sign(secret, body, timestamp).encode(), signature.lower().encode("ascii", "replace")):
        raise WebhookRejected(401, f"{SIGNATURE_HEADER} does not match the body (wrong secret, or an altered body)")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookRejected(400, f"body is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise WebhookRejected(400, 'body must be an object with a "data" list (a Klaviyo webhook delivery)')
    meta = document.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    body_webhook_id = meta.get("klaviyo_webhook_id")
    if body_webhook_id != header_webhook_id:
        raise WebhookRejected(
            403, f"meta.klaviyo_webhook_id does not match the {WEBHOOK_ID_HEADER} header; not processed"
        )
    sent_at = _sent_at(meta.get("timestamp"), timestamp)
    if abs(now - sent_at) > window:
        raise WebhookRejected(
            403,
            f"delivery timestamp {sent_at.isoformat()} is outside the {int(window.total_seconds())} s replay window",
        )
    reports: list[EngagementReport] = []
    skipped: list[str] = []
    ignored = 0
    for index, item in enumerate(document["data"]):
        try:
            report = read_delivery_item(item)
        except ValueError as exc:
            skipped.append(f"data[{index}]: {exc}")
            continue
        if report is None:
            ignored += 1
        else:
            reports.append(report)
    return Delivery(header_webhook_id, tuple(reports), len(document["data"]), ignored, tuple(skipped))


def read_delivery_item(item: Any) -> EngagementReport | None:
    """One ``data[]`` entry of a delivery: None for a topic espbridge does not record.

    Raises:
        ValueError: the entry is not readable (no topic, no event id, no time).
    """
    if not isinstance(item, dict):
        raise ValueError("not an object")
    topic = item.get("topic")
    if not isinstance(topic, str) or not topic:
        raise ValueError("no topic")
    metric = metric_for_topic(topic)
    if metric is None:
        return None
    payload = item.get("payload")
    resource = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(resource, dict):
        raise ValueError("payload has no data (the event)")
    included = payload.get("included") if isinstance(payload, dict) else None
    event_id = item.get("external_id") or resource.get("id")
    return read_event(resource, metric, event_id=event_id, profiles=_profiles(included), source="webhook")


def read_event(
    resource: Mapping[str, Any],
    metric: str,
    *,
    event_id: Any = None,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
    source: str,
) -> EngagementReport | None:
    """A Klaviyo event resource (``GET /api/events`` shape) of metric ``metric``; None for an unrecorded metric.

    ``profiles``: the ``included`` profiles by id (their ``email`` resolves a person espbridge has not linked).

    Raises:
        ValueError: no event id or no time.
    """
    kind = METRIC_KINDS.get(metric)
    if kind is None:
        return None
    event_id = event_id if event_id is not None else resource.get("id")
    if not isinstance(event_id, str | int) or not str(event_id).strip() or len(str(event_id)) > 200:
        raise ValueError("no usable event id")
    attributes = resource.get("attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    occurred_at = _event_time(attributes)
    properties = attributes.get("event_properties")
    properties = properties if isinstance(properties, dict) else {}
    profile_id = _relationship_id(resource, "profile")
    email = next((p for p in (_str(properties.get(k)) for k in _EMAIL_PROPERTIES) if p), None)
    if email is None and profile_id is not None and profiles:
        email = _str((profiles.get(profile_id) or {}).get("email"))
    bounce_type = _bounce_type(properties) if kind is EngagementKind.BOUNCED else None
    details: dict[str, Any] = {"source": source, "metric": metric}
    if profile_id is not None:
        details["profile_id"] = profile_id
    if bounce_type is not None:
        details["bounce_type"] = bounce_type
    for name, key in KEPT_PROPERTIES.items():
        value = properties.get(name)
        if isinstance(value, str):
            details[key] = value[:2000]
        elif isinstance(value, int | float | bool):
            details[key] = value
    return EngagementReport(
        esp=ESP,
        esp_event_id=str(event_id).strip(),
        kind=kind,
        occurred_at=occurred_at,
        remote_profile_id=profile_id,
        email=email,
        hard_bounce=bounce_type == "hard",
        details=details,
    )


def metric_for_topic(topic: str) -> str | None:
    """The metric name of a webhook topic espbridge records (``event:klaviyo.opened_email`` → "Opened Email")."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    snake = topic[len(TOPIC_PREFIX) :]
    return next((name for name in METRIC_KINDS if name.lower().replace(" ", "_") == snake), None)


def parse_time(value: Any) -> dt.datetime | None:
    """A timestamp as Klaviyo writes them: ISO 8601, an HTTP-date (RFC 9110 IMF-fixdate) or Unix seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _from_unix(float(value))
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return _from_unix(float(text))
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _from_unix(seconds: float) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _sent_at(meta_timestamp: Any, header_timestamp: str) -> dt.datetime:
    if meta_timestamp is not None:
        sent_at = parse_time(meta_timestamp)
        if sent_at is None:
            raise WebhookRejected(400, f"meta.timestamp is not a timestamp: {str(meta_timestamp)[:100]!r}")
        return sent_at
    sent_at = parse_time(header_timestamp)
    if sent_at is None:
        raise WebhookRejected(400, f"{TIMESTAMP_HEADER} is not a timestamp: {header_timestamp[:100]!r}")
    return sent_at


def _event_time(attributes: Mapping[str, Any]) -> dt.datetime:
    for name in ("datetime", "timestamp"):
        parsed = parse_time(attributes.get(name))
        if parsed is not None:
            return parsed
    raise ValueError("the event has no datetime or timestamp")


def _relationship_id(resource: Mapping[str, Any], name: str) -> str | None:
    relationships = resource.get("relationships")
    related = relationships.get(name) if isinstance(relationships, dict) else None
    data = related.get("data") if isinstance(related, dict) else None
    return _str(data.get("id")) if isinstance(data, dict) else None


def _profiles(included: Any) -> dict[str, Mapping[str, Any]]:
    """``included`` profiles by id → their attributes."""
    found: dict[str, Mapping[str, Any]] = {}
    for item in included if isinstance(included, list) else ():
        if isinstance(item, dict) and item.get("type") == "profile" and isinstance(item.get("id"), str):
            attributes = item.get("attributes")
            found[item["id"]] = attributes if isinstance(attributes, dict) else {}
    return found


def _bounce_type(properties: Mapping[str, Any]) -> str | None:
    """Returns "hard", "soft" or None (unknown). Klaviyo's exact values are not in the spec: any value naming a hard or
    permanent bounce counts as hard ("hard", "Hard Bounce", "HardBounce", "permanent"), a soft or transient one as
    soft; anything else is unknown and is never treated as hard."""
    for name in _BOUNCE_PROPERTIES:
        value = _str(properties.get(name))
        if value is None:
            continue
        lowered = value.lower()
        if "hard" in lowered or "permanent" in lowered:
            return "hard"
        if "soft" in lowered or "transient" in lowered or "temporary" in lowered:
            return "soft"
        return None
    return None


def _str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None
