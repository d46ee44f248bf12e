"""Erasure on both databases, against both in-process sandboxes at once (Klaviyo and ActiveCampaign).

A person with orders, events, a cart, a waitlist entry and consent at both ESPs is erased: nothing personal is
left in any table, each ESP is asked to delete them (and the report says so), the ledger still verifies, and a
later "Identify" / "Consent Updated" for the same email is recorded but kept out of both ESPs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient

from connector import erasure, lifecycle, rfm
from connector.credentials import CredentialCipher, CredentialsUnavailable, new_key
from connector.errors import InvalidInput, NotFound
from connector.esp import connections
from connector.jobs.broker import EmbeddedBroker
from connector.jobs.relay import enqueue_due
from connector.jobs.tasks import Jobs
from connector.sandbox.activecampaign import AcFaults, ActiveCampaignSandbox
from connector.sandbox.klaviyo import DEFAULT_API_KEY, Faults, KlaviyoSandbox, Reject
from connector.segments import service as segments
from connector.settings import Settings
from connector.store import (
    ConsentLedgerEntry,
    Contact,
    Database,
    Erasure,
    Event,
    Order,
    Suppression,
    SyncItem,
    SyncItemStatus,
    SyncKind,
    utcnow,
)
from connector.store.rfm import ContactLifecycle, RfmScore
from connector.store.segments import SegmentChange, SegmentMember
from connector.sync import queue
from connector.sync.adapters import AdapterOptions
from connector.tenancy import NewStore
from tests.conftest import post_messages, track
from tests.erasure_support import personal_data_left
from tests.integration.test_sync_engine_activecampaign import URL as AC_URL
from tests.integration.test_sync_engine_activecampaign import connect as connect_ac
from web.cli import main as cli

KLAVIYO_URL = "http://klaviyo.sandbox"
EMAIL = "Zenobia.Quillfeather@Example.org"
PHONE = "+49 151 2345 6789"
NEEDLES = ["zenobia", "quillfeather", "+4915123456789", "151 2345", "203.0.113.77", "ZenoBrowser", "cus_zq"]


class Route(httpx.BaseTransport):
    """Each sandbox behind its own host, like the real ESPs (no stand-in: the sandboxes answer)."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.transports = {host: httpx.WSGITransport(app=app) for host, app in apps.items()}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.transports[request.url.host].handle_request(request)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key="test-secret",
        credentials_key=new_key(),
        relay_interval=0.05,
        retry_min_backoff=0.05,
    )


@pytest.fixture
def klaviyo() -> KlaviyoSandbox:
    return KlaviyoSandbox()


@pytest.fixture
def ac() -> ActiveCampaignSandbox:
    return ActiveCampaignSandbox(time_scale=100)


@pytest.fixture
def jobs(
    settings: Settings, db: Database, store: NewStore, klaviyo: KlaviyoSandbox, ac: ActiveCampaignSandbox
) -> Iterator[Jobs]:
    cipher = CredentialCipher(settings.credentials_key)
    with db.writer() as session:
        connections.connect(session, cipher, store.id, "klaviyo", api_key=DEFAULT_API_KEY, base_url=KLAVIYO_URL)
    connect_ac(db, settings, store, ac)
    transport = Route({httpx.URL(KLAVIYO_URL).host: klaviyo, httpx.URL(AC_URL).host: ac})
    broker = EmbeddedBroker()
    yield Jobs(settings=settings, db=db, broker=broker, adapter_options=AdapterOptions(transport=transport))
    broker.close()


def drain(db: Database, jobs: Jobs, store_id: int) -> None:
    """Project (the worker's way: suppressions are checked), fan out, and send everything due, until quiet."""
    for _ in range(5):
        jobs._project_events(store_id)
        enqueue_due(db, jobs._deliver_outbox)
        if not queue.claim_due(db, jobs._sync_items):
            return


def identify(message_id: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": "cus_zq",
        "anonymousId": "anon-zq",
        "messageId": message_id,
        "traits": traits,
        "context": {"ip": "203.0.113.77", "userAgent": "ZenoBrowser/1.0"},
    }


