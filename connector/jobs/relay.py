"""The relay: moves work from the database to the broker, and the sweeper that recovers stalled work.

Each tick (every ``relay_interval`` seconds):
1. claims due ``pending`` outbox rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers),
   marks them ``enqueued`` and commits, then sends one message per row. A crash between the commit and the
   send leaves rows ``enqueued``; step 2 recovers them.
2. re-sends rows ``enqueued`` longer than ``outbox_visibility_timeout`` ago (a lost message, a flushed
   Redis, a worker killed mid-job). Delivery is idempotent, so a rare second send is harmless.
3. does steps 1 and 2 for sync items (connector.sync.queue), sent in batches per store, ESP and kind
   (consent batches first, on the consent queue; step 1 too sends consent rows first, on that queue);
4. marks carts abandoned (no activity for ``cart_abandon_after``; connector.commerce.mark_abandoned);
5. sends a projection job for every store with unprojected events, so events acknowledged while no job
   reached the broker are still projected;
6. sends the nightly RFM job of every store whose local day moved past its last run (connector.rfm_schedule:
   claimed once under the store's row lock, so several relays send it once).
Several relays (one per worker process) may run at once; the claims keep them from sending a row twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from ..commerce import mark_abandoned
from ..ingest.accept import pending_projection
from ..outbox import Topic
from ..rfm_schedule import claim_due as claim_rfm_due
from ..store import Database, OutboxRow, OutboxStatus, utcnow
from ..store.claims import claim
from ..sync import queue
from .tasks import Jobs

log = logging.getLogger(__name__)

CLAIM_LIMIT = 1000


@dataclass(frozen=True)
class TickReport:
    enqueued: int
    swept: int
    projection_kicks: int
    sync_items: int = 0
    carts_abandoned: int = 0


def enqueue_due(
    db: Database,
    send: Callable[[int], object],
    *,
    send_consent: Callable[[int], object] | None = None,
    limit: int = CLAIM_LIMIT,
) -> int:
    """Claim and send due outbox rows; consent changes first, through ``send_consent`` when given (a withdrawal
    must not wait behind thousands of profile changes)."""
    now = utcnow()
    due = (
        sa.select(OutboxRow.id)
        .where(OutboxRow.status == OutboxStatus.PENDING, OutboxRow.available_at <= now)
        .order_by(OutboxRow.id)
        .limit(limit)
    )
    sent = 0
    if send_consent is not None:
        sent = _claim_and_send(db, due.where(OutboxRow.topic == Topic.CONSENT_CHANGED), now, send_consent)
    return sent + _claim_and_send(db, due.limit(limit - sent), now, send)


def sweep_stalled(db: Database, send: Callable[[int], object], *, visibility_timeout: float) -> int:
    now = utcnow()
    query = (
        sa.select(OutboxRow.id)
        .where(
            OutboxRow.status == OutboxStatus.ENQUEUED,
            OutboxRow.enqueued_at < now - dt.timedelta(seconds=visibility_timeout),
        )
        .order_by(OutboxRow.id)
        .limit(CLAIM_LIMIT)
    )
    return _claim_and_send(db, query, now, send)


def _claim_and_send(db: Database, query: sa.Select[int], now: dt.datetime, send: Callable[[int], object]) -> int:
    rows = claim(db, OutboxRow, query, now)
    for (row_id,) in rows:
        send(row_id)
    return len(rows)


class Relay:
    """Runs ticks on a daemon thread until ``stop()``."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> TickReport:
        jobs = self.jobs
        enqueued = enqueue_due(jobs.db, jobs.deliver_outbox.send, send_consent=jobs.deliver_consent.send)
        swept = sweep_stalled(
            jobs.db, jobs.deliver_outbox.send, visibility_timeout=jobs.settings.outbox_visibility_timeout
        )
        send_batch, send_consent = jobs.sync_items.send, jobs.sync_consent.send
        sync_items = queue.claim_due(jobs.db, send_batch, send_consent=send_consent)
        sync_items += queue.sweep_stalled(
            jobs.db,
            send_batch,
            visibility_timeout=jobs.settings.outbox_visibility_timeout,
            send_consent=send_consent,
        )
        abandoned = mark_abandoned(jobs.db, utcnow(), dt.timedelta(seconds=jobs.settings.cart_abandon_after))
        stores = pending_projection(jobs.db)
        for store_id in stores:
            jobs.project_events.send(store_id)
        for run_id in claim_rfm_due(jobs.db, utcnow(), window_days=jobs.settings.rfm_window_days):
            jobs.rfm_nightly.send(run_id)
        return TickReport(
            enqueued=enqueued,
            swept=swept,
            projection_kicks=len(stores),
            sync_items=sync_items,
            carts_abandoned=abandoned,
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="espbridge-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a database or broker outage must not kill the relay; the next tick retries
                log.exception("relay tick failed")
            self._stop.wait(self.jobs.settings.relay_interval)
