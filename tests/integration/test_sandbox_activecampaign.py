"""The ActiveCampaign part of the ESP sandbox (connector/sandbox/activecampaign.py): every route, its error answers
and limits, faults, webhook deliveries to a real loopback receiver, the composite app, the contract helper on the
example bodies, and activecampaign-python as an independent client against the sandbox served over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import pytest
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request, Response

from connector.sandbox import (
    DEFAULT_ACTID,
    DEFAULT_API_TOKEN,
    DEFAULT_EVENT_KEY,
    ActiveCampaignSandbox,
    KlaviyoSandbox,
    Sandbox,
    SandboxServer,
)
from connector.sandbox.activecampaign import OPERATIONS, ROUTES
from tests.contract.activecampaign import EXAMPLE_OPERATIONS, example, operation_name, validate_request

H = {"Api-Token": DEFAULT_API_TOKEN}
ADMIN = "/_sandbox/activecampaign"


class Clock:
    """A fake monotonic clock: ``step`` seconds pass at each reading (0: it stands still until moved)."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(step=1.0)  # every reading in a new 1 s window: tests not about the rate limit never hit it


@pytest.fixture
def sandbox(clock: Clock) -> ActiveCampaignSandbox:
    return ActiveCampaignSandbox(clock=clock)


@pytest.fixture
def client(sandbox: ActiveCampaignSandbox) -> Client:
    return Client(sandbox)


def post(client: Client, path: str, body: Any, **kw: Any) -> TestResponse:
    return client.post(path, data=json.dumps(body), headers=kw.pop("headers", H), content_type="application/json")


def put(client: Client, path: str, body: Any) -> TestResponse:
    return client.put(path, data=json.dumps(body), headers=H, content_type="application/json")


def sync(client: Client, email: str, **fields: Any) -> dict[str, Any]:
    response = post(client, "/api/3/contact/sync", {"contact": {"email": email, **fields}})
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    contact: dict[str, Any] = response.json["contact"]
    return contact


def make_list(client: Client, name: str = "Newsletter") -> str:
    body = {"list": {"name": name, "stringid": name.lower(), "sender_url": "https://x.test", "sender_reminder": "r"}}
    response = post(client, "/api/3/lists", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.json["list"]["id"])


def make_field(client: Client, title: str = "Tier") -> str:
    response = post(client, "/api/3/fields", {"field": {"title": title, "type": "text"}})
    assert response.status_code == 201
    return str(response.json["field"]["id"])


def set_status(client: Client, contact: str, list_id: str, status: int) -> TestResponse:
    return post(client, "/api/3/contactLists", {"contactList": {"list": list_id, "contact": contact, "status": status}})


def track(client: Client, **form: str) -> TestResponse:
    fields = {"actid": DEFAULT_ACTID, "key": DEFAULT_EVENT_KEY, "event": "viewed", "visit": '{"email": "a@x.test"}'}
    return client.post("/event", data={**fields, **form})


def bulk(client: Client, contacts: list[dict[str, Any]]) -> TestResponse:
    return post(client, "/api/3/import/bulk_import", {"contacts": contacts})


# ---- gates --------------------------------------------------------------------------------------------------


def test_every_answer_is_labelled_and_the_token_is_checked(client: Client) -> None:
    for response in (
        post(client, "/api/3/contact/sync", {"contact": {"email": "a@x.test"}}),
        post(client, "/api/3/contact/sync", {"contact": {"email": "a@x.test"}}, headers={}),
        post(client, "/api/3/contact/sync", {"contact": {"email": "a@x.test"}}, headers={"Api-Token": "wrong"}),
        client.get("/api/3/nothing", headers=H),
        client.patch("/api/3/contact/sync", headers=H),
        client.get(f"{ADMIN}/state"),
    ):
        assert response.headers["X-Espbridge-Sandbox"] == "activecampaign"
    assert post(client, "/api/3/contact/sync", {"contact": {"email": "a@x.test"}}, headers={}).status_code == 403
    wrong = post(client, "/api/3/contact/sync", {"contact": {"email": "a@x.test"}}, headers={"Api-Token": "nope"})
    assert (wrong.status_code, wrong.json) == (403, {"message": "Forbidden"})
    assert client.get("/api/3/nothing", headers=H).status_code == 404
    assert client.patch("/api/3/contact/sync", headers=H).status_code == 405


def test_several_tokens_are_accepted(clock: Clock) -> None:
    client = Client(ActiveCampaignSandbox(api_tokens=("t1", "t2"), clock=clock))
    for token in ("t1", "t2"):
        assert client.get("/api/3/lists", headers={"Api-Token": token}).status_code == 200
    assert client.get("/api/3/lists", headers=H).status_code == 403


def test_bodies_are_validated_against_the_spec_with_ac_error_shape(client: Client) -> None:
    missing = post(client, "/api/3/contact/sync", {"contact": {"firstName": "A"}})
    assert missing.status_code == 422
    assert missing.json["errors"][0]["source"] == {"pointer": "/contact/email"}
    assert {"title", "detail", "code", "source"} <= set(missing.json["errors"][0])
    assert post(client, "/api/3/contact/sync", {}).status_code == 422  # the wrapper object is required
    bad_json = client.post("/api/3/contact/sync", data="{", headers=H, content_type="application/json")
    assert (bad_json.status_code, bad_json.json) == (400, {})
    no_sender = post(client, "/api/3/lists", {"list": {"name": "N", "stringid": "n", "sender_reminder": "r"}})
    assert no_sender.status_code == 422 and no_sender.json["errors"][0]["source"]["pointer"] == "/list/sender_url"


