"""The nightly RFM run: claimed once per store and local day, even with several relays, then filled by the job."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading

import pytest
import sqlalchemy as sa

from connector import lifecycle, rfm, rfm_schedule
from connector.runtime import Runtime
from connector.segments import membership
from connector.settings import Settings
from connector.store.commerce import Order
from connector.store.contacts import Contact
from connector.store.db import Database
from connector.store.rfm import ContactLifecycle, RfmRun
from connector.store.segments import Segment, SegmentChange, SegmentMember
from connector.tenancy import NewStore

# 23:30 UTC is already the next day in Berlin (the test store's timezone): its local yesterday is the 22nd.
NOW = dt.datetime(2026, 6, 22, 23, 30, tzinfo=dt.UTC)
DEFAULTS = (rfm.RfmConfig(), lifecycle.LifecycleConfig())


def _runs(db: Database) -> list[tuple[int, dt.date, str, bool]]:
    with db.reader() as session:
        rows = session.scalars(sa.select(RfmRun).order_by(RfmRun.id)).all()
        return [(r.store_id, r.as_of, r.method, r.finished_at is not None) for r in rows]


def test_claimed_once_per_local_day_and_filled_by_the_job(db: Database, store: NewStore) -> None:
    claimed = rfm_schedule.claim_due(db, NOW)
    assert len(claimed) == 1 and _runs(db) == [(store.id, dt.date(2026, 6, 22), "scheduled", False)]
    assert rfm_schedule.claim_due(db, NOW + dt.timedelta(minutes=20)) == []  # same local day
    rfm_schedule.run_claimed(db, claimed[0], *DEFAULTS)
    assert rfm_schedule.run_claimed(db, claimed[0], *DEFAULTS) == []  # a redelivered message changes nothing
    assert _runs(db) == [(store.id, dt.date(2026, 6, 22), "fixed", True)]
    # The next local day brings the next run.
    assert len(rfm_schedule.claim_due(db, NOW + dt.timedelta(days=1))) == 1


def test_several_relays_claim_a_day_once(db: Database, store: NewStore, other_store: NewStore) -> None:
    results: list[list[int]] = []

    def relay() -> None:
        results.append(rfm_schedule.claim_due(db, NOW))

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [run_id for r in results for run_id in r]
    assert len(claimed) == len(set(claimed)) == 2  # one per store
    # other_store is in UTC: its local yesterday is the 21st.
    assert sorted((s, d) for s, d, _, _ in _runs(db)) == sorted(
        [(store.id, dt.date(2026, 6, 22)), (other_store.id, dt.date(2026, 6, 21))]
    )


def test_a_lost_claim_is_sent_again_after_the_resend_delay(db: Database, store: NewStore) -> None:
    [run_id] = rfm_schedule.claim_due(db, NOW)
    assert rfm_schedule.claim_due(db, NOW + dt.timedelta(minutes=59)) == []
    assert rfm_schedule.claim_due(db, NOW + rfm_schedule.RESEND_AFTER + dt.timedelta(seconds=1)) == [run_id]


def _buyer(db: Database, store_id: int, name: str, days_before: int, cents: int, as_of: dt.date) -> int:
    """A contact with one completed order ``days_before`` the day ``as_of``."""
    with db.writer() as session:
        contact = Contact(store_id=store_id, email=f"{name}@example.com")
        session.add(contact)
        session.flush()
        at = dt.datetime.combine(as_of - dt.timedelta(days=days_before), dt.time(12), dt.UTC)
        session.add(Order(store_id=store_id, order_id=name, contact_id=contact.id, placed_at=at, total_cents=cents))
        return contact.id


def _segment(db: Database, store_id: int, name: str, criteria: dict[str, object]) -> int:
    with db.writer() as session:
        segment = Segment(store_id=store_id, name=name, criteria=criteria)
        session.add(segment)
        session.flush()
        return segment.id


def _members(db: Database, segment_id: int) -> set[int]:
    with db.reader() as session:
        return set(session.scalars(sa.select(SegmentMember.contact_id).where(SegmentMember.segment_id == segment_id)))


def _changes(db: Database, segment_id: int) -> list[tuple[int, str]]:
    with db.reader() as session:
        rows = session.execute(
            sa.select(SegmentChange.contact_id, SegmentChange.change).where(SegmentChange.segment_id == segment_id)
        )
        return [(cid, change) for cid, change in rows]


def test_the_nightly_job_evaluates_every_segment_of_the_store(
    db: Database, store: NewStore, other_store: NewStore, caplog: pytest.LogCaptureFixture
) -> None:
    as_of = dt.date(2026, 6, 22)
    # Fixed thresholds (a small store): R 5, F 1, M 3 = 32 (Loyal); R 2, F 1, M 1 = 14 (Hibernating), churned.
    loyal = _buyer(db, store.id, "loyal", 1, 10_000, as_of)
    gone = _buyer(db, store.id, "gone", 200, 2_000, as_of)
    # Stored without the API's validation: its evaluation fails, and must not stop the segments after it.
    broken = _segment(db, store.id, "broken", {"no.such_field": 1})
    by_group = _segment(db, store.id, "loyal", {"rfm.group": "Loyal"})
    by_stage = _segment(db, store.id, "churned", {"lifecycle.stage": "churned"})
    for segment_id in (by_group, by_stage):  # evaluated once before any RFM run: the empty baseline
        assert membership.evaluate(db, store.id, segment_id).members == 0
    runs = rfm_schedule.claim_due(db, NOW)
    assert len(runs) == 2
    with caplog.at_level(logging.ERROR, logger="connector.rfm_schedule"):
        evaluations = [e for run_id in runs for e in rfm_schedule.run_claimed(db, run_id, *DEFAULTS)]
    assert [(e.segment_id, e.members, e.entered) for e in evaluations] == [(by_group, 1, 1), (by_stage, 1, 1)]
    assert _members(db, by_group) == {loyal} and _changes(db, by_group) == [(loyal, "entered")]
    assert _members(db, by_stage) == {gone} and _changes(db, by_stage) == [(gone, "entered")]
    assert f"nightly evaluation of segment {broken} in store {store.id} failed" in caplog.text
    with db.reader() as session:
        # A store without segments gets none from the schedule (the pre-built ones come with a first evaluation).
        assert session.scalar(sa.select(sa.func.count()).where(Segment.store_id == other_store.id)) == 0


def test_the_nightly_job_and_the_claim_use_the_settings(settings: Settings, db: Database, store: NewStore) -> None:
    thresholds = {"rfm_window_days": 30, "lifecycle_at_risk_days": 250, "lifecycle_churned_days": 300}
    tuned = settings.model_copy(update=thresholds)
    runtime = Runtime(tuned, db=db)
    as_of = rfm.local_yesterday("Europe/Berlin")
    contact = _buyer(db, store.id, "gone", 200, 2_000, as_of)
    runtime.relay.tick()
    with db.reader() as session:
        run = session.scalars(sa.select(RfmRun).where(RfmRun.store_id == store.id)).one()
        assert (run.as_of, run.window_days, run.finished_at) == (as_of, 30, None)
    runtime.jobs.rfm_nightly.fn(run.id)
    with db.reader() as session:
        run = session.scalars(sa.select(RfmRun).where(RfmRun.store_id == store.id)).one()
        stage = session.scalar(sa.select(ContactLifecycle.stage).where(ContactLifecycle.contact_id == contact))
    assert run.finished_at is not None and run.window_days == 30
    assert run.config["rfm"]["window_days"] == 30
    assert run.config["lifecycle"] == dataclasses.asdict(lifecycle.config_from(tuned))
    assert stage == "active"  # 200 days without an order: churned with the default 90, not with 300
