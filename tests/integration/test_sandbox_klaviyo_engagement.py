"""The Klaviyo sandbox's engagement side (connector/sandbox/klaviyo_webhooks.py), in-process and served on a thread:
``GET /api/metrics`` and ``GET /api/events`` (checked against the spec's response schemas, and read by Klaviyo's
official SDK), ``POST /_sandbox/engagement`` delivering signed webhooks, and ``GET /_sandbox/webhook-deliveries``."""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from werkzeug.test import Client, TestResponse

from connector.sandbox import DEFAULT_API_KEY, KlaviyoSandbox, SandboxServer
from connector.sandbox.spec import load_operations

HEADERS = {"Authorization": f"Klaviyo-API-Key {DEFAULT_API_KEY}", "revision": "2026-07-15"}
SECRET = "sandbox-secret-0123456789"


@pytest.fixture
def received() -> list[httpx.Request]:
    return []


@pytest.fixture
def sandbox(received: list[httpx.Request]) -> Iterator[KlaviyoSandbox]:
    """A sandbox whose webhook deliveries land in ``received`` (answered 200); rate-limit windows 100 times short."""
    emulated = KlaviyoSandbox(time_scale=100)

    def receiver(request: httpx.Request) -> httpx.Response:
        request.read()
        received.append(request)
        return httpx.Response(200, json={"success": True})

    emulated.engagement.transport = httpx.MockTransport(receiver)
    emulated.engagement.retry_delay = 0.01
    yield emulated
    emulated.engagement.join()


@pytest.fixture
def client(sandbox: KlaviyoSandbox) -> Client:
    return Client(sandbox)


def get(client: Client, operation: str, path: str, **query: str) -> TestResponse:
    response = client.get(path, query_string=query, headers=HEADERS)
    assert response.headers["X-Espbridge-Sandbox"] == "klaviyo"
    validator = load_operations()[operation].response_validators.get(str(response.status_code))
    if validator is not None:
        validator.validate(response.json)
    return response


def events(client: Client, **query: str) -> TestResponse:
    return get(client, "get_events", "/api/events", **query)


def emit(client: Client, metric: str, email_address: str = "ann@example.com", **extra: Any) -> dict[str, Any]:
    response = client.post("/_sandbox/engagement", json={"email": email_address, "metric": metric, **extra})
    assert response.status_code in (201, 202), response.get_data(as_text=True)
    document: dict[str, Any] = response.json
    return document


def webhook(client: Client, url: str = "https://shop.example/webhooks/klaviyo/1", topics: tuple[str, ...] = ()) -> str:
    body = {
        "data": {
            "type": "webhook",
            "attributes": {"name": "espbridge", "endpoint_url": url, "secret_key": SECRET},
            "relationships": {
                "webhook-topics": {
                    "data": [
                        {"type": "webhook-topic", "id": t}
                        for t in topics or ("event:klaviyo.opened_email", "event:klaviyo.bounced_email")
                    ]
                }
            },
        }
    }
    for _ in range(50):  # create_webhook allows 1 a second (10 ms here)
        response = client.post("/api/webhooks", data=json.dumps(body), headers=HEADERS, content_type="application/json")
        if response.status_code != 429:
            break
        time.sleep(0.02)
    assert response.status_code == 201, response.json
    return str(response.json["data"]["id"])