# ---- contacts ----------------------------------------------------------------------------------------------


def test_contact_sync_upserts_by_email_with_inline_field_values(client: Client) -> None:
    field = make_field(client)
    body = {"contact": {"email": "Sarah@X.test", "firstName": "Sarah", "fieldValues": [{"field": field, "value": "g"}]}}
    created = post(client, "/api/3/contact/sync", body)
    assert created.status_code == 201
    cid = created.json["contact"]["id"]
    assert isinstance(cid, str) and created.json["fieldValues"][0]["value"] == "g"
    updated = post(client, "/api/3/contact/sync", {"contact": {"email": "sarah@x.test", "lastName": "Mason"}})
    assert updated.status_code == 200 and updated.json["contact"]["id"] == cid
    assert updated.json["contact"]["firstName"] == "Sarah" and updated.json["contact"]["lastName"] == "Mason"
    unknown = post(client, "/api/3/contact/sync", {"contact": {"email": "b@x.test", "fieldValues": [{"field": "99"}]}})
    assert (
        unknown.status_code == 422 and unknown.json["errors"][0]["source"]["pointer"] == "/contact/fieldValues/0/field"
    )

    found = client.get("/api/3/contacts?email=SARAH@x.test", headers=H).json
    assert [c["id"] for c in found["contacts"]] == [cid] and found["meta"]["total"] == "1"
    assert client.get("/api/3/contacts?email=none@x.test", headers=H).json["contacts"] == []
    one = client.get(f"/api/3/contacts/{cid}", headers=H)
    assert one.status_code == 200 and one.json["contact"]["email"] == "Sarah@X.test"
    values = client.get(f"/api/3/contacts/{cid}/fieldValues", headers=H).json["fieldValues"]
    assert [(v["field"], v["value"]) for v in values] == [(field, "g")]
    assert client.delete(f"/api/3/contacts/{cid}", headers=H).status_code == 200
    gone = client.get(f"/api/3/contacts/{cid}", headers=H)
    assert gone.status_code == 404 and gone.json["errors"][0]["status"] == 404
    assert client.get(f"/api/3/contacts/{cid}/contactLists", headers=H).status_code == 404


# ---- lists, tags, fields --------------------------------------------------------------------------------------


def test_list_status_keeps_dates_and_source_and_allows_resubscribing(client: Client) -> None:
    list_id = make_list(client)
    assert [lst["id"] for lst in client.get("/api/3/lists", headers=H).json["lists"]] == [list_id]
    cid = sync(client, "a@x.test")["id"]
    first = set_status(client, cid, list_id, 1)
    assert first.status_code == 200 and first.json["contactList"]["status"] == "1"
    assert first.json["contactList"]["sdate"]
    off = set_status(client, cid, list_id, 2).json["contactList"]
    assert off["status"] == "2" and off["udate"]
    body = {"contactList": {"list": list_id, "contact": cid, "status": "1", "sourceid": 4}}
    again = post(client, "/api/3/contactLists", body).json["contactList"]
    assert again["status"] == "1" and again["sourceid"] == "4"
    memberships = client.get(f"/api/3/contacts/{cid}/contactLists", headers=H).json["contactLists"]
    assert [(m["list"], m["status"]) for m in memberships] == [(list_id, "1")]
    assert set_status(client, cid, list_id, 5).status_code == 422
    assert set_status(client, "999", list_id, 1).status_code == 404
    assert set_status(client, cid, "999", 1).status_code == 404


def test_tags_search_and_contact_tags(client: Client) -> None:
    created = post(client, "/api/3/tags", {"tag": {"tag": "synced", "tagType": "contact", "description": "d"}})
    assert created.status_code == 201
    tag = created.json["tag"]["id"]
    post(client, "/api/3/tags", {"tag": {"tag": "other", "tagType": "contact"}})
    assert post(client, "/api/3/tags", {"tag": {"tag": "Synced", "tagType": "contact"}}).status_code == 422
    found = client.get("/api/3/tags?search=sync", headers=H).json["tags"]
    assert [t["tag"] for t in found] == ["synced"]
    cid = sync(client, "a@x.test")["id"]
    added = post(client, "/api/3/contactTags", {"contactTag": {"contact": int(cid), "tag": int(tag)}})
    assert added.status_code == 201
    as_strings = post(client, "/api/3/contactTags", {"contactTag": {"contact": cid, "tag": tag}})
    assert as_strings.json["contactTag"]["id"] == added.json["contactTag"]["id"]  # ids as strings, like AC takes
    assert post(client, "/api/3/contactTags", {"contactTag": {"contact": cid, "tag": "99"}}).status_code == 404
    rows = client.get(f"/api/3/contacts/{cid}/contactTags", headers=H).json["contactTags"]
    assert [r["tag"] for r in rows] == [tag]
    assert client.delete(f"/api/3/contactTags/{rows[0]['id']}", headers=H).status_code == 200
    assert client.delete(f"/api/3/contactTags/{rows[0]['id']}", headers=H).status_code == 404
    assert client.get(f"/api/3/contacts/{cid}/contactTags", headers=H).json["contactTags"] == []


