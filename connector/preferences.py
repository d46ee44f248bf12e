"""Signed preference links: a person unsubscribes from a channel without logging in.

The link carries the store, contact and channel in clear and an HMAC over them with the store's key
(connector/store_keys.py), so it cannot be forged or moved to another person or channel.
"""

from __future__ import annotations

import hmac

from sqlalchemy.orm import Session

from . import store_keys
from .credentials import CredentialCipher


def signature(key: bytes, contact_id: int, channel: str) -> str:
    """The link's HMAC with the store's key (``store_keys.hmac_key``)."""
    return store_keys.digest(key, f"unsubscribe:{contact_id}:{channel}")


def unsubscribe_url(public_url: str, key: bytes, store_id: int, contact_id: int, channel: str) -> str:
    sig = signature(key, contact_id, channel)
    return f"{public_url.rstrip('/')}/consent/unsubscribe/{store_id}/{contact_id}/{channel}/{sig}"


def verify(
    session: Session, cipher: CredentialCipher, store_id: int, contact_id: int, channel: str, given: str
) -> bool:
    """True when ``given`` is the link's signature (constant-time: timing tells nothing about the right one).

    A store without a key has signed no link: False, and no key is made (a read transaction is enough)."""
    key = store_keys.existing_key(session, store_id, cipher)
    return key is not None and hmac.compare_digest(signature(key, contact_id, channel), given)