def consent(message_id: str, status: str) -> dict[str, Any]:
    message = track("Consent Updated", message_id, "cus_zq", channel="email", status=status)
    message["context"] = {"ip": "203.0.113.77", "userAgent": "ZenoBrowser/1.0"}
    return message


def the_person(client: FlaskClient, store: NewStore) -> None:
    response = post_messages(
        client,
        store.write_key,
        [
            identify("zq-1", email=EMAIL, phone=PHONE, first_name="Zenobia", last_name="Quillfeather", pet="owl"),
            consent("zq-2", "subscribed"),
            track("Product Viewed", "zq-3", "cus_zq", product_id="p1", note="for Zenobia"),
            track("Product Added", "zq-4", "cus_zq", cart_id="c-zq", product_id="p2", price=10, quantity=1),
            track("Order Completed", "zq-5", "cus_zq", order_id="o-zq", total=25, products=[{"product_id": "p1"}]),
            track("Waitlist Joined", "zq-6", "cus_zq", product_id="p3"),
        ],
    )
    assert response.status_code == 200, response.json


def at_klaviyo(klaviyo: KlaviyoSandbox) -> list[dict[str, Any]]:
    return [p for p in klaviyo.state()["profiles"] if "zenobia" in str(p["attributes"].get("email"))]


def at_ac(ac: ActiveCampaignSandbox) -> list[dict[str, Any]]:
    return [c for c in ac.state()["contacts"] if "zenobia" in str(c.get("email"))]


def test_erase_everywhere_then_suppressed(
    client: FlaskClient,
    db: Database,
    settings: Settings,
    store: NewStore,
    jobs: Jobs,
    klaviyo: KlaviyoSandbox,
    ac: ActiveCampaignSandbox,
) -> None:
    the_person(client, store)
    drain(db, jobs, store.id)
    assert at_klaviyo(klaviyo) and at_ac(ac)  # known, and subscribed, at both before
    assert any(p["id"] for p in at_klaviyo(klaviyo) if klaviyo.state()["subscriptions"].get(p["id"]))
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count(Order.id)).where(Order.store_id == store.id)) == 1

    erasure_id = erasure.erase(
        db, CredentialCipher(settings.credentials_key), store.id, email=EMAIL, requested_by="dpo@shop.example"
    )

    # locally, at once: nothing personal in any column of any table (the ERASE items' payload, until sent, apart),
    # non-personal aggregates kept
    assert personal_data_left(db, store.id, NEEDLES, allowed=[("sync_items", "payload")]) == []
    report = erasure.get(db, store.id, erasure_id)
    assert report["status"] == "running"
    local = report["report"]["local"]
    assert local["contacts"] == 1 and local["identities"] >= 3 and local["events"] == 6
    assert local["carts"] == 1 and local["waitlist_entries"] == 1 and local["orders"] == 1
    assert local["consent_evidence"] >= 1 and local["suppressions"] == 2
    assert report["report"]["esps"] == {
        "activecampaign": {"status": "pending", "requests": 1, "error": None},
        "klaviyo": {"status": "pending", "requests": 1, "error": None},
    }
    with db.reader() as session:
        order = session.scalars(sa.select(Order).where(Order.store_id == store.id)).one()
        assert order.contact_id is None and order.total_cents == 2500
        events = session.scalars(sa.select(Event).where(Event.store_id == store.id)).all()
        assert {e.message_id for e in events} == {f"zq-{i}" for i in range(1, 7)}  # kept: retries stay duplicates
        assert all(e.contact_id is None and e.user_id is None and e.payload["erased"] for e in events)
        erasure_rows = session.scalars(
            sa.select(ConsentLedgerEntry).where(
                ConsentLedgerEntry.store_id == store.id, ConsentLedgerEntry.action == "erasure"
            )
        ).all()
        assert [(r.channel, r.status_after, r.method, r.actor) for r in erasure_rows] == [
            ("email", "unsubscribed", "admin", "dpo@shop.example")
        ]
        assert [r.seq for r in erasure_rows] == report["report"]["ledger_seqs"]

    # at the ESPs: the ERASE items go out, their identifiers are dropped once settled, the report completes
    drain(db, jobs, store.id)
    assert klaviyo.state()["deletions"] and at_klaviyo(klaviyo) == []
    assert at_ac(ac) == []
    report = erasure.get(db, store.id, erasure_id)
    assert report["status"] == "done"
    assert {esp: r["status"] for esp, r in report["report"]["esps"].items()} == {
        "activecampaign": "done",
        "klaviyo": "done",
    }
    with db.reader() as session:
        erase_items = session.scalars(sa.select(SyncItem).where(SyncItem.kind == SyncKind.ERASE)).all()
        assert [i.payload for i in erase_items] == [{}, {}]
    assert personal_data_left(db, store.id, NEEDLES) == []
    audit = pytest.importorskip("connector.audit")
    assert audit.verify(db, store.id).ok

    # they come back: recorded locally (ledger included), kept out of both ESPs
    deletions = len(klaviyo.state()["deletions"])
    response = post_messages(
        client, store.write_key, [identify("zq-7", email=EMAIL, first_name="Zenobia"), consent("zq-8", "subscribed")]
    )
    assert response.status_code == 200
    drain(db, jobs, store.id)
    assert at_klaviyo(klaviyo) == [] and at_ac(ac) == []
    assert len(klaviyo.state()["deletions"]) == deletions
    with db.reader() as session:
        back = session.scalars(
            sa.select(Contact).where(Contact.store_id == store.id, Contact.erased_at.is_(None))
        ).one()
        assert back.suppressed_at is not None
        grants = session.scalars(
            sa.select(ConsentLedgerEntry).where(
                ConsentLedgerEntry.store_id == store.id, ConsentLedgerEntry.contact_id == back.id
            )
        ).all()
        assert [g.status_after for g in grants] == ["subscribed"]
        sent = session.scalars(
            sa.select(SyncItem).where(SyncItem.store_id == store.id, SyncItem.kind != SyncKind.ERASE)
        ).all()
        their_events = {str(e) for e in session.scalars(sa.select(Event.id).where(Event.contact_id == back.id))}
        theirs = [
            i
            for i in sent
            if (i.kind in (SyncKind.PROFILE, SyncKind.CONSENT) and i.subject_id.split(":")[0] == str(back.id))
            or (i.kind == SyncKind.EVENT and i.subject_id in their_events)
        ]
        assert {i.kind for i in theirs} == {SyncKind.PROFILE, SyncKind.CONSENT, SyncKind.EVENT}
        assert theirs and {(i.status, i.last_error) for i in theirs} == {(SyncItemStatus.SKIPPED, "suppressed")}
    assert audit.verify(db, store.id).ok