def error(response: TestResponse, status: int, parameter: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    (err,) = response.json["errors"]
    assert err["status"] == status and err["source"] == {"parameter": parameter}
    return str(err["detail"])


# --- GET /api/metrics, GET /api/events --------------------------------------------------------------------------


def test_metrics_carry_their_integration_and_filter_by_it(client: Client) -> None:
    emit(client, "Opened Email")
    client.post(
        "/api/events",
        data=json.dumps(
            {
                "data": {
                    "type": "event",
                    "attributes": {
                        "properties": {},
                        "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
                        "profile": {"data": {"type": "profile", "attributes": {"email": "ann@example.com"}}},
                    },
                }
            }
        ),
        headers=HEADERS,
        content_type="application/vnd.api+json",
    )
    every = get(client, "get_metrics", "/api/metrics").json["data"]
    assert {m["attributes"]["name"]: m["attributes"]["integration"]["name"] for m in every} == {
        "Opened Email": "Klaviyo",
        "Placed Order": "API",
    }
    klaviyo = get(client, "get_metrics", "/api/metrics", filter='equals(integration.name,"Klaviyo")').json["data"]
    assert [m["attributes"]["name"] for m in klaviyo] == ["Opened Email"]
    assert error(get(client, "get_metrics", "/api/metrics", filter="equals(name,'x')"), 400, "filter")
    assert client.get("/api/metrics").status_code == 401


def test_events_filter_by_metric_profile_and_time(client: Client, sandbox: KlaviyoSandbox) -> None:
    base = dt.datetime(2026, 4, 13, 12, 0, tzinfo=dt.UTC)
    sent = [emit(client, "Opened Email", time=(base + dt.timedelta(minutes=i)).isoformat()) for i in range(3)]
    bob = emit(client, "Opened Email", "bob@example.com", time=(base + dt.timedelta(minutes=3)).isoformat())
    bounce = emit(client, "Bounced Email", time=base.isoformat(), bounce_type="hard")
    opened_id = sandbox.metrics["Opened Email"]
    ids = [s["data"]["id"] for s in sent]

    def listed(**query: str) -> list[str]:
        return [e["id"] for e in events(client, **query).json["data"]]

    assert listed(filter=f'equals(metric_id,"{opened_id}")') == [*ids, bob["data"]["id"]]
    since = (base + dt.timedelta(minutes=1)).isoformat()
    assert listed(filter=f"equals(metric_id,'{opened_id}'),greater-or-equal(datetime,{since})") == [
        *ids[1:],
        bob["data"]["id"],
    ]
    assert listed(filter=f'and(equals(metric_id,"{opened_id}"),greater-than(datetime,{since}))') == [
        ids[2],
        bob["data"]["id"],
    ]
    assert listed(filter=f"less-than(timestamp,{int((base + dt.timedelta(minutes=1)).timestamp())})") == [
        ids[0],
        bounce["data"]["id"],
    ]
    profile_id = bob["data"]["relationships"]["profile"]["data"]["id"]
    assert listed(filter=f'equals(profile_id,"{profile_id}")') == [bob["data"]["id"]]
    assert listed(sort="-datetime")[0] == bob["data"]["id"]
    bounced = events(client, filter=f'equals(metric_id,"{sandbox.metrics["Bounced Email"]}")').json["data"][0]
    assert bounced["attributes"]["event_properties"]["Bounce Type"] == "hard"
    assert bounced["attributes"]["datetime"] == "2026-04-13T12:00:00+00:00"
    assert bounced["attributes"]["timestamp"] == int(base.timestamp())


def test_events_page_with_cursor_links_and_include_profiles(client: Client) -> None:
    for i in range(5):
        emit(client, "Opened Email", f"p{i}@example.com")
    first = events(client, **{"page[size]": "2", "include": "profile,metric", "fields[profile]": "email"}).json
    assert len(first["data"]) == 2 and "prev" not in first["links"]
    emails = {p["attributes"]["email"] for p in first["included"] if p["type"] == "profile"}
    assert emails == {"p0@example.com", "p1@example.com"}
    assert all(set(p["attributes"]) == {"email"} for p in first["included"] if p["type"] == "profile")
    assert [m["attributes"]["name"] for m in first["included"] if m["type"] == "metric"] == ["Opened Email"]
    seen = [e["id"] for e in first["data"]]
    link = first["links"]["next"]
    while link:
        url = httpx.URL(link)
        page = events(client, **dict(url.params)).json
        seen += [e["id"] for e in page["data"]]
        assert page["links"]["prev"]
        link = page["links"].get("next")
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"filter": "has(profile)"}, "filter"),
        ({"filter": 'equals(metric_id,"a"),nonsense'}, "filter"),
        ({"filter": "greater-than(datetime,'2026-01-01T00:00:00+00:00')"}, "filter"),  # datetimes go unquoted
        ({"filter": "greater-than(datetime,yesterday)"}, "filter"),
        ({"filter": 'equals(email,"a@b.c")'}, "filter"),
        ({"sort": "name"}, "sort"),
        ({"include": "attributions"}, "include"),
        ({"page[size]": "0"}, "page[size]"),
        ({"page[size]": "1001"}, "page[size]"),
        ({"page[size]": "x"}, "page[size]"),
        ({"page[cursor]": "garbage!"}, "page[cursor]"),
    ],
)
def test_event_queries_outside_the_spec_are_400(client: Client, query: dict[str, str], parameter: str) -> None:
    assert error(events(client, **query), 400, parameter)


def test_events_need_the_api_key(client: Client) -> None:
    assert client.get("/api/events").status_code == 401
    assert client.get("/api/events", headers={"Authorization": HEADERS["Authorization"]}).status_code == 400