def test_fields_field_rels_and_field_values(client: Client) -> None:
    field = make_field(client, "Favourite colour")
    assert [f["id"] for f in client.get("/api/3/fields", headers=H).json["fields"]] == [field]
    list_id = make_list(client)
    rel = post(client, "/api/3/fieldRels", {"fieldRel": {"field": int(field), "relid": int(list_id)}})
    assert rel.status_code == 201 and rel.json["fieldRel"]["relid"] == list_id
    assert post(client, "/api/3/fieldRels", {"fieldRel": {"field": 99, "relid": 0}}).status_code == 422
    cid = sync(client, "a@x.test")["id"]
    body = {"fieldValue": {"contact": cid, "field": field, "value": "Blue"}, "useDefaults": False}
    created = post(client, "/api/3/fieldValues", body)
    assert created.status_code == 200
    fv = created.json["fieldValue"]["id"]
    changed = put(client, f"/api/3/fieldValues/{fv}", {"fieldValue": {"contact": cid, "field": field, "value": "Red"}})
    assert changed.status_code == 200 and changed.json["fieldValue"]["value"] == "Red"
    assert (
        put(client, "/api/3/fieldValues/99", {"fieldValue": {"contact": cid, "field": field, "value": "x"}}).status_code
        == 404
    )
    assert post(client, "/api/3/fieldValues", {"fieldValue": {"contact": cid, "field": field}}).status_code == 422
    values = client.get(f"/api/3/contacts/{cid}/fieldValues", headers=H).json["fieldValues"]
    assert [(v["id"], v["value"]) for v in values] == [(fv, "Red")]


# ---- bulk import ----------------------------------------------------------------------------------------------


def test_bulk_import_creates_contacts_tags_fields_and_subscriptions(client: Client) -> None:
    list_id, field = make_list(client), make_field(client)
    contacts = [
        {
            "email": "a@x.test",
            "first_name": "A",
            "tags": ["vip", "synced"],
            "fields": [{"id": int(field), "value": "gold"}],
            "subscribe": [{"listid": list_id}],
        },
        {"email": "b@x.test", "last_name": "B", "unsubscribe": [{"listid": list_id}]},
    ]
    queued = bulk(client, contacts)
    assert queued.status_code == 200
    assert queued.json["success"] == 1 and queued.json["queued_contacts"] == 2
    assert queued.json["message"] == "Contact import queued"
    info = client.get(f"/api/3/import/info?batchId={queued.json['batchId']}", headers=H).json
    assert info["status"] == "completed" and len(info["success"]) == 2 and info["failure"] == []
    a = client.get("/api/3/contacts?email=a@x.test", headers=H).json["contacts"][0]
    assert a["firstName"] == "A"
    assert sorted(t["tag"] for t in client.get("/api/3/tags", headers=H).json["tags"]) == ["synced", "vip"]
    assert client.get(f"/api/3/contacts/{a['id']}/fieldValues", headers=H).json["fieldValues"][0]["value"] == "gold"
    assert client.get(f"/api/3/contacts/{a['id']}/contactLists", headers=H).json["contactLists"][0]["status"] == "1"
    b = client.get("/api/3/contacts?email=b@x.test", headers=H).json["contacts"][0]
    assert client.get(f"/api/3/contacts/{b['id']}/contactLists", headers=H).json["contactLists"][0]["status"] == "2"
    status = client.get("/api/3/import/bulk_import", headers=H).json
    assert status["outstanding"] == [] and status["recentlyCompleted"][0]["contacts"] == 2
    assert client.get("/api/3/import/info?batchId=nope", headers=H).status_code == 400


def test_an_import_does_not_resubscribe_an_unsubscribed_contact(client: Client) -> None:
    list_id = make_list(client)
    cid = sync(client, "gone@x.test")["id"]
    set_status(client, cid, list_id, 1)
    set_status(client, cid, list_id, 2)
    queued = bulk(client, [{"email": "gone@x.test", "subscribe": [{"listid": list_id}]}])
    info = client.get(f"/api/3/import/info?batchId={queued.json['batchId']}", headers=H).json
    assert info["success"] == [cid]
    assert info["refused_subscriptions"] == [
        {"contact": cid, "email": "gone@x.test", "listid": list_id, "reason": "unsubscribed"}
    ]
    assert client.get(f"/api/3/contacts/{cid}/contactLists", headers=H).json["contactLists"][0]["status"] == "2"
    assert set_status(client, cid, list_id, 1).json["contactList"]["status"] == "1"  # the API may re-subscribe


def test_bulk_import_limits_answer_in_the_bulk_shape(client: Client, sandbox: ActiveCampaignSandbox) -> None:
    too_many = bulk(client, [{"email": f"c{i}@x.test"} for i in range(251)])
    assert too_many.status_code == 400 and too_many.json["success"] == 0
    assert [r["contact"] for r in too_many.json["failureReasons"]] == [250]
    big = [{"email": f"c{i}@x.test", "first_name": "x" * 2_000} for i in range(200)]
    assert len(json.dumps({"contacts": big})) > 400_000
    too_big = bulk(client, big)
    assert too_big.status_code == 400 and "400000" in too_big.json["message"]
    bad = bulk(client, [{"email": "ok@x.test"}, {"email": "not-an-email"}, {"first_name": "no email"}])
    assert bad.status_code == 400 and bad.json["failureReasons"][0]["contact"] == 2  # schema: email required
    invalid = bulk(client, [{"email": "ok@x.test"}, {"email": "not-an-email"}])
    assert [r["contact"] for r in invalid.json["failureReasons"]] == [1]
    assert sandbox.contacts == {}  # nothing of a refused request is imported


