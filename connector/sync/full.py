"""Full sync: every contact (and every event not yet sent) of a store pushed to one ESP, resumably.

A run walks contacts by id (keyset pagination, ``page_size`` per page = one bulk import job), compares each
contact's fingerprint with the hash stored in esp_links when it was last sent, and sends only what changed
(``force``: everything) as bulk imports, with their consent as historical imports (consents we collected, with
their original time; in the same request where the ESP allows it). Then it sends the store's events in
(events_from, events_through] as backfill — events_from is where the previous completed run stopped, so a second
run sends no event twice.

Progress lives in the sync_runs row, committed after every page together with the links of that page: a crash
loses at most the page in flight, and starting again resumes the unfinished run from its cursor. A run whose
heartbeat is recent is still alive (another process); a second start is refused while it is.

``dry_run`` reads and compares exactly as a real run does and counts what would be created or updated, sending
nothing and writing no link.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import EspbridgeError
from ..esp.base import ConsentChange, EspAdapter, Outcome, TrackedEvent
from ..store import ConsentState, Contact, Database, Event, SyncKind, SyncRun, SyncRunStatus, utcnow
from ..suppression import blocked
from . import queue, records

log = logging.getLogger(__name__)

#: A run whose heartbeat is older than this is taken for dead (its process crashed) and may be resumed.
STALE_AFTER = dt.timedelta(seconds=120)
#: Rejected records kept on the run for display (the counts are complete).
MAX_REJECTIONS_KEPT = 1000
#: Attempts at a page whose requests fail transiently, with backoff, before the run stops as failed.
PAGE_ATTEMPTS = 5


class SyncRunning(EspbridgeError):
    """A full sync of this store and ESP is already running."""


@dataclass(frozen=True)
class FullSyncOptions:
    dry_run: bool = False
    force: bool = False
    page_size: int = 10_000
    event_page_size: int = 5_000
    requested_by: str | None = None


def start(db: Database, store_id: int, esp: str, options: FullSyncOptions) -> int:
    """Create a run, or take over the unfinished one (resume); returns its id. Raises ``SyncRunning``."""
    now = utcnow()
    with db.writer() as session:
        unfinished = session.scalar(
            sa.select(SyncRun)
            .where(SyncRun.store_id == store_id, SyncRun.esp == esp, SyncRun.status == SyncRunStatus.RUNNING)
            .order_by(SyncRun.id.desc())
            .limit(1)
        )
        if unfinished is not None:
            if now - unfinished.heartbeat_at < STALE_AFTER:
                beat = f"{unfinished.heartbeat_at:%H:%M:%S}"
                raise SyncRunning(f"full sync {unfinished.id} of {esp} is running (last heartbeat {beat} UTC)")
            if unfinished.dry_run == options.dry_run and unfinished.force == options.force:
                unfinished.heartbeat_at = now
                log.info("resuming full sync %s from contact %s", unfinished.id, unfinished.contact_cursor)
                return unfinished.id
            unfinished.status, unfinished.finished_at = SyncRunStatus.FAILED, now
            unfinished.error = "abandoned: a run with other options was started"
        previous = session.scalar(
            sa.select(sa.func.max(SyncRun.events_through)).where(
                SyncRun.store_id == store_id,
                SyncRun.esp == esp,
                SyncRun.status == SyncRunStatus.DONE,
                SyncRun.dry_run.is_(False),
            )
        )
        events_from = 0 if options.force else previous or 0
        events_through = session.scalar(sa.select(sa.func.max(Event.id)).where(Event.store_id == store_id)) or 0
        total = session.scalar(
            sa.select(sa.func.count(Contact.id)).where(Contact.store_id == store_id, Contact.merged_into_id.is_(None))
        )
        run = SyncRun(
            store_id=store_id,
            esp=esp,
            dry_run=options.dry_run,
            force=options.force,
            requested_by=options.requested_by,
            total=total or 0,
            events_from=events_from,
            events_through=max(events_through, events_from),
            event_cursor=events_from,
            heartbeat_at=now,
            started_at=now,
        )
        session.add(run)
        session.flush()
        return run.id


def summary(run: SyncRun) -> dict[str, Any]:
    """A run as the CLI and the admin API show it."""
    return {
        "id": run.id,
        "esp": run.esp,
        "status": run.status,
        "dry_run": run.dry_run,
        "force": run.force,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_seconds": round(run.duration, 3),
        "total": run.total,
        "processed": run.processed,
        "created": run.created,
        "updated": run.updated,
        "unchanged": run.unchanged,
        "rejected": run.rejected,
        "failed": run.failed,
        "skipped": run.skipped,
        "events_sent": run.events_sent,
        "requests": run.requests,
        "rejections": run.rejections[:20],
        "error": run.error,
    }


def _requeue_consent_changed(
    session: sa.orm.Session, store_id: int, esp: str, contact_ids: Sequence[int], since: dt.datetime
) -> int:
    """Queue a consent item for each consent of ``contact_ids`` that changed after their page was read.

    The page imported the consent it read; a withdrawal recorded meanwhile (an ESP webhook during the full sync)
    may have reached the ESP before the import landed and been overwritten by it. Sending the current state
    again, after the import, makes the latest consent the last word at the ESP.
    """
    changed = session.execute(
        sa.select(ConsentState.contact_id, ConsentState.channel).where(
            ConsentState.store_id == store_id,
            ConsentState.contact_id.in_(contact_ids),
            ConsentState.updated_at >= since,
        )
    ).all()
    return sum(
        queue.add(session, store_id, esp, SyncKind.CONSENT, f"{contact_id}:{channel}")
        for contact_id, channel in changed
    )


class FullSync:
    """Runs one sync_runs row to its end. ``progress`` is called with the run after every page."""

    def __init__(
        self,
        db: Database,
        adapter: EspAdapter,
        run_id: int,
        *,
        options: FullSyncOptions = FullSyncOptions(),
        progress: Callable[[SyncRun], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.db = db
        self.adapter = adapter
        self.run_id = run_id
        self.options = options
        self.progress = progress
        self._sleep = sleep

    def run(self) -> SyncRun:
        try:
            while self._contacts_page():
                pass
            while self._events_page():
                pass
        except Exception as exc:
            self._finish(SyncRunStatus.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        return self._finish(SyncRunStatus.DONE, None)

    # contacts

    def _contacts_page(self) -> bool:
        read_at = utcnow()
        with self.db.reader() as session:
            run = self._load(session)
            contacts = list(
                session.scalars(
                    sa.select(Contact)
                    .where(
                        Contact.store_id == run.store_id,
                        Contact.merged_into_id.is_(None),
                        Contact.id > run.contact_cursor,
                    )
                    .order_by(Contact.id)
                    .limit(self.options.page_size)
                )
            )
            if not contacts:
                return False
            ids = [c.id for c in contacts]
            consent_rows = records.consent_rows(session, run.store_id, ids)
            known = records.links(session, run.store_id, run.esp, ids)
        consents: dict[int, dict[str, str]] = {}
        for row in consent_rows:
            consents.setdefault(row.contact_id, {})[row.channel] = row.status
        fingerprints: dict[int, str] = {}
        skipped = 0
        for contact in contacts:
            # An erased or suppressed person is kept out of every ESP: counted as skipped, never sent.
            fingerprint = None if blocked(contact) else self.adapter.fingerprint(contact, consents.get(contact.id, {}))
            if fingerprint is None:
                skipped += 1  # nothing the ESP can take (an anonymous visitor): no request, no link
            else:
                fingerprints[contact.id] = fingerprint
        changed = [
            c
            for c in contacts
            if c.id in fingerprints
            and (run.force or c.id not in known or known[c.id].synced_hash != fingerprints[c.id])
        ]
        unchanged = len(fingerprints) - len(changed)
        created = {c.id for c in changed if c.id not in known}
        counts = {"unchanged": unchanged, "created": 0, "updated": 0, "rejected": 0, "failed": 0, "skipped": skipped}
        rejections: list[dict[str, object]] = []
        links: list[records.LinkUpdate] = []
        requests = 0
        if run.dry_run:
            counts["created"] = len(created)
            counts["updated"] = len(changed) - len(created)
        elif changed:
            by_contact = {c.id: c for c in changed}
            consent_changes = [
                ConsentChange(by_contact[r.contact_id], r.channel, r.status, r.occurred_at, r.action, imported=True)
                for r in consent_rows
                if r.contact_id in by_contact
            ]

            def upsert(indexes: Sequence[int]) -> Outcome:
                batch = [changed[i] for i in indexes]
                ids = {c.id for c in batch}
                consents = [c for c in consent_changes if c.contact.id in ids]
                return self.adapter.upsert_profiles(batch, bulk=True, consents=consents)

            outcome = self._with_retries(len(changed), upsert)
            requests = outcome.requests
            for index, contact in enumerate(changed):
                if index in outcome.rejected:
                    counts["rejected"] += 1
                    rejections.append({"contact_id": contact.id, "reason": outcome.rejected[index][:500]})
                elif index in outcome.failed:
                    counts["failed"] += 1
                elif index in outcome.skipped:
                    counts["skipped"] += 1
                else:
                    counts["created" if contact.id in created else "updated"] += 1
                    links.append(
                        records.LinkUpdate(contact.id, fingerprints[contact.id], outcome.remote_ids.get(index))
                    )
        sent = [] if run.dry_run else [c.id for c in changed]
        self._save_page(contacts[-1].id, len(contacts), counts, rejections, links, requests, sent, read_at)
        return len(contacts) == self.options.page_size

    def _save_page(
        self,
        cursor: int,
        processed: int,
        counts: dict[str, int],
        rejections: list[dict[str, object]],
        links: Sequence[records.LinkUpdate],
        requests: int,
        sent: Sequence[int],
        read_at: dt.datetime,
    ) -> None:
        now = utcnow()
        with self.db.writer() as session:
            run = self._load(session)
            records.save_links(session, run.store_id, run.esp, links, now)
            if sent:
                _requeue_consent_changed(session, run.store_id, run.esp, sent, read_at)
            run.contact_cursor = cursor
            run.processed += processed
            run.created += counts["created"]
            run.updated += counts["updated"]
            run.unchanged += counts["unchanged"]
            run.rejected += counts["rejected"]
            run.failed += counts["failed"]
            run.skipped += counts["skipped"]
            run.requests += requests
            if rejections and len(run.rejections) < MAX_REJECTIONS_KEPT:
                run.rejections = [*run.rejections, *rejections][:MAX_REJECTIONS_KEPT]
            run.heartbeat_at = now
        self._report()

    # events

    def _events_page(self) -> bool:
        with self.db.reader() as session:
            run = self._load(session)
            if run.event_cursor >= run.events_through:
                return False
            events = list(
                session.scalars(
                    sa.select(Event)
                    .where(
                        Event.store_id == run.store_id,
                        Event.id > run.event_cursor,
                        Event.id <= run.events_through,
                        Event.type == "track",
                        Event.contact_id.is_not(None),
                    )
                    .order_by(Event.id)
                    .limit(self.options.event_page_size)
                )
            )
            contacts = records.live_contacts(session, run.store_id, {e.contact_id for e in events if e.contact_id})
        if not events:
            self._save_events(run.events_through, 0, 0, 0)
            return False
        tracked = [
            TrackedEvent(e, contacts[e.contact_id])
            for e in events
            if e.contact_id in contacts and not blocked(contacts[e.contact_id])
        ]
        sent = requests = failed = 0
        if run.dry_run:  # what the ESP could take: events of contacts it can identify
            sendable = {c.id for c in contacts.values() if self.adapter.fingerprint(c, {}) is not None}
            sent = sum(1 for t in tracked if t.contact.id in sendable)
        elif tracked:
            outcome = self._with_retries(
                len(tracked), lambda indexes: self.adapter.send_events([tracked[i] for i in indexes], backfill=True)
            )
            requests = outcome.requests
            failed = len(outcome.failed) + len(outcome.rejected)
            sent = len(tracked) - failed - len(outcome.skipped)
        self._save_events(events[-1].id, sent, requests, failed)
        return True

    def _save_events(self, cursor: int, sent: int, requests: int, failed: int) -> None:
        with self.db.writer() as session:
            run = self._load(session)
            run.event_cursor = cursor
            run.events_sent += sent
            run.requests += requests
            run.failed += failed
            run.heartbeat_at = utcnow()
        self._report()

    # plumbing

    def _with_retries(self, count: int, send: Callable[[Sequence[int]], Outcome]) -> Outcome:
        """Send records ``0..count-1`` with ``send(indexes)``; records that failed transiently are sent again,
        alone, with backoff (what went through is never resent: with one request per contact, resending a whole
        page per 429 would cost thousands of requests). Permanent failures are returned as they are, and counted.
        The result is indexed like the input."""
        merged = Outcome()
        pending = list(range(count))
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            outcome = send(pending)
            merged.requests += outcome.requests
            failed: list[int] = []
            for position, index in enumerate(pending):
                if position in outcome.rejected:
                    merged.rejected[index] = outcome.rejected[position]
                elif position in outcome.skipped:
                    merged.skipped[index] = outcome.skipped[position]
                elif position in outcome.failed:
                    failed.append(index)
                elif position in outcome.remote_ids:
                    merged.remote_ids[index] = outcome.remote_ids[position]
            error = outcome.error
            if not failed or error is None or not error.retryable or attempt == PAGE_ATTEMPTS:
                if failed and error is not None:
                    merged.fail(failed, error)
                return merged
            pending = failed
            retry_after = getattr(error, "retry_after", None)
            delay = retry_after if retry_after is not None else min(60.0, 2.0**attempt)
            log.warning("full sync %s: %s; %d records sent again in %.1f s", self.run_id, error, len(failed), delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _load(self, session: sa.orm.Session) -> SyncRun:
        run = session.get(SyncRun, self.run_id)
        if run is None:
            raise EspbridgeError(f"sync run {self.run_id} does not exist")
        return run

    def _finish(self, status: SyncRunStatus, error: str | None) -> SyncRun:
        with self.db.writer() as session:
            run = self._load(session)
            run.status, run.finished_at, run.error = status, utcnow(), error
            session.flush()
            session.expunge(run)
        self._report()
        return run

    def _report(self) -> None:
        if self.progress is None:
            return
        with self.db.reader() as session:
            run = self._load(session)
            session.expunge(run)
        self.progress(run)
