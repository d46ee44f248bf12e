"""Read models of contacts for the admin API. Every query is scoped by the caller's store."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .errors import InvalidInput, NotFound
from .identity import normalise_email
from .money import from_cents
from .store import (
    Cart,
    CartItem,
    ConsentState,
    Contact,
    Event,
    Identity,
    IdentityKind,
    Order,
    WaitlistEntry,
)

SEARCH_LIMIT = 50


def search(
    session: Session, store_id: int, *, email: str | None = None, user_id: str | None = None
) -> list[dict[str, Any]]:
    """Contacts matching exactly one of ``email`` / ``user_id`` (through identities, so merged ids count)."""
    if (email is None) == (user_id is None):
        raise InvalidInput("query", "give exactly one of email, user_id")
    if email is not None:
        kind, value = IdentityKind.EMAIL, normalise_email(email)
        if value is None:
            raise InvalidInput("email", "not an email address")
    else:
        kind, value = IdentityKind.USER_ID, user_id
    contacts = session.scalars(
        sa.select(Contact)
        .join(Identity, Identity.contact_id == Contact.id)
        .where(
            Identity.store_id == store_id, Contact.store_id == store_id, Identity.kind == kind, Identity.value == value
        )
        .limit(SEARCH_LIMIT)
    ).all()
    return [summary(contact) for contact in contacts]


def summary(contact: Contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "email": contact.email,
        "phone": contact.phone,
        "user_id": contact.external_id,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "merged_into_id": contact.merged_into_id,
        "created_at": contact.created_at.isoformat(),
        "last_seen_at": contact.last_seen_at.isoformat() if contact.last_seen_at else None,
    }


def detail(session: Session, store_id: int, contact_id: int) -> dict[str, Any]:
    contact = session.scalar(sa.select(Contact).where(Contact.store_id == store_id, Contact.id == contact_id))
    if contact is None:
        raise NotFound(f"contact {contact_id} not found")
    identities = session.execute(
        sa.select(Identity.kind, Identity.value)
        .where(Identity.store_id == store_id, Identity.contact_id == contact.id)
        .order_by(Identity.id)
    ).all()
    consent = session.scalars(
        sa.select(ConsentState).where(ConsentState.store_id == store_id, ConsentState.contact_id == contact.id)
    ).all()
    orders = session.execute(
        sa.select(sa.func.count(Order.id), sa.func.coalesce(sa.func.sum(Order.total_cents), 0)).where(
            Order.store_id == store_id, Order.contact_id == contact.id, Order.status != "cancelled"
        )
    ).one()
    event_count = session.scalar(
        sa.select(sa.func.count(Event.id)).where(Event.store_id == store_id, Event.contact_id == contact.id)
    )
    waitlist = session.scalars(
        sa.select(WaitlistEntry)
        .where(WaitlistEntry.store_id == store_id, WaitlistEntry.contact_id == contact.id)
        .order_by(WaitlistEntry.id)
    ).all()
    return {
        **summary(contact),
        "properties": contact.properties,
        "timezone": contact.timezone,
        "locale": contact.locale,
        "identities": [{"kind": kind, "value": value} for kind, value in identities],
        "consent": {
            state.channel: {"status": state.status, "since": state.occurred_at.isoformat()} for state in consent
        },
        "orders": {"count": orders[0], "total": from_cents(int(orders[1] or 0))},
        "events": {"count": event_count or 0},
        "cart": _open_cart(session, store_id, contact.id),
        "waitlist": [
            {
                "product_id": entry.product_id,
                "variant_id": entry.variant_id,
                "channel": entry.channel,
                "status": entry.status,
                "joined_at": entry.joined_at.isoformat(),
            }
            for entry in waitlist
        ],
    }


def _open_cart(session: Session, store_id: int, contact_id: int) -> dict[str, Any] | None:
    cart = session.scalar(
        sa.select(Cart)
        .where(Cart.store_id == store_id, Cart.contact_id == contact_id, Cart.status.in_(["open", "checkout"]))
        .order_by(Cart.id.desc())
        .limit(1)
    )
    if cart is None:
        return None
    items = session.scalars(
        sa.select(CartItem).where(CartItem.store_id == store_id, CartItem.cart_ref == cart.id).order_by(CartItem.id)
    ).all()
    return {
        "cart_id": cart.cart_id,
        "status": cart.status,
        "currency": cart.currency,
        "last_activity_at": cart.last_activity_at.isoformat(),
        "items": [
            {
                "product_id": item.product_id,
                "variant": item.variant,
                "name": item.name,
                "price": from_cents(item.price_cents),
                "quantity": item.quantity,
            }
            for item in items
        ],
    }
