"""Projection: committed raw events → contacts, carts, orders, consent, waitlists, catalog (+ outbox rows).

Exactly once: a batch of events is projected and marked ``projected_at`` in one transaction, so a crash
projects the batch again from scratch and never half of it. Projectors of one store are serialised by a
write on the store's row taken first (a row lock on PostgreSQL, the write lock on SQLite), so two workers
never project the same event. Each event runs in a savepoint: a bad value costs that event's projection
(recorded in ``projection_error``), never the batch, and nothing is retried forever; only a database
that is down (OperationalError) fails the batch, to be projected again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from .. import catalog, commerce, consent, identity, outbox, phones, waitlists
from ..double_opt_in import DoubleOptIn
from ..store import Channel, ConsentStatus, Contact, Database, Event, Store, utcnow
from ..suppression import check as suppression_check

log = logging.getLogger(__name__)


class ProjectionError(Exception):
    """An event whose content cannot be applied; the message says why (stored on the event)."""


def project_pending(db: Database, store_id: int, *, batch_size: int = 100, doi: DoubleOptIn | None = None) -> int:
    """Project up to ``batch_size`` of the store's pending events, oldest first; returns how many.

    ``doi`` makes the confirmation links of grants on double opt-in channels (without it such a grant fails)."""
    with db.reader() as session:
        if not _has_pending(session, store_id):
            return 0  # the common case: a cheap read, no write lock taken
    with db.writer() as session:
        claimed = session.scalar(
            sa.update(Store).where(Store.id == store_id).values(projected_at=utcnow()).returning(Store.id)
        )
        if claimed is None:
            return 0
        events = session.scalars(
            sa.select(Event)
            .where(Event.store_id == store_id, Event.projected_at.is_(None))
            .order_by(Event.id)
            .limit(batch_size)
        ).all()
        now = utcnow()
        for event in events:
            try:
                with session.begin_nested():
                    event.contact_id = _project(session, event, doi)
            except (ProjectionError, ValidationError) as exc:
                event.projection_error = _describe(exc)
                log.info("store %s event %s not projected: %s", store_id, event.message_id, event.projection_error)
            except sa.exc.OperationalError:
                raise  # the database, not the event: the whole batch is retried
            except Exception as exc:
                # A bug met by this event's content. Recording it keeps one event from blocking the store's
                # projection forever; the event and its payload stay for a replay once the bug is fixed.
                log.exception("store %s event %s: projection failed", store_id, event.message_id)
                event.projection_error = f"internal error: {type(exc).__name__}: {exc}"[:1000]
            event.projected_at = now
        return len(events)


def _has_pending(session: Session, store_id: int) -> bool:
    pending = sa.select(Event.id).where(Event.store_id == store_id, Event.projected_at.is_(None)).limit(1)
    return session.scalar(pending) is not None


def _project(session: Session, event: Event, doi: DoubleOptIn | None = None) -> int | None:
    payload = event.payload
    store_id = event.store_id
    if event.type == "alias":
        contact = identity.alias(session, store_id, str(payload["previousId"]), str(payload["userId"]))
        return contact.id if contact else None
    traits = _identify_traits(payload) if event.type == "identify" else None
    contact = identity.resolve(
        session,
        store_id,
        user_id=event.user_id,
        anonymous_id=event.anonymous_id,
        email=identity.normalise_email(traits.get("email")) if isinstance(traits, dict) else None,
    )
    if contact is not None:
        contact.last_seen_at = max(contact.last_seen_at or event.timestamp, event.timestamp)
    if event.type == "identify" and contact is not None and isinstance(traits, dict):
        _apply_traits(contact, traits, payload.get("context") or {})
        suppression_check(session, store_id, contact, doi.cipher if doi else None)
        outbox.add(session, store_id, outbox.Topic.CONTACT_UPSERT, contact.id)
    elif event.type == "track" and event.name is not None:
        _project_track(session, event, contact, doi)
    return contact.id if contact else None


#: A tracked event's projection: (session, event, contact, validated properties, how to request a double opt-in).
Apply = Callable[[Session, Event, Contact | None, Any, DoubleOptIn | None], None]


def _project_track(session: Session, event: Event, contact: Contact | None, doi: DoubleOptIn | None) -> None:
    handler = TRACK_HANDLERS.get(event.name or "")
    if handler is not None:
        model, apply = handler
        apply(session, event, contact, model.model_validate(event.payload.get("properties") or {}), doi)
    if contact is not None:
        outbox.add(session, event.store_id, outbox.Topic.EVENT_TRACKED, event.id, {"name": event.name})


def _needs(contact: Contact | None, event: Event) -> Contact:
    if contact is None:
        raise ProjectionError(f'"{event.name}" needs a userId or anonymousId')
    return contact


def _consent(
    session: Session, event: Event, contact: Contact | None, props: consent.ConsentProperties, doi: DoubleOptIn | None
) -> None:
    contact = _needs(contact, event)
    if props.channel == Channel.SMS and props.status == ConsentStatus.SUBSCRIBED:
        _sms_phone(contact, (event.payload.get("properties") or {}).get("phone"))
        suppression_check(session, event.store_id, contact, doi.cipher if doi else None)
    consent.record(
        session,
        event.store_id,
        contact,
        props,
        occurred_at=event.timestamp,
        context=event.payload.get("context") or {},
        evidence_ref=event.message_id,
        doi=doi,
    )


def _sms_phone(contact: Contact, given: Any) -> None:
    """An SMS grant needs an E.164 number: the event's ``phone`` (then kept on the contact) or the contact's."""
    if given is not None:
        phone = phones.e164(given)
        if phone is None:
            raise ProjectionError("properties.phone: not an E.164 phone number (+ and 2-15 digits)")
        contact.phone = phone
    elif phones.e164(contact.phone) is None:
        raise ProjectionError(
            "properties.phone: an SMS subscription needs an E.164 phone number; "
            "the contact has none and the event gives none"
        )


def _order_status(status: str) -> Apply:
    def apply(session: Session, event: Event, _contact: Contact | None, props: Any, _doi: DoubleOptIn | None) -> None:
        if not commerce.order_status(session, event.store_id, props, status):
            raise ProjectionError(f"order {props.order_id!r} is not known")

    return apply


Handler = tuple[type[BaseModel], Apply]
TRACK_HANDLERS: dict[str, Handler] = {
    "Consent Updated": (consent.ConsentProperties, _consent),
    "Product Added": (
        commerce.CartLineProperties,
        lambda s, e, c, p, _doi: commerce.product_added(s, e.store_id, c, p, e.timestamp),
    ),
    "Product Removed": (
        commerce.CartLineProperties,
        lambda s, e, c, p, _doi: commerce.product_removed(s, e.store_id, c, p, e.timestamp),
    ),
    "Cart Viewed": (
        commerce.CartProperties,
        lambda s, e, c, p, _doi: commerce.cart_snapshot(s, e.store_id, c, p, e.timestamp, checkout=False),
    ),
    "Checkout Started": (
        commerce.CartProperties,
        lambda s, e, c, p, _doi: commerce.cart_snapshot(s, e.store_id, c, p, e.timestamp, checkout=True),
    ),
    "Order Completed": (
        commerce.OrderProperties,
        lambda s, e, c, p, _doi: commerce.order_completed(s, e.store_id, c, p, e.timestamp),
    ),
    "Order Refunded": (commerce.OrderRefProperties, _order_status("refunded")),
    "Order Cancelled": (commerce.OrderRefProperties, _order_status("cancelled")),
    "Waitlist Joined": (
        waitlists.WaitlistProperties,
        lambda s, e, c, p, _doi: waitlists.join(s, e.store_id, _needs(c, e), p, e.timestamp),
    ),
    "Waitlist Left": (
        waitlists.WaitlistProperties,
        lambda s, e, c, p, _doi: waitlists.leave(s, e.store_id, _needs(c, e), p, e.timestamp),
    ),
    "Inventory Updated": (
        catalog.InventoryProperties,
        lambda s, e, c, p, _doi: catalog.inventory_updated(s, e.store_id, p),
    ),
}

#: Traits with a column of their own; every other trait lands in ``properties``.
_TRAIT_COLUMNS = {
    "email": "email",
    "phone": "phone",
    "first_name": "first_name",
    "firstName": "first_name",
    "last_name": "last_name",
    "lastName": "last_name",
    "timezone": "timezone",
}
_COLUMN_LIMITS = {"email": 320, "phone": 32, "first_name": 200, "last_name": 200, "timezone": 64}


def _identify_traits(payload: dict[str, Any]) -> dict[str, Any] | None:
    """An identify's traits: Segment's clients send them at the top level, RudderStack's in ``context.traits``.

    Both are read (the top level wins a clash), so a storefront instrumented with either library works.
    """
    context = payload.get("context")
    nested = context.get("traits") if isinstance(context, dict) else None
    top = payload.get("traits")
    if not isinstance(nested, dict):
        return top if isinstance(top, dict) else None
    return {**nested, **top} if isinstance(top, dict) else nested


def _apply_traits(contact: Contact, traits: dict[str, Any], context: dict[str, Any]) -> None:
    extra: dict[str, Any] = {}
    for key, value in traits.items():
        column = _TRAIT_COLUMNS.get(key)
        if column is None:
            extra[key] = value
        elif column == "email":
            contact.email = identity.normalise_email(value) or contact.email
        elif isinstance(value, str) and value.strip():
            setattr(contact, column, value.strip()[: _COLUMN_LIMITS[column]])
    if extra:
        contact.properties = {**(contact.properties or {}), **extra}
    locale = traits.get("locale") or context.get("locale")
    if isinstance(locale, str) and locale:
        contact.locale = locale[:35]
    timezone = context.get("timezone")
    if isinstance(timezone, str) and timezone and contact.timezone is None:
        contact.timezone = timezone[:64]


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"properties.{where}: {first['msg']}"[:1000]
    return str(exc)[:1000]
