"""Klaviyo webhook verification and reading (connector/esp/klaviyo_webhooks.py), and the polling calls of the
Klaviyo client, without a database: signatures, the replay window, the webhook id check, payload shapes."""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from connector.esp.klaviyo import KlaviyoClient
from connector.esp.klaviyo_webhooks import (
    METRIC_KINDS,
    TOPICS,
    WebhookRejected,
    metric_for_topic,
    parse_time,
    read_event,
    sign,
    verify,
)
from connector.store import EngagementKind

SECRET = "whsec_unit_0123456789abcdef"
NOW = dt.datetime(2026, 4, 13, 22, 50, 30, tzinfo=dt.UTC)


def event(event_id: str = "73WCCK7JKtE", **properties: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "id": event_id,
        "attributes": {
            "timestamp": 1776118606,
            "datetime": "2026-04-13T22:16:46+00:00",
            "uuid": "75669b00-3786-11f1-8001-4e2db0d1c5b6",
            "event_properties": properties,
        },
        "relationships": {
            "profile": {"data": {"type": "profile", "id": "01KP4EGHH8QJ3N3AY2Z6V7RMDK"}},
            "metric": {"data": {"type": "metric", "id": "SHi67A"}},
        },
        "links": {"self": f"https://a.klaviyo.com/api/events/{event_id}/"},
    }


def body(*items: tuple[str, dict[str, Any]], webhook_id: str = "01KP4928STE8FKCWB6WDHZ4ZB7", **meta: Any) -> bytes:
    """A delivery shaped like the one captured in nickdnk/klaviyo-php-sdk's tests (Klaviyo's documented format)."""
    document = {
        "meta": {
            "timestamp": "2026-04-13T22:50:12.101159+00:00",
            "klaviyo_webhook_id": webhook_id,
            "klaviyo_account_id": "WBhXHN",
            "version": "2024-06-28",
            **meta,
        },
        "data": [
            {"topic": topic, "external_id": resource["id"], "payload": {"data": resource}} for topic, resource in items
        ],
    }
    return json.dumps(document).encode()


def headers(raw: bytes, *, secret: str = SECRET, timestamp: str = "Tue, 14 Apr 2026 03:50:12 GMT") -> dict[str, str]:
    # The header timestamp of the captured delivery: an HTTP-date five hours off (Klaviyo's clock defect); the
    # replay window is checked on meta.timestamp, which this delivery has.
    return {
        "Klaviyo-Webhook-Id": "01KP4928STE8FKCWB6WDHZ4ZB7",
        "Klaviyo-Timestamp": timestamp,
        "Klaviyo-Signature": sign(secret, raw, timestamp),
    }


UNSUBSCRIBE = ("event:klaviyo.unsubscribed_from_email_marketing", event(email_address="ann@example.com"))


def test_signature_is_hex_hmac_sha256_of_body_then_timestamp() -> None:
    raw, timestamp = b'{"data":[]}', "2026-04-13T22:49:36+00:00"
    expected = hmac.new(SECRET.encode(), raw + timestamp.encode(), hashlib.sha256).hexdigest()
    assert sign(SECRET, raw, timestamp) == expected
    assert len(expected) == 64 and expected == expected.lower()


def test_a_valid_delivery_is_read() -> None:
    raw = body(UNSUBSCRIBE, ("event:klaviyo.opened_email", event("E2")))
    delivery = verify(headers(raw), raw, SECRET, now=NOW)
    assert delivery.webhook_id == "01KP4928STE8FKCWB6WDHZ4ZB7"
    assert (delivery.received, delivery.ignored, delivery.skipped) == (2, 0, ())
    unsubscribe, opened = delivery.reports
    assert unsubscribe.kind is EngagementKind.UNSUBSCRIBED and opened.kind is EngagementKind.OPENED
    assert unsubscribe.esp_event_id == "73WCCK7JKtE"
    assert unsubscribe.occurred_at == dt.datetime(2026, 4, 13, 22, 16, 46, tzinfo=dt.UTC)
    assert unsubscribe.remote_profile_id == "01KP4EGHH8QJ3N3AY2Z6V7RMDK"
    assert unsubscribe.email == "ann@example.com"
    assert "ann@example.com" not in json.dumps(unsubscribe.details)  # personal data stays out of details