def test_pending_sync_items_of_the_person_are_skipped(
    client: FlaskClient, db: Database, settings: Settings, store: NewStore, jobs: Jobs
) -> None:
    the_person(client, store)
    jobs._project_events(store.id)
    enqueue_due(db, jobs._deliver_outbox)  # items pending, not yet sent
    erasure.erase(db, CredentialCipher(settings.credentials_key), store.id, phone=PHONE, requested_by="dpo")
    with db.reader() as session:
        rows = session.scalars(sa.select(SyncItem).where(SyncItem.kind != SyncKind.ERASE)).all()
        assert rows and {(i.status, i.last_error) for i in rows} == {(SyncItemStatus.SKIPPED, "erased")}
        erase_items = session.scalars(sa.select(SyncItem).where(SyncItem.kind == SyncKind.ERASE)).all()
        assert sorted(i.esp for i in erase_items) == ["activecampaign", "klaviyo"]
        assert all(i.payload["email"] == EMAIL.lower() for i in erase_items)
        assert all(i.payload["phone"] == "+4915123456789" for i in erase_items)
    assert personal_data_left(db, store.id, NEEDLES, allowed=[("sync_items", "payload")]) == []


def test_erase_by_contact_takes_merged_contacts_along(
    client: FlaskClient, db: Database, settings: Settings, store: NewStore, jobs: Jobs
) -> None:
    anonymous = {"type": "track", "event": "Product Viewed", "anonymousId": "anon-zq", "messageId": "a1"}
    anonymous["properties"] = {"product_id": "p1"}
    post_messages(client, store.write_key, [anonymous])
    jobs._project_events(store.id)
    post_messages(client, store.write_key, [identify("zq-1", email=EMAIL, first_name="Zenobia")])
    jobs._project_events(store.id)
    with db.reader() as session:
        contact_ids = list(session.scalars(sa.select(Contact.id).where(Contact.store_id == store.id)))
    erasure_id = erasure.erase(
        db, CredentialCipher(settings.credentials_key), store.id, contact_id=contact_ids[0], requested_by="dpo"
    )
    report = erasure.get(db, store.id, erasure_id)["report"]
    assert sorted(report["contacts"]) == sorted(contact_ids)
    assert personal_data_left(db, store.id, NEEDLES, allowed=[("sync_items", "payload")]) == []


