"""Erasure (the right to be forgotten): one person's personal data deleted here and at every connected ESP.

``erase`` does the local part in one write transaction: an "erasure" ledger entry per consent channel, every
personal column cleared or its row deleted (rows other records need stay, detached and non-personal), HMAC
suppressions for the email and phone so the person is recognised and kept out of every ESP if they come back,
and one ERASE sync item per connected ESP carrying the identifiers that ESP deletes by. The sync engine sends
those, clears their payload once settled and calls ``settle`` here, which keeps the erasure's report current.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import consent, store_keys, suppression
from .credentials import CredentialCipher, CredentialsUnavailable
from .errors import InvalidInput, NotFound
from .identity import find_person, normalise_email
from .phones import e164
from .store import (
    Cart,
    CartItem,
    Channel,
    ConsentConfirmation,
    ConsentEvidence,
    ConsentState,
    ConsentStatus,
    Contact,
    Database,
    Engagement,
    Erasure,
    EspConnection,
    EspLink,
    Event,
    Identity,
    IdentityKind,
    Order,
    SyncItem,
    SyncItemStatus,
    SyncKind,
    WaitlistEntry,
    utcnow,
)
from .store.rfm import ContactLifecycle, RfmRun, RfmScore, RfmTransition
from .store.segments import Segment, SegmentChange, SegmentMember

_OPEN = (SyncItemStatus.PENDING, SyncItemStatus.ENQUEUED)


def erase(
    db: Database,
    cipher: CredentialCipher,
    store_id: int,
    *,
    email: str | None = None,
    phone: str | None = None,
    contact_id: int | None = None,
    requested_by: str,
) -> int:
    """Erase the person named by exactly one identifier; returns the erasure's id.

    Raises InvalidInput (naming the field) for a bad or missing identifier, NotFound when nobody matches, and
    CredentialsUnavailable when no credentials key is configured (the suppression key is encrypted with it).
    """
    kind, normal = _identifier(email=email, phone=phone, contact_id=contact_id)
    with db.writer() as session:
        try:  # first: fails before anything is changed
            key = store_keys.hmac_key(session, store_id, cipher)
        except CredentialsUnavailable as exc:
            raise CredentialsUnavailable(
                f"an erasure keeps suppressions keyed with the store's secret: {exc}"
            ) from None
        people = find_person(session, store_id, kind, normal, as_typed=phone.strip() if phone else None)
        if not people:
            raise NotFound(f"no contact matches that {kind}")
        now = utcnow()
        erasure = Erasure(store_id=store_id, requested_by=requested_by[:320], identifier_kind=kind, report={})
        session.add(erasure)
        session.flush()
        ids = [c.id for c in people]
        live = [c for c in people if c.merged_into_id is None] or people[:1]
        seqs = _ledger(session, store_id, live, erasure.id, requested_by, now)
        emails, phones = _identifiers(session, store_id, people, kind, normal)
        targets = _targets(session, store_id, live, emails, phones)
        local = _delete(session, store_id, people, ids, now)
        local["suppressions"] = sum(
            suppression.add(session, store_id, key, email=e, phone=None, reason="erased") for e in emails
        ) + sum(suppression.add(session, store_id, key, email=None, phone=p, reason="erased") for p in phones)
        esps = _queue(session, store_id, erasure.id, targets)
        erasure.report = {"contacts": ids, "local": local, "ledger_seqs": seqs, "esps": esps}
        if not targets:  # no ESP connected, or nothing left an ESP could delete by (anonymous, erased before)
            erasure.status, erasure.finished_at = "done", now
        return erasure.id


def _identifier(*, email: str | None, phone: str | None, contact_id: int | None) -> tuple[str, Any]:
    given = [name for name, value in (("email", email), ("phone", phone), ("contact_id", contact_id)) if value]
    if len(given) != 1:
        raise InvalidInput("identifier", "give exactly one of email, phone, contact_id")
    if email is not None:
        if (normal := normalise_email(email)) is None:
            raise InvalidInput("email", "not an email address")
        return "email", normal
    if phone is not None:
        if (normal_phone := e164(phone)) is None:
            raise InvalidInput("phone", "not an E.164 phone number")
        return "phone", normal_phone
    if isinstance(contact_id, bool) or not isinstance(contact_id, int) or contact_id <= 0:
        raise InvalidInput("contact_id", "must be a positive integer")
    return "contact", contact_id


def _ledger(
    session: Session, store_id: int, live: Sequence[Contact], erasure_id: int, actor: str, now: dt.datetime
) -> list[int]:
    """An "erasure" row per channel each live contact has consent on (email at least): withdrawn, by an admin."""
    seqs = []
    for contact in live:
        channels = set(
            session.scalars(
                sa.select(ConsentState.channel).where(
                    ConsentState.store_id == store_id, ConsentState.contact_id == contact.id
                )
            )
        ) or {Channel.EMAIL.value}
        for channel in sorted(channels):
            props = consent.ConsentProperties(
                channel=Channel(channel), status=ConsentStatus.UNSUBSCRIBED, method="admin"
            )
            entry = consent.record(
                session,
                store_id,
                contact,
                props,
                occurred_at=now,
                context={},
                evidence_ref=f"erasure:{erasure_id}",
                actor=actor[:200],
                action="erasure",
            )
            seqs.append(entry.seq)
    return seqs


def _identifiers(
    session: Session, store_id: int, people: Sequence[Contact], kind: str, value: Any
) -> tuple[set[str], set[str]]:
    """The person's normalised emails (contacts and identities) and E.164 phones, before they are deleted."""
    emails = {e for c in people if (e := normalise_email(c.email)) is not None}
    emails |= set(
        session.scalars(
            sa.select(Identity.value).where(
                Identity.store_id == store_id,
                Identity.kind == IdentityKind.EMAIL,
                Identity.contact_id.in_([c.id for c in people]),
            )
        )
    )
    phones = {p for c in people if (p := e164(c.phone)) is not None}
    if kind == "email":
        emails.add(value)
    elif kind == "phone":
        phones.add(value)
    return emails, phones


