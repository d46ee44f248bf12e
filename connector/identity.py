"""Identity resolution: which contact a message is about, creating and merging contacts as ids link up.

Rules (Segment-like, conservative):
- userId, anonymousId and email are identities, each pointing at one live contact.
- A message whose ids point at several contacts merges them into one, unless that would join two different
  userIds: two known people are never merged (a shared device must not fuse two customers).
- Merging moves identities, events, carts, orders, waitlist entries and consent state to the survivor and
  marks the other contact ``merged_into_id``. Consent ledger rows stay where they are (append-only); the
  merge pointer lets an audit follow them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import outbox
from .store import (
    Cart,
    ConsentState,
    Contact,
    Engagement,
    Event,
    Identity,
    IdentityKind,
    Order,
    WaitlistEntry,
)

log = logging.getLogger(__name__)

#: Merges are followed at most this many hops (a merge points at the survivor; this bounds a corrupt cycle).
MAX_MERGE_HOPS = 16


def survivor(session: Session, contact: Contact) -> Contact:
    """The contact ``contact`` lives on as: itself, or the one it was (transitively) merged into."""
    for _ in range(MAX_MERGE_HOPS):
        if contact.merged_into_id is None:
            break
        merged_into = session.get(Contact, contact.merged_into_id)
        if merged_into is None:
            break
        contact = merged_into
    return contact


def merge_family(session: Session, store_id: int, contact_ids: Iterable[int]) -> list[Contact]:
    """Every contact of the people ``contact_ids`` name: up to the survivors (a merged contact's history
    continues there) and down to everything merged into them, by id."""
    found: dict[int, Contact] = {}
    wanted = set(contact_ids)
    for _ in range(MAX_MERGE_HOPS):
        if not wanted:
            break
        rows = session.scalars(
            sa.select(Contact).where(
                Contact.store_id == store_id,
                sa.or_(Contact.id.in_(wanted), Contact.merged_into_id.in_(wanted)),
            )
        ).all()
        new = {c.id: c for c in rows if c.id not in found}
        found.update(new)
        wanted = {c.id for c in new.values()} | {
            c.merged_into_id for c in new.values() if c.merged_into_id and c.merged_into_id not in found
        }
        wanted -= set(found) - set(new)
    return sorted(found.values(), key=lambda c: c.id)


def find_person(
    session: Session, store_id: int, kind: str, value: Any, *, as_typed: str | None = None
) -> list[Contact]:
    """Every contact of the person an identifier names (``kind`` "contact", "email" or "phone", ``value``
    normalised: an id, ``normalise_email``, E.164 or None), with ``merge_family``'s reach.

    An email is found on identities and contacts; a phone both normalised and ``as_typed``, since contacts keep a
    phone the way the storefront sent it."""
    if kind == "contact":
        roots = {value}
    elif kind == "email":
        roots = set(
            session.scalars(
                sa.select(Identity.contact_id).where(
                    Identity.store_id == store_id, Identity.kind == IdentityKind.EMAIL, Identity.value == value
                )
            )
        ) | set(session.scalars(sa.select(Contact.id).where(Contact.store_id == store_id, Contact.email == value)))
    else:
        phones = {value, as_typed} - {None}
        roots = set(
            session.scalars(sa.select(Contact.id).where(Contact.store_id == store_id, Contact.phone.in_(phones)))
        )
    return merge_family(session, store_id, roots)


def normalise_email(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    return email if "@" in email and len(email) <= 320 else None


def resolve(
    session: Session,
    store_id: int,
    *,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    email: str | None = None,
) -> Contact | None:
    """The contact these ids belong to, created or merged as needed; None when no id is given."""
    wanted = [
        (kind, value)
        for kind, value in (
            (IdentityKind.USER_ID, user_id),
            (IdentityKind.ANONYMOUS_ID, anonymous_id),
            (IdentityKind.EMAIL, email),
        )
        if value
    ]
    if not wanted:
        return None
    found = _lookup(session, store_id, wanted)
    contact = _choose_and_merge(session, store_id, found, user_id) if found else None
    if contact is None:
        contact = Contact(store_id=store_id, external_id=user_id, email=email, properties={})
        session.add(contact)
        session.flush()
    for kind, value in wanted:
        if (kind, value) not in found:
            _link(session, store_id, contact, kind, value, user_id)
    if user_id and contact.external_id is None:
        contact.external_id = user_id
    return contact


def alias(session: Session, store_id: int, previous_id: str, user_id: str) -> Contact | None:
    """Segment's alias: ``previous_id`` (an anonymousId or older userId) and ``user_id`` are one person."""
    target = resolve(session, store_id, user_id=user_id)
    assert target is not None
    previous = session.scalars(
        sa.select(Identity).where(
            Identity.store_id == store_id,
            Identity.value == previous_id,
            Identity.kind.in_([IdentityKind.ANONYMOUS_ID, IdentityKind.USER_ID]),
        )
    ).all()
    for identity in previous:
        if identity.contact_id != target.id:
            other = session.get(Contact, identity.contact_id)
            if other is not None and other.store_id == store_id:
                merge(session, store_id, survivor=target, merged=other)
    if not previous:
        _link(session, store_id, target, IdentityKind.ANONYMOUS_ID, previous_id, user_id)
    return target


