"""The nightly RFM run: claimed once per store and local day, even with several relays, then filled by the job."""

from __future__ import annotations

import datetime as dt
import threading

import sqlalchemy as sa

from connector import rfm_schedule
from connector.store.db import Database
from connector.store.rfm import RfmRun
from connector.tenancy import NewStore

# 23:30 UTC is already the next day in Berlin (the test store's timezone): its local yesterday is the 22nd.
NOW = dt.datetime(2026, 6, 22, 23, 30, tzinfo=dt.UTC)


def _runs(db: Database) -> list[tuple[int, dt.date, str, bool]]:
    with db.reader() as session:
        rows = session.scalars(sa.select(RfmRun).order_by(RfmRun.id)).all()
        return [(r.store_id, r.as_of, r.method, r.finished_at is not None) for r in rows]


def test_claimed_once_per_local_day_and_filled_by_the_job(db: Database, store: NewStore) -> None:
    claimed = rfm_schedule.claim_due(db, NOW)
    assert len(claimed) == 1 and _runs(db) == [(store.id, dt.date(2026, 6, 22), "scheduled", False)]
    assert rfm_schedule.claim_due(db, NOW + dt.timedelta(minutes=20)) == []  # same local day
    rfm_schedule.run_claimed(db, claimed[0])
    rfm_schedule.run_claimed(db, claimed[0])  # a redelivered message changes nothing
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