def test_headers_are_found_in_any_case() -> None:
    raw = body(UNSUBSCRIBE)
    lowered = {name.lower(): value for name, value in headers(raw).items()}
    assert verify(lowered, raw, SECRET, now=NOW).reports


@pytest.mark.parametrize("missing", ["Klaviyo-Signature", "Klaviyo-Timestamp", "Klaviyo-Webhook-Id"])
def test_a_missing_header_is_401(missing: str) -> None:
    raw = body(UNSUBSCRIBE)
    sent = {k: v for k, v in headers(raw).items() if k != missing}
    with pytest.raises(WebhookRejected) as refused:
        verify(sent, raw, SECRET, now=NOW)
    assert refused.value.status == 401 and missing in refused.value.message


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda raw, h: (raw, {**h, "Klaviyo-Signature": "0" * 64}), id="wrong-signature"),
        pytest.param(lambda raw, h: (raw, headers(raw, secret="another-secret-0123456789")), id="wrong-secret"),
        pytest.param(lambda raw, h: (raw.replace(b"ann@", b"bob@"), h), id="altered-body"),
        pytest.param(lambda raw, h: (raw, {**h, "Klaviyo-Timestamp": "Tue, 14 Apr 2026 03:50:13 GMT"}), id="new-ts"),
        pytest.param(lambda raw, h: (raw, {**h, "Klaviyo-Signature": "not hex ✓"}), id="garbage"),
        pytest.param(
            lambda raw, h: (raw, {**h, "Klaviyo-Signature": hmac.new(SECRET.encode(), raw, "sha256").hexdigest()}),
            id="body-only",
        ),
    ],
)
def test_a_signature_that_does_not_verify_is_401(tamper: Any) -> None:
    raw = body(UNSUBSCRIBE)
    sent_body, sent_headers = tamper(raw, headers(raw))
    with pytest.raises(WebhookRejected) as refused:
        verify(sent_headers, sent_body, SECRET, now=NOW)
    assert refused.value.status == 401


def test_a_base64_signature_is_not_klaviyos() -> None:
    import base64

    raw = body(UNSUBSCRIBE)
    h = headers(raw)
    digest = hmac.new(SECRET.encode(), raw + h["Klaviyo-Timestamp"].encode(), hashlib.sha256).digest()
    with pytest.raises(WebhookRejected):
        verify({**h, "Klaviyo-Signature": base64.b64encode(digest).decode()}, raw, SECRET, now=NOW)


@pytest.mark.parametrize("offset", [dt.timedelta(minutes=-6), dt.timedelta(minutes=6), dt.timedelta(days=-1)])
def test_outside_the_replay_window_is_403(offset: dt.timedelta) -> None:
    raw = body(UNSUBSCRIBE, timestamp=(NOW + offset).isoformat())
    with pytest.raises(WebhookRejected) as refused:
        verify(headers(raw), raw, SECRET, now=NOW)
    assert refused.value.status == 403 and "replay window" in refused.value.message


def test_inside_the_replay_window_either_way_is_accepted() -> None:
    for offset in (dt.timedelta(minutes=-4, seconds=-59), dt.timedelta(minutes=4, seconds=59)):
        raw = body(UNSUBSCRIBE, timestamp=(NOW + offset).isoformat())
        assert verify(headers(raw), raw, SECRET, now=NOW).reports


def test_without_meta_timestamp_the_header_decides() -> None:
    document = json.loads(body(UNSUBSCRIBE))
    del document["meta"]["timestamp"]
    raw = json.dumps(document).encode()
    fresh = email.utils.format_datetime(NOW - dt.timedelta(minutes=1), usegmt=True)
    assert verify(headers(raw, timestamp=fresh), raw, SECRET, now=NOW).reports
    for stale in (email.utils.format_datetime(NOW - dt.timedelta(minutes=10), usegmt=True), "1776117000"):
        with pytest.raises(WebhookRejected) as refused:
            verify(headers(raw, timestamp=stale), raw, SECRET, now=NOW)
        assert refused.value.status == 403
    with pytest.raises(WebhookRejected) as unreadable:
        verify(headers(raw, timestamp="yesterday"), raw, SECRET, now=NOW)
    assert unreadable.value.status == 400


