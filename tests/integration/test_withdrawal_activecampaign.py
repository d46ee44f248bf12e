"""A withdrawal recorded while an ActiveCampaign full sync page is being imported is queued again after the
import, and once sent leaves the person unsubscribed on the list (in-process sandbox, SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.jobs.relay import enqueue_due
from connector.jobs.tasks import Jobs
from connector.sandbox.activecampaign import ActiveCampaignSandbox
from connector.settings import Settings
from connector.store import Contact, Database, SyncItem, SyncItemStatus, SyncKind
from connector.sync import queue
from connector.sync.full import FullSync, FullSyncOptions, start
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track
from tests.integration.test_sync_engine_activecampaign import connect, jobs, sandbox, settings

__all__ = ["jobs", "sandbox", "settings"]


def drain(db: Database, jobs: Jobs, store_id: int) -> None:
    project_all(db, store_id)
    enqueue_due(db, jobs._deliver_outbox)
    while queue.claim_due(db, jobs._sync_items, send_consent=jobs._sync_items):
        pass


def list_status(sandbox: ActiveCampaignSandbox, email: str) -> str | None:
    state = sandbox.state()
    contact = next(c["id"] for c in state["contacts"] if c["email"] == email)
    return next((m["status"] for m in state["contactLists"] if m["contact"] == contact), None)


def test_a_withdrawal_during_a_full_sync_page_is_sent_again_after_its_import(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    settings: Settings,
    jobs: Jobs,
    sandbox: ActiveCampaignSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a subscribed contact, synced to ActiveCampaign
    connect(db, settings, store, sandbox)
    messages = [
        {"type": "identify", "userId": "u0", "messageId": "i0", "traits": {"email": "ann@example.com"}},
        track("Consent Updated", "c-sub", "u0", channel="email", status="subscribed"),
    ]
    assert post_messages(client, store.write_key, messages).status_code == 200
    drain(db, jobs, store.id)
    assert list_status(sandbox, "ann@example.com") == "1"
    with db.reader() as session:
        adapter = jobs.engine.adapters.get(session, store.id, "activecampaign")
        contact_id = session.scalar(sa.select(Contact.id).where(Contact.email == "ann@example.com"))
    real_upsert = adapter.upsert_profiles

    def upsert_while_withdrawn(*args: Any, **kwargs: Any) -> Any:
        # The page was read (subscribed); she unsubscribes and that is recorded while the import is in flight
        unsubscribe = track("Consent Updated", "c-unsub", "u0", channel="email", status="unsubscribed")
        assert post_messages(client, store.write_key, [unsubscribe]).status_code == 200
        project_all(db, store.id)
        enqueue_due(db, jobs._deliver_outbox)
        return real_upsert(*args, **kwargs)

    monkeypatch.setattr(adapter, "upsert_profiles", upsert_while_withdrawn)
    # When a forced full sync runs
    options = FullSyncOptions(force=True)
    FullSync(db, adapter, start(db, store.id, "activecampaign", options), options=options).run()
    # Then her consent is queued for ActiveCampaign once (coalesced with the webhook's own item), sent after the
    # import, and she ends unsubscribed on the list
    with db.reader() as session:
        pending = session.scalars(
            sa.select(SyncItem.subject_id).where(
                SyncItem.kind == SyncKind.CONSENT, SyncItem.status == SyncItemStatus.PENDING
            )
        ).all()
    assert pending == [f"{contact_id}:email"]
    drain(db, jobs, store.id)
    assert list_status(sandbox, "ann@example.com") == "2"
    # And a later full sync never subscribes her again
    FullSync(db, adapter, start(db, store.id, "activecampaign", options), options=options).run()
    drain(db, jobs, store.id)
    assert list_status(sandbox, "ann@example.com") == "2"
