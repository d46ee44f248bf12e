"""The incremental sync to ActiveCampaign: the same SyncEngine as Klaviyo's (no ESP-specific code in the engine),
a store connected to the in-process AC sandbox, every item settled done / skipped / dead / retried.

The connection is built by the ESP registry (connector/sync/adapters.py) from what ``espbridge esp connect`` stores,
with ``rate_limit_scale`` matching the sandbox's ``time_scale``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient

from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.jobs.broker import EmbeddedBroker
from connector.jobs.relay import Relay, enqueue_due
from connector.jobs.tasks import Jobs
from connector.sandbox.activecampaign import (
    DEFAULT_ACTID,
    DEFAULT_API_TOKEN,
    DEFAULT_EVENT_KEY,
    AcFaults,
    AcReject,
    ActiveCampaignSandbox,
)
from connector.settings import Settings
from connector.store import Database, EspLink, SyncItem, SyncItemStatus, SyncKind, utcnow
from connector.sync import queue
from connector.sync.adapters import AdapterOptions
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track
from tests.contract.activecampaign import validate_request
from web.cli import main as cli

URL = "http://ac.sandbox"
SCALE = 100


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


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key="test-secret",
        credentials_key=new_key(),
        relay_interval=0.05,
        retry_min_backoff=0.05,
        cart_abandon_after=1,
    )


def connect(db: Database, settings: Settings, store: NewStore, sandbox: ActiveCampaignSandbox, **extra: Any) -> None:
    list_id = next((lst["id"] for lst in sandbox.lists.values()), None)
    if list_id is None:
        with sandbox._lock:  # the account's newsletter list, made as the account's owner would
            list_id = sandbox._next_id("list")
            sandbox.lists[list_id] = {"id": list_id, "name": "Newsletter", "stringid": "newsletter"}
    with db.writer() as session:
        connections.connect(
            session,
            CredentialCipher(settings.credentials_key),
            store.id,
            "activecampaign",
            api_key=extra.pop("api_key", DEFAULT_API_TOKEN),
            base_url=URL,
            settings={
                "list_id": int(list_id),
                "actid": int(DEFAULT_ACTID),
                "track_url": f"{URL}/event",
                "field_map": {"plan": "Plan"},
                "rate_limit_scale": SCALE,
                **extra,
            },
            secrets={"event_key": DEFAULT_EVENT_KEY},
        )


@pytest.fixture
def connected(db: Database, settings: Settings, store: NewStore, sandbox: ActiveCampaignSandbox) -> None:
    connect(db, settings, store, sandbox)


@pytest.fixture
def jobs(settings: Settings, db: Database, sandbox: ActiveCampaignSandbox) -> Iterator[Jobs]:
    options = AdapterOptions(transport=httpx.WSGITransport(app=sandbox), job_timeout=5)
    broker = EmbeddedBroker()
    yield Jobs(settings=settings, db=db, broker=broker, adapter_options=options)
    broker.close()


def drain(db: Database, jobs: Jobs, store_id: int) -> None:
    project_all(db, store_id)
    enqueue_due(db, jobs._deliver_outbox)
    queue.claim_due(db, jobs._sync_items)


def items(db: Database, kind: str | None = None) -> list[SyncItem]:
    with db.reader() as session:
        query = sa.select(SyncItem).order_by(SyncItem.id)
        if kind is not None:
            query = query.where(SyncItem.kind == kind)
        return list(session.scalars(query))


def identify(user_id: str, message_id: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user_id, "messageId": message_id, "traits": traits}


def consent(user_id: str, message_id: str, channel: str, status: str) -> dict[str, Any]:
    return track("Consent Updated", message_id, user_id, channel=channel, status=status)


def statuses(db: Database) -> list[tuple[str, str, str | None]]:
    return [(i.kind, i.status, i.last_error) for i in items(db)]


@pytest.mark.usefixtures("connected")
def test_profiles_consent_events_and_orders_reach_activecampaign(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: ActiveCampaignSandbox
) -> None:
    order = track(
        "Order Completed", "m4", "u1", order_id="o-1", total=42, currency="USD",
        products=[{"product_id": "p1", "name": "Shirt", "price": 21, "quantity": 2}],
    )  # fmt: skip
    response = post_messages(
        client,
        store.write_key,
        [
            identify("u1", "m1", email="Ada@Example.com", firstName="Ada", plan="gold"),
            track("Product Viewed", "m2", "u1", product_id="p1", price=12.5),
            consent("u1", "m3", "email", "subscribed"),
            order,
            identify("anon-ish", "m5", firstName="NoEmail"),
        ],
    )
    assert response.status_code == 200
    drain(db, jobs, store.id)

    [ada] = sandbox.contacts.values()
    assert (ada["email"], ada["firstName"]) == ("ada@example.com", "Ada")
    [plan] = sandbox.fields.values()
    assert plan["title"] == "Plan"
    assert [fv["value"] for fv in sandbox.field_values.values()] == ["gold"]
    assert [m["status"] for m in sandbox.memberships.values()] == ["1"]
    assert {e["event"] for e in sandbox.tracked_events} >= {"Product Viewed"}
    [ecom] = sandbox.ecom_orders.values()
    assert (ecom["externalid"], ecom["totalPrice"], ecom["source"]) == ("o-1", 4200, "1")
    settled = statuses(db)
    assert all(s in (SyncItemStatus.DONE, SyncItemStatus.SKIPPED) for _, s, _ in settled), settled
    assert [k for k, s, _ in settled if s == SyncItemStatus.SKIPPED] == [SyncKind.PROFILE]  # the one without email
    with db.reader() as session:
        [link] = session.scalars(sa.select(EspLink).where(EspLink.esp == "activecampaign"))
    assert link.remote_id == ada["id"] and link.synced_hash
    # an unchanged profile costs no request
    before = len(sandbox.requests)
    post_messages(client, store.write_key, [identify("u1", "m6", email="ada@example.com", plan="gold")])
    drain(db, jobs, store.id)
    assert len(sandbox.requests) == before and items(db)[-1].status == SyncItemStatus.DONE


@pytest.mark.usefixtures("connected")
def test_a_rejected_record_is_a_dead_letter_and_the_rest_of_the_batch_goes(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: ActiveCampaignSandbox
) -> None:
    sandbox.faults = AcFaults(reject=AcReject(contains=["bad"], detail="Invalid email address."))
    messages = [identify(f"u{i}", f"m{i}", email=f"{'bad' if i == 3 else 'ok'}{i}@example.com") for i in range(30)]
    post_messages(client, store.write_key, messages)
    drain(db, jobs, store.id)
    for _ in range(5):  # a 429 from the sandbox's 10 ms windows on a loaded machine: retried, not the point here
        with db.writer() as session:
            retried = session.execute(
                sa.update(SyncItem)
                .where(SyncItem.status == SyncItemStatus.PENDING, SyncItem.last_error.like("RateLimited%"))
                .values(available_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
        if not retried:
            break
        queue.claim_due(db, jobs._sync_items)
    settled = statuses(db)
    dead = [e for _, s, e in settled if s == SyncItemStatus.DEAD]
    assert len(dead) == 1 and "Invalid email address." in (dead[0] or "")
    assert sum(1 for _, s, _ in settled if s == SyncItemStatus.DONE) == 29
    assert len(sandbox.contacts) == 29


@pytest.mark.usefixtures("connected")
def test_a_429_reschedules_at_retry_after_and_a_503_backs_off(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: ActiveCampaignSandbox
) -> None:
    sandbox.faults = AcFaults(storm_429=1, storm_retry_after=7)
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    [item] = items(db)
    assert item.status == SyncItemStatus.PENDING and "RateLimited" in (item.last_error or "")
    assert 6 <= (item.available_at - item.created_at).total_seconds() <= 9
    sandbox.faults = AcFaults(error_rate=1.0, error_status=503)
    with db.writer() as session:
        session.get_one(SyncItem, item.id).available_at = item.created_at
    queue.claim_due(db, jobs._sync_items)
    [item] = items(db)
    assert item.status == SyncItemStatus.PENDING and "Transient" in (item.last_error or "")
    sandbox.faults = AcFaults()
    with db.writer() as session:
        session.get_one(SyncItem, item.id).available_at = item.created_at
    queue.claim_due(db, jobs._sync_items)
    assert items(db)[0].status == SyncItemStatus.DONE and len(sandbox.contacts) == 1


def test_a_wrong_token_dead_letters_and_replay_sends_after_the_fix(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    jobs: Jobs,
    sandbox: ActiveCampaignSandbox,
    settings: Settings,
) -> None:
    connect(db, settings, store, sandbox, api_key="wrong-token")
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    [item] = items(db)
    assert item.status == SyncItemStatus.DEAD and "AuthFailed" in (item.last_error or "")
    connect(db, settings, store, sandbox)
    with db.writer() as session:
        assert queue.replay(session, store_id=store.id) == 1
    queue.claim_due(db, jobs._sync_items)
    assert items(db)[0].status == SyncItemStatus.DONE


@pytest.mark.usefixtures("connected")
def test_a_newer_unsubscribe_at_activecampaign_is_kept_and_a_withdrawal_unsubscribes(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: ActiveCampaignSandbox
) -> None:
    old = (utcnow() - dt.timedelta(hours=1)).isoformat()
    grant = {**consent("u1", "m2", "email", "subscribed"), "timestamp": old}
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    # Ada unsubscribed at ActiveCampaign just now; our (older) grant arrives late
    [ada] = sandbox.contacts.values()
    list_id = next(iter(sandbox.lists))
    sandbox.set_list_status(ada["id"], list_id, 2)
    post_messages(client, store.write_key, [grant])
    drain(db, jobs, store.id)
    [item] = items(db, SyncKind.CONSENT)
    assert item.status == SyncItemStatus.SKIPPED and item.last_error == "unsubscribed at ActiveCampaign after our grant"
    assert sandbox.memberships[(ada["id"], list_id)]["status"] == "2"


def checkout(message_id: str, when: dt.datetime) -> dict[str, Any]:
    message = track(
        "Checkout Started", message_id, "u1", cart_id="c-1", currency="USD",
        products=[{"product_id": "p1", "name": "Shirt", "price": 20, "quantity": 2}],
    )  # fmt: skip
    return {**message, "timestamp": when.isoformat()}


@pytest.mark.usefixtures("connected")
def test_an_abandoned_cart_reaches_deep_data_and_the_order_converts_it(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: ActiveCampaignSandbox
) -> None:
    post_messages(client, store.write_key, [identify("u1", "m0", email="ada@example.com")])
    post_messages(client, store.write_key, [checkout("m1", utcnow() - dt.timedelta(seconds=2))])
    drain(db, jobs, store.id)
    assert Relay(jobs).tick().carts_abandoned == 1
    drain(db, jobs, store.id)
    [item] = items(db, SyncKind.CART)
    assert item.status == SyncItemStatus.DONE, item.last_error
    [cart] = sandbox.ecom_orders.values()
    assert (cart["externalcheckoutid"], cart["totalPrice"]) == ("c-1", 4000) and cart["abandonedDate"]
    order = track("Order Completed", "m2", "u1", order_id="o-1", cart_id="c-1", total=40, products=[])
    post_messages(client, store.write_key, [order])
    drain(db, jobs, store.id)
    [converted] = sandbox.ecom_orders.values()
    assert converted["externalid"] == "o-1" and converted["abandonedDate"] is None


def test_esp_connect_activecampaign_from_the_cli(
    db: Database, store: NewStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", settings.database_url)
    assert settings.credentials_key is not None
    monkeypatch.setenv("ESPBRIDGE_CREDENTIALS_KEY", settings.credentials_key.get_secret_value())
    args = [
        "esp", "connect", "activecampaign", "--api-key", "tok", "--base-url", "https://acct.api-us1.com",
        "--event-key", "evk", "--setting", "list_id=3", "--setting", "actid=1000000",
        "--setting", 'field_map={"plan": "Plan"}', "--setting", "segment_mirror=lists", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with db.reader() as session:
        cipher = CredentialCipher(settings.credentials_key)
        loaded = connections.load(session, cipher, store.id, "activecampaign")
    assert loaded.settings["list_id"] == 3 and loaded.secrets["event_key"].get_secret_value() == "evk"
    bad = CliRunner().invoke(cli, [*args[:9], "--setting", "segment_mirror=segments"])
    assert bad.exit_code != 0 and "setting.segment_mirror" in bad.output