def test_a_webhook_id_mismatch_is_403() -> None:
    raw = body(UNSUBSCRIBE, webhook_id="01OTHERWEBHOOK")
    with pytest.raises(WebhookRejected) as refused:
        verify(headers(raw), raw, SECRET, now=NOW)
    assert refused.value.status == 403 and "klaviyo_webhook_id" in refused.value.message


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"\xff\xfe", b"[]", b'{"meta": {}}', b'{"data": {}}', b""],
    ids=["text", "binary", "list", "no-data", "data-not-list", "empty"],
)
def test_a_signed_body_that_is_not_a_delivery_is_400(raw: bytes) -> None:
    with pytest.raises(WebhookRejected) as refused:
        verify(headers(raw), raw, SECRET, now=NOW)
    assert refused.value.status == 400


def test_unreadable_and_unrecorded_events_are_counted_not_fatal() -> None:
    no_time = event("E3")
    no_time["attributes"] = {"event_properties": {}}
    raw = body(
        UNSUBSCRIBE,
        ("event:klaviyo.subscribed_to_email_marketing", event("E4")),
        ("event:klaviyo.sent_sms", event("E5")),
        ("event:klaviyo.opened_email", no_time),
    )
    document = json.loads(raw)
    document["data"].append("not an object")
    document["data"].append({"topic": "event:klaviyo.opened_email", "external_id": "E6", "payload": {}})
    raw = json.dumps(document).encode()
    delivery = verify(headers(raw), raw, SECRET, now=NOW)
    assert (delivery.received, len(delivery.reports), delivery.ignored, len(delivery.skipped)) == (6, 1, 2, 3)


@pytest.mark.parametrize(
    ("metric", "properties", "kind", "hard"),
    [
        ("Received Email", {}, EngagementKind.DELIVERED, False),
        ("Opened Email", {}, EngagementKind.OPENED, False),
        ("Clicked Email", {"URL": "https://shop.example/p/1"}, EngagementKind.CLICKED, False),
        ("Bounced Email", {"Bounce Type": "hard"}, EngagementKind.BOUNCED, True),
        ("Bounced Email", {"Bounce Type": "Hard Bounce"}, EngagementKind.BOUNCED, True),
        ("Bounced Email", {"bounce_type": "HardBounce"}, EngagementKind.BOUNCED, True),
        ("Bounced Email", {"Bounce Type": "soft"}, EngagementKind.BOUNCED, False),
        ("Bounced Email", {"Bounce Type": "mailbox full?"}, EngagementKind.BOUNCED, False),
        ("Bounced Email", {}, EngagementKind.BOUNCED, False),
        ("Marked Email as Spam", {}, EngagementKind.MARKED_SPAM, False),
        ("Unsubscribed from Email Marketing", {}, EngagementKind.UNSUBSCRIBED, False),
        ("Unsubscribed", {}, EngagementKind.UNSUBSCRIBED, False),
    ],
)
def test_metrics_map_to_engagement_kinds(
    metric: str, properties: dict[str, Any], kind: EngagementKind, hard: bool
) -> None:
    report = read_event(event(**properties), metric, source="poll")
    assert report is not None
    assert (report.kind, report.hard_bounce) == (kind, hard)
    assert report.details["metric"] == metric and report.details["source"] == "poll"
    if "URL" in properties:
        assert report.details["url"] == properties["URL"]


def test_other_metrics_are_not_recorded() -> None:
    assert read_event(event(), "Placed Order", source="poll") is None
    assert metric_for_topic("event:klaviyo.sent_sms") is None
    assert metric_for_topic("profile.created") is None


def test_topics_are_the_metric_names_in_snake_case() -> None:
    assert "event:klaviyo.marked_email_as_spam" in TOPICS
    assert "event:klaviyo.unsubscribed_from_email_marketing" in TOPICS
    for topic in TOPICS:
        metric = metric_for_topic(topic)
        assert metric is not None and metric in METRIC_KINDS