def test_bulk_import_batches_process_over_the_job_delay() -> None:
    clock = Clock()
    sandbox = ActiveCampaignSandbox(clock=clock, job_delay=10, time_scale=2)  # 5 s of sandbox clock
    client = Client(sandbox)
    batch = bulk(client, [{"email": "a@x.test"}, {"email": "b@x.test"}]).json["batchId"]
    clock.now += 1
    info = client.get(f"/api/3/import/info?batchId={batch}", headers=H).json
    assert info == {"status": "processing", "success": [], "failure": [], "refused_subscriptions": []}
    assert client.get("/api/3/import/bulk_import", headers=H).json["outstanding"][0]["batches"] == 1
    clock.now += 5
    assert client.get(f"/api/3/import/info?batchId={batch}", headers=H).json["status"] == "completed"


# ---- rate limits --------------------------------------------------------------------------------------------


def test_one_account_budget_of_5_per_second_shared_by_tokens_and_operations() -> None:
    clock = Clock()
    client = Client(ActiveCampaignSandbox(api_tokens=("t1", "t2"), clock=clock))
    answers = [
        client.get("/api/3/lists", headers={"Api-Token": "t1"}),
        client.get("/api/3/tags", headers={"Api-Token": "t2"}),
        client.get("/api/3/fields", headers={"Api-Token": "t1"}),
        client.get("/api/3/webhooks", headers={"Api-Token": "t2"}),
        client.get("/api/3/connections", headers={"Api-Token": "t1"}),
    ]
    assert [a.status_code for a in answers] == [200] * 5 and answers[-1].headers["RateLimit-Remaining"] == "0"
    throttled = client.get("/api/3/lists", headers={"Api-Token": "t2"})
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert throttled.json == {"message": "Too Many Requests"}
    clock.now += 1.0
    assert client.get("/api/3/lists", headers={"Api-Token": "t2"}).status_code == 200


def test_time_scale_shortens_the_window() -> None:
    clock = Clock()
    client = Client(ActiveCampaignSandbox(clock=clock, time_scale=10))
    assert [client.get("/api/3/lists", headers=H).status_code for _ in range(6)] == [200] * 5 + [429]
    clock.now += 0.1  # a tenth of a second is a whole window
    assert client.get("/api/3/lists", headers=H).status_code == 200


def test_trackcmp_is_not_rate_limited(client: Client, clock: Clock) -> None:
    clock.step = 0
    assert all(track(client).status_code == 200 for _ in range(12))


@pytest.mark.parametrize(("size", "per_minute"), [(2, 100), (1, 20)])
def test_bulk_import_per_minute_limits(size: int, per_minute: int) -> None:
    clock = Clock()
    client = Client(ActiveCampaignSandbox(clock=clock))
    for i in range(per_minute):
        clock.now += 0.5  # within 5/s, all inside one minute
        contacts = [{"email": f"c{i}-{j}@x.test"} for j in range(size)]
        assert bulk(client, contacts).status_code == 200, i
    clock.now += 0.5
    throttled = bulk(client, [{"email": f"x{j}@x.test"} for j in range(size)])
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 1
    other = [{"email": f"y{j}@x.test"} for j in range(1 if size == 2 else 2)]
    assert bulk(client, other).status_code == 200  # the other kind has its own window
    clock.now += 60
    assert bulk(client, [{"email": f"z{j}@x.test"} for j in range(size)]).status_code == 200


# ---- event tracking -----------------------------------------------------------------------------------------


def test_trackcmp_records_registered_events_when_tracking_is_enabled(client: Client) -> None:
    cid = sync(client, "a@x.test")["id"]
    assert track(client).json == {"success": 0, "message": "Event tracking is not enabled for this account."}
    assert client.get("/api/3/eventTracking", headers=H).json == {"eventTracking": {"enabled": False}}
    assert put(client, "/api/3/eventTracking", {"eventTracking": {"enabled": True}}).status_code == 200
    assert client.get("/api/3/eventTracking", headers=H).json == {"eventTracking": {"enabled": True}}
    assert track(client).json["success"] == 0  # not registered yet
    assert post(client, "/api/3/eventTrackingEvents", {"eventTrackingEvent": {"name": "viewed"}}).status_code == 201
    assert post(client, "/api/3/eventTrackingEvents", {"eventTrackingEvent": {"name": "viewed"}}).status_code == 422
    assert post(client, "/api/3/eventTrackingEvents", {"eventTrackingEvent": {"name": "x" * 33}}).status_code == 422
    names = client.get("/api/3/eventTrackingEvents", headers=H).json["eventTrackingEvents"]
    assert names == [{"name": "viewed"}]
    spawned = track(client, eventdata="SKU-1")  # form-encoded, no Api-Token
    assert spawned.json == {"success": 1, "message": "Event spawned"}
    state = client.get(f"{ADMIN}/state").json
    assert [(e["event"], e["eventdata"], e["contact"]) for e in state["trackedEvents"]] == [("viewed", "SKU-1", cid)]


def test_trackcmp_refusals(client: Client) -> None:
    put(client, "/api/3/eventTracking", {"eventTracking": {"enabled": True}})
    post(client, "/api/3/eventTrackingEvents", {"eventTrackingEvent": {"name": "viewed"}})
    assert track(client, key="wrong").json["success"] == 0
    assert track(client, actid="1").json["success"] == 0
    assert track(client, event="e" * 33).json == {"success": 0, "message": "event must be at most 32 characters."}
    assert track(client, visit="not json").json["success"] == 0
    as_json = client.post("/event", json={"actid": DEFAULT_ACTID, "key": DEFAULT_EVENT_KEY, "event": "viewed"})
    assert as_json.json["success"] == 0 and "x-www-form-urlencoded" in as_json.json["message"]
    assert track(client).json["success"] == 1


# ---- Deep Data ----------------------------------------------------------------------------------------------


