"""The incremental sync to Klaviyo: outbox → sync items per ESP → batches → the sandbox, with per-item outcomes.

The sandbox runs in process (httpx's WSGI transport), so these run on both databases in seconds; the fault
tests against a sandbox *process*, Redis and a killed worker are in tests/e2e/test_sync_faults.py.
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

from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.jobs.broker import EmbeddedBroker
from connector.jobs.relay import enqueue_due
from connector.jobs.tasks import Jobs
from connector.sandbox.klaviyo import DEFAULT_API_KEY, Faults, KlaviyoSandbox, Reject
from connector.settings import Settings
from connector.store import Database, EspConnection, EspLink, SyncItem, SyncItemStatus
from connector.sync import queue
from connector.sync.adapters import AdapterOptions
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track
from web.cli import main as cli

SANDBOX_URL = "http://klaviyo.sandbox"


@pytest.fixture
def sandbox() -> KlaviyoSandbox:
    return KlaviyoSandbox()


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
def connected(db: Database, settings: Settings, store: NewStore) -> None:
    with db.writer() as session:
        cipher = CredentialCipher(settings.credentials_key)
        connections.connect(session, cipher, store.id, "klaviyo", api_key=DEFAULT_API_KEY, base_url=SANDBOX_URL)


@pytest.fixture
def jobs(settings: Settings, db: Database, sandbox: KlaviyoSandbox) -> Iterator[Jobs]:
    options = AdapterOptions(transport=httpx.WSGITransport(app=sandbox), job_timeout=5)
    broker = EmbeddedBroker()
    yield Jobs(settings=settings, db=db, broker=broker, adapter_options=options)
    broker.close()


def drain(db: Database, jobs: Jobs, store_id: int) -> None:
    """Run the whole path synchronously: project, fan out every outbox row, send every due sync item."""
    project_all(db, store_id)
    enqueue_due(db, jobs._deliver_outbox)
    queue.claim_due(db, jobs._sync_items)


def items(db: Database) -> list[SyncItem]:
    with db.reader() as session:
        return list(session.scalars(sa.select(SyncItem).order_by(SyncItem.id)))


def identify(user_id: str, message_id: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user_id, "messageId": message_id, "traits": traits}


def consent(user_id: str, message_id: str, channel: str, status: str) -> dict[str, Any]:
    return track("Consent Updated", message_id, user_id, channel=channel, status=status)


@pytest.mark.usefixtures("connected")
def test_profiles_events_and_consent_reach_klaviyo(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    response = post_messages(
        client,
        store.write_key,
        [
            identify("u1", "m1", email="Ada@Example.com", firstName="Ada", plan="gold"),
            track("Product Viewed", "m2", "u1", product_id="p1", price=12.5),
            consent("u1", "m3", "email", "subscribed"),
        ],
    )
    assert response.status_code == 200
    drain(db, jobs, store.id)

    state = sandbox.state()
    [profile] = state["profiles"]
    assert profile["attributes"]["email"] == "ada@example.com"
    assert profile["attributes"]["first_name"] == "Ada"
    assert profile["attributes"]["properties"]["plan"] == "gold"
    metrics = sorted(e["metric"] for e in state["events"])
    assert "Product Viewed" in metrics
    assert {e["unique_id"] for e in state["events"]} >= {"m2"}
    assert state["subscriptions"]  # the email subscription went out
    assert all(i.status == SyncItemStatus.DONE for i in items(db)), [(i.kind, i.last_error) for i in items(db)]
    with db.reader() as session:
        [link] = session.scalars(sa.select(EspLink))
    assert link.remote_id == profile["id"] and link.synced_hash


@pytest.mark.usefixtures("connected")
def test_an_unchanged_profile_costs_no_request(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    before = sandbox.state()["requests"]["total"]
    # When the same traits arrive again (a storefront re-identifies on every page)
    post_messages(client, store.write_key, [identify("u1", "m2", email="ada@example.com")])
    drain(db, jobs, store.id)
    # Then the item is done without any request
    assert sandbox.state()["requests"]["total"] == before
    assert [i.status for i in items(db)] == [SyncItemStatus.DONE, SyncItemStatus.DONE]


@pytest.mark.usefixtures("connected")
def test_changes_to_one_contact_coalesce_into_one_request(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    post_messages(
        client, store.write_key, [identify("u1", f"m{i}", email="ada@example.com", visits=i) for i in range(5)]
    )
    drain(db, jobs, store.id)
    by_op = sandbox.state()["requests"]["by_operation"]
    assert by_op == {"create_or_update_profile": 1}
    assert sandbox.state()["profiles"][0]["attributes"]["properties"]["visits"] == 4


@pytest.mark.usefixtures("connected")
def test_a_rejected_record_is_a_dead_letter_and_the_rest_of_the_batch_goes(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    sandbox.faults = Faults(reject=Reject(contains=["bad"], detail="Invalid email address."))
    messages = [identify(f"u{i}", f"m{i}", email=f"{'bad' if i == 3 else 'ok'}{i}@example.com") for i in range(150)]
    post_messages(client, store.write_key, messages)
    drain(db, jobs, store.id)
    statuses = {i.subject_id: (i.status, i.last_error) for i in items(db)}
    dead = [s for s, (status, _) in statuses.items() if status == SyncItemStatus.DEAD]
    assert len(dead) == 1
    assert "Invalid email address." in (statuses[dead[0]][1] or "")
    assert sum(1 for status, _ in statuses.values() if status == SyncItemStatus.DONE) == 149
    assert len(sandbox.state()["profiles"]) == 149


@pytest.mark.usefixtures("connected")
def test_a_429_reschedules_at_retry_after_and_a_5xx_backs_off(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    sandbox.faults = Faults(storm_429=1, storm_retry_after=7)
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    [item] = items(db)
    assert item.status == SyncItemStatus.PENDING and item.attempts == 1
    wait = (item.available_at - item.created_at).total_seconds()
    assert 6 <= wait <= 9, wait
    assert "RateLimited" in (item.last_error or "")
    # When it is due again, it goes
    with db.writer() as session:
        session.get(SyncItem, item.id).available_at = item.created_at  # type: ignore[union-attr]
    queue.claim_due(db, jobs._sync_items)
    assert items(db)[0].status == SyncItemStatus.DONE


@pytest.mark.usefixtures("connected")
def test_auth_failures_dead_letter_at_once_and_replay_requeues(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox, settings: Settings
) -> None:
    with db.writer() as session:
        cipher = CredentialCipher(settings.credentials_key)
        connections.connect(session, cipher, store.id, "klaviyo", api_key="pk_wrong", base_url=SANDBOX_URL)
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    [item] = items(db)
    assert item.status == SyncItemStatus.DEAD and "AuthFailed" in (item.last_error or "")
    # When the key is fixed and the dead letter replayed
    with db.writer() as session:
        connections.connect(session, cipher, store.id, "klaviyo", api_key=DEFAULT_API_KEY, base_url=SANDBOX_URL)
        assert queue.replay(session, store_id=store.id) == 1
    queue.claim_due(db, jobs._sync_items)
    assert items(db)[0].status == SyncItemStatus.DONE
    assert len(sandbox.state()["profiles"]) == 1


@pytest.mark.usefixtures("connected")
def test_transient_failures_die_after_the_retry_window(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    sandbox.faults = Faults(error_rate=1.0, error_status=503)
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    [item] = items(db)
    assert item.status == SyncItemStatus.PENDING and "Transient" in (item.last_error or "")
    # When the item is older than retry_max_age and fails again
    with db.writer() as session:
        row = session.get(SyncItem, item.id)
        assert row is not None
        row.created_at = row.created_at - dt.timedelta(days=2)
        row.available_at = row.created_at
    queue.claim_due(db, jobs._sync_items)
    [item] = items(db)
    assert item.status == SyncItemStatus.DEAD and "gave up after 2 attempts" in (item.last_error or "")


def test_without_a_connection_nothing_is_queued(client: FlaskClient, db: Database, store: NewStore, jobs: Jobs) -> None:
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    assert items(db) == []


@pytest.mark.usefixtures("connected")
def test_anonymous_events_are_skipped_with_a_reason(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    post_messages(client, store.write_key, [track("Product Viewed", "m1", None) | {"anonymousId": "a1"}])
    drain(db, jobs, store.id)
    [item] = items(db)
    assert item.status == SyncItemStatus.SKIPPED and "not sendable" in (item.last_error or "")
    assert sandbox.state()["requests"]["total"] == 0


@pytest.mark.usefixtures("connected")
def test_a_withdrawal_unsubscribes_at_klaviyo(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    post_messages(
        client,
        store.write_key,
        [identify("u1", "m1", email="ada@example.com"), consent("u1", "m2", "email", "subscribed")],
    )
    drain(db, jobs, store.id)
    assert list(sandbox.state()["subscriptions"].values()) == [{"email": "SUBSCRIBED"}]
    post_messages(client, store.write_key, [consent("u1", "m3", "email", "unsubscribed")])
    drain(db, jobs, store.id)
    assert list(sandbox.state()["subscriptions"].values()) == [{"email": "UNSUBSCRIBED"}]
    assert sandbox.state()["requests"]["by_operation"]["bulk_unsubscribe_profiles"] == 1


@pytest.mark.usefixtures("connected")
def test_unusable_connection_settings_make_dead_letters_not_a_stuck_queue(
    client: FlaskClient, db: Database, store: NewStore, jobs: Jobs, sandbox: KlaviyoSandbox
) -> None:
    with db.writer() as session:
        session.execute(sa.update(EspConnection).values(settings={"rate_limit_scale": "fast"}))
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    [item] = items(db)
    assert item.status == SyncItemStatus.DEAD and "setting.rate_limit_scale" in (item.last_error or "")
    assert sandbox.state()["requests"]["total"] == 0


@pytest.mark.usefixtures("connected")
def test_dead_letters_are_listed_with_the_esp_error_and_replayed_over_the_admin_api_and_cli(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    jobs: Jobs,
    sandbox: KlaviyoSandbox,
    admin_token: Callable[..., str],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.faults = Faults(reject=Reject(emails=["ada@example.com"], detail="Invalid email address."))
    post_messages(client, store.write_key, [identify("u1", "m1", email="ada@example.com")])
    drain(db, jobs, store.id)
    viewer = {"Authorization": f"Bearer {admin_token('viewer')}"}
    listed = client.get("/admin/api/dead-letters", headers=viewer).get_json()
    assert listed["total"] == 1 and "Invalid email address." in listed["dead_letters"][0]["last_error"]
    assert client.post("/admin/api/dead-letters/replay", json={}, headers=viewer).status_code == 403
    admin = {"Authorization": f"Bearer {admin_token('admin')}"}
    assert client.post("/admin/api/dead-letters/replay", json={"ids": "all"}, headers=admin).status_code == 400

    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", settings.database_url)
    cli_listed = CliRunner().invoke(cli, ["dead-letters", "list", "--json"])
    assert json.loads(cli_listed.output)["dead_letters"][0]["id"] == listed["dead_letters"][0]["id"]

    sandbox.faults = Faults()
    replayed = client.post("/admin/api/dead-letters/replay", json={}, headers=admin).get_json()
    assert replayed == {"replayed": 1}
    queue.claim_due(db, jobs._sync_items)
    assert [i.status for i in items(db)] == [SyncItemStatus.DONE]
    assert "1 dead letters" not in CliRunner().invoke(cli, ["dead-letters", "list"]).output