def test_the_included_profile_email_resolves_the_person() -> None:
    report = read_event(
        event(), "Opened Email", profiles={"01KP4EGHH8QJ3N3AY2Z6V7RMDK": {"email": "a@x.io"}}, source="p"
    )
    assert report is not None and report.email == "a@x.io"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-04-13T22:50:12.101159+00:00", dt.datetime(2026, 4, 13, 22, 50, 12, 101159, tzinfo=dt.UTC)),
        ("2026-04-13T22:50:12Z", dt.datetime(2026, 4, 13, 22, 50, 12, tzinfo=dt.UTC)),
        ("2026-04-14T00:50:12+02:00", dt.datetime(2026, 4, 13, 22, 50, 12, tzinfo=dt.UTC)),
        ("Mon, 13 Apr 2026 22:50:12 GMT", dt.datetime(2026, 4, 13, 22, 50, 12, tzinfo=dt.UTC)),
        ("1776120612", dt.datetime(2026, 4, 13, 22, 50, 12, tzinfo=dt.UTC)),
        (1776120612, dt.datetime(2026, 4, 13, 22, 50, 12, tzinfo=dt.UTC)),
        ("soon", None),
        (True, None),
        (None, None),
    ],
)
def test_timestamps_in_every_form_klaviyo_uses(value: Any, expected: dt.datetime | None) -> None:
    assert parse_time(value) == expected


# --- the polling calls of KlaviyoClient ------------------------------------------------------------------------


def test_get_events_asks_for_one_metric_since_a_time_oldest_first_with_profiles() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        document: dict[str, Any] = {
            "data": [event()],
            "included": [{"type": "profile", "id": "01KP4EGHH8QJ3N3AY2Z6V7RMDK", "attributes": {"email": "a@x.io"}}],
            "links": {"self": str(request.url)},
        }
        if "page%5Bcursor%5D" not in str(request.url):
            document["links"]["next"] = "https://a.klaviyo.com/api/events/?page%5Bcursor%5D=bmV4dA&sort=datetime"
        return httpx.Response(200, json=document)

    with KlaviyoClient("pk_test", transport=httpx.MockTransport(handler)) as client:
        since = dt.datetime(2026, 4, 13, 22, 0, tzinfo=dt.UTC)
        first = client.get_events("SHi67A", since=since)
        second = client.get_events("SHi67A", since=since, cursor=first.next_cursor)
    assert first.next_cursor == "bmV4dA" and second.next_cursor is None
    assert first.profiles == {"01KP4EGHH8QJ3N3AY2Z6V7RMDK": {"email": "a@x.io"}}
    params = seen[0].url.params
    assert params["filter"] == 'equals(metric_id,"SHi67A"),greater-or-equal(datetime,2026-04-13T22:00:00+00:00)'
    assert (params["sort"], params["include"], params["fields[profile]"], params["page[size]"]) == (
        "datetime",
        "profile",
        "email",
        "200",
    )
    assert seen[1].url.params["page[cursor]"] == "bmV4dA"
    assert seen[1].url.host == "a.klaviyo.com" and seen[0].headers["revision"]
    assert "+" not in seen[0].url.query.decode().replace("%2B", "")  # the offset's + is percent-encoded


def test_get_metrics_follows_pages_and_reads_the_integration() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        metric = {"type": "metric", "attributes": {"integration": {"name": "Klaviyo"}}, "links": {}}
        if "page%5Bcursor%5D" in str(request.url):
            return httpx.Response(200, json={"data": [{**metric, "id": "M2", "attributes": {"name": "Opened Email"}}]})
        first = {**metric, "id": "M1", "attributes": {**metric["attributes"], "name": "Received Email"}}
        return httpx.Response(200, json={"data": [first], "links": {"next": "https://x/api/metrics/?page[cursor]=c2"}})

    with KlaviyoClient("pk_test", transport=httpx.MockTransport(handler)) as client:
        metrics = client.get_metrics(integration_name="Klaviyo")
    assert [(m.id, m.name, m.integration) for m in metrics] == [
        ("M1", "Received Email", "Klaviyo"),
        ("M2", "Opened Email", None),
    ]


def test_create_webhook_sends_the_topics_and_secret() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={"data": {"type": "webhook", "id": "W1"}})

    with KlaviyoClient("pk_test", transport=httpx.MockTransport(handler)) as client:
        assert client.create_webhook(name="n", endpoint_url="https://x/w", secret_key="s" * 20, topics=TOPICS) == "W1"
    data = bodies[0]["data"]
    assert data["attributes"] == {"name": "n", "endpoint_url": "https://x/w", "secret_key": "s" * 20}
    assert [t["id"] for t in data["relationships"]["webhook-topics"]["data"]] == list(TOPICS)


@pytest.mark.parametrize("module", ["connector.engagement", "connector.esp.klaviyo_poll", "connector.sandbox"])
def test_the_engagement_modules_never_import_flask(module: str) -> None:
    code = f"import sys, {module}; print('flask' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "False"
