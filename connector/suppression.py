"""Suppressions: HMAC digests of normalised emails and phones kept out of every ESP (an erased person, say).

A digest is keyed with the store's secret (connector/store_keys.py), so the table can recognise an identifier
it is shown again but cannot be read back. A contact whose email or phone matches gets ``suppressed_at``; the
sync engine and full sync skip such contacts.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import phones, store_keys
from .credentials import CredentialCipher
from .identity import normalise_email
from .store import Contact, Suppression, utcnow


def digests(key: bytes, *, email: str | None, phone: str | None) -> dict[str, str]:
    """{digest: kind} for the normalised identifiers given (kind-prefixed so an email never equals a phone)."""
    found: dict[str, str] = {}
    if (normal := normalise_email(email)) is not None:
        found[store_keys.digest(key, f"email:{normal}")] = "email"
    if (normal := phones.e164(phone)) is not None:  # as SMS consent keeps it: a digest matches its phone
        found[store_keys.digest(key, f"phone:{normal}")] = "phone"
    return found


def add(session: Session, store_id: int, key: bytes, *, email: str | None, phone: str | None, reason: str) -> int:
    """Suppress these identifiers (already suppressed ones are left alone); returns how many were added."""
    wanted = digests(key, email=email, phone=phone)
    if not wanted:
        return 0
    known = set(
        session.scalars(
            sa.select(Suppression.digest).where(Suppression.store_id == store_id, Suppression.digest.in_(wanted))
        )
    )
    new = [
        Suppression(store_id=store_id, kind=kind, digest=d, reason=reason)
        for d, kind in wanted.items()
        if d not in known
    ]
    session.add_all(new)
    session.flush()
    return len(new)


def check(session: Session, store_id: int, contact: Contact, cipher: CredentialCipher | None) -> bool:
    """Mark ``contact`` suppressed if its email or phone is; True if it is (now or already).

    Cheap for the common store: one indexed look for any suppression at all, and the key is read only then.
    Without a cipher (no credentials key configured) nothing can match, as no digest can have been made.
    """
    if contact.suppressed_at is not None:
        return True
    if cipher is None or (contact.email is None and contact.phone is None):
        return False
    if session.scalar(sa.select(Suppression.id).where(Suppression.store_id == store_id).limit(1)) is None:
        return False
    key = store_keys.hmac_key(session, store_id, cipher)
    wanted = digests(key, email=contact.email, phone=contact.phone)
    if not wanted:
        return False
    hit = session.scalar(
        sa.select(Suppression.id).where(Suppression.store_id == store_id, Suppression.digest.in_(wanted)).limit(1)
    )
    if hit is None:
        return False
    contact.suppressed_at = utcnow()
    return True


def blocked(contact: Contact) -> bool:
    """Never sent to an ESP: erased, or matching a suppression."""
    return contact.erased_at is not None or contact.suppressed_at is not None