def _targets(
    session: Session, store_id: int, live: Sequence[Contact], emails: set[str], phones: set[str]
) -> list[tuple[int, dict[str, Any]]]:
    """(contact id, payload) per identifier set an ESP must delete: the live contact's own, then other emails."""
    remote = {
        (link.esp, link.contact_id): link.remote_id
        for link in session.scalars(
            sa.select(EspLink).where(EspLink.store_id == store_id, EspLink.contact_id.in_([c.id for c in live]))
        )
    }
    targets: list[tuple[int, dict[str, Any]]] = []
    covered: set[str] = set()
    for contact in live:
        email = normalise_email(contact.email)
        phone = e164(contact.phone)
        if email or phone:
            remotes = {esp: rid for (esp, cid), rid in remote.items() if cid == contact.id and rid}
            targets.append((contact.id, {"email": email, "phone": phone, "remote_ids": remotes}))
            covered |= {x for x in (email, phone) if x}
    anchor = live[0].id
    targets += [(anchor, {"email": e, "phone": None, "remote_ids": {}}) for e in sorted(emails - covered)]
    targets += [(anchor, {"email": None, "phone": p, "remote_ids": {}}) for p in sorted(phones - covered)]
    return targets


def _delete(
    session: Session, store_id: int, people: Sequence[Contact], ids: list[int], now: dt.datetime
) -> dict[str, int]:
    """Delete or clear every personal value of these contacts; returns the rows touched per table."""
    counts: dict[str, int] = {}

    def run(table: str, statement: Any) -> None:
        counts[table] = counts.get(table, 0) + _rows(session.execute(statement))

    identities = session.execute(
        sa.select(Identity.kind, Identity.value).where(Identity.store_id == store_id, Identity.contact_id.in_(ids))
    ).all()
    user_ids = [v for k, v in identities if k == IdentityKind.USER_ID] + [
        c.external_id for c in people if c.external_id
    ]
    anonymous_ids = [v for k, v in identities if k == IdentityKind.ANONYMOUS_ID]
    for contact in people:
        contact.email = contact.phone = contact.external_id = None
        contact.first_name = contact.last_name = contact.timezone = contact.locale = None
        contact.properties = {}
        contact.erased_at = contact.suppressed_at = now
    counts["contacts"] = len(people)
    session.flush()
    run("identities", sa.delete(Identity).where(Identity.store_id == store_id, Identity.contact_id.in_(ids)))
    events = _erase_events(session, store_id, ids, user_ids, anonymous_ids, now)
    counts["events"] = len(events)
    carts = select_ids(session, sa.select(Cart.id).where(Cart.store_id == store_id, Cart.contact_id.in_(ids)))
    run("cart_items", sa.delete(CartItem).where(CartItem.store_id == store_id, CartItem.cart_ref.in_(carts)))
    run("carts", sa.delete(Cart).where(Cart.store_id == store_id, Cart.id.in_(carts)))
    run(
        "orders",
        sa.update(Order).where(Order.store_id == store_id, Order.contact_id.in_(ids)).values(contact_id=None),
    )
    run(
        "waitlist_entries",
        sa.delete(WaitlistEntry).where(WaitlistEntry.store_id == store_id, WaitlistEntry.contact_id.in_(ids)),
    )
    run(
        "consent_evidence",
        sa.delete(ConsentEvidence).where(ConsentEvidence.store_id == store_id, ConsentEvidence.contact_id.in_(ids)),
    )
    run(
        "consent_confirmations",
        sa.delete(ConsentConfirmation).where(
            ConsentConfirmation.store_id == store_id, ConsentConfirmation.contact_id.in_(ids)
        ),
    )
    run(
        "engagement",
        sa.update(Engagement)
        .where(Engagement.store_id == store_id, Engagement.contact_id.in_(ids))
        .values(contact_id=None),
    )
    run("esp_links", sa.delete(EspLink).where(EspLink.store_id == store_id, EspLink.contact_id.in_(ids)))
    _forget_derived(session, store_id, ids, run)
    counts["sync_items"] = _skip_sync_items(session, store_id, ids, carts, events, now)
    session.flush()
    return counts


