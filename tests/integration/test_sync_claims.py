"""Claiming sync items: one ESP's backlog never fills the shared broker queue ahead of another ESP's changes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from connector.store import Database, SyncItem, SyncItemStatus, SyncKind
from connector.sync import adapters, queue
from connector.tenancy import NewStore


@pytest.fixture
def slow_esp(monkeypatch: pytest.MonkeyPatch) -> str:
    """An ESP whose jobs take 2 profiles each (as ActiveCampaign's take a few seconds of its 5 requests/s)."""
    klaviyo = adapters.ESPS["klaviyo"]
    spec = adapters.EspSpec(klaviyo.settings, klaviyo.check, klaviyo.build, {SyncKind.PROFILE: 2})
    monkeypatch.setitem(adapters.ESPS, "slow", spec)
    return "slow"


def add_items(db: Database, store_id: int, esp: str, count: int) -> None:
    with db.writer() as session:
        for n in range(count):
            session.add(SyncItem(store_id=store_id, esp=esp, kind=SyncKind.PROFILE, subject_id=f"{esp}-{n}"))


def test_a_backlog_for_one_esp_is_enqueued_a_few_jobs_at_a_time(db: Database, store: NewStore, slow_esp: str) -> None:
    # Given a long backlog for the slow ESP, queued before a few changes for Klaviyo
    add_items(db, store.id, slow_esp, 100)
    add_items(db, store.id, "klaviyo", 5)
    sent: list[tuple[str, list[int]]] = []

    def send(store_id: int, esp: str, ids: list[int]) -> None:
        sent.append((esp, ids))

    # When the relay claims due items
    queue.claim_due(db, send)
    # Then the slow ESP gets MAX_JOBS_IN_FLIGHT jobs, and Klaviyo's changes go at once, not after the backlog:
    # the jobs are sent in turns, so Klaviyo's is second in the broker's first-come queue, not ninth
    slow_jobs = [ids for esp, ids in sent if esp == slow_esp]
    assert len(slow_jobs) == queue.MAX_JOBS_IN_FLIGHT and all(len(ids) == 2 for ids in slow_jobs)
    assert sum(len(ids) for esp, ids in sent if esp == "klaviyo") == 5
    assert [esp for esp, _ in sent[:2]] == ["klaviyo", slow_esp] or [esp for esp, _ in sent[:2]] == [
        slow_esp,
        "klaviyo",
    ]
    # And nothing more of the backlog while those jobs are in flight
    sent.clear()
    queue.claim_due(db, send)
    assert sent == []
    # When one job's items are settled, one more job's worth goes
    with db.writer() as session:
        session.execute(sa.update(SyncItem).where(SyncItem.id.in_(slow_jobs[0])).values(status=SyncItemStatus.DONE))
    queue.claim_due(db, send)
    assert [(esp, len(ids)) for esp, ids in sent] == [(slow_esp, 2)]