# --- POST /_sandbox/engagement: signed webhooks --------------------------------------------------------------------


def test_engagement_is_delivered_signed_as_klaviyo_signs(
    client: Client, sandbox: KlaviyoSandbox, received: list[httpx.Request]
) -> None:
    webhook_id = webhook(client)
    before = dt.datetime.now(dt.UTC)
    sent = emit(client, "Bounced Email", bounce_type="hard", properties={"Subject": "Hello"})
    assert sent["topic"] == "event:klaviyo.bounced_email"
    ((delivery,),) = [sent["deliveries"]]
    assert (delivery["delivered"], delivery["status"], delivery["attempts"]) == (True, 200, 1)
    (request,) = received
    assert str(request.url) == "https://shop.example/webhooks/klaviyo/1" and request.method == "POST"
    raw, headers = request.content, request.headers
    assert headers["Content-Type"] == "application/json" and headers["Klaviyo-Webhook-Id"] == webhook_id
    timestamp = headers["Klaviyo-Timestamp"]
    assert abs(email.utils.parsedate_to_datetime(timestamp) - before) < dt.timedelta(seconds=5)  # an HTTP-date
    expected = hmac.new(SECRET.encode(), raw + timestamp.encode(), hashlib.sha256).hexdigest()
    assert headers["Klaviyo-Signature"] == expected
    body = json.loads(raw)
    assert body["meta"]["klaviyo_webhook_id"] == webhook_id and body["meta"]["klaviyo_account_id"]
    assert abs(dt.datetime.fromisoformat(body["meta"]["timestamp"]) - before) < dt.timedelta(seconds=5)
    (item,) = body["data"]
    assert (item["topic"], item["external_id"]) == ("event:klaviyo.bounced_email", sent["data"]["id"])
    event = item["payload"]["data"]
    assert event == sent["data"] and event["attributes"]["event_properties"]["Subject"] == "Hello"
    load_operations()["get_events"].response_validators["200"].validate({"data": [event]})  # the Get Event shape


def test_engagement_changes_the_profile_as_klaviyo_does(client: Client, sandbox: KlaviyoSandbox) -> None:
    emit(client, "Opened Email", "new@example.com")  # an unknown email gets a profile
    emit(client, "Unsubscribed from Email Marketing", "ann@example.com")
    emit(client, "Bounced Email", "bob@example.com", bounce_type="hard")
    emit(client, "Bounced Email", "eve@example.com", bounce_type="soft")
    emit(client, "Marked Email as Spam", "eve@example.com")
    state = sandbox.state()
    by_email = {p["attributes"]["email"]: p["id"] for p in state["profiles"]}
    assert set(by_email) == {"new@example.com", "ann@example.com", "bob@example.com", "eve@example.com"}
    assert state["suppressions"] == {
        by_email["ann@example.com"]: ["UNSUBSCRIBE"],
        by_email["bob@example.com"]: ["HARD_BOUNCE"],
        by_email["eve@example.com"]: ["SPAM_REPORT"],
    }
    assert state["subscriptions"] == {by_email["ann@example.com"]: {"email": "UNSUBSCRIBED"}}
    unsubscribed = [e for e in state["events"] if e["metric"] == "Unsubscribed from Email Marketing"]
    assert unsubscribed[0]["properties"]["email_address"] == "ann@example.com"


def test_only_subscribed_enabled_webhooks_get_a_delivery(client: Client, received: list[httpx.Request]) -> None:
    opened_only = webhook(client, topics=("event:klaviyo.opened_email",))
    both = webhook(client, "https://other.example/hook", ("event:klaviyo.opened_email", "event:klaviyo.clicked_email"))
    assert {d["webhook_id"] for d in emit(client, "Opened Email")["deliveries"]} == {opened_only, both}
    assert [d["webhook_id"] for d in emit(client, "Clicked Email")["deliveries"]] == [both]
    assert emit(client, "Received Email")["deliveries"] == []
    assert len(received) == 3
    listed = client.get("/_sandbox/webhook-deliveries", query_string={"webhook_id": both}).json["deliveries"]
    assert [d["topic"] for d in listed] == ["event:klaviyo.opened_email", "event:klaviyo.clicked_email"]
    assert all(d["body"] and d["headers"]["Klaviyo-Signature"] for d in listed)