def _forget_derived(session: Session, store_id: int, ids: list[int], run: Callable[[str, Any], None]) -> None:
    """What was computed about these contacts: RFM scores and transitions, lifecycle stage, segment membership and
    its history. Members leave their segments now (counts follow), not at the next full evaluation. Each delete is
    restricted to the store's runs or segments, so it probes primary keys instead of scanning every store's rows."""
    runs = select_ids(session, sa.select(RfmRun.id).where(RfmRun.store_id == store_id))
    segments = select_ids(session, sa.select(Segment.id).where(Segment.store_id == store_id))
    left = session.execute(
        sa.select(SegmentMember.segment_id, sa.func.count())
        .where(SegmentMember.segment_id.in_(segments), SegmentMember.contact_id.in_(ids))
        .group_by(SegmentMember.segment_id)
    ).all()
    for segment_id, n in left:
        session.execute(
            sa.update(Segment).where(Segment.id == segment_id).values(member_count=Segment.member_count - n)
        )
    run(
        "segment_members",
        sa.delete(SegmentMember).where(SegmentMember.segment_id.in_(segments), SegmentMember.contact_id.in_(ids)),
    )
    run(
        "segment_changes",
        sa.delete(SegmentChange).where(SegmentChange.store_id == store_id, SegmentChange.contact_id.in_(ids)),
    )
    run("rfm_scores", sa.delete(RfmScore).where(RfmScore.run_id.in_(runs), RfmScore.contact_id.in_(ids)))
    run(
        "rfm_transitions",
        sa.delete(RfmTransition).where(RfmTransition.run_id.in_(runs), RfmTransition.contact_id.in_(ids)),
    )
    run(
        "contact_lifecycle",
        sa.delete(ContactLifecycle).where(ContactLifecycle.store_id == store_id, ContactLifecycle.contact_id.in_(ids)),
    )


def _rows(result: sa.Result[Any]) -> int:
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def select_ids(session: Session, statement: sa.Select[Any]) -> list[int]:
    return list(session.scalars(statement))


def _erase_events(
    session: Session,
    store_id: int,
    ids: list[int],
    user_ids: list[str],
    anonymous_ids: list[str],
    now: dt.datetime,
) -> list[int]:
    """Each event of the person keeps only what is not personal (type, name, time, messageId), detached.

    The messageId stays so a retried message is still a duplicate (and not ingested again); events not yet
    projected are marked projected, so nothing of the person is rebuilt from them.
    """
    person = [Event.contact_id.in_(ids)]
    if user_ids:
        person.append(Event.user_id.in_(user_ids))
    if anonymous_ids:
        person.append(Event.anonymous_id.in_(anonymous_ids))
    events = session.scalars(sa.select(Event).where(Event.store_id == store_id, sa.or_(*person))).all()
    for event in events:
        event.payload = {
            "type": event.type,
            "event": event.name,
            "messageId": event.message_id,
            "timestamp": event.timestamp.isoformat(),
            "erased": True,
        }
        event.user_id = event.anonymous_id = event.contact_id = event.projection_error = None
        event.projected_at = event.projected_at or now
    return [event.id for event in events]


def _skip_sync_items(
    session: Session, store_id: int, ids: list[int], carts: list[int], events: list[int], now: dt.datetime
) -> int:
    """Open items about the person are skipped; every item about them loses an error text that may name them."""
    subjects = [str(i) for i in ids]
    about = sa.or_(
        sa.and_(SyncItem.kind == SyncKind.PROFILE, SyncItem.subject_id.in_(subjects)),
        sa.and_(
            SyncItem.kind == SyncKind.CONSENT,
            sa.or_(*[SyncItem.subject_id.like(f"{i}:%") for i in ids]),
        ),
        sa.and_(SyncItem.kind == SyncKind.CART, SyncItem.subject_id.in_([str(c) for c in carts])),
        sa.and_(SyncItem.kind == SyncKind.EVENT, SyncItem.subject_id.in_([str(e) for e in events])),
    )
    skipped = _rows(
        session.execute(
            sa.update(SyncItem)
            .where(SyncItem.store_id == store_id, about, SyncItem.status.in_(_OPEN))
            .values(status=SyncItemStatus.SKIPPED, done_at=now, last_error="erased")
        )
    )
    session.execute(
        sa.update(SyncItem)
        .where(SyncItem.store_id == store_id, about, SyncItem.last_error.is_not(None))
        .values(last_error="erased")
    )
    return skipped