def test_bad_identifiers_nobody_and_no_key(db: Database, settings: Settings, store: NewStore, jobs: Jobs) -> None:
    cipher = CredentialCipher(settings.credentials_key)
    with pytest.raises(InvalidInput) as bad:
        erasure.erase(db, cipher, store.id, email=EMAIL, phone=PHONE, requested_by="dpo")
    assert bad.value.field == "identifier"
    with pytest.raises(InvalidInput) as bad:
        erasure.erase(db, cipher, store.id, email="not-an-email", requested_by="dpo")
    assert bad.value.field == "email"
    with pytest.raises(InvalidInput) as bad:
        erasure.erase(db, cipher, store.id, phone="12", requested_by="dpo")
    assert bad.value.field == "phone"
    with pytest.raises(NotFound):
        erasure.erase(db, cipher, store.id, email="nobody@example.org", requested_by="dpo")
    with pytest.raises(CredentialsUnavailable):
        erasure.erase(db, CredentialCipher(None), store.id, email="nobody@example.org", requested_by="dpo")
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count(Erasure.id))) == 0
        assert session.scalar(sa.select(sa.func.count(Suppression.id))) == 0


def test_admin_api_compliance_only(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    jobs: Jobs,
    klaviyo: KlaviyoSandbox,
    admin_token: Callable[..., str],
) -> None:
    the_person(client, store)
    drain(db, jobs, store.id)
    compliance = {"Authorization": f"Bearer {admin_token('compliance')}"}
    for role in ("admin", "marketer", "viewer"):
        other = {"Authorization": f"Bearer {admin_token(role)}"}
        assert client.post("/admin/api/erasures", json={"email": EMAIL}, headers=other).status_code == 403
        assert client.get("/admin/api/erasures/1", headers=other).status_code == 403
    assert client.post("/admin/api/erasures", json={"email": EMAIL}).status_code == 401

    bad = [
        ({}, "body"),
        ({"email": EMAIL, "phone": PHONE}, "body"),
        ({"email": "nope"}, "email"),
        ({"phone": "12"}, "phone"),
        ({"contact_id": "1"}, "contact_id"),
        ({"name": "Zenobia"}, "name"),
    ]
    for body, field in bad:
        response = client.post("/admin/api/erasures", json=body, headers=compliance)
        assert (response.status_code, response.get_json()["field"]) == (400, field), body
    missing = client.post("/admin/api/erasures", json={"email": "nobody@example.org"}, headers=compliance)
    assert missing.status_code == 404
    assert client.get("/admin/api/erasures/999", headers=compliance).status_code == 404

    created = client.post("/admin/api/erasures", json={"email": EMAIL}, headers=compliance)
    assert created.status_code == 202
    body = created.get_json()
    assert body["status"] == "running" and body["identifier_kind"] == "email"
    assert body["requested_by"].endswith("-compliance@example.com")
    assert EMAIL.lower() not in json.dumps(body)  # the report never repeats the identifier
    drain(db, jobs, store.id)
    shown = client.get(f"/admin/api/erasures/{body['id']}", headers=compliance).get_json()
    assert shown["status"] == "done" and shown["report"]["esps"]["klaviyo"]["status"] == "done"
    assert klaviyo.state()["deletions"]


