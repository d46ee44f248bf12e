"""Full sync to ActiveCampaign through the same ``FullSync`` as Klaviyo's: contacts with their consent in bulk
imports (one request per 250 contacts), or one contact/sync each; then the events backfill (orders as historical
Deep Data, ``source`` 0); a second run sends nothing. Against the in-process sandbox, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.credentials import CredentialCipher
from connector.esp import connections
from connector.esp.base import EspAdapter
from connector.jobs.tasks import Jobs
from connector.sandbox.activecampaign import ActiveCampaignSandbox
from connector.settings import Settings
from connector.store import Database, SyncRun, SyncRunStatus
from connector.sync.adapters import AdapterOptions, build_adapter
from connector.sync.full import FullSync, FullSyncOptions, start
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track
from tests.integration.test_sync_engine_activecampaign import connect, jobs, sandbox, settings

__all__ = ["jobs", "sandbox", "settings"]  # fixtures shared with the incremental tests

CONTACTS = 30


def seed(client: FlaskClient, db: Database, store: NewStore) -> None:
    """30 shoppers with an email (every third subscribed), one anonymous visitor, a view and an order."""
    messages: list[dict[str, Any]] = []
    for n in range(CONTACTS):
        messages.append(
            {"type": "identify", "userId": f"u{n}", "messageId": f"i{n}", "traits": {"email": f"p{n}@example.com"}}
        )
        if n % 3 == 0:
            messages.append(track("Consent Updated", f"c{n}", f"u{n}", channel="email", status="subscribed"))
    messages.append({"type": "identify", "anonymousId": "anon-1", "messageId": "anon", "traits": {"plan": "free"}})
    messages.append(track("Product Viewed", "v1", "u1", product_id="p1"))
    product = {"product_id": "p1", "price": 12.5, "quantity": 2}
    messages.append(track("Order Completed", "o1", "u2", order_id="o-1", total=25, currency="EUR", products=[product]))
    response = post_messages(client, store.write_key, messages)
    assert response.status_code == 200 and response.json["accepted"] == len(messages), response.json
    project_all(db, store.id)


def run_full_sync(db: Database, jobs: Jobs, store_id: int) -> SyncRun:
    with db.reader() as session:
        adapter: EspAdapter = jobs.engine.adapters.get(session, store_id, "activecampaign")
    run_id = start(db, store_id, "activecampaign", FullSyncOptions())
    return FullSync(db, adapter, run_id).run()


def operations(sandbox: ActiveCampaignSandbox) -> dict[str, int]:
    return dict(sandbox.state()["requests"]["by_operation"])


def test_a_full_sync_imports_contacts_with_their_consent_then_backfills_events_once(
    client: FlaskClient, db: Database, store: NewStore, settings: Settings, jobs: Jobs, sandbox: ActiveCampaignSandbox
) -> None:
    seed(client, db, store)
    connect(db, settings, store, sandbox)
    run = run_full_sync(db, jobs, store.id)
    assert run.status == SyncRunStatus.DONE, run.error
    # Every shopper with an email is at ActiveCampaign once; the anonymous visitor is skipped (no email)
    state = sandbox.state()
    assert sorted(c["email"] for c in state["contacts"]) == sorted(f"p{n}@example.com" for n in range(CONTACTS))
    assert (run.created, run.skipped, run.rejected, run.failed) == (CONTACTS, 1, 0, 0)
    # In one import request, their consent inside it: every third one is subscribed to the newsletter
    ops = operations(sandbox)
    assert ops.get("bulk_import") == 1 and "sync_contact" not in ops and "update_list_status" not in ops
    by_id = {c["id"]: c["email"] for c in state["contacts"]}
    subscribed = sorted(by_id[m["contact"]] for m in state["contactLists"] if m["status"] == "1")
    assert subscribed == sorted(f"p{n}@example.com" for n in range(0, CONTACTS, 3))
    # Then the events: the order as historical Deep Data (source 0, cents), the view through event tracking
    [order] = state["ecomOrders"]
    assert (order["externalid"], str(order["source"]), int(order["totalPrice"])) == ("o-1", "0", 2500)
    tracked = [(e["event"], e["email"]) for e in state["trackedEvents"]]
    assert ("Product Viewed", "p1@example.com") in tracked
    assert not any(name == "Order Completed" for name, _ in tracked)  # orders are Deep Data, not events
    assert run.events_sent == 2 + len(range(0, CONTACTS, 3))  # the view, the order, the consent events

    # A second run finds nothing changed and sends nothing
    before = state["requests"]["total"]
    again = run_full_sync(db, jobs, store.id)
    assert (again.unchanged, again.created, again.updated, again.events_sent) == (CONTACTS, 0, 0, 0)
    assert sandbox.state()["requests"]["total"] == before


def test_full_sync_one_contact_at_a_time_when_configured(
    client: FlaskClient, db: Database, store: NewStore, settings: Settings, jobs: Jobs, sandbox: ActiveCampaignSandbox
) -> None:
    seed(client, db, store)
    connect(db, settings, store, sandbox, full_sync_method="contact_sync")
    run = run_full_sync(db, jobs, store.id)
    assert run.status == SyncRunStatus.DONE and run.created == CONTACTS
    ops = operations(sandbox)
    assert ops.get("sync_contact") == CONTACTS and "bulk_import" not in ops
    subscribed = [m for m in sandbox.state()["contactLists"] if m["status"] == "1"]
    assert len(subscribed) == len(range(0, CONTACTS, 3))


def test_a_full_sync_never_resubscribes_someone_who_unsubscribed_at_activecampaign(
    client: FlaskClient, db: Database, store: NewStore, settings: Settings, jobs: Jobs, sandbox: ActiveCampaignSandbox
) -> None:
    seed(client, db, store)
    connect(db, settings, store, sandbox)
    assert run_full_sync(db, jobs, store.id).status == SyncRunStatus.DONE
    # When p0 unsubscribes in ActiveCampaign (their consent here still says subscribed: the webhook was missed)
    state = sandbox.state()
    p0 = next(c["id"] for c in state["contacts"] if c["email"] == "p0@example.com")
    with sandbox._lock:
        membership = next(m for m in sandbox.memberships.values() if m["contact"] == p0)
        membership["status"] = "2"
    # And a forced full sync imports everyone again
    with db.reader() as session:
        adapter = jobs.engine.adapters.get(session, store.id, "activecampaign")
    run = FullSync(db, adapter, start(db, store.id, "activecampaign", FullSyncOptions(force=True))).run()
    assert run.status == SyncRunStatus.DONE
    # Then p0 stays unsubscribed: the import does not re-subscribe
    with sandbox._lock:
        assert next(m for m in sandbox.memberships.values() if m["contact"] == p0)["status"] == "2"
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count(SyncRun.id))) == 2


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")


class FailOnce(httpx.BaseTransport):
    """The in-process sandbox, except that the ``nth`` contact/sync request is answered 503 (it never arrives)."""

    def __init__(self, app: ActiveCampaignSandbox, nth: int) -> None:
        self.inner = httpx.WSGITransport(app=app)
        self.nth = nth
        self.seen = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/contact/sync"):
            self.seen += 1
            if self.seen == self.nth:
                return httpx.Response(503, json={}, request=request)
        return self.inner.handle_request(request)


def test_a_transient_failure_mid_page_resends_only_what_failed(
    client: FlaskClient, db: Database, store: NewStore, settings: Settings, sandbox: ActiveCampaignSandbox
) -> None:
    seed(client, db, store)
    connect(db, settings, store, sandbox, full_sync_method="contact_sync")
    transport = FailOnce(sandbox, nth=11)
    with db.reader() as session:
        connection = connections.load(session, CredentialCipher(settings.credentials_key), store.id, "activecampaign")
    adapter = build_adapter(connection, AdapterOptions(transport=transport))
    run_id = start(db, store.id, "activecampaign", FullSyncOptions())
    run = FullSync(db, adapter, run_id, sleep=lambda _seconds: None).run()
    # Every contact arrived, once: the ten before the 503 were not sent again, only the one that failed and after
    assert (run.status, run.created, run.failed) == (SyncRunStatus.DONE, CONTACTS, 0)
    assert operations(sandbox)["sync_contact"] == CONTACTS
    assert transport.seen == CONTACTS + 1