def _deep_data(client: Client) -> tuple[str, str]:
    connection = {"service": "shop", "externalid": "s1", "name": "Shop", "logoUrl": "https://l", "linkUrl": "https://k"}
    created = post(client, "/api/3/connections", {"connection": connection})
    assert created.status_code == 200
    assert post(client, "/api/3/connections", {"connection": connection}).status_code == 422
    conn = created.json["connection"]["id"]
    customer = {"connectionid": conn, "externalid": "c1", "email": "a@x.test", "acceptsMarketing": "1"}
    made = post(client, "/api/3/ecomCustomers", {"ecomCustomer": customer})
    assert made.status_code == 201
    assert post(client, "/api/3/ecomCustomers", {"ecomCustomer": customer}).status_code == 422
    return conn, made.json["ecomCustomer"]["id"]


def _order(conn: str, customer: str, **fields: Any) -> dict[str, Any]:
    products = [{"externalid": "SKU-1", "name": "Shirt", "price": 4200, "quantity": 1}]
    order = {
        "source": 1,
        "email": "a@x.test",
        "orderProducts": products,
        "totalPrice": 4200,
        "currency": "USD",
        "connectionid": int(conn),
        "customerid": int(customer),
        "externalCreatedDate": "2026-11-20T10:00:00-05:00",
    }
    return {"ecomOrder": {**order, **fields}}


def test_connections_customers_and_their_filters(client: Client) -> None:
    conn, customer = _deep_data(client)
    assert [c["id"] for c in client.get("/api/3/connections", headers=H).json["connections"]] == [conn]
    found = client.get(f"/api/3/ecomCustomers?filters[email]=A@x.test&filters[connectionid]={conn}", headers=H)
    assert [c["id"] for c in found.json["ecomCustomers"]] == [customer]
    assert client.get("/api/3/ecomCustomers?filters[connectionid]=99", headers=H).json["ecomCustomers"] == []
    orphan = {"connectionid": "99", "externalid": "c2", "email": "b@x.test"}
    assert post(client, "/api/3/ecomCustomers", {"ecomCustomer": orphan}).status_code == 422


def test_orders_need_an_id_integer_cents_and_no_duplicates(client: Client) -> None:
    conn, customer = _deep_data(client)
    neither = post(client, "/api/3/ecomOrders", _order(conn, customer))
    assert neither.status_code == 422
    products_object = _order(conn, customer, externalid="o0")
    products_object["ecomOrder"]["orderProducts"] = products_object["ecomOrder"]["orderProducts"][0]  # the mirror's
    assert post(client, "/api/3/ecomOrders", products_object).status_code == 422
    assert (
        post(client, "/api/3/ecomOrders", _order(conn, customer, externalid="o1", totalPrice="42.00")).status_code
        == 422
    )
    assert post(client, "/api/3/ecomOrders", _order(conn, customer, externalid="o1", source=3)).status_code == 422
    made = post(client, "/api/3/ecomOrders", _order(conn, customer, externalid="o1"))
    assert made.status_code == 201 and made.json["ecomOrder"]["totalPrice"] == 4200
    duplicate = post(client, "/api/3/ecomOrders", _order(conn, customer, externalid="o1"))
    assert duplicate.status_code == 422 and duplicate.json["errors"][0]["source"]["pointer"] == "/ecomOrder/externalid"
    oid = made.json["ecomOrder"]["id"]
    updated = put(client, f"/api/3/ecomOrders/{oid}", {"ecomOrder": {"totalPrice": 5000}})
    assert updated.status_code == 200 and updated.json["ecomOrder"]["totalPrice"] == 5000
    assert put(client, "/api/3/ecomOrders/99", {"ecomOrder": {"totalPrice": 1}}).status_code == 404
    found = client.get("/api/3/ecomOrders?filters[externalid]=o1", headers=H).json["ecomOrders"]
    assert [o["id"] for o in found] == [oid]


def test_abandoned_cart_then_its_conversion_into_the_order(client: Client) -> None:
    conn, customer = _deep_data(client)
    cart = post(
        client,
        "/api/3/ecomOrders",
        _order(conn, customer, externalcheckoutid="cart-1", abandonedDate="2026-11-20T11:00:00-05:00"),
    )
    assert cart.status_code == 201 and cart.json["ecomOrder"]["abandonedDate"]
    again = post(client, "/api/3/ecomOrders", _order(conn, customer, externalcheckoutid="cart-1"))
    assert again.status_code == 422  # the same cart twice
    order = post(client, "/api/3/ecomOrders", _order(conn, customer, externalid="o-9", externalcheckoutid="cart-1"))
    assert order.status_code == 201
    converted = order.json["ecomOrder"]
    assert converted["id"] == cart.json["ecomOrder"]["id"] and converted["externalid"] == "o-9"
    assert converted["abandonedDate"] is None and converted["abandoned_cart_converted"] is True
    assert len(client.get("/api/3/ecomOrders", headers=H).json["ecomOrders"]) == 1


# ---- faults and inspection ------------------------------------------------------------------------------------


