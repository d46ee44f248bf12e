"""The adapters' ``mirror_membership`` (issue 7, mirror outward): the calls each ESP gets, their batching, and that
no call touches consent. Klaviyo against a recording transport (every body checked against the vendored spec),
ActiveCampaign against its in-process sandbox (every body checked against its contract)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from connector.esp.base import MembershipChange, SegmentRef
from connector.esp.errors import Transient
from connector.esp.klaviyo_adapter import KlaviyoAdapter
from connector.sandbox.activecampaign import ActiveCampaignSandbox
from connector.store import Contact
from tests.contract.activecampaign import validate_request
from tests.unit.test_activecampaign_adapter import adapter_for, contact, requests
from tests.unit.test_klaviyo_adapter import Recorder, assert_contract, client_for

SCALE = 100


def person(i: int) -> Contact:
    return Contact(id=i, store_id=1, email=f"p{i}@example.com", properties={})


def klaviyo(recorder: Recorder) -> KlaviyoAdapter:
    return KlaviyoAdapter(client_for(recorder), poll_interval=0.0, sleep=lambda s: None)


def answer(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/api/lists":
        return httpx.Response(201, json={"data": {"type": "list", "id": "L1"}})
    if request.url.path == "/api/profile-import":
        email = json.loads(request.content)["data"]["attributes"]["email"]
        return httpx.Response(201, json={"data": {"type": "profile", "id": "new-" + email}})
    return httpx.Response(204)


def ops(recorder: Recorder) -> list[tuple[str, str]]:
    return [(r.method, r.url.path) for r in recorder.requests]


def test_klaviyo_adds_and_removes_by_profile_id_in_batches_of_1000_and_never_subscribes() -> None:
    rec = Recorder(answer)
    changes = [MembershipChange(person(i), True, remote_id=f"P{i}") for i in range(1_500)]
    changes += [MembershipChange(person(i), False, remote_id=f"P{i}") for i in range(1_500, 1_503)]
    outcome = klaviyo(rec).mirror_membership(SegmentRef(7, "VIP", {"list_id": "L9"}), changes)
    assert not outcome.failed and not outcome.rejected and not outcome.skipped and outcome.mirror is None
    path = "/api/lists/L9/relationships/profiles"
    assert ops(rec) == [("POST", path), ("POST", path), ("DELETE", path)] and outcome.requests == 3
    adds = [assert_contract("add_profiles_to_list", r) for r in rec.requests[:2]]
    assert [len(a["data"]) for a in adds] == [1_000, 500] and adds[1]["data"][0] == {"type": "profile", "id": "P1000"}
    removed = assert_contract("remove_profiles_from_list", rec.requests[2])
    assert removed == {"data": [{"type": "profile", "id": f"P{i}"} for i in range(1_500, 1_503)]}
    assert not any("subscri" in r.url.path or "suppress" in r.url.path for r in rec.requests)


def test_klaviyo_creates_the_list_once_and_upserts_unlinked_profiles_without_consent() -> None:
    rec = Recorder(answer)
    changes = [MembershipChange(person(1), True), MembershipChange(person(2), True, remote_id="P2")]
    outcome = klaviyo(rec).mirror_membership(SegmentRef(7, "VIP"), changes)
    assert outcome.mirror == {"list_id": "L1"} and not outcome.failed and outcome.requests == 3
    assert ops(rec) == [
        ("POST", "/api/profile-import"),
        ("POST", "/api/lists"),
        ("POST", "/api/lists/L1/relationships/profiles"),
    ]
    upsert = assert_contract("create_or_update_profile", rec.requests[0])
    assert "subscriptions" not in json.dumps(upsert)  # the profile only: consent is never part of the mirror
    created = assert_contract("create_list", rec.requests[1])
    assert created["data"]["attributes"] == {"name": "espbridge: VIP", "opt_in_process": "single_opt_in"}
    added = assert_contract("add_profiles_to_list", rec.requests[2])
    assert added == {"data": [{"type": "profile", "id": "new-p1@example.com"}, {"type": "profile", "id": "P2"}]}


def test_klaviyo_without_a_list_yet_makes_no_request_to_remove() -> None:
    rec = Recorder(answer)
    outcome = klaviyo(rec).mirror_membership(SegmentRef(7, "VIP"), [MembershipChange(person(1), False, "P1")])
    assert rec.requests == [] and outcome.requests == 0 and outcome.mirror is None
    assert not outcome.failed and not outcome.skipped and not outcome.rejected  # done: nobody is on a list not made


def test_klaviyo_skips_contacts_without_an_identifier_and_fails_the_rest_on_an_outage() -> None:
    anonymous = Contact(id=3, store_id=1, properties={})
    rec = Recorder(lambda r: httpx.Response(503, json={"errors": []}))
    changes = [MembershipChange(anonymous, True), MembershipChange(person(1), True, remote_id="P1")]
    outcome = klaviyo(rec).mirror_membership(SegmentRef(7, "VIP", {"list_id": "L9"}), changes)
    assert set(outcome.skipped) == {0} and outcome.failed == {1} and outcome.error is not None


def test_klaviyo_an_outage_while_upserting_fails_every_change_that_was_not_sent() -> None:
    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/profile-import" and b"p2@" in request.content:
            return httpx.Response(503, json={"errors": []})
        return answer(request)

    rec = Recorder(flaky)
    changes = [
        MembershipChange(person(0), True, remote_id="P0"),
        MembershipChange(person(1), True),
        MembershipChange(person(2), True),
        MembershipChange(person(3), False),
    ]
    outcome = klaviyo(rec).mirror_membership(SegmentRef(7, "VIP", {"list_id": "L9"}), changes)
    # No list call went out, so none of them is done: the one with a known id and the one upserted before the
    # outage are retried with the rest.
    assert ops(rec) == [("POST", "/api/profile-import"), ("POST", "/api/profile-import")]
    assert outcome.failed == {0, 1, 2, 3} and outcome.error is not None and outcome.requests == 2


@pytest.fixture
def sandbox() -> Iterator[ActiveCampaignSandbox]:
    app = ActiveCampaignSandbox(time_scale=SCALE)
    yield app
    broken = [
        (e["operation"], validate_request(e["operation"], e["body"]))
        for e in app.requests
        if e["body"] is not None and e["method"] in ("POST", "PUT")
    ]
    assert [b for b in broken if b[1]] == []


def test_activecampaign_tags_map_outcomes_back_to_the_changes_in_their_order(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    adapter.upsert_profiles([contact(1), contact(2)], bulk=False)
    changes = [
        MembershipChange(contact(1), False),
        MembershipChange(contact(3), True),  # not in ActiveCampaign yet: retried, the profile sync adds it
        MembershipChange(contact(2), True),
    ]
    outcome = adapter.mirror_membership(SegmentRef(7, "VIP", {"tag": "Very important"}), changes)
    assert outcome.failed == {1} and isinstance(outcome.error, Transient) and not outcome.skipped
    assert not outcome.rejected
    [tag] = sandbox.tags.values()
    two = sandbox.contact_by_email("p2@example.com")["id"]  # type: ignore[index]
    assert tag["tag"] == "espbridge: Very important"
    assert [(ct["contact"], ct["tag"]) for ct in sandbox.contact_tags.values()] == [(two, tag["id"])]
    assert not requests(sandbox, "update_list_status")  # tags never touch a list (nor consent)