def test_background_delivery_answers_202_and_retries_within_bounds(client: Client, sandbox: KlaviyoSandbox) -> None:
    calls: list[int] = []

    def down_then_up(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(429 if len(calls) == 2 else 204)

    sandbox.engagement.transport = httpx.MockTransport(down_then_up)
    webhook(client)
    sent = emit(client, "Opened Email", background=True)
    sandbox.engagement.join()
    (delivery,) = client.get("/_sandbox/webhook-deliveries", query_string={"event_id": sent["data"]["id"]}).json[
        "deliveries"
    ]
    assert [a["status"] for a in delivery["attempts"]] == [None, 429, 204]
    assert delivery["attempts"][0]["error"].startswith("ConnectError") and delivery["delivered"]
    sandbox.engagement.transport = httpx.MockTransport(lambda request: httpx.Response(400))
    (refused,) = emit(client, "Opened Email")["deliveries"]
    assert (refused["attempts"], refused["delivered"]) == (1, False)  # a 4xx other than 429 is not retried


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a@b.c", "metric": "Placed Order"},
        {"email": "a@b.c"},
        {"metric": "Opened Email"},
        {"email": "a@b.c", "metric": "Opened Email", "time": "2026-04-13T12:00:00"},
        {"email": "a@b.c", "metric": "Opened Email", "colour": "red"},
        {"email": "a@b.c", "metric": "Bounced Email", "bounce_type": "medium"},
    ],
)
def test_engagement_requests_are_validated(client: Client, body: dict[str, Any]) -> None:
    assert client.post("/_sandbox/engagement", json=body).status_code == 400


def test_webhooks_need_https_except_on_this_machine_and_reset_forgets_deliveries(
    client: Client, sandbox: KlaviyoSandbox
) -> None:
    with pytest.raises(AssertionError, match="assert 400 == 201"):
        webhook(client, "http://shop.example/hook")
    webhook(client, "http://127.0.0.1:9/webhooks/klaviyo/1")
    emit(client, "Opened Email")
    assert sandbox.webhook_deliveries
    client.post("/_sandbox/reset")
    assert client.get("/_sandbox/webhook-deliveries").json == {"deliveries": []}


# --- Klaviyo's official SDK reading events and metrics from the served sandbox -----------------------------------


@pytest.fixture
def served(sandbox: KlaviyoSandbox) -> Iterator[str]:
    server = SandboxServer(sandbox, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    thread.join(10)


def test_the_official_sdk_reads_metrics_and_pages_of_events(served: str, sandbox: KlaviyoSandbox) -> None:
    from klaviyo_api import KlaviyoAPI
    from openapi_client.api.events_api import EventsApi
    from openapi_client.api.metrics_api import MetricsApi

    with httpx.Client(base_url=served) as http:
        for i in range(3):
            http.post("/_sandbox/engagement", json={"email": f"p{i}@example.com", "metric": "Clicked Email"})
        http.post(
            "/_sandbox/engagement", json={"email": "p0@example.com", "metric": "Bounced Email", "bounce_type": "soft"}
        )
    klaviyo = KlaviyoAPI(DEFAULT_API_KEY, max_retries=1, test_host=served)
    metrics_api: MetricsApi = klaviyo.Metrics
    events_api: EventsApi = klaviyo.Events
    metrics = metrics_api.get_metrics(filter='equals(integration.name,"Klaviyo")')
    by_name = {m.attributes.name: m.id for m in metrics.data}
    assert set(by_name) == {"Clicked Email", "Bounced Email"}
    assert metrics.data[0].attributes.integration["name"] == "Klaviyo"

    clicked = f'equals(metric_id,"{by_name["Clicked Email"]}"),greater-or-equal(datetime,2020-01-01T00:00:00+00:00)'
    page = events_api.get_events(filter=clicked, sort="datetime", include=["profile"], page_size=2)
    seen = [e.id for e in page.data]
    assert len(seen) == 2 and {p["attributes"]["email"] for p in page.included} == {"p0@example.com", "p1@example.com"}
    assert page.data[0].relationships.profile.data.id == page.included[0]["id"]
    following = events_api.get_events(
        filter=clicked, sort="datetime", page_size=2, page_cursor=httpx.URL(page.links.next).params["page[cursor]"]
    )
    seen += [e.id for e in following.data]
    assert len(set(seen)) == 3 and following.links.next is None
    bounce = events_api.get_events(filter=f'equals(metric_id,"{by_name["Bounced Email"]}")')
    assert bounce.data[0].attributes.event_properties["Bounce Type"] == "soft"
    requests = sandbox.state()["requests"]["by_operation"]
    assert requests["get_events"] == 3 and requests["get_metrics"] == 1
