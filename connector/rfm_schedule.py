"""The nightly RFM run: each store is scored once per local day, as of its local yesterday.

The relay calls ``claim_due`` on every tick. A store is due when no run exists for its local yesterday. The claim
inserts that run (``method`` "scheduled", unfinished) while holding the store's row lock (``FOR UPDATE`` on
PostgreSQL; SQLite serialises writers), so with several relays exactly one of them claims it; the job then fills
that very run (``run_snapshot(run_id=…)``). A claimed run that is still unfinished after ``RESEND_AFTER`` (the
message was lost, the worker died) is claimed again by bumping its ``started_at``, under the same lock.

After the snapshot the job evaluates every existing segment of the store in full: segments on RFM fields,
lifecycle stages or days since something would otherwise keep yesterday's members.
"""

from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa

from . import lifecycle, rfm
from .rfm import local_yesterday
from .segments import membership
from .store import Database, utcnow
from .store.rfm import RfmRun
from .store.tenancy import Store

log = logging.getLogger(__name__)

SCHEDULED = "scheduled"
#: Far above the 1M-contact benchmark's run time, so a slow run is never started twice.
RESEND_AFTER = dt.timedelta(hours=1)


def claim_due(db: Database, now: dt.datetime, *, window_days: int = rfm.RfmConfig.window_days) -> list[int]:
    """Runs to send now: new claims for stores whose local day moved on, and stalled claims."""
    with db.reader() as session:
        stores = session.execute(sa.select(Store.id, Store.timezone)).all()
        rows = session.execute(sa.select(RfmRun.store_id, sa.func.max(RfmRun.as_of)).group_by(RfmRun.store_id)).all()
        latest: dict[int, dt.date] = {sid: day for sid, day in rows}
        stalled = (
            session.execute(
                sa.select(RfmRun.id).where(RfmRun.finished_at.is_(None), RfmRun.started_at < now - RESEND_AFTER)
            )
            .scalars()
            .all()
        )
    due = [(sid, local_yesterday(tz, now)) for sid, tz in stores]
    due = [(sid, day) for sid, day in due if latest.get(sid) is None or latest[sid] < day]
    claimed = [run_id for sid, day in due if (run_id := _claim(db, sid, day, now, window_days)) is not None]
    return claimed + [run_id for run_id in stalled if _reclaim(db, run_id, now)]


def _lock_store(db: Database, session: sa.orm.Session, store_id: int) -> None:
    query = sa.select(Store.id).where(Store.id == store_id)
    session.execute(query.with_for_update() if db.dialect == "postgresql" else query)


def _claim(db: Database, store_id: int, as_of: dt.date, now: dt.datetime, window_days: int) -> int | None:
    with db.writer() as session:
        _lock_store(db, session, store_id)
        # Checked again under the lock: another relay may have claimed this day since we looked.
        taken = session.scalar(sa.select(sa.func.count()).where(RfmRun.store_id == store_id, RfmRun.as_of >= as_of))
        if taken:
            return None
        run = RfmRun(store_id=store_id, as_of=as_of, window_days=window_days, method=SCHEDULED, started_at=now)
        session.add(run)
        session.flush()
        return run.id


def _reclaim(db: Database, run_id: int, now: dt.datetime) -> bool:
    with db.writer() as session:
        run = session.get(RfmRun, run_id)
        if run is None:
            return False
        _lock_store(db, session, run.store_id)
        session.refresh(run)
        if run.finished_at is not None or run.started_at >= now - RESEND_AFTER:
            return False
        run.started_at = now
        return True


def run_claimed(
    db: Database, run_id: int, config: rfm.RfmConfig, stages: lifecycle.LifecycleConfig
) -> list[membership.Evaluation]:
    """The nightly job: the claimed snapshot, lifecycle stages, then every segment of the store; returns the
    segments' evaluations (none when the run is unknown or was done by an earlier delivery)."""
    with db.reader() as session:
        run = session.get(RfmRun, run_id)
        if run is None or run.finished_at is not None:
            return []
        store_id, as_of = run.store_id, run.as_of
    # Stages from the snapshot's own per-contact aggregate, in its transaction (lifecycle.compute's result).
    rfm.run_snapshot(db, store_id, as_of, config=config, run_id=run_id, stages=stages)
    return evaluate_segments(db, store_id)


def evaluate_segments(db: Database, store_id: int) -> list[membership.Evaluation]:
    """Every existing segment of the store in full, each in its own transaction. Not ``evaluate_all``: a store
    that never asked for segments does not get the pre-built ones installed by the schedule. A segment that
    fails is logged and skipped (the next night tries again); the others are still evaluated."""
    now = utcnow()
    done = []
    for segment_id in membership.segment_ids(db, store_id):
        try:
            done.append(membership.evaluate(db, store_id, segment_id, now=now))
        except Exception:
            log.exception("nightly evaluation of segment %s in store %s failed", segment_id, store_id)
    return done
