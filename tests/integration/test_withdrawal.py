"""Withdrawal everywhere: consent items go ahead of any backlog, on their own queue; a withdrawal during a full
sync is sent again after the page's import; admins withdraw through the API and the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient

from connector import outbox
from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.jobs import relay
from connector.jobs.broker import EmbeddedBroker
from connector.jobs.relay import Relay, enqueue_due
from connector.jobs.tasks import CONSENT_QUEUE, QUEUE, Jobs
from connector.outbox import Topic
from connector.sandbox.klaviyo import DEFAULT_API_KEY, KlaviyoSandbox
from connector.settings import Settings
from connector.store import ConsentLedgerEntry, ConsentState, Database, SyncItem, SyncItemStatus, SyncKind
from connector.sync import adapters, queue
from connector.sync.adapters import AdapterOptions
from connector.sync.full import FullSync, FullSyncOptions, start
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track
from web.cli import main as cli_main

SANDBOX_URL = "http://klaviyo.sandbox"


@pytest.fixture
def slow_esp(monkeypatch: pytest.MonkeyPatch) -> str:
    """An ESP whose profile jobs take 2 contacts each (as ActiveCampaign's take seconds of its 5 requests/s)."""
    klaviyo = adapters.ESPS["klaviyo"]
    spec = adapters.EspSpec(klaviyo.settings, klaviyo.check, klaviyo.build, {SyncKind.PROFILE: 2})
    monkeypatch.setitem(adapters.ESPS, "slow", spec)
    return "slow"


def add_items(db: Database, store_id: int, esp: str, kind: SyncKind, count: int, prefix: str = "") -> list[int]:
    with db.writer() as session:
        items = [
            SyncItem(store_id=store_id, esp=esp, kind=kind, subject_id=f"{prefix}{kind}-{n}") for n in range(count)
        ]
        session.add_all(items)
        session.flush()
        return [item.id for item in items]


def test_consent_items_go_first_and_beyond_the_in_flight_cap(db: Database, store: NewStore, slow_esp: str) -> None:
    # Given a backlog of profile and event changes for the slow ESP, already claimed up to the in-flight cap
    add_items(db, store.id, slow_esp, SyncKind.PROFILE, 500)
    add_items(db, store.id, slow_esp, SyncKind.EVENT, 500)
    calls: list[tuple[str, str, list[int]]] = []

    def send(store_id: int, esp: str, ids: list[int]) -> None:
        calls.append(("default", esp, ids))

    def send_consent(store_id: int, esp: str, ids: list[int]) -> None:
        calls.append(("consent", esp, ids))

    queue.claim_due(db, send, send_consent=send_consent)
    assert calls and all(q == "default" for q, _, _ in calls)
    calls.clear()
    assert queue.claim_due(db, send, send_consent=send_consent) == 0  # the cap is reached
    # When withdrawals are queued behind the backlog (higher ids) for both ESPs, with more backlog after them
    consent_ids = add_items(db, store.id, slow_esp, SyncKind.CONSENT, 3, "c") + add_items(
        db, store.id, "klaviyo", SyncKind.CONSENT, 3, "c"
    )
    add_items(db, store.id, "klaviyo", SyncKind.PROFILE, 50, "later")
    queue.claim_due(db, send, send_consent=send_consent)
    # Then every consent item is claimed although the slow ESP is at its cap, and sent first, on its own queue
    sent_consent = sorted(i for q, _, ids in calls if q == "consent" for i in ids)
    assert sent_consent == sorted(consent_ids)
    first_default = next(n for n, (q, _, _) in enumerate(calls) if q == "default")
    assert all(q == "consent" for q, _, _ in calls[:first_default])
    assert all(esp == "klaviyo" for q, esp, _ in calls if q == "default")  # nothing more of the slow backlog


def test_the_relay_sends_consent_batches_on_the_consent_queue_which_workers_consume(
    settings: Settings, db: Database, store: NewStore
) -> None:
    broker = EmbeddedBroker()
    jobs = Jobs(settings=settings, db=db, broker=broker)
    try:
        add_items(db, store.id, "klaviyo", SyncKind.PROFILE, 3)
        add_items(db, store.id, "klaviyo", SyncKind.CONSENT, 2)
        Relay(jobs).tick()
        consent_messages = [m for m in _messages(broker, CONSENT_QUEUE)]
        default_messages = [m for m in _messages(broker, QUEUE) if m["actor_name"] == "sync_items"]
        assert [m["actor_name"] for m in consent_messages] == ["sync_consent"]
        assert len(consent_messages[0]["args"][2]) == 2
        assert sum(len(m["args"][2]) for m in default_messages) == 3
        # A dramatiq Worker built without a queue list (runtime.start_background) consumes every declared queue
        assert {QUEUE, CONSENT_QUEUE} <= broker.get_declared_queues()
        assert jobs.sync_consent.priority < jobs.sync_items.priority
        assert jobs.deliver_consent.queue_name == jobs.project_events.queue_name == CONSENT_QUEUE
    finally:
        broker.close()


def test_consent_outbox_rows_are_claimed_first(db: Database, store: NewStore) -> None:
    # Given thousands of profile changes waiting in the outbox, then a withdrawal
    with db.writer() as session:
        for n in range(1500):
            outbox.add(session, store.id, Topic.CONTACT_UPSERT, n, {})
        outbox.add(session, store.id, Topic.CONSENT_CHANGED, 7, {"channel": "email"})
    calls: list[tuple[str, int]] = []
    # When the relay claims due rows (1,000 a tick)
    enqueue_due(db, lambda row: calls.append(("default", row)), send_consent=lambda row: calls.append(("consent", row)))
    # Then the withdrawal goes first, on the consent queue, although its row is the newest
    assert calls[0][0] == "consent" and [q for q, _ in calls].count("consent") == 1
    assert len(calls) == relay.CLAIM_LIMIT


def _messages(broker: EmbeddedBroker, name: str) -> list[dict[str, Any]]:
    import json

    q = broker.queues[name]
    return [json.loads(data) for data in list(q.queue)]


# -- full sync race (Klaviyo, in-process sandbox) --------------------------------------------------------------


@pytest.fixture
def sandbox() -> KlaviyoSandbox:
    return KlaviyoSandbox()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key="test-secret", credentials_key=new_key())


