"""The Klaviyo sandbox in-process (werkzeug's test Client): auth, revision, schema errors with pointers, upserts,
unique_id dedupe, bulk jobs, rate limits and faults. Every 2xx body is also checked against the response schema of
its operation in Klaviyo's spec. The real-process test (and the official SDK against it) is in
tests/e2e/test_sandbox_process.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from connector.sandbox import DEFAULT_API_KEY, KlaviyoSandbox
from connector.sandbox.spec import load_operations

HEADERS = {"Authorization": f"Klaviyo-API-Key {DEFAULT_API_KEY}", "revision": "2026-07-15"}
PATHS = {
    "create_or_update_profile": ("POST", "/api/profile-import"),
    "create_profile": ("POST", "/api/profiles"),
    "create_event": ("POST", "/api/events"),
    "bulk_create_events": ("POST", "/api/event-bulk-create-jobs"),
    "bulk_import_profiles": ("POST", "/api/profile-bulk-import-jobs"),
    "bulk_subscribe_profiles": ("POST", "/api/profile-subscription-bulk-create-jobs"),
    "bulk_unsubscribe_profiles": ("POST", "/api/profile-subscription-bulk-delete-jobs"),
    "bulk_suppress_profiles": ("POST", "/api/profile-suppression-bulk-create-jobs"),
    "bulk_unsuppress_profiles": ("POST", "/api/profile-suppression-bulk-delete-jobs"),
    "create_list": ("POST", "/api/lists"),
    "create_webhook": ("POST", "/api/webhooks"),
    "request_profile_deletion": ("POST", "/api/data-privacy-deletion-jobs"),
}


@pytest.fixture
def sandbox() -> KlaviyoSandbox:
    return KlaviyoSandbox()


@pytest.fixture
def client(sandbox: KlaviyoSandbox) -> Client:
    return Client(sandbox)


def call(
    client: Client, operation: str, body: Any = None, *, path: str | None = None, headers: dict[str, str] | None = None
) -> TestResponse:
    method, default_path = PATHS.get(operation, ("GET", ""))
    response = client.open(
        path or default_path,
        method=method if path is None or operation in PATHS else "GET",
        data=None if body is None else json.dumps(body),
        headers=HEADERS if headers is None else headers,
        content_type="application/vnd.api+json",
    )
    assert response.headers["X-Espbridge-Sandbox"] == "klaviyo"
    validator = load_operations()[operation].response_validators.get(str(response.status_code))
    if validator is not None:  # the sandbox answers in the shape Klaviyo's spec promises
        validator.validate(response.json)
    return response


def error(response: TestResponse) -> dict[str, Any]:
    errors = response.json["errors"]
    assert len(errors) == 1
    assert {"id", "status", "code", "title", "detail", "source"} <= set(errors[0])
    assert errors[0]["status"] == response.status_code
    return dict(errors[0])


def profile(**attributes: Any) -> dict[str, Any]:
    return {"data": {"type": "profile", "attributes": attributes}}


def event(email: str, metric: str, unique_id: str | None, **extra: Any) -> dict[str, Any]:
    attributes = {
        "properties": {"sku": "SKU-1"},
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
        **extra,
    }
    if unique_id is not None:
        attributes["unique_id"] = unique_id
    return {"data": {"type": "event", "attributes": attributes}}


def bulk_events(*entries: tuple[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """``bulk_events(("a@x", [("Placed Order", "u1"), …]), …)``: one events-bulk-create entry per profile."""
    data = [
        {
            "type": "event-bulk-create",
            "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
                "events": {
                    "data": [
                        {
                            "type": "event",
                            "attributes": {
                                "properties": {},
                                "unique_id": unique_id,
                                "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
                            },
                        }
                        for metric, unique_id in events
                    ]
                },
            },
        }
        for email, events in entries
    ]
    return {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": data}}}}


def bulk_import(*emails: str, lists: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    body: dict[str, Any] = {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {
                "profiles": {"data": [{"type": "profile", "attributes": {"email": e}} for e in emails]},
            },
        }
    }
    if lists:
        body["data"]["relationships"] = {"lists": {"data": [{"type": "list", "id": lid} for lid in lists]}}
    return body


def create_list(client: Client, name: str = "Synced: VIP") -> str:
    response = call(client, "create_list", {"data": {"type": "list", "attributes": {"name": name}}})
    assert response.status_code == 201
    return str(response.json["data"]["id"])


def state(client: Client) -> dict[str, Any]:
    response = client.get("/_sandbox/state")
    assert response.status_code == 200
    return dict(response.json)


# ---- the gates every request passes -------------------------------------------------------------------------


def test_missing_or_wrong_api_key_is_401_in_klaviyos_error_format(client: Client) -> None:
    body = profile(email="ann@example.com")
    missing = call(client, "create_or_update_profile", body, headers={"revision": "2026-07-15"})
    assert missing.status_code == 401
    assert error(missing)["code"] == "not_authenticated"
    wrong = call(
        client,
        "create_or_update_profile",
        body,
        headers={"revision": "2026-07-15", "Authorization": "Klaviyo-API-Key x"},
    )
    assert wrong.status_code == 401
    assert error(wrong)["code"] == "authentication_failed"
    bearer = {"revision": "2026-07-15", "Authorization": f"Bearer {DEFAULT_API_KEY}"}
    assert call(client, "create_or_update_profile", body, headers=bearer).status_code == 401
    assert state(client)["profiles"] == []


def test_only_the_keys_the_sandbox_was_started_with_are_accepted() -> None:
    client = Client(KlaviyoSandbox(api_keys=["pk_one"]))
    ok = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_one"}
    assert call(client, "create_or_update_profile", profile(email="a@example.com"), headers=ok).status_code == 201
    assert call(client, "create_or_update_profile", profile(email="a@example.com")).status_code == 401


@pytest.mark.parametrize("revision", [None, "", "latest", "2026-13-45", "2026-07-15.beta"])
def test_a_missing_or_malformed_revision_is_400(client: Client, revision: str | None) -> None:
    headers = {"Authorization": HEADERS["Authorization"]} | ({"revision": revision} if revision is not None else {})
    response = call(client, "create_or_update_profile", profile(email="ann@example.com"), headers=headers)
    assert response.status_code == 400
    assert error(response)["source"] == {"parameter": "revision"}


def test_the_sdk_revision_and_pre_revisions_are_accepted(client: Client) -> None:
    for revision in ("2026-10-15", "2026-07-15.pre"):
        headers = {**HEADERS, "revision": revision}
        assert (
            call(client, "create_or_update_profile", profile(email="a@example.com"), headers=headers).status_code < 300
        )


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        (profile(email=5), "/data/attributes/email"),
        ({"data": {"type": "list", "attributes": {"name": "x"}}}, "/data/type"),
        ({"data": {"type": "profile", "attributes": {"location": {"latitude": []}}}}, "/location/latitude"),
        (None, "/"),
    ],
)
def test_schema_violations_are_400_naming_the_pointer(client: Client, body: Any, pointer: str) -> None:
    response = call(client, "create_or_update_profile", body)
    assert response.status_code == 400
    err = error(response)
    assert err["code"] == "invalid"
    assert err["source"]["pointer"].endswith(pointer)


def test_the_missing_required_member_is_named_by_the_pointer(client: Client) -> None:
    body = event("ann@example.com", "Placed Order", "o1")
    del body["data"]["attributes"]["metric"]
    response = call(client, "create_event", body)
    assert response.status_code == 400
    assert error(response)["source"]["pointer"] == "/data/attributes/metric"


def test_unknown_paths_are_404_and_wrong_methods_405(client: Client) -> None:
    assert client.get("/api/campaigns", headers=HEADERS).status_code == 404
    assert client.put("/api/events", headers=HEADERS).status_code == 405


# ---- profiles -----------------------------------------------------------------------------------------------


def test_profile_import_upserts_201_then_200_and_null_clears(client: Client) -> None:
    created = call(
        client, "create_or_update_profile", profile(email="Ann@Example.com", first_name="Ann", properties={"a": 1})
    )
    assert created.status_code == 201
    pid = created.json["data"]["id"]
    updated = call(client, "create_or_update_profile", profile(email="ann@example.com", first_name=None, last_name="L"))
    assert updated.status_code == 200
    assert updated.json["data"]["id"] == pid
    attributes = updated.json["data"]["attributes"]
    assert (attributes["first_name"], attributes["last_name"], attributes["properties"]) == (None, "L", {"a": 1})
    by_external = call(client, "create_or_update_profile", profile(external_id="cust-1"))
    assert by_external.status_code == 201
    assert by_external.json["data"]["id"] != pid
    assert len(state(client)["profiles"]) == 2


def test_identifiers_of_two_profiles_in_one_upsert_are_a_conflict(client: Client) -> None:
    call(client, "create_or_update_profile", profile(email="a@example.com"))
    call(client, "create_or_update_profile", profile(external_id="cust-b"))
    response = call(client, "create_or_update_profile", profile(email="a@example.com", external_id="cust-b"))
    assert response.status_code == 409


def test_create_profile_with_an_existing_identifier_is_409_with_the_duplicate_id(client: Client) -> None:
    first = call(client, "create_profile", profile(email="ann@example.com"))
    assert first.status_code == 201
    again = call(client, "create_profile", profile(email="ann@example.com", first_name="Other"))
    assert again.status_code == 409
    err = error(again)
    assert err["code"] == "duplicate_profile"
    assert err["meta"]["duplicate_profile_id"] == first.json["data"]["id"]


def test_patch_and_get_profile(client: Client) -> None:
    pid = call(client, "create_profile", profile(email="ann@example.com", properties={"old": 1, "t": ["a"]})).json[
        "data"
    ]["id"]
    body = {
        "data": {
            "type": "profile",
            "id": pid,
            "attributes": {"first_name": "Ann", "properties": {"tier": "gold"}},
            "meta": {"patch_properties": {"unset": "old", "append": {"t": "b"}}},
        }
    }
    patched = client.patch(f"/api/profiles/{pid}", data=json.dumps(body), headers=HEADERS)
    assert patched.status_code == 200
    got = client.get(f"/api/profiles/{pid}?additional-fields[profile]=subscriptions", headers=HEADERS)
    assert got.status_code == 200
    attributes = got.json["data"]["attributes"]
    assert attributes["first_name"] == "Ann"
    assert attributes["properties"] == {"tier": "gold", "t": ["a", "b"]}
    assert attributes["subscriptions"]["email"]["marketing"]["consent"] == "NEVER_SUBSCRIBED"
    assert client.get("/api/profiles/01NOPE", headers=HEADERS).status_code == 404
    mismatch = client.patch("/api/profiles/01OTHER", data=json.dumps(body), headers=HEADERS)
    assert mismatch.status_code == 409


# ---- events ---------------------------------------------------------------------------------------------------


def test_create_event_dedupes_by_unique_id_per_metric_and_profile(client: Client) -> None:
    for _ in range(2):
        response = call(client, "create_event", event("ann@example.com", "Placed Order", "order-1"))
        assert response.status_code == 202
    assert call(client, "create_event", event("ann@example.com", "Viewed Product", "order-1")).status_code == 202
    assert call(client, "create_event", event("ben@example.com", "Placed Order", "order-1")).status_code == 202
    current = state(client)
    assert [(e["metric"], e["unique_id"]) for e in current["events"]] == [
        ("Placed Order", "order-1"),
        ("Viewed Product", "order-1"),
        ("Placed Order", "order-1"),
    ]
    assert current["events_deduplicated"] == 1
    assert len(current["profiles"]) == 2  # create_event creates the profile it names


def test_a_duplicate_unique_id_inside_one_bulk_job_fails_the_whole_request(client: Client) -> None:
    body = bulk_events(
        ("ann@example.com", [("Placed Order", "u1"), ("Placed Order", "u2")]),
        ("ben@example.com", [("Placed Order", "u1"), ("Viewed Product", "u1"), ("Placed Order", "u1")]),
    )
    response = call(client, "bulk_create_events", body)
    assert response.status_code == 400
    pointer = error(response)["source"]["pointer"]
    assert pointer == "/data/attributes/events-bulk-create/data/1/attributes/events/data/2/attributes/unique_id"
    assert state(client)["events"] == [] and state(client)["profiles"] == []  # nothing was processed
    del body["data"]["attributes"]["events-bulk-create"]["data"][1]["attributes"]["events"]["data"][2]
    assert call(client, "bulk_create_events", body).status_code == 202
    assert len(state(client)["events"]) == 4


def test_bulk_events_are_capped_at_1000(client: Client) -> None:
    body = bulk_events(("ann@example.com", [("Viewed Product", f"v{i}") for i in range(1001)]))
    response = call(client, "bulk_create_events", body)
    assert response.status_code == 400
    assert "1000" in error(response)["detail"]


# ---- bulk import, consent, lists --------------------------------------------------------------------------


def test_bulk_import_job_status_and_per_record_errors(client: Client) -> None:
    list_id = create_list(client)
    faults = client.post("/_sandbox/faults", json={"reject": {"emails": ["Bad@Example.com"]}})
    assert faults.status_code == 200
    response = call(client, "bulk_import_profiles", bulk_import("a@example.com", "bad@example.com", lists=[list_id]))
    assert response.status_code == 202
    job_id = response.json["data"]["id"]
    job = client.get(f"/api/profile-bulk-import-jobs/{job_id}", headers=HEADERS)
    load_operations()["get_bulk_import_profiles_job"].response_validators["200"].validate(job.json)
    expected = {"status": "complete", "total_count": 2, "completed_count": 1, "failed_count": 1}
    assert {k: job.json["data"]["attributes"][k] for k in expected} == expected
    errors = client.get(f"/api/profile-bulk-import-jobs/{job_id}/import-errors", headers=HEADERS)
    load_operations()["get_errors_for_bulk_import_profiles_job"].response_validators["200"].validate(errors.json)
    [rejected] = errors.json["data"]
    assert rejected["attributes"]["source"]["pointer"].startswith("/data/attributes/profiles/data/1")
    assert rejected["attributes"]["original_payload"] == {"email": "bad@example.com"}
    current = state(client)
    assert [p["attributes"]["email"] for p in current["profiles"]] == ["a@example.com"]
    assert len(current["lists"][list_id]["members"]) == 1
    assert client.get("/api/profile-bulk-import-jobs/nope", headers=HEADERS).status_code == 404


def test_bulk_import_over_10000_profiles_is_400(client: Client) -> None:
    response = call(client, "bulk_import_profiles", bulk_import(*(f"p{i}@example.com" for i in range(10_001))))
    assert response.status_code == 400
    assert error(response)["source"]["pointer"] == "/data/attributes/profiles/data"


def subscription(job: str, email: str, consent: str, **attributes: Any) -> dict[str, Any]:
    marketing: dict[str, Any] = {"consent": consent}
    if "consented_at" in attributes:
        marketing["consented_at"] = attributes.pop("consented_at")
    record = {"type": "profile", "attributes": {"email": email, "subscriptions": {"email": {"marketing": marketing}}}}
    return {"data": {"type": job, "attributes": {"profiles": {"data": [record]}, **attributes}}}


def test_subscribe_unsubscribe_suppress_and_unsuppress(client: Client) -> None:
    create = "profile-subscription-bulk-create-job"
    assert (
        call(client, "bulk_subscribe_profiles", subscription(create, "a@example.com", "SUBSCRIBED")).status_code == 202
    )
    [ann] = state(client)["profiles"]
    assert state(client)["subscriptions"] == {ann["id"]: {"email": "SUBSCRIBED"}}
    suppress = {
        "data": {
            "type": "profile-suppression-bulk-create-job",
            "attributes": {"profiles": {"data": [{"type": "profile", "attributes": {"email": "a@example.com"}}]}},
        }
    }
    assert call(client, "bulk_suppress_profiles", suppress).status_code == 202
    assert state(client)["suppressions"] == {ann["id"]: ["USER_SUPPRESSED"]}
    suppress["data"]["type"] = "profile-suppression-bulk-delete-job"
    assert call(client, "bulk_unsuppress_profiles", suppress).status_code == 202
    assert state(client)["suppressions"] == {}
    delete = subscription("profile-subscription-bulk-delete-job", "a@example.com", "UNSUBSCRIBED")
    assert call(client, "bulk_unsubscribe_profiles", delete).status_code == 202
    assert state(client)["subscriptions"] == {ann["id"]: {"email": "UNSUBSCRIBED"}}
    assert state(client)["suppressions"] == {ann["id"]: ["UNSUBSCRIBE"]}
    suppress["data"]["type"] = "profile-suppression-bulk-delete-job"  # unsuppress leaves UNSUBSCRIBE
    assert call(client, "bulk_unsuppress_profiles", suppress).status_code == 202
    assert state(client)["suppressions"] == {ann["id"]: ["UNSUBSCRIBE"]}
    assert (
        call(client, "bulk_subscribe_profiles", subscription(create, "a@example.com", "SUBSCRIBED")).status_code == 202
    )
    assert state(client)["suppressions"] == {}  # subscribing clears UNSUBSCRIBE


def test_consented_at_requires_historical_import_and_vice_versa(client: Client) -> None:
    create = "profile-subscription-bulk-create-job"
    without = subscription(create, "a@example.com", "SUBSCRIBED", historical_import=True)
    assert call(client, "bulk_subscribe_profiles", without).status_code == 400
    stray = subscription(create, "a@example.com", "SUBSCRIBED", consented_at="2025-01-01T00:00:00+00:00")
    assert call(client, "bulk_subscribe_profiles", stray).status_code == 400
    both = subscription(
        create, "a@example.com", "SUBSCRIBED", historical_import=True, consented_at="2025-01-01T00:00:00+00:00"
    )
    assert call(client, "bulk_subscribe_profiles", both).status_code == 202
    wrong = subscription(create, "a@example.com", "UNSUBSCRIBED")
    assert call(client, "bulk_subscribe_profiles", wrong).status_code == 400  # the spec's enum


def test_list_membership_add_and_remove(client: Client) -> None:
    list_id = create_list(client)
    pid = call(client, "create_profile", profile(email="a@example.com")).json["data"]["id"]
    members = {"data": [{"type": "profile", "id": pid}]}
    path = f"/api/lists/{list_id}/relationships/profiles"
    assert client.post(path, data=json.dumps(members), headers=HEADERS).status_code == 204
    assert state(client)["lists"][list_id]["members"] == [pid]
    assert client.delete(path, data=json.dumps(members), headers=HEADERS).status_code == 204
    assert state(client)["lists"][list_id]["members"] == []
    unknown = client.post(path, data=json.dumps({"data": [{"type": "profile", "id": "01X"}]}), headers=HEADERS)
    assert unknown.status_code == 400
    assert (
        client.post("/api/lists/nope/relationships/profiles", data=json.dumps(members), headers=HEADERS).status_code
        == 404
    )


def test_data_privacy_deletion_removes_the_profile_and_its_events(client: Client) -> None:
    call(client, "create_event", event("a@example.com", "Placed Order", "o1"))
    body = {
        "data": {
            "type": "data-privacy-deletion-job",
            "attributes": {"profile": {"data": {"type": "profile", "attributes": {"email": "a@example.com"}}}},
        }
    }
    assert call(client, "request_profile_deletion", body).status_code == 202
    current = state(client)
    assert current["profiles"] == [] and current["events"] == []


def test_webhooks_are_stored_https_only_and_listed_without_their_secret(client: Client) -> None:
    body = {
        "data": {
            "type": "webhook",
            "attributes": {"name": "espbridge", "endpoint_url": "https://espbridge.test/hook", "secret_key": "s3"},
            "relationships": {
                "webhook-topics": {"data": [{"type": "webhook-topic", "id": "event:klaviyo.opened_email"}]}
            },
        }
    }
    assert call(client, "create_webhook", body).status_code == 201
    listed = client.get("/api/webhooks", headers=HEADERS)
    assert [w["attributes"]["endpoint_url"] for w in listed.json["data"]] == ["https://espbridge.test/hook"]
    assert "s3" not in listed.get_data(as_text=True)
    sandbox: KlaviyoSandbox = client.application  # type: ignore[assignment]
    assert [w["secret_key"] for w in sandbox.webhook_subscribers("event:klaviyo.opened_email")] == ["s3"]
    body["data"]["attributes"]["endpoint_url"] = "http://espbridge.test/hook"
    assert call(client, "create_webhook", body).status_code == 429  # create_webhook allows 1/s


# ---- rate limits, faults, request log ----------------------------------------------------------------------


def test_burst_window_gives_429_with_retry_after_per_api_key() -> None:
    # time scale 0.01: the 1 s burst window of create_list (10/s) lasts 100 s
    client = Client(KlaviyoSandbox(api_keys=[DEFAULT_API_KEY, "pk_other"], time_scale=0.01))
    for i in range(10):
        assert (
            call(client, "create_list", {"data": {"type": "list", "attributes": {"name": f"l{i}"}}}).status_code == 201
        )
    throttled = call(client, "create_list", {"data": {"type": "list", "attributes": {"name": "l10"}}})
    assert throttled.status_code == 429
    assert error(throttled)["code"] == "throttled"
    assert 95 <= int(throttled.headers["Retry-After"]) <= 100
    other = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_other"}
    assert (
        call(client, "create_list", {"data": {"type": "list", "attributes": {"name": "x"}}}, headers=other).status_code
        == 201
    )
    assert (
        call(client, "create_or_update_profile", profile(email="a@example.com")).status_code == 201
    )  # other operation, own windows


def test_a_large_time_scale_replays_the_windows_fast() -> None:
    # time scale 100: the burst second lasts 10 ms, the steady minute (15/m for create_webhook) 0.6 s
    client = Client(KlaviyoSandbox(time_scale=100))
    body = {
        "data": {
            "type": "webhook",
            "attributes": {"name": "w", "endpoint_url": "https://h.test/", "secret_key": "k"},
            "relationships": {"webhook-topics": {"data": []}},
        }
    }
    statuses = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        statuses.append(call(client, "create_webhook", body).status_code)
        time.sleep(0.012)
    assert statuses.count(201) == 15  # the steady window, not the burst window, ran out
    assert statuses[15:] and set(statuses[15:]) == {429}
    ok = call(client, "create_or_update_profile", profile(email="a@example.com"))
    assert ok.headers["RateLimit-Limit"] == "750"
    assert ok.headers["RateLimit-Remaining"] == "749"


def test_fault_injection_errors_storms_slowness_and_reset(client: Client) -> None:
    body = profile(email="a@example.com")
    client.post("/_sandbox/faults", json={"error_rate": 1.0, "error_status": 502, "operations": ["create_event"]})
    assert call(client, "create_or_update_profile", body).status_code == 201  # not an operation under fault
    assert call(client, "create_event", event("a@example.com", "M", "1")).status_code == 502
    client.post("/_sandbox/faults", json={"storm_429": 2, "storm_retry_after": 7})
    storm = [call(client, "create_or_update_profile", body) for _ in range(3)]
    assert [r.status_code for r in storm] == [429, 429, 200]
    assert storm[0].headers["Retry-After"] == "7"
    client.post("/_sandbox/faults", json={"slow_seconds": 0.2})
    started = time.monotonic()
    assert call(client, "create_or_update_profile", body).status_code == 200
    assert time.monotonic() - started >= 0.2
    client.post("/_sandbox/faults", json={"timeout_rate": 1.0, "timeout_seconds": 0.1})
    assert call(client, "create_or_update_profile", body).status_code == 504
    assert client.post("/_sandbox/faults", json={"bogus": 1}).status_code == 400
    assert client.post("/_sandbox/reset").status_code == 200
    assert state(client)["profiles"] == [] and state(client)["requests"]["total"] == 0
    assert call(client, "create_or_update_profile", body).status_code == 201  # faults are off again


def test_requests_are_captured_without_the_api_key(client: Client) -> None:
    call(client, "create_event", event("a@example.com", "Placed Order", "o1"))
    call(client, "create_or_update_profile", profile(email="a@example.com"))
    log = client.get("/_sandbox/requests?operation=create_event").json["requests"]
    assert len(log) == 1
    assert log[0]["body"]["data"]["attributes"]["unique_id"] == "o1"
    assert log[0]["headers"]["Revision"] == "2026-07-15"
    assert log[0]["status"] == 202
    assert DEFAULT_API_KEY not in client.get("/_sandbox/requests").get_data(as_text=True)
    assert state(client)["requests"]["by_operation"] == {"create_event": 1, "create_or_update_profile": 1}


# ---- per-record rejections (fault "reject") -----------------------------------------------------------------


def reject(client: Client, **rule: Any) -> None:
    operations = rule.pop("operations", None)
    body: dict[str, Any] = {"reject": rule} | ({"operations": operations} if operations else {})
    response = client.post("/_sandbox/faults", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)


def pointers(response: TestResponse) -> list[str]:
    assert response.status_code == 400
    errors = response.json["errors"]
    assert all({"id", "status", "code", "title", "detail", "source"} <= set(e) for e in errors)
    return [e["source"]["pointer"] for e in errors]


def test_a_rejected_single_profile_is_a_400_naming_the_identifier(client: Client) -> None:
    reject(client, contains=["cust-bad"], detail="This external_id is refused.", code="invalid_external_id")
    response = call(client, "create_or_update_profile", profile(email="a@example.com", external_id="CUST-BAD-7"))
    err = error(response)
    assert response.status_code == 400
    assert (err["code"], err["detail"]) == ("invalid_external_id", "This external_id is refused.")
    assert err["source"] == {"pointer": "/data/attributes/external_id"}
    assert call(client, "create_profile", profile(external_id="cust-bad-8")).status_code == 400
    bad_event = event("a@example.com", "Placed Order", "o1")
    bad_event["data"]["attributes"]["profile"]["data"]["attributes"]["external_id"] = "cust-bad-1"
    assert pointers(call(client, "create_event", bad_event)) == ["/data/attributes/profile/data/attributes/external_id"]
    assert state(client)["profiles"] == [] and state(client)["events"] == []
    assert call(client, "create_or_update_profile", profile(email="a@example.com")).status_code == 201


def test_a_rejected_record_in_a_bulk_subscribe_refuses_the_request_naming_each_record(client: Client) -> None:
    reject(client, emails=["b@example.com", "D@example.com"])
    records = [
        {
            "type": "profile",
            "attributes": {"email": email, "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}},
        }
        for email in ("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    ]
    body = {"data": {"type": "profile-subscription-bulk-create-job", "attributes": {"profiles": {"data": records}}}}
    assert pointers(call(client, "bulk_subscribe_profiles", body)) == [
        "/data/attributes/profiles/data/1/attributes/email",
        "/data/attributes/profiles/data/3/attributes/email",
    ]
    assert state(client)["profiles"] == []  # nothing in the request took effect
    body["data"]["attributes"]["profiles"]["data"] = records[::2]
    assert call(client, "bulk_subscribe_profiles", body).status_code == 202
    assert len(state(client)["subscriptions"]) == 2


def test_rejections_in_the_other_batches(client: Client) -> None:
    reject(client, contains=["@blocked."])
    unsubscribe = subscription("profile-subscription-bulk-delete-job", "x@blocked.test", "UNSUBSCRIBED")
    assert pointers(call(client, "bulk_unsubscribe_profiles", unsubscribe)) == [
        "/data/attributes/profiles/data/0/attributes/email"
    ]
    suppress = {
        "data": {
            "type": "profile-suppression-bulk-create-job",
            "attributes": {
                "profiles": {
                    "data": [{"type": "profile", "attributes": {"email": e}} for e in ("ok@x.test", "no@blocked.test")]
                }
            },
        }
    }
    assert pointers(call(client, "bulk_suppress_profiles", suppress)) == [
        "/data/attributes/profiles/data/1/attributes/email"
    ]
    events = bulk_events(("ok@x.test", [("Placed Order", "u1")]), ("no@blocked.test", [("Placed Order", "u2")]))
    assert pointers(call(client, "bulk_create_events", events)) == [
        "/data/attributes/events-bulk-create/data/1/attributes/profile/data/attributes/email"
    ]
    deletion = {
        "data": {
            "type": "data-privacy-deletion-job",
            "attributes": {"profile": {"data": {"type": "profile", "attributes": {"email": "no@blocked.test"}}}},
        }
    }
    assert pointers(call(client, "request_profile_deletion", deletion)) == [
        "/data/attributes/profile/data/attributes/email"
    ]
    assert state(client)["profiles"] == [] and state(client)["events"] == [] and state(client)["jobs"] == {}


def test_list_membership_rejections_point_at_the_profile_id(client: Client) -> None:
    list_id = create_list(client)
    ids = [call(client, "create_profile", profile(email=e)).json["data"]["id"] for e in ("a@x.test", "b@x.test")]
    reject(client, emails=["b@x.test"])
    members = {"data": [{"type": "profile", "id": pid} for pid in ids]}
    response = client.post(f"/api/lists/{list_id}/relationships/profiles", data=json.dumps(members), headers=HEADERS)
    assert pointers(response) == ["/data/1/id"]
    assert state(client)["lists"][list_id]["members"] == []


def test_the_reject_fault_honours_operations(client: Client) -> None:
    reject(client, emails=["a@example.com"], operations=["bulk_subscribe_profiles"])
    assert call(client, "create_or_update_profile", profile(email="a@example.com")).status_code == 201
    body = subscription("profile-subscription-bulk-create-job", "a@example.com", "SUBSCRIBED")
    assert call(client, "bulk_subscribe_profiles", body).status_code == 400


@pytest.mark.parametrize(
    "fault", [{"reject": {"contains": [""]}}, {"reject": {"emails": ["a@x"], "colour": "red"}}, {"reject_emails": []}]
)
def test_malformed_reject_faults_are_refused(client: Client, fault: dict[str, Any]) -> None:
    assert client.post("/_sandbox/faults", json=fault).status_code == 400


# ---- asynchronous jobs --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def job_attributes(client: Client, job_id: str) -> dict[str, Any]:
    response = call(client, "get_bulk_import_profiles_job", path=f"/api/profile-bulk-import-jobs/{job_id}")
    assert response.status_code == 200
    return dict(response.json["data"]["attributes"])


def test_bulk_import_jobs_go_queued_processing_complete_over_the_job_delay() -> None:
    clock = FakeClock()
    # job_delay 10 s at time scale 2: 5 s in all, queued for 2.5 s, then processing for 2.5 s
    client = Client(KlaviyoSandbox(job_delay=10, time_scale=2, clock=clock))
    reject(client, emails=["p1@example.com"])
    posted = call(client, "bulk_import_profiles", bulk_import(*(f"p{i}@example.com" for i in range(10))))
    assert posted.status_code == 202
    job_id = posted.json["data"]["id"]
    counts = ("status", "total_count", "completed_count", "failed_count")
    assert [posted.json["data"]["attributes"][k] for k in counts] == ["queued", 10, 0, 0]
    assert posted.json["data"]["attributes"]["started_at"] is None
    clock.now += 2.4
    assert [job_attributes(client, job_id)[k] for k in counts] == ["queued", 10, 0, 0]
    assert state(client)["profiles"] == []
    clock.now += 0.6  # 3 s: a fifth of the processing time, two records done, the rejected one among them
    attributes = job_attributes(client, job_id)
    assert [attributes[k] for k in counts] == ["processing", 10, 1, 1]
    assert attributes["started_at"] is not None and attributes["completed_at"] is None
    assert len(state(client)["profiles"]) == 1
    errors = client.get(f"/api/profile-bulk-import-jobs/{job_id}/import-errors", headers=HEADERS).json["data"]
    assert [e["attributes"]["original_payload"]["email"] for e in errors] == ["p1@example.com"]
    clock.now += 1.5  # 4.5 s: 80 % processed
    assert [job_attributes(client, job_id)[k] for k in counts] == ["processing", 10, 7, 1]
    clock.now += 0.5
    attributes = job_attributes(client, job_id)
    assert [attributes[k] for k in counts] == ["complete", 10, 9, 1]
    assert attributes["completed_at"] is not None and attributes["expires_at"] > attributes["completed_at"]
    assert len(state(client)["profiles"]) == 9


def test_without_a_job_delay_jobs_are_complete_when_the_post_returns(client: Client) -> None:
    posted = call(client, "bulk_import_profiles", bulk_import("a@example.com"))
    assert posted.json["data"]["attributes"]["status"] == "complete"
    assert posted.json["data"]["attributes"]["completed_count"] == 1


def test_suppression_jobs_take_effect_when_processed() -> None:
    clock = FakeClock()
    client = Client(KlaviyoSandbox(job_delay=4, clock=clock))
    body = {
        "data": {
            "type": "profile-suppression-bulk-create-job",
            "attributes": {"profiles": {"data": [{"type": "profile", "attributes": {"email": "a@example.com"}}]}},
        }
    }
    posted = call(client, "bulk_suppress_profiles", body)
    assert posted.status_code == 202
    job_id = posted.json["data"]["id"]
    assert (posted.json["data"]["attributes"]["status"], posted.json["data"]["attributes"]["completed_count"]) == (
        "queued",
        0,
    )
    assert state(client)["suppressions"] == {}
    clock.now += 4
    current = state(client)
    assert list(current["suppressions"].values()) == [["USER_SUPPRESSED"]]
    assert current["jobs"][job_id]["status"] == "complete" and current["jobs"][job_id]["completed_count"] == 1


def test_espbridge_sandbox_passes_job_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import connector.sandbox
    from connector.sandbox import Sandbox
    from web.cli import main

    started: list[Sandbox] = []

    class Server:
        def __init__(self, app: Sandbox, **_: Any) -> None:
            started.append(app)
            self.url = "http://127.0.0.1:0"

        def serve_forever(self) -> None:
            pass

    monkeypatch.setattr(connector.sandbox, "SandboxServer", Server)
    result = CliRunner().invoke(main, ["sandbox", "--job-delay", "3", "--time-scale", "2"])
    assert result.exit_code == 0, result.output
    assert started[0].klaviyo.job_delay == 1.5  # the process serves both ESPs' parts (connector/sandbox/app.py)
    assert started[0].activecampaign.job_delay == 1.5
    assert CliRunner().invoke(main, ["sandbox", "--job-delay", "-1"]).exit_code == 2


# ---- payload limits -----------------------------------------------------------------------------------------


def test_bulk_payloads_over_5_mb_are_refused_before_anything_is_imported(client: Client) -> None:
    big = "x" * 90_000
    body = bulk_import(*(f"p{i}@example.com" for i in range(56)))
    for record in body["data"]["attributes"]["profiles"]["data"]:
        record["attributes"]["properties"] = {"bio": big}
    assert len(json.dumps(body)) > 5_000_000
    response = call(client, "bulk_import_profiles", body)
    assert pointers(response) == ["/data"]
    assert "5MB" in error(response)["detail"]
    del body["data"]["attributes"]["profiles"]["data"][55]
    assert len(json.dumps(body)) < 5_000_000
    assert call(client, "bulk_import_profiles", body).status_code == 202
    events = bulk_events(*((f"p{i}@example.com", [("Viewed Product", f"v{i}")]) for i in range(56)))
    for entry in events["data"]["attributes"]["events-bulk-create"]["data"]:
        entry["attributes"]["events"]["data"][0]["attributes"]["properties"] = {"bio": big}
    assert pointers(call(client, "bulk_create_events", events)) == ["/data"]
    assert state(client)["events"] == []


def test_single_profile_writes_over_100_kb_are_refused(client: Client) -> None:
    response = call(client, "create_or_update_profile", profile(email="a@example.com", properties={"b": "x" * 100_000}))
    assert pointers(response) == ["/data"]
    assert "100KB" in error(response)["detail"]
    fits = profile(email="a@example.com", properties={"b": "x" * 99_000})
    assert call(client, "create_or_update_profile", fits).status_code == 201


def test_a_bulk_imported_profile_over_100_kb_fails_alone(client: Client) -> None:
    body = bulk_import("a@example.com", "big@example.com", "c@example.com")
    body["data"]["attributes"]["profiles"]["data"][1]["attributes"]["properties"] = {"bio": "x" * 100_000}
    job = call(client, "bulk_import_profiles", body).json["data"]
    assert (job["attributes"]["completed_count"], job["attributes"]["failed_count"]) == (2, 1)
    errors = client.get(f"/api/profile-bulk-import-jobs/{job['id']}/import-errors", headers=HEADERS).json["data"]
    assert [e["attributes"]["source"]["pointer"] for e in errors] == ["/data/attributes/profiles/data/1"]