def _queue(
    session: Session, store_id: int, erasure_id: int, targets: Sequence[tuple[int, dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """One ERASE item per target and connected ESP; the report's starting point per ESP."""
    esps = sorted(session.scalars(sa.select(EspConnection.esp).where(EspConnection.store_id == store_id)))
    report: dict[str, dict[str, Any]] = {}
    for esp in esps:
        items = [
            SyncItem(
                store_id=store_id,
                esp=esp,
                kind=SyncKind.ERASE,
                subject_id=f"{erasure_id}:{contact_id}",
                payload={
                    "email": payload["email"],
                    "phone": payload["phone"],
                    "remote_id": payload["remote_ids"].get(esp),
                },
            )
            for contact_id, payload in targets
        ]
        session.add_all(items)
        report[esp] = {"status": "pending" if items else "skipped", "requests": len(items), "error": None}
    session.flush()
    return report


def forget(item: SyncItem, *, settled: bool) -> None:
    """The ESP's error text never keeps the identifiers (an ESP may echo the email it refuses); a settled item
    drops them from its payload too, not keeping them a moment longer."""
    if item.last_error:
        for name in ("email", "phone"):
            value = (item.payload or {}).get(name)
            if isinstance(value, str) and value:
                item.last_error = item.last_error.replace(value, "[erased]")
    if settled:
        item.payload = {}


def settle(session: Session, store_id: int, erasure_ids: Iterable[int]) -> None:
    """Bring these erasures' reports up to date with their ERASE items (inside the engine's write)."""
    for erasure_id in set(erasure_ids):
        erasure = session.scalar(
            sa.select(Erasure).where(Erasure.store_id == store_id, Erasure.id == erasure_id).with_for_update()
        )
        if erasure is None:
            continue
        items = session.scalars(
            sa.select(SyncItem).where(
                SyncItem.store_id == store_id,
                SyncItem.kind == SyncKind.ERASE,
                SyncItem.subject_id.like(f"{erasure_id}:%"),
            )
        ).all()
        esps = dict(erasure.report.get("esps", {}))
        for esp in {item.esp for item in items}:
            esps[esp] = _outcome([item for item in items if item.esp == esp])
        erasure.report = {**erasure.report, "esps": esps}
        statuses = {entry["status"] for entry in esps.values()}
        if statuses <= {"done", "skipped", "failed"}:
            erasure.status = "failed" if "failed" in statuses else "done"
            erasure.finished_at = erasure.finished_at or utcnow()


def _outcome(items: Sequence[SyncItem]) -> dict[str, Any]:
    """One ESP's outcome: failed if any item died, pending/retrying while any is open, else done (or skipped)."""
    errors = [item.last_error for item in items if item.status == SyncItemStatus.DEAD]
    open_items = [item for item in items if item.status in _OPEN]
    if errors:
        status = "failed"
    elif open_items:
        status = "retrying" if any(item.attempts for item in open_items) else "pending"
    elif all(item.status == SyncItemStatus.SKIPPED for item in items):
        status = "skipped"
    else:
        status = "done"
    last = next((item.last_error for item in items if item.last_error), None)
    return {"status": status, "requests": len(items), "error": errors[0] if errors else last}


def get(db: Database, store_id: int, erasure_id: int) -> dict[str, Any]:
    """An erasure as the CLI and admin API show it."""
    with db.reader() as session:
        erasure = session.scalar(sa.select(Erasure).where(Erasure.store_id == store_id, Erasure.id == erasure_id))
        if erasure is None:
            raise NotFound(f"erasure {erasure_id} does not exist")
        return describe(erasure)


def describe(erasure: Erasure) -> dict[str, Any]:
    return {
        "id": erasure.id,
        "store_id": erasure.store_id,
        "requested_by": erasure.requested_by,
        "requested_at": erasure.requested_at.isoformat(),
        "identifier_kind": erasure.identifier_kind,
        "status": erasure.status,
        "finished_at": erasure.finished_at.isoformat() if erasure.finished_at else None,
        "report": erasure.report,
    }
