"""The Klaviyo adapter against httpx.MockTransport: requests, the spec contract, error mapping, batching, mapping."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from connector.errors import InvalidInput
from connector.esp.errors import AuthFailed, Permanent, RateLimited, Rejected, Transient, parse_retry_after
from connector.esp.klaviyo import (
    REVISION,
    ConsentUpdate,
    KlaviyoClient,
    KlaviyoEvent,
    KlaviyoProfile,
    ProfileMapping,
    map_error,
    plan_consent,
)
from connector.esp.klaviyo_adapter import KlaviyoAdapter
from connector.sandbox import DEFAULT_API_KEY, KlaviyoSandbox
from connector.store import Contact, Event
from tests.contract.klaviyo import operation, request_errors, spec

KEY = "pk_secret_0123456789abcdef"
T0 = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport that records every request and answers with ``handler`` (default: 202, empty body)."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler or (lambda request: httpx.Response(202))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests]


def client_for(recorder: Recorder, **kwargs: Any) -> KlaviyoClient:
    return KlaviyoClient(KEY, transport=httpx.MockTransport(recorder), **kwargs)


def assert_contract(op: str, request: httpx.Request) -> Any:
    """The request is the operation of the spec (method, path) and its body validates against the schema."""
    contract = operation(op)
    assert request.method == contract["method"]
    template = contract["path"].split("/")
    path = request.url.path.split("/")
    assert len(path) == len(template)
    assert all(t.startswith("{") or t == p for t, p in zip(template, path, strict=True))
    assert request.headers["Authorization"] == f"Klaviyo-API-Key {KEY}"
    assert request.headers["revision"] == REVISION
    assert request.headers["Accept"] == "application/vnd.api+json"
    if contract["request_schema"] is None:
        assert not request.content
        return None
    assert request.headers["Content-Type"] == "application/vnd.api+json"
    body = json.loads(request.content)
    assert request_errors(op, body) == []
    return body


def test_revision_matches_the_vendored_spec() -> None:
    assert spec()["source"]["revision"] == REVISION


# --- each operation: request shape + contract -------------------------------------------------------------------

PROFILE = KlaviyoProfile(
    email="sarah@example.com",
    phone_number="+15005550006",
    external_id="cust-1",
    first_name="Sarah",
    location={"timezone": "Europe/Paris", "city": "Paris"},
    properties={"tier": "gold"},
)


def test_import_profile() -> None:
    rec = Recorder(lambda r: httpx.Response(201, json={"data": {"type": "profile", "id": "01P"}}))
    ref = client_for(rec).import_profile(PROFILE)
    assert (ref.id, ref.created) == ("01P", True)
    body = assert_contract("create_or_update_profile", rec.requests[0])
    assert body == {
        "data": {
            "type": "profile",
            "attributes": {
                "email": "sarah@example.com",
                "phone_number": "+15005550006",
                "external_id": "cust-1",
                "first_name": "Sarah",
                "location": {"timezone": "Europe/Paris", "city": "Paris"},
                "properties": {"tier": "gold"},
            },
        }
    }
    rec.handler = lambda r: httpx.Response(200, json={"data": {"type": "profile", "id": "01P"}})
    assert client_for(rec).import_profile(PROFILE).created is False


def test_bulk_import_profiles_splits_at_10000_and_adds_lists() -> None:
    rec = Recorder(lambda r: httpx.Response(202, json={"data": {"type": "profile-bulk-import-job", "id": "job"}}))
    profiles = [KlaviyoProfile(email=f"p{i}@example.com") for i in range(10_001)]
    accepted = client_for(rec).bulk_import_profiles(profiles, list_ids=["L1"])
    assert [(a.offset, a.count, a.job_id) for a in accepted] == [(0, 10_000, "job"), (10_000, 1, "job")]
    bodies = [assert_contract("bulk_import_profiles", r) for r in rec.requests]
    assert [len(b["data"]["attributes"]["profiles"]["data"]) for b in bodies] == [10_000, 1]
    assert bodies[1]["data"]["attributes"]["profiles"]["data"][0]["attributes"] == {"email": "p10000@example.com"}
    assert bodies[0]["data"]["relationships"] == {"lists": {"data": [{"type": "list", "id": "L1"}]}}


def test_bulk_import_profiles_splits_at_5_mb() -> None:
    rec = Recorder(lambda r: httpx.Response(202, json={"data": {"type": "profile-bulk-import-job", "id": "j"}}))
    big = "x" * 90_000
    profiles = [KlaviyoProfile(email=f"p{i}@example.com", properties={"bio": big}) for i in range(120)]
    accepted = client_for(rec).bulk_import_profiles(profiles)
    assert len(accepted) == 3
    assert sum(a.count for a in accepted) == 120
    assert all(len(r.content) <= 5_000_000 for r in rec.requests)


def test_bulk_import_job_status_and_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/import-errors"):
            if "page" not in str(request.url):
                item = {
                    "type": "import-error",
                    "id": "e1",
                    "attributes": {
                        "code": "invalid",
                        "title": "Invalid input",
                        "detail": "bad email",
                        "source": {"pointer": "/data/attributes/email"},
                        "original_payload": {"email": "nope"},
                    },
                }
                next_url = "https://a.klaviyo.com/api/profile-bulk-import-jobs/J1/import-errors?page%5Bcursor%5D=c2"
                return httpx.Response(200, json={"data": [item], "links": {"next": next_url}})
            return httpx.Response(200, json={"data": [], "links": {"next": None}})
        attrs = {"status": "complete", "total_count": 3, "completed_count": 2, "failed_count": 1}
        return httpx.Response(200, json={"data": {"type": "profile-bulk-import-job", "id": "J1", "attributes": attrs}})

    rec = Recorder(handler)
    client = client_for(rec)
    status = client.bulk_import_job("J1")
    assert (status.status, status.total_count, status.failed_count, status.finished) == ("complete", 3, 1, True)
    assert_contract("get_bulk_import_profiles_job", rec.requests[0])
    errors = client.bulk_import_errors("J1")
    assert [(e.code, e.detail, e.original_payload) for e in errors] == [("invalid", "bad email", {"email": "nope"})]
    assert len(rec.requests) == 3
    for r in rec.requests[1:]:
        assert_contract("get_errors_for_bulk_import_profiles_job", r)
    with pytest.raises(InvalidInput):
        client.bulk_import_job("../lists")


def event(uid: str | None, email: str = "a@example.com", **kw: Any) -> KlaviyoEvent:
    return KlaviyoEvent("Placed Order", KlaviyoProfile(email=email), {"sku": "S"}, time=T0, unique_id=uid, **kw)


def test_create_event() -> None:
    rec = Recorder()
    client_for(rec).create_event(event("m-1", value=49.99, value_currency="EUR", backfill=True))
    body = assert_contract("create_event", rec.requests[0])
    assert body["data"]["attributes"] == {
        "properties": {"sku": "S"},
        "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
        "time": "2026-11-20T10:00:00+00:00",
        "value": 49.99,
        "value_currency": "EUR",
        "unique_id": "m-1",
        "backfill": True,
        "profile": {"data": {"type": "profile", "attributes": {"email": "a@example.com"}}},
    }


def test_bulk_events_group_per_profile_and_drop_repeated_unique_ids() -> None:
    rec = Recorder()
    events = [event("m1"), event("m2", email="b@example.com"), event("m1"), event("m3"), event(None), event("m2")]
    result = client_for(rec).bulk_create_events(events)
    assert result.duplicates == (2, 5)
    assert [(a.offset, a.count) for a in result.accepted] == [(0, 6)]
    body = assert_contract("bulk_create_events", rec.requests[0])
    entries = body["data"]["attributes"]["events-bulk-create"]["data"]
    sent = {
        e["attributes"]["profile"]["data"]["attributes"]["email"]: [
            ev["attributes"].get("unique_id") for ev in e["attributes"]["events"]["data"]
        ]
        for e in entries
    }
    assert sent == {"a@example.com": ["m1", "m3", None], "b@example.com": ["m2"]}


def test_bulk_events_split_at_1000_with_contiguous_ranges() -> None:
    rec = Recorder()
    events = [event(f"m{i}", email=f"p{i % 7}@example.com") for i in range(2_000)]
    events.insert(500, event("m3"))  # a repeat inside the first request's range
    result = client_for(rec).bulk_create_events(events)
    assert result.duplicates == (500,)
    assert [(a.offset, a.count) for a in result.accepted] == [(0, 1_001), (1_001, 1_000)]
    counts = []
    for r in rec.requests:
        body = assert_contract("bulk_create_events", r)
        entries = body["data"]["attributes"]["events-bulk-create"]["data"]
        counts.append(sum(len(e["attributes"]["events"]["data"]) for e in entries))
    assert counts == [1_000, 1_000]


def test_bulk_events_rejection_points_at_the_callers_event() -> None:
    errors = [
        {
            "id": "x",
            "code": "invalid",
            "title": "Invalid input.",
            "detail": "time is in the future",
            "source": {
                "pointer": "/data/attributes/events-bulk-create/data/1/attributes/events/data/0/attributes/time"
            },
        }
    ]
    rec = Recorder(lambda r: httpx.Response(400, json={"errors": errors}))
    events = [event("m1"), event("m1"), event("m2"), event("m3", email="b@example.com")]
    with pytest.raises(Rejected) as info:
        client_for(rec).bulk_create_events(events)
    assert [(r.index, r.code) for r in info.value.records] == [(3, "invalid")]
    assert info.value.accepted == ()


def subscription_updates(n: int, **kw: Any) -> list[ConsentUpdate]:
    return [ConsentUpdate(email=f"p{i}@example.com", email_marketing=True, **kw) for i in range(n)]


def test_subscribe_historical_import_and_split_at_1000() -> None:
    rec = Recorder()
    updates = subscription_updates(1_001, consented_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    updates.append(ConsentUpdate(phone_number="+15005550006", sms_marketing=True, consented_at=T0))
    accepted = client_for(rec).subscribe(updates, historical_import=True, list_id="L1", custom_source="espbridge")
    assert [(a.offset, a.count) for a in accepted] == [(0, 1_000), (1_000, 2)]
    bodies = [assert_contract("bulk_subscribe_profiles", r) for r in rec.requests]
    attrs = bodies[1]["data"]["attributes"]
    assert attrs["historical_import"] is True and attrs["custom_source"] == "espbridge"
    assert attrs["profiles"]["data"][1]["attributes"] == {
        "phone_number": "+15005550006",
        "subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED", "consented_at": T0.isoformat()}}},
    }
    assert bodies[0]["data"]["relationships"] == {"list": {"data": {"type": "list", "id": "L1"}}}


def test_subscribe_live_consent_never_sends_consented_at() -> None:
    rec = Recorder()
    client_for(rec).subscribe(subscription_updates(1, consented_at=T0))
    body = assert_contract("bulk_subscribe_profiles", rec.requests[0])
    assert "historical_import" not in body["data"]["attributes"]
    assert body["data"]["attributes"]["profiles"]["data"][0]["attributes"]["subscriptions"] == {
        "email": {"marketing": {"consent": "SUBSCRIBED"}}
    }
    with pytest.raises(InvalidInput):
        client_for(rec).subscribe(subscription_updates(1), historical_import=True)


def test_unsubscribe_splits_at_100() -> None:
    rec = Recorder()
    accepted = client_for(rec).unsubscribe(subscription_updates(101))
    assert [a.count for a in accepted] == [100, 1]
    body = assert_contract("bulk_unsubscribe_profiles", rec.requests[1])
    assert body["data"]["attributes"]["profiles"]["data"][0]["attributes"] == {
        "email": "p100@example.com",
        "subscriptions": {"email": {"marketing": {"consent": "UNSUBSCRIBED"}}},
    }


@pytest.mark.parametrize(
    ("method", "op"), [("suppress", "bulk_suppress_profiles"), ("unsuppress", "bulk_unsuppress_profiles")]
)
def test_suppression_splits_at_100(method: str, op: str) -> None:
    rec = Recorder()
    accepted = getattr(client_for(rec), method)([f"p{i}@example.com" for i in range(250)])
    assert [a.count for a in accepted] == [100, 100, 50]
    bodies = [assert_contract(op, r) for r in rec.requests]
    assert bodies[2]["data"]["attributes"]["profiles"]["data"][0] == {
        "type": "profile",
        "attributes": {"email": "p200@example.com"},
    }


def test_lists() -> None:
    rec = Recorder(lambda r: httpx.Response(201, json={"data": {"type": "list", "id": "L9"}}))
    client = client_for(rec)
    assert client.create_list("Synced: VIP", opt_in_process="single_opt_in") == "L9"
    body = assert_contract("create_list", rec.requests[0])
    assert body == {"data": {"type": "list", "attributes": {"name": "Synced: VIP", "opt_in_process": "single_opt_in"}}}
    rec.handler = lambda r: httpx.Response(204)
    ids = [f"01P{i}" for i in range(1_500)]
    assert [a.count for a in client.add_to_list("L9", ids)] == [1_000, 500]
    assert [a.count for a in client.remove_from_list("L9", ids[:3])] == [3]
    adds = [assert_contract("add_profiles_to_list", r) for r in rec.requests[1:3]]
    assert adds[1]["data"][0] == {"type": "profile", "id": "01P1000"}
    assert rec.requests[1].url.path == "/api/lists/L9/relationships/profiles"
    assert assert_contract("remove_profiles_from_list", rec.requests[3]) == {
        "data": [{"type": "profile", "id": i} for i in ids[:3]]
    }


@pytest.mark.parametrize(
    ("kwargs", "profile"),
    [
        ({"email": "a@example.com"}, {"type": "profile", "attributes": {"email": "a@example.com"}}),
        ({"phone_number": "+15005550006"}, {"type": "profile", "attributes": {"phone_number": "+15005550006"}}),
        ({"profile_id": "01P"}, {"type": "profile", "id": "01P", "attributes": {}}),
    ],
)
def test_request_deletion(kwargs: dict[str, str], profile: dict[str, Any]) -> None:
    rec = Recorder()
    client_for(rec).request_deletion(**kwargs)
    body = assert_contract("request_profile_deletion", rec.requests[0])
    assert body == {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": profile}}}}


def test_request_deletion_needs_exactly_one_identifier() -> None:
    client = client_for(Recorder())
    with pytest.raises(InvalidInput):
        client.request_deletion()
    with pytest.raises(InvalidInput):
        client.request_deletion(email="a@example.com", profile_id="01P")


def test_limiter_is_called_with_the_operation_before_each_request() -> None:
    calls: list[str] = []
    rec = Recorder()
    client_for(rec, limiter=calls.append).suppress([f"p{i}@example.com" for i in range(101)])
    assert calls == ["bulk_suppress_profiles", "bulk_suppress_profiles"]


# --- error mapping ---------------------------------------------------------------------------------------------


def klaviyo_error(status: int, detail: str, pointer: str | None = None, code: str = "invalid") -> dict[str, Any]:
    error: dict[str, Any] = {"id": "e", "status": status, "code": code, "title": "Error", "detail": detail}
    if pointer:
        error["source"] = {"pointer": pointer}
    return {"errors": [error]}


def test_429_with_seconds() -> None:
    body = klaviyo_error(429, "Request was throttled. Expected available in 7 seconds.", code="throttled")
    rec = Recorder(lambda r: httpx.Response(429, json=body, headers={"Retry-After": "7"}))
    with pytest.raises(RateLimited) as info:
        client_for(rec).import_profile(PROFILE)
    assert info.value.retry_after == 7.0
    assert info.value.retryable
    assert "throttled" in str(info.value)


def test_429_with_http_date() -> None:
    now = dt.datetime(2026, 11, 20, 10, 0, 0, tzinfo=dt.UTC)
    header = email.utils.format_datetime(now + dt.timedelta(seconds=42), usegmt=True)
    response = httpx.Response(
        429, headers={"Retry-After": header}, request=httpx.Request("POST", "https://x/api/events")
    )
    error = map_error(response, now=now)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 42.0
    # live path: a date parses to a non-negative delay
    rec = Recorder(lambda r: httpx.Response(429, headers={"Retry-After": header}))
    with pytest.raises(RateLimited) as info:
        client_for(rec).create_event(event("m"))
    assert info.value.retry_after is not None and info.value.retry_after >= 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("1.5", 1.5), ("-3", 0.0), ("", None), ("soon", None), ("nan", None), (None, None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures(status: int) -> None:
    rec = Recorder(lambda r: httpx.Response(status, json=klaviyo_error(status, "Incorrect authentication.")))
    with pytest.raises(AuthFailed) as info:
        client_for(rec).create_list("x")
    assert info.value.status == status and not info.value.retryable


def test_400_on_one_record_is_a_rejection_with_klaviyos_text() -> None:
    body = klaviyo_error(400, "Invalid email address", "/data/attributes/email")
    rec = Recorder(lambda r: httpx.Response(400, json=body))
    with pytest.raises(Rejected) as info:
        client_for(rec).import_profile(PROFILE)
    assert [(r.index, r.code, r.pointer) for r in info.value.records] == [(0, "invalid", "/data/attributes/email")]
    assert "Invalid email address" in str(info.value)
    assert "POST /api/profile-import: HTTP 400" in str(info.value)


def test_400_in_second_batch_indexes_the_callers_input_and_reports_what_went_through() -> None:
    calls = iter(
        [
            httpx.Response(202),
            httpx.Response(400, json=klaviyo_error(400, "bad", "/data/attributes/profiles/data/3/attributes/email")),
        ]
    )
    rec = Recorder(lambda r: next(calls))
    with pytest.raises(Rejected) as info:
        client_for(rec).unsubscribe(subscription_updates(150))
    assert [r.index for r in info.value.records] == [103]
    assert [(a.offset, a.count) for a in info.value.accepted] == [(0, 100)]


def test_400_on_a_batch_without_record_pointer_is_permanent() -> None:
    rec = Recorder(lambda r: httpx.Response(400, json=klaviyo_error(400, "Malformed", "/data")))
    with pytest.raises(Permanent):
        client_for(rec).unsubscribe(subscription_updates(2))


def test_other_4xx_are_permanent_even_without_json() -> None:
    rec = Recorder(lambda r: httpx.Response(404, text="<html>nope</html>"))
    with pytest.raises(Permanent) as info:
        client_for(rec).bulk_import_job("J1")
    assert info.value.status == 404


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_transient(status: int) -> None:
    rec = Recorder(lambda r: httpx.Response(status, text="oops"))
    with pytest.raises(Transient) as info:
        client_for(rec).create_event(event("m"))
    assert info.value.retryable and info.value.status == status


@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout("timed out"), httpx.ConnectError("refused"), httpx.RemoteProtocolError("eof")]
)
def test_timeouts_and_network_errors_are_transient(exc: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(Transient):
        client_for(Recorder(handler)).import_profile(PROFILE)


def test_a_timeout_is_always_set() -> None:
    rec = Recorder(lambda r: httpx.Response(201, json={"data": {"type": "profile", "id": "1"}}))
    client_for(rec).import_profile(PROFILE)
    timeout = rec.requests[0].extensions["timeout"]
    assert all(timeout[k] is not None for k in ("connect", "read", "write", "pool"))
    client_for(rec, timeout=2.5).import_profile(PROFILE)
    assert rec.requests[1].extensions["timeout"]["read"] == 2.5
    with pytest.raises(InvalidInput):
        KlaviyoClient(KEY, timeout=None)  # type: ignore[arg-type]


def test_the_api_key_never_appears_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[Handler] = [
        lambda r: httpx.Response(429, headers={"Retry-After": "1"}),
        lambda r: httpx.Response(401, json=klaviyo_error(401, "bad key")),
        lambda r: httpx.Response(400, json=klaviyo_error(400, "bad", "/data/attributes/email")),
        lambda r: httpx.Response(500),
    ]

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    answers.append(boom)
    texts = []
    for answer in answers:
        client = client_for(Recorder(answer))
        with pytest.raises(Exception) as info:
            client.import_profile(PROFILE)
        texts += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value)), repr(client)]
    texts.append(caplog.text)
    assert all(KEY not in t and KEY[3:] not in t for t in texts)


# --- mapping ----------------------------------------------------------------------------------------------------


def contact(**kw: Any) -> Contact:
    base: dict[str, Any] = {
        "email": "sarah@example.com",
        "phone": "+15005550006",
        "external_id": "u-1",
        "first_name": "Sarah",
        "last_name": None,
        "timezone": "Europe/Paris",
        "locale": "fr-FR",
        "properties": {"tier": "gold", "company": "ACME"},
    }
    return Contact(**{**base, **kw})


def test_default_mapping() -> None:
    profile = ProfileMapping().profile(contact())
    assert profile.attributes() == {
        "email": "sarah@example.com",
        "phone_number": "+15005550006",
        "external_id": "u-1",
        "first_name": "Sarah",
        "locale": "fr-FR",
        "location": {"timezone": "Europe/Paris"},
        "properties": {"tier": "gold", "company": "ACME"},
    }
    assert request_errors("create_or_update_profile", {"data": profile.resource()}) == []


def test_configured_mapping() -> None:
    mapping = ProfileMapping.from_config(
        {
            "fields": {"properties.company": "organization", "properties.tier": "properties.loyalty_tier", "phone": ""},
            "property_prefix": "eb_",
        }
    )
    profile = mapping.profile(contact(properties={"tier": "gold", "company": "ACME", "vip": True}))
    assert profile.organization == "ACME"
    assert profile.phone_number is None
    assert dict(profile.properties) == {"loyalty_tier": "gold", "eb_vip": True}
    closed = ProfileMapping.from_config({"pass_properties": False})
    assert dict(closed.profile(contact()).properties) == {}


@pytest.mark.parametrize(
    "config",
    [{"fields": {"nickname": "first_name"}}, {"fields": {"email": "emial"}}, {"colour": "blue"}],
)
def test_bad_mapping_configuration_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        ProfileMapping.from_config(config)


def test_event_mapping_uses_message_id_as_unique_id() -> None:
    stored = Event(
        message_id="msg-1",
        type="track",
        name="Order Completed",
        timestamp=dt.datetime(2026, 11, 20, 10, 0),
        received_at=T0,
        payload={"properties": {"revenue": 42.5, "currency": "EUR", "order_id": "o-1"}},
    )
    mapping = ProfileMapping(metric_names={"Order Completed": "Placed Order"})
    ev = mapping.event(stored, contact(), backfill=True)
    assert (ev.metric_name, ev.unique_id, ev.value, ev.value_currency, ev.backfill) == (
        "Placed Order",
        "msg-1",
        42.5,
        "EUR",
        True,
    )
    assert ev.time == T0
    assert ev.profile.attributes(for_event=True) == {
        "email": "sarah@example.com",
        "phone_number": "+15005550006",
        "external_id": "u-1",
    }


def test_profiles_need_an_identifier() -> None:
    with pytest.raises(InvalidInput):
        KlaviyoProfile(first_name="nobody")
    with pytest.raises(InvalidInput):
        KlaviyoProfile(email="a@example.com", location={"planet": "Mars"})


def test_consent_plans() -> None:
    c = contact()
    imported = plan_consent(c, "email", "subscribed", occurred_at=dt.datetime(2024, 5, 1), imported=True)
    assert imported.action == "subscribe" and imported.historical_import
    assert imported.update is not None and imported.update.consented_at == dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    live = plan_consent(c, "sms", "subscribed", occurred_at=T0)
    assert live.update == ConsentUpdate(phone_number="+15005550006", sms_marketing=True)
    assert not live.historical_import
    assert plan_consent(c, "email", "unsubscribed", occurred_at=T0).action == "unsubscribe"
    bounce = plan_consent(c, "email", "unsubscribed", occurred_at=T0, ledger_action="bounce")
    assert (bounce.action, bounce.email) == ("suppress", "sarah@example.com")
    assert plan_consent(c, "email", "pending", occurred_at=T0).action == "none"
    assert plan_consent(contact(phone=None), "sms", "subscribed", occurred_at=T0).action == "none"


# --- against the ESP sandbox (in process): the sandbox's refusals become the right errors -------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def sandbox_client(sandbox: KlaviyoSandbox) -> KlaviyoClient:
    return KlaviyoClient(DEFAULT_API_KEY, base_url="http://sandbox.test", transport=httpx.WSGITransport(app=sandbox))


def set_faults(sandbox: KlaviyoSandbox, **faults: Any) -> None:
    with httpx.Client(transport=httpx.WSGITransport(app=sandbox), base_url="http://sandbox.test") as admin:
        assert admin.post("/_sandbox/faults", json=faults).status_code == 200


def test_sandbox_rejection_of_one_profile_is_rejected_record_0() -> None:
    sandbox = KlaviyoSandbox()
    set_faults(sandbox, reject={"emails": ["sarah@example.com"], "detail": "Invalid email."})
    with pytest.raises(Rejected) as info:
        sandbox_client(sandbox).import_profile(PROFILE)
    assert [(r.index, r.pointer) for r in info.value.records] == [(0, "/data/attributes/email")]
    assert info.value.status == 400 and "Invalid email." in str(info.value)


def test_sandbox_rejections_in_a_subscribe_batch_name_the_callers_records() -> None:
    sandbox = KlaviyoSandbox()
    set_faults(sandbox, reject={"emails": ["p1@example.com", "p3@example.com"]})
    with pytest.raises(Rejected) as info:
        sandbox_client(sandbox).subscribe(subscription_updates(4))
    assert [r.index for r in info.value.records] == [1, 3]
    assert info.value.accepted == ()
    assert sandbox.state()["subscriptions"] == {}


def test_sandbox_rejection_in_a_later_chunk_reports_the_chunks_already_accepted() -> None:
    sandbox = KlaviyoSandbox()
    set_faults(sandbox, reject={"emails": ["p120@example.com"]})
    with pytest.raises(Rejected) as info:
        sandbox_client(sandbox).unsubscribe(subscription_updates(150))
    assert [r.index for r in info.value.records] == [120]
    assert [(a.offset, a.count) for a in info.value.accepted] == [(0, 100)]
    assert len(sandbox.state()["subscriptions"]) == 100


def test_sandbox_rejection_of_a_profile_in_bulk_events_rejects_each_of_its_events() -> None:
    sandbox = KlaviyoSandbox()
    set_faults(sandbox, reject={"emails": ["b@example.com"]})
    events = [event("m1"), event("m2", email="b@example.com"), event("m3"), event("m4", email="b@example.com")]
    with pytest.raises(Rejected) as info:
        sandbox_client(sandbox).bulk_create_events(events)
    assert sorted(r.index for r in info.value.records) == [1, 3]
    events = [event("m1"), event("m2", email="b@example.com")]
    with pytest.raises(Rejected) as info:
        sandbox_client(sandbox).bulk_create_events(events)
    assert [r.index for r in info.value.records] == [1]


def test_sandbox_rejections_in_suppression_and_list_membership() -> None:
    sandbox = KlaviyoSandbox()
    client = sandbox_client(sandbox)
    ids = [client.import_profile(KlaviyoProfile(email=f"p{i}@example.com")).id for i in range(3)]
    list_id = client.create_list("Synced: VIP")
    set_faults(sandbox, reject={"contains": ["p2@"]})
    with pytest.raises(Rejected) as info:
        client.suppress([f"p{i}@example.com" for i in range(3)])
    assert [r.index for r in info.value.records] == [2]
    with pytest.raises(Rejected) as info:
        client.add_to_list(list_id, ids)
    assert [(r.index, r.pointer) for r in info.value.records] == [(2, "/data/2/id")]


def test_sandbox_bulk_import_rejections_come_back_as_import_errors() -> None:
    sandbox = KlaviyoSandbox()
    set_faults(sandbox, reject={"emails": ["p1@example.com"]})
    client = sandbox_client(sandbox)
    [accepted] = client.bulk_import_profiles([KlaviyoProfile(email=f"p{i}@example.com") for i in range(3)])
    assert (accepted.offset, accepted.count) == (0, 3) and accepted.job_id
    status = client.bulk_import_job(accepted.job_id)
    assert (status.status, status.total_count, status.completed_count, status.failed_count) == ("complete", 3, 2, 1)
    [failure] = client.bulk_import_errors(accepted.job_id)
    assert failure.original_payload == {"email": "p1@example.com"}


def test_bulk_import_job_is_finished_only_when_complete() -> None:
    clock = FakeClock()
    sandbox = KlaviyoSandbox(job_delay=2, clock=clock)
    client = sandbox_client(sandbox)
    [accepted] = client.bulk_import_profiles([KlaviyoProfile(email=f"p{i}@example.com") for i in range(4)])
    assert accepted.job_id is not None
    seen = []
    for _ in range(5):
        status = client.bulk_import_job(accepted.job_id)
        seen.append((status.status, status.completed_count, status.finished))
        clock.now += 0.5
    assert seen == [
        ("queued", 0, False),
        ("queued", 0, False),
        ("processing", 0, False),
        ("processing", 2, False),
        ("complete", 4, True),
    ]


def test_a_batch_over_5_mb_goes_to_the_sandbox_in_requests_under_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = KlaviyoSandbox()
    profiles = [KlaviyoProfile(email=f"p{i}@example.com", properties={"bio": "x" * 90_000}) for i in range(120)]
    accepted = sandbox_client(sandbox).bulk_import_profiles(profiles)
    assert len(accepted) == 3 and sum(a.count for a in accepted) == 120
    sizes = [len(json.dumps(r["body"], separators=(",", ":"))) for r in sandbox.requests]
    assert len(sizes) == 3 and all(size <= 5_000_000 for size in sizes)
    assert len(sandbox.state()["profiles"]) == 120
    # without the adapter's split, the sandbox refuses the request as Klaviyo would: no record is to blame
    monkeypatch.setattr("connector.esp.klaviyo.MAX_BULK_PAYLOAD_BYTES", 50_000_000)
    with pytest.raises(Permanent) as info:
        sandbox_client(KlaviyoSandbox()).bulk_import_profiles(profiles)
    assert info.value.status == 400 and "5MB" in str(info.value)


def test_a_sandbox_429_storm_is_rate_limited_with_its_retry_after() -> None:
    sandbox = KlaviyoSandbox()
    set_faults(sandbox, storm_429=1, storm_retry_after=7)
    with pytest.raises(RateLimited) as info:
        sandbox_client(sandbox).create_event(event("m1"))
    assert info.value.retry_after == 7.0


# --- erasure and carts (protocol calls with no Klaviyo-specific caller yet) -----------------------------------------


def test_erase_asks_klaviyo_for_one_deletion_job_per_person() -> None:
    sandbox = KlaviyoSandbox()
    client = sandbox_client(sandbox)
    client.import_profile(KlaviyoProfile(email="sarah@example.com"))
    client.import_profile(KlaviyoProfile(phone_number="+15005550007"))
    adapter = KlaviyoAdapter(client)
    people = [
        contact(),
        contact(email=None, phone="+15005550007", external_id=None),
        contact(email=None, phone=None, external_id="u-only"),
    ]
    outcome = adapter.erase(people)
    # Both people with an email or a phone are deleted with their data; an external id alone cannot be
    assert sandbox.state()["profiles"] == []
    assert len(sandbox.state()["deletions"]) == 2
    assert outcome.requests == 2 and not outcome.failed and not outcome.rejected
    assert list(outcome.skipped) == [2]


def test_erase_reports_a_refused_person_and_stops_at_an_outage() -> None:
    sandbox = KlaviyoSandbox()
    set_faults(sandbox, reject={"emails": ["sarah@example.com"]})
    people = [contact(), contact(email="b@example.com"), contact(email="c@example.com")]
    outcome = KlaviyoAdapter(sandbox_client(sandbox)).erase(people)
    assert list(outcome.rejected) == [0] and not outcome.failed
    set_faults(sandbox, error_rate=1.0)
    outcome = KlaviyoAdapter(sandbox_client(sandbox)).erase(people)
    assert outcome.failed == {0, 1, 2} and isinstance(outcome.error, Transient)
    assert outcome.requests == 1  # the first failure stops the batch: the engine retries it all later
