"""Each store's HMAC key: suppression digests of erased people and signed preference links use it.

The key is random, made on first use and kept in ``stores.hmac_key`` encrypted with the credentials key, so a
copy of the database alone can neither read a suppression back by guessing emails nor forge a link.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .credentials import CredentialCipher
from .errors import NotFound
from .store import Store


def existing_key(session: Session, store_id: int, cipher: CredentialCipher) -> bytes | None:
    """The store's key, or None when it has none yet (nothing was ever signed or digested with it)."""
    encrypted = session.scalar(sa.select(Store.hmac_key).where(Store.id == store_id))
    return None if encrypted is None else bytes.fromhex(cipher.decrypt(encrypted)["key"])


def hmac_key(session: Session, store_id: int, cipher: CredentialCipher) -> bytes:
    """The store's key, made (inside ``session``'s transaction) if it has none yet."""
    if (key := existing_key(session, store_id, cipher)) is not None:
        return key
    store = session.scalar(sa.select(Store).where(Store.id == store_id).with_for_update())
    if store is None:
        raise NotFound(f"store {store_id} does not exist")
    if store.hmac_key is None:  # still none under the lock: this transaction makes it
        store.hmac_key = cipher.encrypt({"key": secrets.token_hex(32)})
        session.flush()
    return bytes.fromhex(cipher.decrypt(store.hmac_key)["key"])


def digest(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
