"""The incremental sync: one job takes a batch of sync items of one store, ESP and kind, and settles each one.

Loading happens in a short read transaction, the ESP calls outside any transaction (they may wait on the
shared rate limiter), and the outcome of every item is written in one transaction at the end:

- done: the ESP has it; for profiles the link (ESP id, fingerprint) is stored. A profile whose fingerprint
  equals the stored one is done without a request.
- skipped: nothing to send (no identifier the ESP takes, merged away, not connected any more).
- dead (a dead letter, replayable): rejected by the ESP, a permanent or auth failure, or failing for longer
  than ``retry_max_age``. ``last_error`` carries the ESP's own text.
- pending again: transient failures and 429s, at ``now + Retry-After`` or exponential backoff with jitter.

A crash at any point leaves the items enqueued; the sweeper sends them again and every operation is
idempotent (profiles are upserts, events carry ``unique_id`` = messageId).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import sqlalchemy as sa
from dramatiq.common import compute_backoff

from .. import double_opt_in, erasure, suppression
from ..credentials import CredentialsUnavailable
from ..errors import InvalidInput, NotFound
from ..esp.base import AbandonedCart, ConsentChange, EspAdapter, MembershipChange, Outcome, SegmentRef, TrackedEvent
from ..esp.errors import EspError, RateLimited, Transient
from ..settings import Settings
from ..store import (
    Cart,
    CartItem,
    ConsentStatus,
    Contact,
    Database,
    Event,
    Segment,
    SegmentMember,
    SyncItem,
    SyncItemStatus,
    SyncKind,
    utcnow,
)
from . import records
from .adapters import AdapterCache

log = logging.getLogger(__name__)

#: Sends what a loader prepared, with the adapter; returns the number of requests made.
_Send = Callable[[EspAdapter], int]
_T = TypeVar("_T")

#: Why an item of an erased or suppressed contact is skipped.
SUPPRESSED = "suppressed"

#: A batch with at least this many changed profiles goes as a bulk import job rather than one request each.
BULK_PROFILE_THRESHOLD = 100


@dataclass
class SyncReport:
    done: int = 0
    skipped: int = 0
    dead: int = 0
    retried: int = 0
    requests: int = 0


@dataclass
class _Settled:
    """What happened to each item of a batch, keyed by item id."""

    done: set[int] = field(default_factory=set)
    skipped: dict[int, str] = field(default_factory=dict)
    dead: dict[int, str] = field(default_factory=dict)
    failed: dict[int, EspError] = field(default_factory=dict)
    links: list[records.LinkUpdate] = field(default_factory=list)
    #: Segment id → this ESP's mirror settings learned while sending (a list the adapter created).
    mirrors: dict[int, dict[str, object]] = field(default_factory=dict)
    #: Segment id → the items sent with the mirror settings in ``mirrors``.
    mirror_items: dict[int, list[int]] = field(default_factory=dict)

    def apply(self, outcome: Outcome, item_ids: Sequence[int]) -> None:
        for index, item_id in enumerate(item_ids):
            if index in outcome.rejected:
                self.dead[item_id] = f"rejected by the ESP: {outcome.rejected[index]}"
            elif index in outcome.skipped:
                self.skipped[item_id] = outcome.skipped[index]
            elif index in outcome.failed and outcome.error is not None:
                self.failed[item_id] = outcome.error
            else:
                self.done.add(item_id)


def _sender(
    batch: list[_T], item_ids: list[int], settled: _Settled, call: Callable[[EspAdapter, list[_T]], Outcome]
) -> _Send:
    """Send ``batch`` (one record per item of ``item_ids``) with ``call``; nothing when it is empty."""

    def send(adapter: EspAdapter) -> int:
        if not batch:
            return 0
        outcome = call(adapter, batch)
        settled.apply(outcome, item_ids)
        return outcome.requests

    return send


class SyncEngine:
    def __init__(self, db: Database, settings: Settings, adapters: AdapterCache) -> None:
        self.db = db
        self.settings = settings
        self.adapters = adapters
        self.doi = double_opt_in.DoubleOptIn.from_settings(settings)

    def run(self, store_id: int, esp: str, item_ids: Sequence[int]) -> SyncReport:
        settled = _Settled()
        report = SyncReport()
        with self.db.reader() as session:
            items = list(
                session.scalars(
                    sa.select(SyncItem).where(
                        SyncItem.store_id == store_id,
                        SyncItem.esp == esp,
                        SyncItem.id.in_(item_ids),
                        SyncItem.status == SyncItemStatus.ENQUEUED,
                    )
                )
            )
            if not items:
                return report
            adapter: EspAdapter | None = None
            try:
                adapter = self.adapters.get(session, store_id, esp)
            except NotFound as exc:
                settled.skipped.update((item.id, str(exc)) for item in items)
                items = []
            except CredentialsUnavailable as exc:  # the key to decrypt credentials is missing: an operator fixes it
                settled.failed.update((item.id, Transient(str(exc))) for item in items)
                items = []
            except InvalidInput as exc:  # stored settings an adapter cannot be built from: dead letters, replayable
                settled.dead.update((item.id, f"connection settings: {exc}") for item in items)
                items = []
            by_kind: dict[str, list[SyncItem]] = {}
            for item in items:
                by_kind.setdefault(item.kind, []).append(item)
            work = [
                (kind, self._loaders[kind](self, session, store_id, by_kind[kind], settled))
                for kind in (
                    SyncKind.ERASE,
                    SyncKind.PROFILE,
                    SyncKind.CONSENT,
                    SyncKind.EVENT,
                    SyncKind.CART,
                    SyncKind.SEGMENT,
                )
                if kind in by_kind
            ]
        if adapter is not None:
            for _kind, send in work:
                report.requests += send(adapter)
        self._write(store_id, esp, settled, report)
        return report

    # loaders: read what to send (inside the read transaction), return the sending step (outside it)

    def _profiles(self, session: sa.orm.Session, store_id: int, items: list[SyncItem], settled: _Settled) -> _Send:
        contacts = records.live_contacts(session, store_id, [int(i.subject_id) for i in items])
        ids = [c.id for c in contacts.values()]
        consents = records.consent_states(session, store_id, ids)
        known = records.links(session, store_id, items[0].esp, ids)
        changed: list[tuple[SyncItem, int]] = []
        seen: set[int] = set()
        fingerprints: dict[int, str] = {}

        def prepare(adapter: EspAdapter) -> None:
            for item in items:
                contact = contacts.get(int(item.subject_id))
                if contact is None:
                    settled.skipped[item.id] = "contact no longer exists"
                    continue
                if suppression.blocked(contact):
                    settled.skipped[item.id] = SUPPRESSED
                    continue
                if contact.id in seen:  # two items resolved to one survivor of a merge
                    settled.done.add(item.id)
                    continue
                seen.add(contact.id)
                fingerprint = adapter.fingerprint(contact, consents.get(contact.id, {}))
                if fingerprint is None:
                    settled.skipped[item.id] = f"no identifier {adapter.esp} accepts"
                    continue
                fingerprints[contact.id] = fingerprint
                link = known.get(contact.id)
                if link is not None and link.synced_hash == fingerprint:
                    settled.done.add(item.id)  # the ESP already has exactly this
                else:
                    changed.append((item, contact.id))

        def send(adapter: EspAdapter) -> int:
            prepare(adapter)
            if not changed:
                return 0
            batch = [contacts[int(item.subject_id)] for item, _ in changed]
            outcome = adapter.upsert_profiles(batch, bulk=len(batch) >= BULK_PROFILE_THRESHOLD)
            item_ids = [item.id for item, _ in changed]
            settled.apply(outcome, item_ids)
            for index, (item, contact_id) in enumerate(changed):
                if item.id in settled.done:
                    remote = outcome.remote_ids.get(index)
                    settled.links.append(records.LinkUpdate(contact_id, fingerprints[contact_id], remote))
            return outcome.requests

        return send

    def _consents(self, session: sa.orm.Session, store_id: int, items: list[SyncItem], settled: _Settled) -> _Send:
        wanted: dict[tuple[int, str], SyncItem] = {}
        for item in items:
            subject, _, channel = item.subject_id.partition(":")
            wanted[(int(subject), channel)] = item
        contacts = records.live_contacts(session, store_id, {cid for cid, _ in wanted})
        rows = {
            (row.contact_id, row.channel): row
            for row in records.consent_rows(session, store_id, [c.id for c in contacts.values()])
        }
        changes: list[ConsentChange] = []
        change_items: list[int] = []
        for (contact_id, channel), item in wanted.items():
            contact = contacts.get(contact_id)
            row = rows.get((contact.id, channel)) if contact is not None else None
            if contact is None or row is None:
                settled.skipped[item.id] = "no consent state to send"
                continue
            if suppression.blocked(contact):
                settled.skipped[item.id] = SUPPRESSED
                continue
            changes.append(ConsentChange(contact, channel, row.status, row.occurred_at, row.action))
            change_items.append(item.id)

        return _sender(changes, change_items, settled, lambda adapter, batch: adapter.set_consent(batch))

    def _events(self, session: sa.orm.Session, store_id: int, items: list[SyncItem], settled: _Settled) -> _Send:
        by_id = {int(item.subject_id): item for item in items}
        events = list(session.scalars(sa.select(Event).where(Event.store_id == store_id, Event.id.in_(by_id))))
        contacts = records.live_contacts(session, store_id, {e.contact_id for e in events if e.contact_id})
        tracked: list[TrackedEvent] = []
        tracked_items: list[int] = []
        found = {e.id for e in events}
        for event_id, item in by_id.items():
            if event_id not in found:
                settled.skipped[item.id] = "event no longer exists"
        for event in events:
            contact = contacts.get(event.contact_id) if event.contact_id else None
            if contact is None:
                settled.skipped[by_id[event.id].id] = "event has no contact"
                continue
            if suppression.blocked(contact):
                settled.skipped[by_id[event.id].id] = SUPPRESSED
                continue
            tracked.append(TrackedEvent(double_opt_in.with_link(session, self.doi, event), contact))
            tracked_items.append(by_id[event.id].id)

        return _sender(tracked, tracked_items, settled, lambda adapter, batch: adapter.send_events(batch))

    def _carts(self, session: sa.orm.Session, store_id: int, items: list[SyncItem], settled: _Settled) -> _Send:
        by_id = {int(item.subject_id): item for item in items}
        carts = {c.id: c for c in session.scalars(sa.select(Cart).where(Cart.store_id == store_id, Cart.id.in_(by_id)))}
        lines: dict[int, list[CartItem]] = {}
        for line in session.scalars(
            sa.select(CartItem).where(CartItem.store_id == store_id, CartItem.cart_ref.in_(carts)).order_by(CartItem.id)
        ):
            lines.setdefault(line.cart_ref, []).append(line)
        contacts = records.live_contacts(session, store_id, {c.contact_id for c in carts.values() if c.contact_id})
        abandoned: list[AbandonedCart] = []
        cart_items: list[int] = []
        for cart_id, item in by_id.items():
            cart = carts.get(cart_id)
            contact = contacts.get(cart.contact_id) if cart is not None and cart.contact_id else None
            if cart is None or cart.status != "abandoned":
                settled.skipped[item.id] = "the cart is no longer abandoned"
            elif contact is None:
                settled.skipped[item.id] = "cart has no contact"
            elif suppression.blocked(contact):
                settled.skipped[item.id] = SUPPRESSED
            else:
                abandoned.append(AbandonedCart(cart, tuple(lines.get(cart.id, ())), contact))
                cart_items.append(item.id)

        return _sender(abandoned, cart_items, settled, lambda adapter, batch: adapter.send_carts(batch))

    def _erasures(self, session: sa.orm.Session, store_id: int, items: list[SyncItem], settled: _Settled) -> _Send:
        # The people are already erased here: the payload is all that is left of their identifiers, so the
        # adapters get transient contacts built from it (never added to a session).
        people: list[Contact] = []
        person_items: list[int] = []
        for item in items:
            payload = item.payload or {}
            if not payload.get("email") and not payload.get("phone"):
                settled.skipped[item.id] = "no identifier left to delete by"
                continue
            _, _, contact_id = item.subject_id.partition(":")
            people.append(
                Contact(
                    id=int(contact_id),
                    store_id=store_id,
                    email=payload.get("email"),
                    phone=payload.get("phone"),
                    properties={},
                )
            )
            person_items.append(item.id)

        return _sender(people, person_items, settled, lambda adapter, batch: adapter.erase(batch))

    def _segments(self, session: sa.orm.Session, store_id: int, items: list[SyncItem], settled: _Settled) -> _Send:
        """Mirror each (segment, contact) as it is now: a member row means add, none means remove, so changes
        that coalesced while pending send their net effect."""
        esp = items[0].esp
        wanted: dict[tuple[int, int], SyncItem] = {}
        for item in items:
            segment_part, _, contact_part = item.subject_id.partition(":")
            wanted[(int(segment_part), int(contact_part))] = item
        segments = {
            s.id: s
            for s in session.scalars(
                sa.select(Segment).where(Segment.store_id == store_id, Segment.id.in_({sid for sid, _ in wanted}))
            )
        }
        contacts = records.live_contacts(session, store_id, {cid for _, cid in wanted})
        live_ids = [c.id for c in contacts.values()]
        members = {
            (segment_id, contact_id)
            for segment_id, contact_id in session.execute(
                sa.select(SegmentMember.segment_id, SegmentMember.contact_id).where(
                    SegmentMember.store_id == store_id,
                    SegmentMember.segment_id.in_(segments),
                    SegmentMember.contact_id.in_(live_ids),
                )
            )
        }
        known = records.links(session, store_id, esp, live_ids)
        consents = records.consent_states(session, store_id, live_ids)
        groups: dict[int, tuple[list[MembershipChange], list[int]]] = {}
        seen: set[tuple[int, int]] = set()
        for (segment_id, contact_id), item in wanted.items():
            segment = segments.get(segment_id)
            contact = contacts.get(contact_id)
            if segment is None or esp not in (segment.mirror or {}):
                settled.skipped[item.id] = f"segment not mirrored to {esp}"
                continue
            if contact is None:
                settled.skipped[item.id] = "contact no longer exists"
                continue
            if suppression.blocked(contact):
                settled.skipped[item.id] = SUPPRESSED
                continue
            if (segment_id, contact.id) in seen:  # two items resolved to one survivor of a merge
                settled.done.add(item.id)
                continue
            seen.add((segment_id, contact.id))
            link = known.get(contact.id)
            change = MembershipChange(
                contact,
                (segment_id, contact.id) in members,
                remote_id=link.remote_id if link is not None else None,
                subscribed=consents.get(contact.id, {}).get("email") == ConsentStatus.SUBSCRIBED,
            )
            group = groups.setdefault(segment_id, ([], []))
            group[0].append(change)
            group[1].append(item.id)
        refs = {sid: SegmentRef(sid, segments[sid].name, dict(segments[sid].mirror.get(esp) or {})) for sid in groups}

        def send(adapter: EspAdapter) -> int:
            requests = 0
            for segment_id, (changes, item_ids) in groups.items():
                outcome = adapter.mirror_membership(refs[segment_id], changes)
                settled.apply(outcome, item_ids)
                if outcome.mirror is not None:
                    settled.mirrors[segment_id] = outcome.mirror
                    settled.mirror_items[segment_id] = item_ids
                    refs[segment_id] = SegmentRef(segment_id, refs[segment_id].name, outcome.mirror)
                requests += outcome.requests
            return requests

        return send

    _loaders = {
        SyncKind.ERASE: _erasures,
        SyncKind.PROFILE: _profiles,
        SyncKind.CONSENT: _consents,
        SyncKind.EVENT: _events,
        SyncKind.CART: _carts,
        SyncKind.SEGMENT: _segments,
    }

    # writing the outcome

    def _write(self, store_id: int, esp: str, settled: _Settled, report: SyncReport) -> None:
        now = utcnow()
        ids = settled.done | set(settled.skipped) | set(settled.dead) | set(settled.failed)
        with self.db.writer() as session:
            again = self._keep_mirrors(session, store_id, esp, settled)
            items = session.scalars(
                sa.select(SyncItem).where(
                    SyncItem.store_id == store_id, SyncItem.id.in_(ids), SyncItem.status == SyncItemStatus.ENQUEUED
                )
            )
            erasures: set[int] = set()
            for item in items:
                item.attempts += 1
                if item.id in again:  # sent to a list a concurrent job's list replaced: send to the kept one
                    item.status, item.available_at, item.last_error = SyncItemStatus.PENDING, now, "list replaced"
                    report.retried += 1
                elif item.id in settled.done:
                    item.status, item.done_at, item.last_error = SyncItemStatus.DONE, now, None
                    report.done += 1
                elif item.id in settled.skipped:
                    item.status, item.done_at, item.last_error = SyncItemStatus.SKIPPED, now, settled.skipped[item.id]
                    report.skipped += 1
                elif item.id in settled.dead:
                    self._dead(item, settled.dead[item.id], report)
                else:
                    self._retry(item, settled.failed[item.id], now, report)
                if item.kind == SyncKind.ERASE:
                    erasures.add(int(item.subject_id.partition(":")[0]))
                    erasure.forget(item, settled=item.status != SyncItemStatus.PENDING)
            records.save_links(session, store_id, esp, settled.links, now)
            erasure.settle(session, store_id, erasures)

    def _keep_mirrors(self, session: sa.orm.Session, store_id: int, esp: str, settled: _Settled) -> set[int]:
        """Store the mirror settings adapters learned (a list they created). The first stored wins: when a
        concurrent job already stored another list, this job's items are returned to be sent again (to it)."""
        again: set[int] = set()
        for segment_id, mirror in settled.mirrors.items():
            segment = session.get(Segment, segment_id, with_for_update=True)
            if segment is None or segment.store_id != store_id or esp not in (segment.mirror or {}):
                continue
            current = dict(segment.mirror[esp] or {})
            if any(key in current and current[key] != value for key, value in mirror.items()):
                again.update(i for i in settled.mirror_items.get(segment_id, ()) if i in settled.done)
                continue
            segment.mirror = {**segment.mirror, esp: {**mirror, **current}}
        return again

    def _dead(self, item: SyncItem, error: str, report: SyncReport) -> None:
        item.status, item.last_error = SyncItemStatus.DEAD, error[:2000]
        report.dead += 1
        log.warning("sync item %s (%s %s %s) dead: %s", item.id, item.esp, item.kind, item.subject_id, item.last_error)

    def _retry(self, item: SyncItem, error: EspError, now: dt.datetime, report: SyncReport) -> None:
        message = f"{type(error).__name__}: {error}"
        if not error.retryable:
            self._dead(item, message, report)
            return
        if now - item.created_at > dt.timedelta(seconds=self.settings.retry_max_age):
            self._dead(item, f"gave up after {item.attempts} attempts: {message}", report)
            return
        if isinstance(error, RateLimited) and error.retry_after is not None:
            delay = error.retry_after
        else:
            _, delay_ms = compute_backoff(
                item.attempts,
                factor=int(self.settings.retry_min_backoff * 1000),
                max_backoff=int(self.settings.retry_max_backoff * 1000),
            )
            delay = delay_ms / 1000
        item.status, item.last_error = SyncItemStatus.PENDING, message[:2000]
        item.available_at = now + dt.timedelta(seconds=delay)
        report.retried += 1