@pytest.fixture
def jobs(settings: Settings, db: Database, sandbox: KlaviyoSandbox, store: NewStore) -> Iterator[Jobs]:
    with db.writer() as session:
        cipher = CredentialCipher(settings.credentials_key)
        connections.connect(session, cipher, store.id, "klaviyo", api_key=DEFAULT_API_KEY, base_url=SANDBOX_URL)
    options = AdapterOptions(transport=httpx.WSGITransport(app=sandbox), job_timeout=5)
    broker = EmbeddedBroker()
    yield Jobs(settings=settings, db=db, broker=broker, adapter_options=options)
    broker.close()


def drain(db: Database, jobs: Jobs, store_id: int) -> None:
    project_all(db, store_id)
    enqueue_due(db, jobs._deliver_outbox)
    while queue.claim_due(db, jobs._sync_items, send_consent=jobs._sync_items):
        pass


def email_consent(sandbox: KlaviyoSandbox, email: str) -> Any:
    [profile] = [p for p in sandbox.state()["profiles"] if p["attributes"]["email"] == email]
    return profile["attributes"]["subscriptions"]["email"]["marketing"]["consent"]


def test_a_withdrawal_during_a_full_sync_page_is_sent_again_after_its_import(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    jobs: Jobs,
    sandbox: KlaviyoSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a subscribed contact, synced
    messages = [
        {"type": "identify", "userId": "u0", "messageId": "id0", "traits": {"email": "ann@example.com"}},
        track("Consent Updated", "c-sub", "u0", channel="email", status="subscribed"),
    ]
    assert post_messages(client, store.write_key, messages).status_code == 200
    drain(db, jobs, store.id)
    assert email_consent(sandbox, "ann@example.com") == "SUBSCRIBED"
    with db.reader() as session:
        adapter = jobs.engine.adapters.get(session, store.id, "klaviyo")
    real_upsert = adapter.upsert_profiles

    def upsert_while_withdrawn(*args: Any, **kwargs: Any) -> Any:
        # The page was read (subscribed); the person unsubscribes and that reaches Klaviyo before the import lands
        unsubscribe = track("Consent Updated", "c-unsub", "u0", channel="email", status="unsubscribed")
        assert post_messages(client, store.write_key, [unsubscribe]).status_code == 200
        drain(db, jobs, store.id)
        return real_upsert(*args, **kwargs)

    monkeypatch.setattr(adapter, "upsert_profiles", upsert_while_withdrawn)
    # When a full sync (forced: every contact) runs
    options = FullSyncOptions(force=True)
    FullSync(db, adapter, start(db, store.id, "klaviyo", options), options=options).run()
    # (the import did restore the subscription the withdrawal had removed: the race is real)
    assert email_consent(sandbox, "ann@example.com") == "SUBSCRIBED"
    # Then the page queued the contact's consent again, and once sent, Klaviyo ends with the person unsubscribed
    with db.reader() as session:
        pending = session.scalars(
            sa.select(SyncItem.subject_id).where(
                SyncItem.kind == SyncKind.CONSENT, SyncItem.status == SyncItemStatus.PENDING
            )
        ).all()
        contact_id = session.scalar(sa.select(ConsentState.contact_id))
    assert pending == [f"{contact_id}:email"]
    drain(db, jobs, store.id)
    assert email_consent(sandbox, "ann@example.com") != "SUBSCRIBED"
    # And a later full sync sends the unsubscribed state, never a subscription
    FullSync(db, adapter, start(db, store.id, "klaviyo", options), options=options).run()
    drain(db, jobs, store.id)
    assert email_consent(sandbox, "ann@example.com") != "SUBSCRIBED"


# -- admin API and CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def contact_id(client: FlaskClient, db: Database, store: NewStore) -> int:
    messages = [{"type": "identify", "userId": "u9", "messageId": "i9", "traits": {"email": "bo@example.com"}}]
    assert post_messages(client, store.write_key, messages).status_code == 200
    project_all(db, store.id)
    with db.reader() as session:
        from connector.store import Contact

        return int(session.scalar(sa.select(Contact.id).where(Contact.store_id == store.id)) or 0)


def ledger(db: Database) -> list[tuple[str, str, str, str]]:
    with db.reader() as session:
        rows = session.execute(
            sa.select(
                ConsentLedgerEntry.action,
                ConsentLedgerEntry.status_after,
                ConsentLedgerEntry.method,
                ConsentLedgerEntry.actor,
            ).order_by(ConsentLedgerEntry.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_admins_and_compliance_officers_withdraw_and_grant(
    client: FlaskClient, db: Database, admin_token: Callable[..., str], contact_id: int
) -> None:
    url = f"/admin/api/contacts/{contact_id}/consent"

    def post(token: str, body: Any) -> Any:
        return client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})

    compliance, admin = admin_token("compliance"), admin_token("admin")
    response = post(compliance, {"channel": "email", "status": "unsubscribed"})
    assert response.status_code == 200, response.json
    assert response.json["action"] == "withdraw" and response.json["contact_id"] == contact_id
    assert post(admin, {"channel": "sms", "status": "subscribed"}).json["action"] == "grant"
    [withdraw, grant] = ledger(db)
    assert withdraw[:3] == ("withdraw", "unsubscribed", "admin") and withdraw[3].endswith("-compliance@example.com")
    assert grant[:3] == ("grant", "subscribed", "admin") and grant[3].endswith("-admin@example.com")
    # The withdrawal is queued for the ESPs like any consent change
    with db.reader() as session:
        from connector.store import OutboxRow

        assert session.scalar(sa.select(sa.func.count(OutboxRow.id))) >= 2
    # Bad input names the field; unknown contacts are 404; other roles 403
    assert post(admin, {"channel": "fax", "status": "unsubscribed"}).json["field"] == "channel"
    assert post(admin, {"channel": "email", "status": "pending"}).json["field"] == "status"
    assert post(admin, ["x"]).json["field"] == "body"
    assert (
        client.post(
            "/admin/api/contacts/999999/consent",
            json={"channel": "email", "status": "unsubscribed"},
            headers={"Authorization": f"Bearer {admin}"},
        ).status_code
        == 404
    )
    for role in ("marketer", "viewer"):
        assert post(admin_token(role), {"channel": "email", "status": "unsubscribed"}).status_code == 403
    assert len(ledger(db)) == 2


def test_the_cli_sets_consent_by_contact_or_email(
    monkeypatch: pytest.MonkeyPatch, database_url: str, db: Database, contact_id: int
) -> None:
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    runner = CliRunner()
    args = ["consent", "set", "--channel", "email", "--status", "unsubscribed", "--actor", "ops@example.com"]
    result = runner.invoke(cli_main, [*args, "--email", "BO@example.com"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"contact {contact_id}: email unsubscribed" in result.output
    result = runner.invoke(
        cli_main,
        ["consent", "set", "--contact", str(contact_id), "--channel", "email", "--status", "subscribed", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert ledger(db)[0] == ("withdraw", "unsubscribed", "admin", "ops@example.com")
    assert ledger(db)[1][:3] == ("grant", "subscribed", "admin")
    missing = runner.invoke(cli_main, [*args, "--contact", "999999"])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    neither = runner.invoke(cli_main, args)
    assert neither.exit_code != 0 and "--contact" in neither.output
