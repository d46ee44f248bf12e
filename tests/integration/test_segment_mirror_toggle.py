"""Turning a segment's mirror on and off (issue 7 item 5) through the admin API and the CLI: turning it on for an
evaluated segment backfills exactly its members to that ESP only, turning it off sends nothing more there, and
nobody's consent changes at either sandbox."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient

from connector.store import Database, EspConnection, Segment, SyncItem, SyncKind, utcnow
from connector.tenancy import NewStore
from tests.integration import consent_esps
from tests.integration.test_segment_mirror import (
    ADA,
    BO,
    ac_tagged,
    change,
    consent_calls,
    consents,
    esps,
    klaviyo_lists,
    people,
    settings,
)
from web.cli import main

__all__ = ["esps", "people", "settings"]  # fixtures shared with test_segment_mirror

URL = "/admin/api/segments"


@pytest.fixture
def headers(admin_token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token('marketer')}"}


def evaluated(client: FlaskClient, headers: dict[str, str], name: str, criteria: dict[str, Any]) -> int:
    """A segment created and evaluated (its baseline) before any mirror exists: nothing queued for it."""
    created = client.post(URL, json={"name": name, "criteria": criteria}, headers=headers)
    assert created.status_code == 201, created.json
    assert client.post(f"{URL}/{created.json['id']}/evaluate", headers=headers).status_code == 200
    return int(created.json["id"])


def segment_items(db: Database) -> list[tuple[str, str, str]]:
    with db.reader() as session:
        rows = session.execute(
            sa.select(SyncItem.esp, SyncItem.subject_id, SyncItem.status)
            .where(SyncItem.kind == SyncKind.SEGMENT)
            .order_by(SyncItem.id)
        )
        return [(esp, subject, status) for esp, subject, status in rows]


def test_turning_a_klaviyo_mirror_on_backfills_exactly_the_members_without_subscribing_anyone(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    esps: consent_esps.Esps,
    people: dict[str, int],
    headers: dict[str, str],
) -> None:
    before, calls = consents(esps), consent_calls(esps)
    bo_only = evaluated(client, headers, "Bo", {"email": BO})  # Bo was never asked for consent
    assert segment_items(db) == []

    turned = client.put(f"{URL}/{bo_only}/mirror/klaviyo", json={}, headers=headers)
    assert turned.status_code == 200, turned.json
    assert turned.json["queued"] == 1 and turned.json["segment"]["mirror"] == {"klaviyo": {}}
    assert segment_items(db) == [("klaviyo", f"{bo_only}:{people[BO]}", "pending")]  # that ESP only
    esps.drain(store.id)
    assert klaviyo_lists(esps) == {"espbridge: Bo": [BO]} and ac_tagged(esps) == {}
    assert consents(esps) == before and consent_calls(esps) == calls  # on the list, still not subscribed

    # On again with no options: the list it made is kept, nobody queued twice
    again = client.put(f"{URL}/{bo_only}/mirror/klaviyo", json={}, headers=headers)
    [list_id] = esps.klaviyo.state()["lists"]
    assert again.json["queued"] == 0 and again.json["segment"]["mirror"] == {"klaviyo": {"list_id": list_id}}
    assert client.put(f"{URL}/{bo_only}/mirror/klaviyo", headers=headers).json["queued"] == 0  # no body: {}

    # Another target: the members go to it too (the old list keeps what it has)
    with esps.klaviyo._lock:
        esps.klaviyo.lists["HANDMADE"] = {"name": "Hand made", "opt_in_process": "single_opt_in", "created": ""}
        esps.klaviyo.lists["HANDMADE"]["members"] = set()
    moved = client.put(f"{URL}/{bo_only}/mirror/klaviyo", json={"list_id": "HANDMADE"}, headers=headers)
    assert moved.json["queued"] == 1 and moved.json["segment"]["mirror"] == {"klaviyo": {"list_id": "HANDMADE"}}
    esps.drain(store.id)
    assert klaviyo_lists(esps) == {"espbridge: Bo": [BO], "Hand made": [BO]}
    assert consents(esps) == before and consent_calls(esps) == calls


def test_turning_an_activecampaign_tag_on_backfills_that_esp_only(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    esps: consent_esps.Esps,
    people: dict[str, int],
    headers: dict[str, str],
) -> None:
    before, calls = consents(esps), consent_calls(esps)
    everyone = evaluated(client, headers, "Everyone", {"email": {"exists": True}})
    assert client.put(f"{URL}/{everyone}/mirror/klaviyo", json={}, headers=headers).json["queued"] == 2
    esps.drain(store.id)

    turned = client.put(f"{URL}/{everyone}/mirror/activecampaign", json={"tag": " Big spenders "}, headers=headers)
    assert turned.status_code == 200, turned.json
    assert turned.json["segment"]["mirror"] == {"klaviyo": esps_list(esps), "activecampaign": {"tag": "Big spenders"}}
    assert turned.json["queued"] == 2
    pending = [item for item in segment_items(db) if item[2] == "pending"]
    assert sorted(pending) == sorted(("activecampaign", f"{everyone}:{people[e]}", "pending") for e in (ADA, BO))
    esps.drain(store.id)
    assert ac_tagged(esps) == {"espbridge: Big spenders": [ADA, BO]}
    assert klaviyo_lists(esps) == {"espbridge: Everyone": [ADA, BO]}
    assert consents(esps) == before and consent_calls(esps) == calls


def esps_list(esps: consent_esps.Esps) -> dict[str, str]:
    [list_id] = esps.klaviyo.state()["lists"]
    return {"list_id": list_id}


def test_activecampaign_lists_mode_takes_a_list_id_and_adds_only_the_subscribed(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    esps: consent_esps.Esps,
    people: dict[str, int],
    headers: dict[str, str],
) -> None:
    with db.writer() as session:
        connection = session.scalars(sa.select(EspConnection).where(EspConnection.esp == "activecampaign")).one()
        connection.settings = {**connection.settings, "segment_mirror": "lists"}
        connection.updated_at = utcnow()
    with esps.ac._lock:
        segment_list = esps.ac._next_id("list")
        esps.ac.lists[segment_list] = {"id": segment_list, "name": "VIPs", "stringid": "vips", "channel": "email"}
    before = consents(esps)
    everyone = evaluated(client, headers, "Everyone", {"email": {"exists": True}})
    url = f"{URL}/{everyone}/mirror/activecampaign"

    tag = client.put(url, json={"tag": "x"}, headers=headers)
    assert tag.status_code == 400 and tag.json["field"] == "tag" and "segment_mirror" in tag.json["error"]
    consent_list = client.put(url, json={"list_id": int(esps.email_list)}, headers=headers)
    assert consent_list.status_code == 400 and consent_list.json["field"] == "list_id"
    assert "consent list" in consent_list.json["error"]

    turned = client.put(url, json={"list_id": int(segment_list)}, headers=headers)
    assert turned.status_code == 200, turned.json
    assert turned.json["segment"]["mirror"] == {"activecampaign": {"list_id": segment_list}}
    assert turned.json["queued"] == 2
    esps.drain(store.id)
    assert esps.ac_status(ADA, segment_list) == "1"  # subscribed on email: added
    assert esps.ac_status(BO, segment_list) is None  # never asked: lists mode adds nobody unsubscribed
    assert consents(esps) == before


def test_turned_off_sends_nothing_more_to_that_esp(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    esps: consent_esps.Esps,
    people: dict[str, int],
    headers: dict[str, str],
) -> None:
    everyone = evaluated(client, headers, "Everyone", {"email": {"exists": True}})
    # on, then off before the backfill was sent: the engine skips it
    assert client.put(f"{URL}/{everyone}/mirror/klaviyo", json={}, headers=headers).json["queued"] == 2
    off = client.delete(f"{URL}/{everyone}/mirror/klaviyo", headers=headers)
    assert off.status_code == 200 and off.json["segment"]["mirror"] == {}
    esps.drain(store.id)
    assert [status for *_, status in segment_items(db)] == ["skipped", "skipped"]
    assert klaviyo_lists(esps) == {}

    # on for both, sent; then off for Klaviyo: a later exit reaches ActiveCampaign only
    for esp in ("klaviyo", "activecampaign"):
        assert client.put(f"{URL}/{everyone}/mirror/{esp}", json={}, headers=headers).json["queued"] == 2
    esps.drain(store.id)
    assert klaviyo_lists(esps) == {"espbridge: Everyone": [ADA, BO]}
    assert ac_tagged(esps) == {"espbridge: Everyone": [ADA, BO]}
    assert client.delete(f"{URL}/{everyone}/mirror/klaviyo", headers=headers).status_code == 200
    assert client.delete(f"{URL}/{everyone}/mirror/klaviyo", headers=headers).status_code == 200  # already off
    requests = len(esps.klaviyo.requests)
    assert change(db, store.id, everyone, people[BO], False) == 1  # queued for ActiveCampaign alone
    esps.drain(store.id)
    assert ac_tagged(esps) == {"espbridge: Everyone": [ADA]}
    assert klaviyo_lists(esps) == {"espbridge: Everyone": [ADA, BO]}  # untouched: nothing sent there
    assert len(esps.klaviyo.requests) == requests
    with db.reader() as session:
        assert session.get_one(Segment, everyone).mirror == {"activecampaign": {}}


def test_bad_input_is_a_precise_4xx(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    other_store: NewStore,
    esps: consent_esps.Esps,
    people: dict[str, int],
    headers: dict[str, str],
    admin_token: Callable[..., str],
) -> None:
    vip = evaluated(client, headers, "VIP", {"email": {"exists": True}})
    loyal = evaluated(client, headers, "Loyal", {"email": ADA})
    url = f"{URL}/{vip}/mirror"

    def bad(esp: str, body: Any, field: str, words: str) -> None:
        response = client.put(f"{url}/{esp}", json=body, headers=headers)
        assert (response.status_code, response.json["field"]) == (400, field), response.json
        assert words in response.json["error"]

    bad("mailchimp", {}, "esp", "unknown ESP")
    bad("klaviyo", {"tag": "x"}, "tag", "unknown option for klaviyo")
    bad("klaviyo", {"list_id": "a/b"}, "list_id", "Klaviyo list id")
    bad("klaviyo", {"list_id": 7}, "list_id", "Klaviyo list id")
    bad("klaviyo", [], "body", "JSON object")
    bad("activecampaign", {"list_id": "3"}, "list_id", "mirrors segments as tags")
    bad("activecampaign", {"tag": ""}, "tag", "1 to 200")
    bad("activecampaign", {"colour": "red"}, "colour", "unknown option")
    assert client.put(f"{url}/klaviyo", json={"list_id": "SHARED"}, headers=headers).status_code == 200
    response = client.put(f"{URL}/{loyal}/mirror/klaviyo", json={"list_id": "SHARED"}, headers=headers)
    assert response.status_code == 400 and f"segment {vip} (VIP) already mirrors" in response.json["error"]
    assert client.put(f"{url}/activecampaign", json={}, headers=headers).status_code == 200
    response = client.put(f"{URL}/{loyal}/mirror/activecampaign", json={"tag": "vip"}, headers=headers)
    assert response.status_code == 400 and response.json["field"] == "tag"  # VIP's default tag
    assert f"segment {vip} (VIP) already mirrors to the tag or list 'vip'" in response.json["error"]
    # VIP tagged "Gold" frees its name: Loyal may take it, and VIP's "{}" (keep as is) is no clash
    assert client.put(f"{url}/activecampaign", json={"tag": "Gold"}, headers=headers).status_code == 200
    assert client.put(f"{URL}/{loyal}/mirror/activecampaign", json={"tag": "VIP"}, headers=headers).status_code == 200
    kept = client.put(f"{url}/activecampaign", json={}, headers=headers)
    assert kept.status_code == 200 and kept.json["segment"]["mirror"]["activecampaign"] == {"tag": "Gold"}
    response = client.put(f"{url}/klaviyo", data="nope", headers=headers)
    assert response.status_code == 400 and response.json["field"] == "body"

    # another store: not connected to any ESP, and this store's segments are not found there
    theirs = {"Authorization": f"Bearer {admin_token('marketer', other_store.id)}"}
    created = client.post(URL, json={"name": "Theirs", "criteria": {"email": {"exists": True}}}, headers=theirs)
    response = client.put(f"{URL}/{created.json['id']}/mirror/klaviyo", json={}, headers=theirs)
    assert response.status_code == 400 and response.json["field"] == "esp" and "not connected" in response.json["error"]
    assert client.put(f"{url}/klaviyo", json={}, headers=theirs).status_code == 404
    assert client.delete(f"{url}/klaviyo", headers=theirs).status_code == 404
    assert client.put(f"{URL}/999999/mirror/klaviyo", json={}, headers=headers).status_code == 404
    assert client.delete(f"{URL}/999999/mirror/klaviyo", headers=headers).status_code == 404
    response = client.delete(f"{url}/mailchimp", headers=headers)
    assert response.status_code == 400 and response.json["field"] == "esp"

    viewer = {"Authorization": f"Bearer {admin_token('viewer')}"}
    assert client.put(f"{url}/klaviyo", json={}, headers=viewer).status_code == 403
    assert client.delete(f"{url}/klaviyo", headers=viewer).status_code == 403
    assert client.put(f"{url}/klaviyo", json={}).status_code == 401
    with db.reader() as session:
        assert session.get_one(Segment, vip).mirror == {
            "klaviyo": {"list_id": "SHARED"},
            "activecampaign": {"tag": "Gold"},
        }
        assert session.get_one(Segment, loyal).mirror == {"activecampaign": {"tag": "VIP"}}  # the 400s changed nothing


def test_cli_turns_a_mirror_on_and_off(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    esps: consent_esps.Esps,
    people: dict[str, int],
    headers: dict[str, str],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    everyone = str(evaluated(client, headers, "Everyone", {"email": {"exists": True}}))

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, ["segments", "mirror", everyone, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    out = run("--esp", "activecampaign", "--tag", "All")
    assert out == f'segment {everyone} mirrored to activecampaign {{"tag": "All"}}; 2 member(s) queued\n'
    data = json.loads(run("--esp", "klaviyo", "--list-id", "L1", "--json"))
    assert data["queued"] == 2 and data["segment"]["mirror"]["klaviyo"] == {"list_id": "L1"}
    assert "tag: unknown option for klaviyo" in run("--esp", "klaviyo", "--tag", "x", code=2)
    assert "--off takes no --list-id or --tag" in run("--esp", "klaviyo", "--off", "--tag", "x", code=2)
    assert "does not exist" in CliRunner().invoke(main, ["segments", "mirror", "999999", "--esp", "klaviyo"]).output
    assert run("--esp", "klaviyo", "--off") == f"segment {everyone} is not mirrored to klaviyo\n"
    esps.drain(store.id)
    assert ac_tagged(esps) == {"espbridge: All": [ADA, BO]}
    assert klaviyo_lists(esps) == {}  # turned off before it ran: skipped


def test_a_segment_created_through_the_api_has_members_a_new_mirror_gets(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    esps: consent_esps.Esps,
    people: dict[str, int],
    headers: dict[str, str],
) -> None:
    created = client.post(URL, json={"name": "Later", "criteria": {"email": {"exists": True}}}, headers=headers)
    later = created.json["id"]
    assert created.json["member_count"] == 2  # evaluated at creation: its baseline
    assert client.put(f"{URL}/{later}/mirror/klaviyo", json={}, headers=headers).json["queued"] == 2
    assert sorted(segment_items(db)) == sorted(("klaviyo", f"{later}:{people[e]}", "pending") for e in (ADA, BO))
    esps.drain(store.id)
    assert klaviyo_lists(esps) == {"espbridge: Later": [ADA, BO]}
