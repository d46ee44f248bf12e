"""Actors, bound to an explicit broker and database.

Jobs carry ids, never objects. Delivery retries are kept on the rows (outbox rows, sync items: attempts,
available_at, last_error) rather than in the broker message: the database is the source of truth, so a Redis
flush or a crash forgets no retry, and dead rows stay visible with their last error.

``deliver_outbox`` fans an outbox row out into one sync item per connected ESP (connector.sync.queue);
``sync_items`` sends a batch of them to one ESP (connector.sync.engine).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.common import compute_backoff

from .. import lifecycle, rfm, rfm_schedule, segments
from ..credentials import CredentialCipher
from ..ingest.projection import project_pending
from ..settings import Settings
from ..store import Database, OutboxRow, OutboxStatus, SyncRun, SyncRunStatus, utcnow
from ..sync import queue
from ..sync.adapters import AdapterCache, AdapterOptions
from ..sync.engine import SyncEngine
from ..sync.full import FullSync, FullSyncOptions

log = logging.getLogger(__name__)

QUEUE = "espbridge"
#: Batches one projection job works through before handing the rest to a fresh message (keeps jobs short).
PROJECTION_BATCHES_PER_JOB = 20
#: The queue of work that must not wait behind a backlog of ESP calls: projection (local, quick) and every step of
#: a consent change (its outbox row, then its sync items). Every worker consumes it beside ``QUEUE`` (a dramatiq
#: Worker consumes every queue declared on its broker), so a withdrawal does not wait behind thousands of profile
#: and event jobs held up by an ESP's rate limit.
CONSENT_QUEUE = "espbridge.consent"
#: Lower is first in a worker's local work queue: these jobs take the next free thread.
CONSENT_PRIORITY = -10


@dataclass
class _Turn:
    lock: threading.Lock = field(default_factory=threading.Lock)
    kicked: bool = False


@dataclass
class Jobs:
    """The actors of one process. Build it once per process with the broker the process uses."""

    settings: Settings
    db: Database
    broker: dramatiq.Broker
    adapter_options: AdapterOptions | None = None
    _projection_turns: defaultdict[int, _Turn] = field(default_factory=lambda: defaultdict(_Turn), repr=False)

    def __post_init__(self) -> None:
        urgent: dict[str, Any] = {"queue": CONSENT_QUEUE, "priority": CONSENT_PRIORITY}
        self.project_events = self._actor(self._project_events, "project_events", **urgent, max_retries=5)
        self.deliver_outbox = self._actor(self._deliver_outbox, "deliver_outbox", max_retries=0)
        self.deliver_consent = self._actor(self._deliver_outbox, "deliver_consent", **urgent, max_retries=0)
        self.sync_items = self._actor(self._sync_items, "sync_items", max_retries=0, time_limit=3_600_000)
        self.sync_consent = self._actor(self._sync_items, "sync_consent", **urgent, max_retries=0, time_limit=3_600_000)
        self.full_sync = self._actor(self._full_sync, "full_sync", max_retries=0, time_limit=7 * 24 * 3_600_000)
        # Nightly RFM snapshot + lifecycle + segments per store (claimed by the relay: connector.rfm_schedule).
        self.rfm_nightly = self._actor(self._rfm_nightly, "rfm_nightly", max_retries=0, time_limit=3_600_000)
        options = self.adapter_options or AdapterOptions(redis_client=getattr(self.broker, "client", None))
        adapters = AdapterCache(CredentialCipher(self.settings.credentials_key), options)
        self.engine = SyncEngine(self.db, self.settings, adapters)

    def _actor(
        self, fn: Any, name: str, *, queue: str = QUEUE, priority: int = 0, **options: Any
    ) -> dramatiq.Actor[Any, Any]:
        return dramatiq.Actor(
            fn, broker=self.broker, actor_name=name, queue_name=queue, priority=priority, options=options
        )

    def _project_events(self, store_id: int) -> None:
        # Every commit kicks a projection job, so many pile up under load; one thread per process works a
        # store's queue and the others leave at once (they would only wait for its lock), marking the store
        # kicked so the working thread looks once more before it stops. The relay's tick catches the rest.
        turn = self._projection_turns[store_id]
        if not turn.lock.acquire(blocking=False):
            turn.kicked = True
            return
        try:
            for _ in range(PROJECTION_BATCHES_PER_JOB):
                turn.kicked = False
                projected = project_pending(
                    self.db, store_id, batch_size=self.settings.projection_batch_size, doi=self.engine.doi
                )
                if projected == 0 and not turn.kicked:
                    return
            self.project_events.send(store_id)
        finally:
            turn.lock.release()

    def _deliver_outbox(self, row_id: int) -> None:
        contacts: set[int] = set()
        store_id = 0
        try:
            with self.db.writer() as session:
                row = session.get(OutboxRow, row_id)
                if row is None or row.status in (OutboxStatus.DONE, OutboxStatus.DEAD):
                    return
                queue.fan_out(session, row)
                row.status, row.done_at, row.attempts = OutboxStatus.DONE, utcnow(), row.attempts + 1
                store_id = row.store_id
                contacts = segments.contacts_of(session, row.store_id, row.topic, row.subject_id, row.payload)
        except Exception as exc:  # any failure is recorded on the row and retried from there
            self._reschedule(row_id, exc)
            return
        self._refresh_segments(store_id, contacts)

    def _refresh_segments(self, store_id: int, contacts: set[int]) -> None:
        # The incremental membership path: the contacts a delivered change is about are re-evaluated for every
        # segment of the store (restricted by contact id, so it costs one indexed probe per segment). It runs
        # after the delivery committed, so a failure here never re-sends to an ESP; the next full evaluation
        # (``espbridge segments evaluate --all``, nightly after RFM) repairs whatever it missed.
        if not contacts:
            return
        try:
            segments.refresh_contacts(self.db, store_id, contacts)
        except Exception:
            log.exception("segment refresh of %s contacts in store %s failed", len(contacts), store_id)

    def _rfm_nightly(self, run_id: int) -> None:
        rfm_schedule.run_claimed(self.db, run_id, rfm.config_from(self.settings), lifecycle.config_from(self.settings))

    def _sync_items(self, store_id: int, esp: str, item_ids: list[int]) -> None:
        # Failures of the ESP are settled per item inside the engine; an exception here (database down) leaves
        # the items enqueued, and the sweeper sends them again after the visibility timeout.
        self.engine.run(store_id, esp, item_ids)

    def _full_sync(self, run_id: int) -> None:
        # Started from the admin API (``start`` created the run). A crash leaves the run "running" with a stale
        # heartbeat; starting a full sync again resumes it from its cursor.
        with self.db.reader() as session:
            run = session.get(SyncRun, run_id)
            if run is None or run.status != SyncRunStatus.RUNNING:
                return
            adapter = self.engine.adapters.get(session, run.store_id, run.esp)
            options = FullSyncOptions(dry_run=run.dry_run, force=run.force)
        FullSync(self.db, adapter, run_id, options=options).run()

    def _reschedule(self, row_id: int, exc: Exception) -> None:
        settings = self.settings
        with self.db.writer() as session:
            row = session.get(OutboxRow, row_id)
            if row is None:
                return
            row.attempts += 1
            row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            now = utcnow()
            if now - row.created_at > dt.timedelta(seconds=settings.retry_max_age):
                row.status = OutboxStatus.DEAD
                log.warning("outbox row %s dead after %s attempts: %s", row_id, row.attempts, row.last_error)
                return
            _, delay_ms = compute_backoff(
                row.attempts,
                factor=int(settings.retry_min_backoff * 1000),
                max_backoff=int(settings.retry_max_backoff * 1000),
            )
            row.status, row.available_at = OutboxStatus.PENDING, now + dt.timedelta(milliseconds=delay_ms)
