"""Full sync to Klaviyo: keyset pages, fingerprint diff, dry run, resume after a crash, CLI and admin API."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.esp.klaviyo import KlaviyoClient
from connector.esp.klaviyo_adapter import KlaviyoAdapter
from connector.runtime import Runtime
from connector.sandbox.klaviyo import DEFAULT_API_KEY, Faults, KlaviyoSandbox, Reject
from connector.settings import Settings
from connector.store import Database, EspLink, SyncRun, SyncRunStatus
from connector.sync.full import FullSync, FullSyncOptions, SyncRunning, start
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track
from web.cli import main as cli

CONTACTS = 7


@pytest.fixture
def sandbox() -> KlaviyoSandbox:
    return KlaviyoSandbox()


@pytest.fixture
def served(sandbox: KlaviyoSandbox) -> Iterator[str]:
    """The sandbox on a real loopback port (for code that builds its own HTTP client: CLI, worker)."""
    server = make_server("127.0.0.1", 0, sandbox, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key="test-secret", credentials_key=new_key())


@pytest.fixture
def adapter(sandbox: KlaviyoSandbox) -> Iterator[KlaviyoAdapter]:
    client = KlaviyoClient(DEFAULT_API_KEY, base_url="http://sandbox", transport=httpx.WSGITransport(app=sandbox))
    yield KlaviyoAdapter(client, job_timeout=5, poll_interval=0.01)
    client.close()


@pytest.fixture
def shop(client: FlaskClient, db: Database, store: NewStore) -> NewStore:
    """A store with contacts (one anonymous), consents and events, all projected."""
    messages: list[dict[str, Any]] = []
    for i in range(CONTACTS):
        messages.append(
            {
                "type": "identify",
                "userId": f"u{i}",
                "messageId": f"id{i}",
                "traits": {"email": f"c{i}@example.com", "firstName": f"C{i}"},
            }
        )
        messages.append(track("Product Viewed", f"view{i}", f"u{i}", product_id=f"p{i}"))
    messages.append(track("Consent Updated", "consent0", "u0", channel="email", status="subscribed"))
    messages.append(track("Consent Updated", "consent1", "u1", channel="email", status="unsubscribed"))
    messages.append(
        {"type": "track", "event": "Product Viewed", "anonymousId": "anon", "messageId": "anon1", "properties": {}}
    )
    assert post_messages(client, store.write_key, messages).status_code == 200
    project_all(db, store.id)
    return store


def full_sync(db: Database, adapter: KlaviyoAdapter, store: NewStore, **options: Any) -> SyncRun:
    opts = FullSyncOptions(**options)
    return FullSync(db, adapter, start(db, store.id, "klaviyo", opts), options=opts).run()


def requests_made(sandbox: KlaviyoSandbox) -> dict[str, int]:
    return dict(sandbox.state()["requests"]["by_operation"])


def test_a_full_sync_sends_profiles_consents_and_events_then_an_unchanged_store_costs_nothing(
    db: Database, adapter: KlaviyoAdapter, shop: NewStore, sandbox: KlaviyoSandbox
) -> None:
    run = full_sync(db, adapter, shop, page_size=3)
    assert run.status == SyncRunStatus.DONE
    assert (run.total, run.processed, run.created, run.updated, run.unchanged) == (
        CONTACTS + 1,
        CONTACTS + 1,
        CONTACTS,
        0,
        0,
    )
    assert (run.rejected, run.failed, run.skipped) == (0, 0, 1)  # the anonymous visitor has no identifier
    state = sandbox.state()
    assert sorted(p["attributes"]["email"] for p in state["profiles"]) == sorted(
        f"c{i}@example.com" for i in range(CONTACTS)
    )
    # Events are backfilled once each (the anonymous one cannot go), consents as historical imports
    assert sorted(e["unique_id"] for e in state["events"] if e["metric"] == "Product Viewed") == sorted(
        f"view{i}" for i in range(CONTACTS)
    )
    assert run.events_sent == CONTACTS + 2  # + the two Consent Updated events
    made = requests_made(sandbox)
    assert made["bulk_import_profiles"] == 3  # pages of 3, 3, 2 (one of them the anonymous visitor)
    assert made["bulk_subscribe_profiles"] == 1 and made["bulk_unsubscribe_profiles"] == 1
    assert run.requests == sum(made.values())

    # A second run: nothing changed, so not a single request
    again = full_sync(db, adapter, shop, page_size=3)
    assert (again.unchanged, again.created, again.updated, again.events_sent, again.requests) == (CONTACTS, 0, 0, 0, 0)
    assert requests_made(sandbox) == made


def test_only_changed_contacts_are_sent_unless_forced(
    client: FlaskClient, db: Database, adapter: KlaviyoAdapter, shop: NewStore, sandbox: KlaviyoSandbox
) -> None:
    full_sync(db, adapter, shop)
    post_messages(
        client, shop.write_key, [{"type": "identify", "userId": "u3", "messageId": "x", "traits": {"firstName": "New"}}]
    )
    project_all(db, shop.id)
    run = full_sync(db, adapter, shop)
    assert (run.updated, run.unchanged, run.created) == (1, CONTACTS - 1, 0)
    assert any(p["attributes"]["first_name"] == "New" for p in sandbox.state()["profiles"])
    forced = full_sync(db, adapter, shop, force=True)
    assert (forced.updated, forced.unchanged) == (CONTACTS, 0)
    assert forced.events_sent == CONTACTS + 2  # forced runs resend events too (Klaviyo dedupes by unique_id)
    assert len([e for e in sandbox.state()["events"] if e["metric"] == "Product Viewed"]) == CONTACTS


def test_a_dry_run_counts_without_sending_or_linking(
    db: Database, adapter: KlaviyoAdapter, shop: NewStore, sandbox: KlaviyoSandbox
) -> None:
    run = full_sync(db, adapter, shop, dry_run=True)
    assert (run.created, run.updated, run.unchanged, run.skipped, run.events_sent) == (CONTACTS, 0, 0, 1, CONTACTS + 2)
    assert run.requests == 0 and sandbox.state()["requests"]["total"] == 0
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count(EspLink.id))) == 0
    # and a real run afterwards still sends everything (the dry run did not move the event window)
    assert full_sync(db, adapter, shop).events_sent == CONTACTS + 2


def test_rejected_contacts_are_counted_and_named_and_the_rest_synced(
    db: Database, adapter: KlaviyoAdapter, shop: NewStore, sandbox: KlaviyoSandbox
) -> None:
    sandbox.faults = Faults(
        reject=Reject(emails=["c2@example.com"], detail="Invalid email."), operations=["bulk_import_profiles"]
    )
    run = full_sync(db, adapter, shop)
    assert (run.created, run.rejected) == (CONTACTS - 1, 1)
    [rejection] = run.rejections
    assert "Invalid email." in str(rejection["reason"])
    # The rejected contact has no link, so the next run tries it again
    sandbox.faults = Faults()
    assert full_sync(db, adapter, shop).created == 1


class Crash(BaseException):
    """Stands in for the process dying (not an Exception: nothing in the run may catch it)."""


def test_an_interrupted_run_resumes_from_its_cursor(
    db: Database, adapter: KlaviyoAdapter, shop: NewStore, sandbox: KlaviyoSandbox
) -> None:
    options = FullSyncOptions(page_size=2)
    run_id = start(db, shop.id, "klaviyo", options)
    pages: list[int] = []

    def crash_after_two_pages(run: SyncRun) -> None:
        pages.append(run.processed)
        if len(pages) == 2:
            raise Crash

    with pytest.raises(Crash):
        FullSync(db, adapter, run_id, options=options, progress=crash_after_two_pages).run()
    # While its heartbeat is fresh, the run counts as alive elsewhere
    with pytest.raises(SyncRunning):
        start(db, shop.id, "klaviyo", options)
    with db.writer() as session:
        row = session.get(SyncRun, run_id)
        assert row is not None and row.status == SyncRunStatus.RUNNING and row.processed == 4
        row.heartbeat_at -= dt.timedelta(minutes=10)
    # Starting again takes over the same run and continues after the last committed page
    assert start(db, shop.id, "klaviyo", options) == run_id
    run = FullSync(db, adapter, run_id, options=options).run()
    assert (run.status, run.processed, run.created) == (SyncRunStatus.DONE, CONTACTS + 1, CONTACTS)
    assert requests_made(sandbox)["bulk_import_profiles"] == 4  # 2 pages before the crash, 2 after: none twice
    assert len(sandbox.state()["profiles"]) == CONTACTS


def connect_to(db: Database, settings: Settings, store: NewStore, url: str) -> None:
    with db.writer() as session:
        connections.connect(
            session,
            CredentialCipher(settings.credentials_key),
            store.id,
            "klaviyo",
            api_key=DEFAULT_API_KEY,
            base_url=url,
        )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_cli_runs_a_full_sync_with_progress_and_counts(
    db: Database,
    settings: Settings,
    shop: NewStore,
    served: str,
    sandbox: KlaviyoSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect_to(db, settings, shop, served)
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("ESPBRIDGE_CREDENTIALS_KEY", settings.credentials_key.get_secret_value())  # type: ignore[union-attr]
    runner = CliRunner()
    dry = runner.invoke(cli, ["sync", "full", "--esp", "klaviyo", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["created"] == CONTACTS and sandbox.state()["requests"]["total"] == 0
    result = runner.invoke(cli, ["sync", "full", "--esp", "klaviyo", "--page-size", "3"])
    assert result.exit_code == 0, result.output
    assert "contacts" in result.stderr  # the progress bar
    assert f"created {CONTACTS}, updated 0, unchanged 0, rejected 0, failed 0, skipped 1" in result.stdout
    runs = runner.invoke(cli, ["sync", "runs", "--json"])
    assert [r["dry_run"] for r in json.loads(runs.output)["runs"]] == [False, True]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_admin_api_starts_a_full_sync_that_a_worker_runs(
    client: FlaskClient,
    db: Database,
    settings: Settings,
    runtime: Runtime,
    shop: NewStore,
    served: str,
    sandbox: KlaviyoSandbox,
    admin_token: Callable[..., str],
) -> None:
    connect_to(db, settings, shop, served)
    viewer = {"Authorization": f"Bearer {admin_token('viewer')}"}
    admin = {"Authorization": f"Bearer {admin_token('admin')}"}
    assert client.post("/admin/api/sync/full", json={"esp": "klaviyo"}, headers=viewer).status_code == 403
    bad = client.post("/admin/api/sync/full", json={"esp": "mailchimp"}, headers=admin)
    assert bad.status_code == 400 and bad.get_json()["field"] == "esp"
    assert (
        client.post("/admin/api/sync/full", json={"esp": "klaviyo", "force": "yes"}, headers=admin).status_code == 400
    )
    started = client.post("/admin/api/sync/full", json={"esp": "klaviyo"}, headers=admin)
    assert started.status_code == 202
    run_id = started.get_json()["run"]["id"]
    assert client.post("/admin/api/sync/full", json={"esp": "klaviyo"}, headers=admin).status_code == 409
    runtime.start_background()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = client.get(f"/admin/api/sync/runs/{run_id}", headers=viewer).get_json()["run"]
        if run["status"] != "running":
            break
        time.sleep(0.1)
    assert run["status"] == "done" and run["created"] == CONTACTS
    assert len(sandbox.state()["profiles"]) == CONTACTS
    listed = client.get("/admin/api/sync/runs", headers=viewer).get_json()["runs"]
    assert [r["id"] for r in listed] == [run_id]
