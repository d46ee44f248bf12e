"""ActiveCampaign webhook reading (connector/esp/activecampaign_webhooks.py) without a database: PHP-style bracket
parsing and its bounds, the delivery key, and the mapping of each delivery type to an engagement report."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from urllib.parse import urlencode

import pytest

from connector.esp.activecampaign_webhooks import (
    EVENTS,
    MAX_DEPTH,
    MAX_FIELDS,
    MAX_KEY_LENGTH,
    FormError,
    bounce_kind,
    delivery_key,
    parse_form,
    parse_time,
    read_delivery,
)
from connector.store import Channel, EngagementKind
from web.webhooks import REDACTED, TokenRedaction

BASE = {
    "date_time": "2026-04-13T22:16:46-05:00",
    "initiated_from": "public",
    "initiated_by": "7",
    "list": "3",
    "contact[id]": "42",
    "contact[email]": "Ann@Example.com",
    "contact[first_name]": "Ann",
    "contact[fields][12]": "blue",
    "campaign[id]": "5",
    "campaign[message][id]": "9",
}


def body(type_: str, **fields: str) -> bytes:
    return urlencode({"type": type_, **BASE, **fields}).encode()


# --- parsing -----------------------------------------------------------------------------------------------------


def test_bracketed_keys_nest_and_exact_keys_stay_readable() -> None:
    form = parse_form(
        b"type=open&contact%5Bid%5D=1&contact[fields][favourite_color]=blue+green&campaign[message][subject]=Hi%21"
        b"&a[]=1&a[]=2&list[][id]=3&list[][id]=4&empty="
    )
    assert form.tree == {
        "type": "open",
        "contact": {"id": "1", "fields": {"favourite_color": "blue green"}},
        "campaign": {"message": {"subject": "Hi!"}},
        "a": ["1", "2"],
        "list": [{"id": "3"}, {"id": "4"}],
        "empty": "",
    }
    assert form.get("contact[fields][favourite_color]") == "blue green"
    assert form.get("empty") is None and form.get("missing") is None
    assert "a[]" not in form.fields  # appended values have no single exact key


def test_a_value_and_a_container_of_one_name_are_both_kept() -> None:
    # the spec's unsubscribe: the envelope's list id next to the list[][id] of each list left
    for raw in (b"list=3&list[][id]=3&list[][id]=4", b"list[][id]=3&list=3&list[][id]=4"):
        form = parse_form(raw)
        assert form.get("list") == "3" and form.tree["list"] == [{"id": "3"}, {"id": "4"}]


def test_an_empty_body_is_an_empty_form() -> None:
    assert parse_form(b"").tree == {} and parse_form(b"  ").fields == {}


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b"type=open&&a=1", "body", "not key=value"),
        (b"type=open&a", "body", "field 2 is not key=value"),
        (b"type=open&", "body", "not key=value"),
        (b"=1", "body", "malformed key"),
        (b"a[b=1", "a[b", "malformed key"),
        (b"a]=1", "a]", "malformed key"),
        (b"a[b]c=1", "a[b]c", "malformed key"),
        (b"[b]=1", "[b]", "malformed key"),
        (b"a[[b]]=1", "a[[b]]", "malformed key"),
        (b"a=%zz", "a", "bad percent escape"),
        (b"a=%ff", "a", "not UTF-8"),
        (b"a=\xff", "body", "not UTF-8"),
        (b"a=1&a=2", "a", "given twice"),
        (b"c[id]=1&c[id]=2", "c[id]", "given twice"),
        (b"a[]=1&a[x]=2", "a[x]", "list"),
        (b"a[x]=1&a[]=2", "a[]", "list"),
    ],
)
def test_malformed_bodies_are_refused_naming_the_field(raw: bytes, field: str, words: str) -> None:
    with pytest.raises(FormError) as caught:
        parse_form(raw)
    assert caught.value.field == field and words in caught.value.message, str(caught.value)


def test_limits_are_enforced() -> None:
    assert len(parse_form("&".join(f"f{i}=x" for i in range(MAX_FIELDS)).encode()).fields) == MAX_FIELDS
    with pytest.raises(FormError, match=f"more than {MAX_FIELDS} fields"):
        parse_form("&".join(f"f{i}=x" for i in range(MAX_FIELDS + 1)).encode())
    deep_ok = "a" + "[x]" * MAX_DEPTH
    assert parse_form(f"{deep_ok}=1".encode()).get(deep_ok) == "1"
    with pytest.raises(FormError, match="deeper than"):
        parse_form(("a" + "[x]" * (MAX_DEPTH + 1) + "=1").encode())
    with pytest.raises(FormError, match="key longer than"):
        parse_form(("k" * (MAX_KEY_LENGTH + 1) + "=1").encode())
    with pytest.raises(FormError, match="value longer than"):
        parse_form(b"a=" + b"v" * (64 * 1024 + 1))
    many = parse_form("&".join(["a[]=x"] * MAX_FIELDS).encode())  # appends are bounded by the field count
    assert len(many.tree["a"]) == MAX_FIELDS


# --- the delivery key --------------------------------------------------------------------------------------------


def test_the_delivery_key_is_stable_and_ignores_what_may_change_between_deliveries() -> None:
    key = delivery_key(parse_form(body("open")))
    assert key.startswith("open:") and len(key) == len("open:") + 64
    assert delivery_key(parse_form(body("open"))) == key
    # field order, custom fields, names, tags, the actor: not part of the occurrence
    reordered = urlencode(dict(reversed(list({"type": "open", **BASE}.items())))).encode()
    assert delivery_key(parse_form(reordered)) == key
    varied = body("open", **{"contact[fields][12]": "red", "contact[tags]": "vip", "initiated_by": "8"})
    assert delivery_key(parse_form(varied)) == key
    # what tells occurrences apart changes it
    for change in (
        {"type": "click"},
        {"date_time": "2026-04-13T22:16:47-05:00"},
        {"contact[id]": "43"},
        {"campaign[id]": "6"},
        {"campaign[message][id]": "10"},
        {"list": "4"},
        {"link[url]": "https://shop.example/a"},
    ):
        changed = {"type": "open", **BASE, **change}
        assert delivery_key(parse_form(urlencode(changed).encode())) != key, change


def test_without_a_contact_id_the_email_identifies_the_contact_in_any_case() -> None:
    fields = {k: v for k, v in {"type": "open", **BASE}.items() if k != "contact[id]"}
    upper = delivery_key(parse_form(urlencode({**fields, "contact[email]": "ANN@EXAMPLE.COM"}).encode()))
    assert upper == delivery_key(parse_form(urlencode({**fields, "contact[email]": "ann@example.com"}).encode()))
    assert upper != delivery_key(parse_form(urlencode({**fields, "contact[email]": "bob@example.com"}).encode()))


# --- mapping -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "extra", "kind", "channel", "hard"),
    [
        ("open", {}, EngagementKind.OPENED, Channel.EMAIL, False),
        ("click", {"link[id]": "2", "link[url]": "https://shop.example/p/1"}, EngagementKind.CLICKED, "email", False),
        ("bounce", {"bounce[type]": "hard", "bounce[code]": "5.1.1"}, EngagementKind.BOUNCED, "email", True),
        ("bounce", {"bounce[type]": "soft", "bounce[code]": "4.2.2"}, EngagementKind.BOUNCED, "email", False),
        ("bounce", {}, EngagementKind.BOUNCED, Channel.EMAIL, False),
        ("unsubscribe", {"list[][id]": "3"}, EngagementKind.UNSUBSCRIBED, Channel.EMAIL, False),
        ("sms_unsub", {"sms[id]": "77", "sms[phone]": "+15550100"}, EngagementKind.UNSUBSCRIBED, "sms", False),
    ],
)
def test_each_recorded_type(type_: str, extra: dict[str, str], kind: str, channel: str, hard: bool) -> None:
    delivery = read_delivery(parse_form(body(type_, **extra)))
    report = delivery.report
    assert report is not None and not delivery.echo and not delivery.ignored
    assert (report.esp, report.kind, report.channel, report.hard_bounce) == ("activecampaign", kind, channel, hard)
    assert report.esp_event_id == delivery_key(parse_form(body(type_, **extra)))
    assert report.occurred_at == dt.datetime(2026, 4, 14, 3, 16, 46, tzinfo=dt.UTC)
    assert (report.remote_profile_id, report.email) == ("42", "Ann@Example.com")
    details: dict[str, Any] = dict(report.details)
    assert details["campaign_id"] == "5" and details["message_id"] == "9" and details["lists"] == ["3"]
    assert "Ann" not in str(details) and "blue" not in str(details) and "+15550100" not in str(details)
    if type_ == "click":
        assert (details["url"], details["link_id"]) == ("https://shop.example/p/1", "2")
    if type_ == "bounce" and extra:
        assert details["bounce_type"] == extra["bounce[type]"] and details["bounce_code"] == extra["bounce[code]"]


def test_the_unsubscribe_keeps_every_list_id() -> None:
    raw = body("unsubscribe") + b"&list[][id]=3&list[][id]=8&unsubscribe[reason]=too+many"
    report = read_delivery(parse_form(raw)).report
    assert report is not None and report.details["lists"] == ["3", "8"]
    assert "too many" not in str(report.details)  # what the person wrote is not kept


def test_api_initiated_deliveries_are_echoes_and_other_types_are_ignored() -> None:
    for type_ in EVENTS:
        echo = read_delivery(parse_form(body(type_, initiated_from="api")))
        assert (echo.report, echo.echo, echo.ignored) == (None, True, False)
    echo = read_delivery(parse_form(body("open", initiated_from="API")))
    assert echo.echo
    for type_ in ("subscribe", "update", "sent", "deal_add", "sms_sent", "forward", "anything"):
        other = read_delivery(parse_form(body(type_)))
        assert (other.report, other.echo, other.ignored) == (None, False, True)
    # an ignored type needs no contact or time
    assert read_delivery(parse_form(b"type=list_add&list[id]=9")).ignored


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"date_time=2026-04-13T22:16:46Z&contact[email]=a@b.c", "type"),
        (b"type=open&contact[email]=a@b.c", "date_time"),
        (b"type=open&date_time=yesterday&contact[email]=a@b.c", "date_time"),
        (b"type=click&date_time=2026-04-13T22:16:46Z", "contact[email]"),
        (b"type=sms_unsub&date_time=2026-04-13T22:16:46Z&contact[email]=+&contact[id]=", "contact[email]"),
    ],
)
def test_a_recorded_type_without_what_it_needs_is_refused(raw: bytes, field: str) -> None:
    with pytest.raises(FormError) as caught:
        read_delivery(parse_form(raw))
    assert caught.value.field == field


def test_times_and_bounce_types() -> None:
    utc = dt.datetime(2026, 4, 13, 22, 16, 46, tzinfo=dt.UTC)
    for text in (
        "2026-04-13T22:16:46Z",
        "2026-04-13T22:16:46+00:00",
        "2026-04-13 22:16:46",
        "2026-04-13T17:16:46-05:00",
    ):
        assert parse_time(text) == utc, text
    assert parse_time("13/04/2026") is None and parse_time(None) is None and parse_time("") is None
    assert [bounce_kind(v) for v in ("hard", "Hard Bounce", "permanent", "soft", "SOFT", "", None, "weird")] == [
        "hard",
        "hard",
        "hard",
        "soft",
        "soft",
        None,
        None,
        None,
    ]


def test_the_log_filter_redacts_webhook_tokens() -> None:
    token = "tok_" + "x" * 40
    record = logging.LogRecord(
        "werkzeug",
        logging.INFO,
        __file__,
        1,
        '"%s" %s %s',
        (f"POST /webhooks/activecampaign/3/{token} HTTP/1.1", 200, 5),
        None,
    )
    assert TokenRedaction().filter(record)
    message = record.getMessage()
    assert token not in message and f"/webhooks/activecampaign/3/{REDACTED} HTTP/1.1" in message
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "POST /webhooks/klaviyo/3 %s", ("ok",), None)
    assert TokenRedaction().filter(plain) and plain.getMessage() == "POST /webhooks/klaviyo/3 ok"
