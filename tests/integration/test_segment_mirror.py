"""Segments mirrored outward through the sync engine (issue 7 item 5), to both in-process sandboxes at once:
entered → exactly one add, exited → exactly one remove, changes that cancel out before sending → no add, one
contact in two segments → two lists; nobody's consent changes at either ESP; every request valid by contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.credentials import new_key
from connector.esp.base import SegmentRef
from connector.esp.klaviyo_adapter import KlaviyoAdapter
from connector.segments import evaluate
from connector.settings import Settings
from connector.store import Contact, Database, Segment, SegmentChange, SegmentMember, SyncItem, SyncKind, utcnow
from connector.sync import queue
from connector.tenancy import NewStore
from tests.conftest import post_messages, track
from tests.contract.activecampaign import validate_request
from tests.contract.klaviyo import request_errors
from tests.integration import consent_esps

ADA, BO = "ada@example.com", "bo@example.com"
MIRROR_OPS = {"create_list", "add_profiles_to_list", "remove_profiles_from_list"}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key="test-secret", credentials_key=new_key())


@pytest.fixture
def esps(db: Database, settings: Settings, store: NewStore) -> Iterator[consent_esps.Esps]:
    with consent_esps.connected(db, settings, store.id) as connected:
        yield connected
        klaviyo = [
            (e["operation"], request_errors(e["operation"], e["body"]))
            for e in connected.klaviyo.requests
            if e["body"] is not None and e["method"] in ("POST", "DELETE", "PATCH")
        ]
        ac = [
            (e["operation"], validate_request(e["operation"], e["body"]))
            for e in connected.ac.requests
            if e["body"] is not None and e["method"] in ("POST", "PUT")
        ]
        assert [b for b in klaviyo + ac if b[1]] == []


@pytest.fixture
def people(client: FlaskClient, store: NewStore, esps: consent_esps.Esps, db: Database) -> dict[str, int]:
    """Ada subscribed on email, Bo never asked: both synced to both ESPs (profiles and links)."""
    post_messages(
        client,
        store.write_key,
        [
            {"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"email": ADA}},
            track("Consent Updated", "c1", "u1", channel="email", status="subscribed"),
            {"type": "identify", "userId": "u2", "messageId": "i2", "traits": {"email": BO}},
        ],
    )
    esps.drain(store.id)
    with db.reader() as session:
        return {c.email: c.id for c in session.scalars(sa.select(Contact).where(Contact.store_id == store.id))}


def segment(db: Database, store_id: int, name: str, mirror: dict[str, Any] | None = None) -> int:
    with db.writer() as session:
        row = Segment(
            store_id=store_id,
            name=name,
            criteria={},
            mirror={"klaviyo": {}, "activecampaign": {}} if mirror is None else mirror,
        )
        session.add(row)
        session.flush()
        return row.id


def change(db: Database, store_id: int, segment_id: int, contact_id: int, entered: bool) -> int:
    """What the membership recompute does: the member row and the change, and the mirror queued with them."""
    with db.writer() as session:
        member = session.get(SegmentMember, (segment_id, contact_id))
        if entered and member is None:
            session.add(SegmentMember(store_id=store_id, segment_id=segment_id, contact_id=contact_id))
        elif not entered and member is not None:
            session.delete(member)
        row = SegmentChange(
            store_id=store_id,
            segment_id=segment_id,
            contact_id=contact_id,
            change="entered" if entered else "exited",
            at=utcnow(),
        )
        session.add(row)
        session.flush()
        return queue.queue_mirror_changes(session, store_id, [row])


def klaviyo_calls(esps: consent_esps.Esps) -> list[tuple[str, list[str]]]:
    return [
        (e["operation"], [d["id"] for d in e["body"]["data"]] if e["operation"] != "create_list" else [])
        for e in esps.klaviyo.requests
        if e["operation"] in MIRROR_OPS
    ]


def klaviyo_lists(esps: consent_esps.Esps) -> dict[str, list[str]]:
    """List name → the emails of its members, at the Klaviyo sandbox."""
    state = esps.klaviyo.state()
    emails = {p["id"]: p["attributes"].get("email") for p in state["profiles"]}
    return {lst["name"]: sorted(emails[m] for m in lst["members"]) for lst in state["lists"].values()}


def ac_calls(esps: consent_esps.Esps) -> list[str]:
    return [e["operation"] for e in esps.ac.requests if "tag" in e["operation"].lower()]


def ac_tagged(esps: consent_esps.Esps) -> dict[str, list[str]]:
    """Tag name → the emails of the contacts carrying it, at the ActiveCampaign sandbox."""
    emails = {c["id"]: c["email"] for c in esps.ac.state()["contacts"]}
    tags = {t["id"]: t["tag"] for t in esps.ac.tags.values()}
    found: dict[str, list[str]] = {name: [] for name in tags.values()}
    for ct in esps.ac.contact_tags.values():
        found[tags[ct["tag"]]].append(emails[ct["contact"]])
    return {name: sorted(members) for name, members in found.items()}


def consent_calls(esps: consent_esps.Esps) -> int:
    """Requests at either ESP that can change a subscription: (un)subscribe, suppress, a list status."""
    klaviyo = [e for e in esps.klaviyo.requests if "subscri" in e["operation"] or "suppress" in e["operation"]]
    return len(klaviyo) + len([e for e in esps.ac.requests if e["operation"] == "update_list_status"])


def consents(esps: consent_esps.Esps) -> dict[str, Any]:
    return {
        email: (
            esps.klaviyo_consent(email),
            esps.ac_status(email, esps.email_list),
            esps.ac_status(email, esps.sms_list),
        )
        for email in (ADA, BO)
    }


def test_entered_adds_once_exited_removes_once_and_consent_never_changes(
    db: Database, store: NewStore, esps: consent_esps.Esps, people: dict[str, int]
) -> None:
    before, calls = consents(esps), consent_calls(esps)
    assert before[ADA][:2] == ({"email": "SUBSCRIBED"}, "1") and before[BO][:2] == ({}, None)
    vip = segment(db, store.id, "VIP")
    assert change(db, store.id, vip, people[ADA], True) == 2  # one item per ESP the segment mirrors to
    assert change(db, store.id, vip, people[BO], True) == 2
    esps.drain(store.id)
    ids = {p["attributes"]["email"]: p["id"] for p in esps.klaviyo.state()["profiles"]}
    assert klaviyo_calls(esps) == [("create_list", []), ("add_profiles_to_list", [ids[ADA], ids[BO]])]
    assert klaviyo_lists(esps) == {"espbridge: VIP": [ADA, BO]}
    assert ac_tagged(esps) == {"espbridge: VIP": [ADA, BO]}
    assert ac_calls(esps).count("add_contact_tag") == 2
    with db.reader() as session:
        mirror = session.get(Segment, vip).mirror  # type: ignore[union-attr]
    [list_id] = esps.klaviyo.state()["lists"]
    assert mirror == {"klaviyo": {"list_id": list_id}, "activecampaign": {}}  # remembered: created once

    change(db, store.id, vip, people[BO], False)
    esps.drain(store.id)
    assert klaviyo_calls(esps)[2:] == [("remove_profiles_from_list", [ids[BO]])]
    assert klaviyo_lists(esps) == {"espbridge: VIP": [ADA]}
    assert ac_tagged(esps) == {"espbridge: VIP": [ADA]}
    assert ac_calls(esps).count("remove_contact_tag") == 1
    assert consents(esps) == before
    assert consent_calls(esps) == calls  # mirroring made no subscribe, unsubscribe, suppress or list-status call


def test_entering_and_leaving_before_sending_coalesce_to_no_add(
    db: Database, store: NewStore, esps: consent_esps.Esps, people: dict[str, int]
) -> None:
    vip = segment(db, store.id, "VIP", {"klaviyo": {}})  # mirrored to Klaviyo only
    assert change(db, store.id, vip, people[ADA], True) == 1
    assert change(db, store.id, vip, people[ADA], False) == 0  # coalesced into the pending item
    esps.drain(store.id)
    assert klaviyo_calls(esps) == [] and klaviyo_lists(esps) == {}  # no list yet: nobody to remove
    assert ac_calls(esps) == [] and ac_tagged(esps) == {}
    with db.reader() as session:
        statuses = set(session.scalars(sa.select(SyncItem.status).where(SyncItem.kind == SyncKind.SEGMENT)).all())
    assert statuses == {"done"}

    # with the list there, the same back-and-forth sends just the net remove (harmless for a non-member)
    change(db, store.id, vip, people[BO], True)
    esps.drain(store.id)
    change(db, store.id, vip, people[ADA], True)
    change(db, store.id, vip, people[ADA], False)
    esps.drain(store.id)
    ids = {p["attributes"]["email"]: p["id"] for p in esps.klaviyo.state()["profiles"]}
    assert [op for op, _ in klaviyo_calls(esps)] == ["create_list", "add_profiles_to_list", "remove_profiles_from_list"]
    assert klaviyo_calls(esps)[2] == ("remove_profiles_from_list", [ids[ADA]])
    assert klaviyo_lists(esps) == {"espbridge: VIP": [BO]}


def test_one_contact_in_two_segments_is_on_two_lists(
    db: Database, store: NewStore, esps: consent_esps.Esps, people: dict[str, int]
) -> None:
    before, calls = consents(esps), consent_calls(esps)
    vip, loyal = segment(db, store.id, "VIP"), segment(db, store.id, "Loyal")
    change(db, store.id, vip, people[BO], True)
    change(db, store.id, loyal, people[BO], True)
    esps.drain(store.id)
    assert klaviyo_lists(esps) == {"espbridge: VIP": [BO], "espbridge: Loyal": [BO]}
    assert ac_tagged(esps) == {"espbridge: VIP": [BO], "espbridge: Loyal": [BO]}
    assert [op for op, _ in klaviyo_calls(esps)].count("add_profiles_to_list") == 2
    assert consents(esps) == before and consent_calls(esps) == calls  # Bo was never asked: still not subscribed


def test_suppressed_contacts_and_unmirrored_segments_send_nothing(
    db: Database, store: NewStore, esps: consent_esps.Esps, people: dict[str, int]
) -> None:
    quiet = segment(db, store.id, "Quiet", {})
    assert change(db, store.id, quiet, people[ADA], True) == 0  # no mirror: nothing queued
    vip = segment(db, store.id, "VIP")
    change(db, store.id, vip, people[ADA], True)
    with db.writer() as session:
        session.get(Contact, people[ADA]).suppressed_at = utcnow()  # type: ignore[union-attr]
    esps.drain(store.id)
    assert klaviyo_calls(esps) == [] and ac_calls(esps) == []
    with db.reader() as session:
        skipped = session.scalars(sa.select(SyncItem.last_error).where(SyncItem.kind == SyncKind.SEGMENT)).all()
    assert skipped == ["suppressed", "suppressed"]


def test_an_evaluations_changes_are_queued_set_based_once_per_contact_and_esp(
    db: Database, store: NewStore, esps: consent_esps.Esps, people: dict[str, int]
) -> None:
    vip = segment(db, store.id, "VIP")
    with db.writer() as session:
        before = session.scalar(sa.select(sa.func.max(SegmentChange.id))) or 0
        for email, entered in ((ADA, True), (BO, True), (BO, False)):
            if entered:
                session.add(SegmentMember(store_id=store.id, segment_id=vip, contact_id=people[email]))
            session.add(
                SegmentChange(
                    store_id=store.id,
                    segment_id=vip,
                    contact_id=people[email],
                    change="entered" if entered else "exited",
                    at=utcnow(),
                )
            )
            session.flush()
        session.execute(
            sa.delete(SegmentMember).where(SegmentMember.segment_id == vip, SegmentMember.contact_id == people[BO])
        )
        assert queue.queue_segment_changes(session, store.id, vip, after_change_id=before) == 4
        assert queue.queue_segment_changes(session, store.id, vip, after_change_id=before) == 0  # pending already
    with db.reader() as session:
        subjects = sorted(
            session.execute(sa.select(SyncItem.esp, SyncItem.subject_id).where(SyncItem.kind == SyncKind.SEGMENT))
        )
    assert [tuple(s) for s in subjects] == sorted(
        (esp, f"{vip}:{people[e]}") for esp in ("activecampaign", "klaviyo") for e in (ADA, BO)
    )
    esps.drain(store.id)
    assert klaviyo_lists(esps) == {"espbridge: VIP": [ADA]} and ac_tagged(esps) == {"espbridge: VIP": [ADA]}


def test_a_baseline_evaluation_records_no_changes_yet_mirrors_every_member(
    db: Database, store: NewStore, esps: consent_esps.Esps, people: dict[str, int]
) -> None:
    calls = consent_calls(esps)
    vip = segment(db, store.id, "VIP")
    with db.writer() as session:
        session.get_one(Segment, vip).criteria = {"email": {"exists": True}}
    first = evaluate(db, store.id, vip)
    assert (first.members, first.entered, first.exited) == (2, 0, 0)
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count()).where(SegmentChange.segment_id == vip)) == 0
        subjects = sorted(
            session.execute(sa.select(SyncItem.esp, SyncItem.subject_id).where(SyncItem.kind == SyncKind.SEGMENT))
        )
    assert [tuple(s) for s in subjects] == sorted(
        (esp, f"{vip}:{people[e]}") for esp in ("activecampaign", "klaviyo") for e in (ADA, BO)
    )
    esps.drain(store.id)
    assert klaviyo_lists(esps) == {"espbridge: VIP": [ADA, BO]} and ac_tagged(esps) == {"espbridge: VIP": [ADA, BO]}
    assert consent_calls(esps) == calls
    again = evaluate(db, store.id, vip)
    assert (again.members, again.entered, again.exited) == (2, 0, 0)


def test_a_list_created_concurrently_keeps_the_first_and_resends_to_it(
    db: Database, store: NewStore, esps: consent_esps.Esps, people: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    vip = segment(db, store.id, "VIP", {"klaviyo": {}})
    with esps.klaviyo._lock:  # the list another job made and stored while this one was sending
        esps.klaviyo.lists["KEPT"] = {
            "name": "espbridge: VIP",
            "opt_in_process": "single_opt_in",
            "created": "",
            "members": set(),
        }
    original = KlaviyoAdapter.mirror_membership

    def racing(self: KlaviyoAdapter, segment: SegmentRef, changes: Any) -> Any:
        outcome = original(self, segment, changes)
        if outcome.mirror is not None:
            with db.writer() as session:
                session.get(Segment, vip).mirror = {"klaviyo": {"list_id": "KEPT"}}  # type: ignore[union-attr]
        return outcome

    monkeypatch.setattr(KlaviyoAdapter, "mirror_membership", racing)
    change(db, store.id, vip, people[ADA], True)
    esps.drain(store.id)
    with db.reader() as session:
        assert session.get(Segment, vip).mirror == {"klaviyo": {"list_id": "KEPT"}}  # type: ignore[union-attr]
        [item] = session.scalars(sa.select(SyncItem).where(SyncItem.kind == SyncKind.SEGMENT)).all()
    assert (item.status, item.attempts) == ("done", 2)  # sent again (drain claims twice), to the kept list
    ada = next(p["id"] for p in esps.klaviyo.state()["profiles"] if p["attributes"]["email"] == ADA)
    assert esps.klaviyo.lists["KEPT"]["members"] == {ada}