def test_cli_erase_and_show(
    client: FlaskClient,
    db: Database,
    settings: Settings,
    store: NewStore,
    jobs: Jobs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    the_person(client, store)
    drain(db, jobs, store.id)
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    refused = runner.invoke(cli, ["erase", "--email", EMAIL, "--wait", "0"])
    assert refused.exit_code == 2 and "ESPBRIDGE_CREDENTIALS_KEY is not set" in refused.output
    assert settings.credentials_key is not None
    monkeypatch.setenv("ESPBRIDGE_CREDENTIALS_KEY", settings.credentials_key.get_secret_value())
    both = runner.invoke(cli, ["erase", "--email", EMAIL, "--phone", PHONE, "--wait", "0"])
    assert both.exit_code == 2 and "exactly one of email, phone, contact_id" in both.output

    erased = runner.invoke(cli, ["erase", "--email", EMAIL, "--wait", "0", "--json"])
    assert erased.exit_code == 0, erased.output
    report = json.loads(erased.output)
    assert report["status"] == "running" and report["requested_by"].startswith("cli:")
    assert set(report["report"]["esps"]) == {"klaviyo", "activecampaign"}
    drain(db, jobs, store.id)
    shown = runner.invoke(cli, ["erasures", "show", str(report["id"])])
    assert shown.exit_code == 0, shown.output
    assert f"erasure {report['id']}: done" in shown.output
    assert "klaviyo: done" in shown.output and "activecampaign: done" in shown.output
    assert "erased here:" in shown.output and "carts 1" in shown.output
    again = runner.invoke(cli, ["erase", "--email", EMAIL, "--wait", "0"])
    assert again.exit_code == 2 and "no contact matches that email" in again.output


def test_an_esp_failing_is_retried_then_a_dead_letter_fails_the_erasure(
    client: FlaskClient,
    db: Database,
    settings: Settings,
    store: NewStore,
    jobs: Jobs,
    klaviyo: KlaviyoSandbox,
    ac: ActiveCampaignSandbox,
) -> None:
    the_person(client, store)
    drain(db, jobs, store.id)
    erasure_id = erasure.erase(
        db, CredentialCipher(settings.credentials_key), store.id, email=EMAIL, requested_by="dpo"
    )
    ac.faults = AcFaults(error_rate=1.0, error_status=503)
    drain(db, jobs, store.id)
    report = erasure.get(db, store.id, erasure_id)
    assert report["status"] == "running"
    assert report["report"]["esps"]["klaviyo"]["status"] == "done"
    waiting = report["report"]["esps"]["activecampaign"]
    assert waiting["status"] == "retrying" and "503" in waiting["error"]

    jobs.engine.settings = settings.model_copy(update={"retry_max_age": 0.0})  # the next failure gives up
    with db.writer() as session:
        session.execute(sa.update(SyncItem).where(SyncItem.kind == SyncKind.ERASE).values(available_at=utcnow()))
    queue.claim_due(db, jobs._sync_items)
    report = erasure.get(db, store.id, erasure_id)
    assert report["status"] == "failed" and report["finished_at"]
    failed = report["report"]["esps"]["activecampaign"]
    assert failed["status"] == "failed" and "gave up" in failed["error"]
    with db.reader() as session:
        assert [i.payload for i in session.scalars(sa.select(SyncItem).where(SyncItem.kind == SyncKind.ERASE))] == [
            {},
            {},
        ]


def test_a_phone_given_with_an_sms_grant_is_recognised(
    client: FlaskClient, db: Database, settings: Settings, store: NewStore, jobs: Jobs, klaviyo: KlaviyoSandbox
) -> None:
    the_person(client, store)
    drain(db, jobs, store.id)
    erasure.erase(db, CredentialCipher(settings.credentials_key), store.id, phone=PHONE, requested_by="dpo")
    drain(db, jobs, store.id)
    sms = track("Consent Updated", "new-1", "someone-else", channel="sms", status="subscribed", phone="+4915123456789")
    assert post_messages(client, store.write_key, [sms]).status_code == 200
    drain(db, jobs, store.id)
    with db.reader() as session:
        back = session.scalars(sa.select(Contact).where(Contact.erased_at.is_(None))).one()
        assert back.suppressed_at is not None
    assert klaviyo.state()["profiles"] == []


def test_erasing_again_or_an_anonymous_visitor_finishes_at_once(
    client: FlaskClient, db: Database, settings: Settings, store: NewStore, jobs: Jobs
) -> None:
    the_person(client, store)
    visitor = {"type": "track", "event": "Product Viewed", "anonymousId": "anon-x", "messageId": "v1"}
    post_messages(client, store.write_key, [visitor | {"properties": {"product_id": "p1"}}])
    drain(db, jobs, store.id)
    cipher = CredentialCipher(settings.credentials_key)
    with db.reader() as session:
        person, anonymous = sorted(session.scalars(sa.select(Contact.id).where(Contact.store_id == store.id)))
    erasure.erase(db, cipher, store.id, contact_id=person, requested_by="dpo")
    for contact_id in (person, anonymous):
        again = erasure.get(
            db, store.id, erasure.erase(db, cipher, store.id, contact_id=contact_id, requested_by="dpo")
        )
        assert again["status"] == "done" and again["finished_at"]
        assert {r["status"] for r in again["report"]["esps"].values()} == {"skipped"}


def test_an_esp_refusal_fails_the_erasure_without_naming_the_person(
    client: FlaskClient, db: Database, settings: Settings, store: NewStore, jobs: Jobs, klaviyo: KlaviyoSandbox
) -> None:
    the_person(client, store)
    drain(db, jobs, store.id)
    erasure_id = erasure.erase(
        db, CredentialCipher(settings.credentials_key), store.id, email=EMAIL, requested_by="dpo"
    )
    klaviyo.faults = Faults(reject=Reject(emails=[EMAIL], detail=f"Cannot delete {EMAIL.lower()} right now."))
    drain(db, jobs, store.id)
    report = erasure.get(db, store.id, erasure_id)
    assert report["status"] == "failed"
    refused = report["report"]["esps"]["klaviyo"]
    assert refused["status"] == "failed" and "Cannot delete [erased] right now." in refused["error"]
    assert report["report"]["esps"]["activecampaign"]["status"] == "done"
    assert personal_data_left(db, store.id, NEEDLES) == []


def test_what_was_computed_about_the_person_goes_with_them(
    client: FlaskClient, db: Database, settings: Settings, store: NewStore, jobs: Jobs
) -> None:
    the_person(client, store)
    drain(db, jobs, store.id)
    today = dt.datetime.now(dt.UTC).date()
    run_id = rfm.run_snapshot(db, store.id, today, stages=lifecycle.LifecycleConfig())
    buyers = segments.create_segment(db, store.id, {"name": "Buyers", "criteria": {"orders.count": {"gte": 1}}})
    everyone = segments.create_segment(
        db, store.id, {"name": "All", "criteria": {"orders.count": {"gte": 5}}, "marketing": False}
    )
    segments.update_segment(db, store.id, everyone["id"], {"criteria": {"orders.count": {"gte": 0}}})
    with db.reader() as session:
        person = session.scalars(sa.select(Contact.id).where(Contact.store_id == store.id)).one()
    derived = (SegmentMember, SegmentChange, RfmScore, ContactLifecycle)

    def rows_of_person() -> dict[str, int]:
        with db.reader() as session:
            return {
                m.__tablename__: session.scalar(sa.select(sa.func.count()).select_from(m).where(m.contact_id == person))
                or 0
                for m in derived
            }

    assert rows_of_person() == {"segment_members": 2, "segment_changes": 1, "rfm_scores": 1, "contact_lifecycle": 1}
    assert segments.get_segment(db, store.id, buyers["id"])["member_count"] == 1

    erasure_id = erasure.erase(
        db, CredentialCipher(settings.credentials_key), store.id, email=EMAIL, requested_by="dpo"
    )

    assert rows_of_person() == dict.fromkeys(rows_of_person(), 0)
    local = erasure.get(db, store.id, erasure_id)["report"]["local"]
    assert (local["segment_members"], local["rfm_scores"], local["contact_lifecycle"]) == (2, 1, 1)
    assert [segments.get_segment(db, store.id, s["id"])["member_count"] for s in (buyers, everyone)] == [0, 0]
    assert (rfm.get_run(db, store.id, run_id) or {})["scored"] == 1  # the run's summary stays as it was