def test_faults_errors_storms_and_the_operations_filter(client: Client) -> None:
    assert client.post(f"{ADMIN}/faults", json={"error_rate": 1, "error_status": 503}).status_code == 200
    assert client.get("/api/3/lists", headers=H).status_code == 503
    assert track(client).status_code == 503
    client.post(f"{ADMIN}/faults", json={"error_rate": 1, "operations": ["sync_contact"]})
    assert client.get("/api/3/lists", headers=H).status_code == 200
    assert post(client, "/api/3/contact/sync", {"contact": {"email": "a@x.test"}}).status_code == 503
    client.post(f"{ADMIN}/faults", json={"storm_429": 2, "storm_retry_after": 7})
    storm = [client.get("/api/3/lists", headers=H) for _ in range(3)]
    assert [s.status_code for s in storm] == [429, 429, 200] and storm[0].headers["Retry-After"] == "7"
    assert client.post(f"{ADMIN}/faults", json={"operations": ["nope"]}).status_code == 400
    assert client.post(f"{ADMIN}/faults", json={"bogus": 1}).status_code == 400
    assert client.post(f"{ADMIN}/faults", json={}).json["error_rate"] == 0


def test_reject_refuses_records_the_way_each_operation_does(client: Client, sandbox: ActiveCampaignSandbox) -> None:
    client.post(f"{ADMIN}/faults", json={"reject": {"emails": ["bad@x.test"], "contains": ["+spam"]}})
    refused = post(client, "/api/3/contact/sync", {"contact": {"email": "BAD@x.test"}})
    assert refused.status_code == 422 and refused.json["errors"][0]["source"]["pointer"] == "/contact/email"
    batch = bulk(client, [{"email": "ok@x.test"}, {"email": "me+spam@x.test"}, {"email": "bad@x.test"}])
    assert batch.status_code == 400 and [r["contact"] for r in batch.json["failureReasons"]] == [1, 2]
    assert sandbox.contacts == {}
    put(client, "/api/3/eventTracking", {"eventTracking": {"enabled": True}})
    post(client, "/api/3/eventTrackingEvents", {"eventTrackingEvent": {"name": "viewed"}})
    assert track(client, visit='{"email": "bad@x.test"}').json["success"] == 0
    assert track(client, visit='{"email": "fine@x.test"}').json["success"] == 1
    client.post(f"{ADMIN}/faults", json={"reject": {"emails": ["bad@x.test"]}, "operations": ["bulk_import"]})
    assert post(client, "/api/3/contact/sync", {"contact": {"email": "bad@x.test"}}).status_code == 201


def test_requests_are_captured_without_secrets_and_reset_forgets(client: Client) -> None:
    sync(client, "a@x.test")
    track(client)
    entries = client.get(f"{ADMIN}/requests").json["requests"]
    assert [e["operation"] for e in entries] == ["sync_contact", "track_event"]
    assert "Api-Token" not in entries[0]["headers"] and entries[0]["body"] == {"contact": {"email": "a@x.test"}}
    assert entries[1]["body"]["key"] == "<redacted>" and entries[1]["body"]["event"] == "viewed"
    only = client.get(f"{ADMIN}/requests?operation=track_event").json["requests"]
    assert len(only) == 1
    state = client.get(f"{ADMIN}/state").json
    assert state["sandbox"] == "activecampaign" and len(state["contacts"]) == 1
    assert client.post(f"{ADMIN}/reset").status_code == 200
    assert client.get(f"{ADMIN}/state").json["contacts"] == []
    index = client.get(f"{ADMIN}/").json
    assert "NOT ActiveCampaign" in index["notice"] and set(index["operations"]) == set(OPERATIONS)


# ---- webhooks -----------------------------------------------------------------------------------------------