def merge(session: Session, store_id: int, *, survivor: Contact, merged: Contact) -> None:
    """Fold ``merged`` into ``survivor`` (both in ``store_id``)."""
    if survivor.id == merged.id:
        return
    for model in (Identity, Event, Cart, Order, Engagement):
        session.execute(
            sa.update(model)
            .where(model.store_id == store_id, model.contact_id == merged.id)
            .values(contact_id=survivor.id)
            .execution_options(synchronize_session=False)
        )
    _move_waitlists(session, store_id, survivor, merged)
    _move_consent_state(session, store_id, survivor, merged)
    for field in ("email", "phone", "external_id", "first_name", "last_name", "timezone", "locale"):
        if getattr(survivor, field) is None:
            setattr(survivor, field, getattr(merged, field))
    survivor.properties = {**(merged.properties or {}), **(survivor.properties or {})}
    # One person: kept out of the ESPs if either half was (a suppressed email now lives on the survivor).
    survivor.suppressed_at = survivor.suppressed_at or merged.suppressed_at
    merged.merged_into_id = survivor.id
    merged.email = None  # the survivor holds the person's data now
    outbox.add(session, store_id, outbox.Topic.CONTACT_MERGED, merged.id, {"into": survivor.id})
    outbox.add(session, store_id, outbox.Topic.CONTACT_UPSERT, survivor.id)
    session.expire_all()  # bulk updates above bypass the identity map


def _lookup(session: Session, store_id: int, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Identity]:
    clauses = [sa.and_(Identity.kind == kind, Identity.value == value) for kind, value in wanted]
    rows = session.scalars(sa.select(Identity).where(Identity.store_id == store_id, sa.or_(*clauses))).all()
    return {(row.kind, row.value): row for row in rows}


def _choose_and_merge(
    session: Session, store_id: int, found: dict[tuple[str, str], Identity], user_id: str | None
) -> Contact | None:
    """The contact the found ids lead to, with the others merged into it where they may be the same person.

    None when every found contact is another known person than ``user_id``: a userId seen for the first time
    on a shared anonymousId or email starts a contact of its own.
    """
    contacts: list[Contact] = []
    for contact_id in sorted({identity.contact_id for identity in found.values()}):
        contact = session.get(Contact, contact_id)
        assert contact is not None and contact.store_id == store_id
        contacts.append(contact)
    by_user = found.get((IdentityKind.USER_ID, user_id)) if user_id else None
    if by_user is not None:
        survivor = next(c for c in contacts if c.id == by_user.contact_id)
    else:
        candidates = [c for c in contacts if not _distinct_people(c.external_id, user_id)]
        if not candidates:
            return None
        survivor = candidates[0]
    for other in contacts:
        if other.id == survivor.id:
            continue
        # The survivor is about to be user_id if it is nobody yet; compare with whom it will be.
        if _distinct_people(survivor.external_id or user_id, other.external_id):
            log.info("store %s: not merging contacts %s and %s (different userIds)", store_id, survivor.id, other.id)
            continue
        merge(session, store_id, survivor=survivor, merged=other)
    return survivor


def _distinct_people(a: str | None, b: str | None) -> bool:
    """Two userIds that differ are two known people, never to be merged."""
    return a is not None and b is not None and a != b


def _link(session: Session, store_id: int, contact: Contact, kind: str, value: str, user_id: str | None) -> None:
    # An id already held by another known person stays where it is (see module docstring).
    holder = session.scalar(
        sa.select(Identity).where(Identity.store_id == store_id, Identity.kind == kind, Identity.value == value)
    )
    if holder is None:
        session.add(Identity(store_id=store_id, contact_id=contact.id, kind=kind, value=value))
        session.flush()


def _move_waitlists(session: Session, store_id: int, survivor: Contact, merged: Contact) -> None:
    entries = session.scalars(
        sa.select(WaitlistEntry).where(WaitlistEntry.store_id == store_id, WaitlistEntry.contact_id == merged.id)
    ).all()
    for entry in entries:
        clash = session.scalar(
            sa.select(WaitlistEntry.id).where(
                WaitlistEntry.store_id == store_id,
                WaitlistEntry.contact_id == survivor.id,
                WaitlistEntry.product_id == entry.product_id,
                WaitlistEntry.variant_id == entry.variant_id,
                WaitlistEntry.channel == entry.channel,
            )
        )
        if clash is None:
            entry.contact_id = survivor.id
        else:
            session.delete(entry)
    session.flush()


def _move_consent_state(session: Session, store_id: int, survivor: Contact, merged: Contact) -> None:
    theirs = session.scalars(
        sa.select(ConsentState).where(ConsentState.store_id == store_id, ConsentState.contact_id == merged.id)
    ).all()
    for state in theirs:
        mine = session.get(ConsentState, (survivor.id, state.channel))
        if mine is None:
            session.add(
                ConsentState(
                    store_id=store_id,
                    contact_id=survivor.id,
                    channel=state.channel,
                    status=state.status,
                    occurred_at=state.occurred_at,
                    ledger_entry_id=state.ledger_entry_id,
                )
            )
        elif state.occurred_at > mine.occurred_at:
            mine.status, mine.occurred_at, mine.ledger_entry_id = state.status, state.occurred_at, state.ledger_entry_id
        session.delete(state)
    session.flush()