class Receiver:
    """A loopback HTTP receiver on 127.0.0.1: records each POST; answers the next of ``statuses`` (then 200)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        raw = request.get_data(as_text=True)
        self.received.append({"path": request.path, "content_type": request.mimetype, "raw": raw})
        status = self.statuses.pop(0) if self.statuses else 200
        return Response("ok", status=status)(environ, start_response)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def hook(client: Client, url: str, events: list[str], sources: list[str]) -> str:
    body = {"webhook": {"name": "h", "url": url, "events": events, "sources": sources}}
    response = post(client, "/api/3/webhooks", body)
    assert response.status_code == 201, response.get_data(as_text=True)
    return str(response.json["webhook"]["id"])


def test_webhook_management(client: Client) -> None:
    events = client.get("/api/3/webhook/events", headers=H).json["webhookEvents"]
    assert {"open", "click", "bounce", "unsubscribe", "subscribe", "sms_unsub"} <= set(events)
    wid = hook(client, "https://hooks.example.com/ac", ["open"], ["public"])
    assert [w["id"] for w in client.get("/api/3/webhooks", headers=H).json["webhooks"]] == [wid]
    bad = post(
        client, "/api/3/webhooks", {"webhook": {"name": "h", "url": "https://h", "events": ["opened"], "sources": []}}
    )
    assert bad.status_code == 422 and bad.json["errors"][0]["source"]["pointer"] == "/webhook/events/0"
    plain = {"webhook": {"name": "h", "url": "http://example.com/x", "events": ["open"], "sources": ["public"]}}
    assert post(client, "/api/3/webhooks", plain).status_code == 422


def test_api_caused_list_changes_fire_form_encoded_webhooks_with_initiated_from_api(
    client: Client, sandbox: ActiveCampaignSandbox, receiver: Receiver
) -> None:
    list_id = make_list(client)
    field = make_field(client, "Tier")
    hook(client, f"{receiver.url}/all", ["subscribe", "unsubscribe"], ["public", "admin", "api", "system"])
    hook(client, f"{receiver.url}/no-api", ["subscribe", "unsubscribe"], ["public", "admin", "system"])
    hook(client, f"{receiver.url}/opens", ["open"], ["api"])
    body = {"contact": {"email": "a@x.test", "firstName": "Ann", "fieldValues": [{"field": field, "value": "gold"}]}}
    cid = post(client, "/api/3/contact/sync", body).json["contact"]["id"]
    set_status(client, cid, list_id, 1)
    set_status(client, cid, list_id, 2)
    set_status(client, cid, list_id, 2)  # no change: nothing fires
    sandbox.emitter.join(10)
    assert [r["path"] for r in receiver.received] == ["/all", "/all"]
    assert {r["content_type"] for r in receiver.received} == {"application/x-www-form-urlencoded"}
    # Deliveries go out on threads, in either order (ActiveCampaign promises no order either)
    forms = {form["type"]: (form, r["raw"]) for r in receiver.received for form in [dict(parse_qsl(r["raw"]))]}
    assert sorted(forms) == ["subscribe", "unsubscribe"]
    (subscribe, _), (unsubscribe, unsubscribe_raw) = forms["subscribe"], forms["unsubscribe"]
    assert subscribe["initiated_from"] == "api"
    assert unsubscribe["initiated_from"] == "api" and unsubscribe["list"] == list_id
    assert unsubscribe["contact[id]"] == cid and unsubscribe["contact[email]"] == "a@x.test"
    assert unsubscribe["contact[first_name]"] == "Ann" and unsubscribe["contact[fields][tier]"] == "gold"
    assert "contact%5Bemail%5D=a%40x.test" in unsubscribe_raw  # bracketed keys, form-encoded
    deliveries = client.get(f"{ADMIN}/webhook-deliveries?type=unsubscribe").json["deliveries"]
    assert len(deliveries) == 1 and deliveries[0]["status"] == 200


def test_engagement_events_go_to_matching_webhooks_and_a_410_deactivates(
    client: Client, sandbox: ActiveCampaignSandbox, receiver: Receiver
) -> None:
    list_id = make_list(client)
    cid = sync(client, "a@x.test")["id"]
    set_status(client, cid, list_id, 1)
    clicks = hook(client, f"{receiver.url}/clicks", ["click", "unsubscribe"], ["public"])
    hook(client, f"{receiver.url}/admin-only", ["click"], ["admin"])
    sandbox.emitter.join(10)
    engagement = {"type": "click", "email": "a@x.test", "link_url": "https://shop.test/p", "campaign_id": "7"}
    answer = client.post(f"{ADMIN}/engagement", json=engagement)
    assert answer.status_code == 201 and [d["status"] for d in answer.json["deliveries"]] == [200]
    click = dict(parse_qsl(receiver.received[-1]["raw"]))
    assert receiver.received[-1]["path"] == "/clicks"
    assert (
        click["type"] == "click" and click["initiated_from"] == "public" and click["link[url]"] == "https://shop.test/p"
    )
    assert click["campaign[id]"] == "7" and click["contact[email]"] == "a@x.test" and click["date_time"]

    receiver.statuses = [410]
    unsub = client.post(f"{ADMIN}/engagement", json={"type": "unsubscribe", "email": "a@x.test", "reason": "too many"})
    assert unsub.json["deliveries"][0]["status"] == 410 and unsub.json["lists"] == [list_id]
    pairs = parse_qsl(receiver.received[-1]["raw"])
    assert ("list[][id]", list_id) in pairs and ("unsubscribe[reason]", "too many") in pairs
    assert client.get(f"/api/3/contacts/{cid}/contactLists", headers=H).json["contactLists"][0]["status"] == "2"
    hooks = {w["id"]: w for w in client.get("/api/3/webhooks", headers=H).json["webhooks"]}
    assert hooks[clicks]["state"] == "inactive"
    count = len(receiver.received)
    assert client.post(f"{ADMIN}/engagement", json=engagement).json["deliveries"] == []  # deactivated, no retry
    assert len(receiver.received) == count
    from_admin = client.post(f"{ADMIN}/engagement", json={**engagement, "initiated_from": "admin"})
    assert len(from_admin.json["deliveries"]) == 1 and receiver.received[-1]["path"] == "/admin-only"
    assert client.post(f"{ADMIN}/engagement", json={"type": "open", "email": "who@x.test"}).status_code == 404
    assert client.post(f"{ADMIN}/engagement", json={"type": "opened", "email": "a@x.test"}).status_code == 400


def test_imports_fire_no_webhooks(client: Client, sandbox: ActiveCampaignSandbox, receiver: Receiver) -> None:
    list_id = make_list(client)
    hook(client, receiver.url, ["subscribe", "unsubscribe"], ["public", "admin", "api", "system"])
    bulk(client, [{"email": "a@x.test", "subscribe": [{"listid": list_id}]}, {"email": "b@x.test"}])
    sandbox.emitter.join(10)
    assert receiver.received == [] and sandbox.webhook_deliveries == []


# ---- the composite app, the contract helper -------------------------------------------------------------------


def test_one_process_serves_both_esps(clock: Clock) -> None:
    client = Client(Sandbox(KlaviyoSandbox(), ActiveCampaignSandbox(clock=clock)))
    assert client.get("/api/3/lists", headers=H).headers["X-Espbridge-Sandbox"] == "activecampaign"
    assert client.post("/event", data={}).headers["X-Espbridge-Sandbox"] == "activecampaign"
    assert client.get(f"{ADMIN}/state").json["sandbox"] == "activecampaign"
    assert client.get("/api/profiles/x").headers["X-Espbridge-Sandbox"] == "klaviyo"
    assert client.get("/_sandbox/state").json["sandbox"] == "klaviyo"
    index = client.get("/_sandbox/")
    assert index.status_code == 200 and index.json["emulates"] == ["klaviyo", "activecampaign"]
    assert index.json["activecampaign"]["admin"] == f"{ADMIN}/" and "NOT ActiveCampaign" in index.json["notice"]


@pytest.mark.parametrize("file_name", sorted(EXAMPLE_OPERATIONS))
def test_the_example_bodies_meet_the_contract_and_the_sandbox(file_name: str, client: Client) -> None:
    operation = EXAMPLE_OPERATIONS[file_name]
    body = example(file_name)
    assert validate_request(operation, body) == []
    if operation == "track_event":
        return
    # The sandbox's own gate takes it too: whatever it answers (the ids in the examples name nothing here), it is
    # not a schema violation.
    rule = next(rule for rule in ROUTES.iter_rules() if rule.endpoint == operation)
    method = next(iter(set(rule.methods or ()) - {"HEAD", "OPTIONS"}))
    answer = client.open(rule.rule, method=method, data=json.dumps(body), headers=H, content_type="application/json")
    assert answer.status_code in (200, 201, 404, 422), answer.get_data(as_text=True)
    if answer.status_code == 422:
        detail = answer.json["errors"][0]["detail"]
        assert "does not exist" in detail, detail


def test_the_contract_helper_catches_what_the_adapter_could_get_wrong() -> None:
    assert operation_name("POST /api/3/contact/sync") == operation_name("POST /contact/sync") == "sync_contact"
    assert operation_name("PUT /api/3/ecomOrders/12") == "update_ecom_order"
    assert operation_name("POST https://trackcmp.net/event") == "track_event"
    order = example("ecomOrders.json")
    mirror_shape = {"ecomOrder": {**order["ecomOrder"], "orderProducts": order["ecomOrder"]["orderProducts"][0]}}
    assert validate_request("create_ecom_order", mirror_shape)  # the mirror's object shape is refused
    no_id = {"ecomOrder": {k: v for k, v in order["ecomOrder"].items() if k != "externalcheckoutid"}}
    assert validate_request("create_ecom_order", no_id)
    both = {"ecomOrder": {**order["ecomOrder"], "externalid": "o-1"}}
    assert validate_request("create_ecom_order", both) == []  # an order completing that cart
    assert validate_request("sync_contact", {"contact": {"email": "a@x.test", "firstname": "typo"}})
    assert validate_request("add_contact_tag", {"contactTag": {"contact": "42", "tag": 7}})  # strict types
    assert validate_request("track_event", {"actid": "1", "key": "k", "event": "e" * 33, "visit": "{}"})
    with pytest.raises(KeyError):
        operation_name("GET /api/3/nothing")


# ---- activecampaign-python (an independent client) over real HTTP -------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, ActiveCampaignSandbox]]:
    sandbox = ActiveCampaignSandbox(clock=Clock(step=1.0))
    server = SandboxServer(Sandbox(KlaviyoSandbox(), sandbox), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url, sandbox
    finally:
        server.shutdown()
        thread.join(5)


def test_activecampaign_python_client_against_the_served_sandbox(served: tuple[str, ActiveCampaignSandbox]) -> None:
    from activecampaign.client import Client as AcClient  # untyped (no py.typed): checked at runtime here

    url, sandbox = served
    ac = AcClient(url, DEFAULT_API_TOKEN)
    field = ac.contacts.create_a_custom_field({"field": {"title": "Tier", "type": "text"}})["field"]["id"]
    made = ac.contacts.create_or_update_contact(
        {"contact": {"email": "sarah@x.test", "firstName": "Sarah", "fieldValues": [{"field": field, "value": "gold"}]}}
    )
    cid = made["contact"]["id"]
    again = ac.contacts.create_or_update_contact({"contact": {"email": "sarah@x.test", "lastName": "Mason"}})
    assert again["contact"]["id"] == cid
    new_list = {"list": {"name": "N", "stringid": "n", "sender_url": "https://x.test", "sender_reminder": "r"}}
    list_id = ac.lists.create_a_list(new_list)["list"]["id"]
    assert [lst["id"] for lst in ac.lists.retrieve_all_lists()["lists"]] == [list_id]
    status = ac.contacts.update_list_status_for_a_contact(
        {"contactList": {"list": list_id, "contact": cid, "status": 1}}
    )
    assert status["contactList"]["status"] == "1"
    tag = ac.tags.create_a_tag({"tag": {"tag": "synced", "tagType": "contact", "description": "d"}})["tag"]["id"]
    linked = ac.contacts.add_a_tag_to_contact({"contactTag": {"contact": cid, "tag": tag}})
    assert linked["contactTag"]["tag"] == tag
    value = ac.contacts.create_a_custom_field_value({"fieldValue": {"contact": cid, "field": field, "value": "bronze"}})
    assert value["fieldValue"]["value"] == "bronze"
    changed = ac.contacts.update_a_custom_field_value_for_contact(
        {"fieldValue": {"contact": cid, "field": field, "value": "silver"}}, value["fieldValue"]["id"]
    )
    assert changed["fieldValue"]["value"] == "silver"
    fetched = ac.contacts.retrieve_a_contact(cid)
    assert fetched["contact"]["lastName"] == "Mason" and [t["tag"] for t in fetched["contactTags"]] == [tag]
    assert [v["value"] for v in fetched["fieldValues"]] == ["silver"]
    refused = AcClient(url, "wrong").contacts.retrieve_a_contact(cid)
    assert refused == {"message": "Forbidden"}  # the client swallows HTTP errors (ESP_NOTES 4.2)
    operations = [e["operation"] for e in sandbox.requests]
    assert operations[:3] == ["create_field", "sync_contact", "sync_contact"]
