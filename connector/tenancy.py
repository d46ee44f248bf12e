"""Stores, write keys and admin users: creation and authentication.

Secrets (write keys, admin tokens) are random, shown once, and stored only as SHA-256 digests. A fast hash
is right here: the secrets carry 192+ bits of entropy, so there is nothing for a slow hash to protect.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import zoneinfo
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .errors import InvalidInput, NotFound
from .store import AdminUser, Database, Role, Store, WriteKey

WRITE_KEY_PREFIX = "wk_"
ADMIN_TOKEN_PREFIX = "eba_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewStore:
    id: int
    name: str
    timezone: str
    write_key: str


@dataclass(frozen=True)
class NewAdminUser:
    id: int
    store_id: int
    email: str
    role: Role
    token: str


def create_store(session: Session, name: str, timezone: str = "UTC") -> NewStore:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("name", "must be 1 to 200 characters")
    if timezone not in zoneinfo.available_timezones():
        raise InvalidInput("timezone", f"unknown IANA time zone {timezone!r}")
    store = Store(name=name, timezone=timezone)
    session.add(store)
    session.flush()
    return NewStore(store.id, store.name, store.timezone, create_write_key(session, store.id))


def create_write_key(session: Session, store_id: int) -> str:
    key = WRITE_KEY_PREFIX + secrets.token_urlsafe(24)
    session.add(WriteKey(store_id=store_id, key_hash=digest(key), prefix=key[:10]))
    session.flush()
    return key


def create_admin_user(session: Session, store_id: int, email: str, role: str) -> NewAdminUser:
    try:
        checked_role = Role(role)
    except ValueError:
        raise InvalidInput("role", f"one of {', '.join(r.value for r in Role)}") from None
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise InvalidInput("email", "not an email address")
    if session.get(Store, store_id) is None:
        raise NotFound(f"store {store_id} does not exist")
    exists = session.scalar(sa.select(AdminUser.id).where(AdminUser.store_id == store_id, AdminUser.email == email))
    if exists is not None:
        raise InvalidInput("email", f"{email} already has an account in store {store_id}")
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    user = AdminUser(store_id=store_id, email=email, role=checked_role, token_hash=digest(token))
    session.add(user)
    session.flush()
    return NewAdminUser(user.id, store_id, email, checked_role, token)


def find_store(session: Session, store_id: int | None) -> Store:
    """The store with ``store_id``, or the only store when None (the one-store case needs no flag)."""
    if store_id is not None:
        store = session.get(Store, store_id)
        if store is None:
            raise NotFound(f"store {store_id} does not exist")
        return store
    stores = session.scalars(sa.select(Store).limit(2)).all()
    if len(stores) != 1:
        raise InvalidInput("store", "there are several stores; say which" if stores else "no store exists yet")
    return stores[0]


@dataclass(frozen=True)
class Principal:
    """Who an admin request acts as."""

    user_id: int
    store_id: int
    email: str
    role: Role


def authenticate_admin(session: Session, token: str) -> Principal | None:
    if not token.startswith(ADMIN_TOKEN_PREFIX):
        return None
    user = session.scalar(sa.select(AdminUser).where(AdminUser.token_hash == digest(token)))
    if user is None:
        return None
    return Principal(user.id, user.store_id, user.email, Role(user.role))


class WriteKeyCache:
    """Write key → store id, cached per process for ``ttl`` seconds: ingestion must not pay a query per request.

    A revoked key keeps working for at most ``ttl`` seconds in a process that had it cached.
    """

    def __init__(self, db: Database, ttl: float = 30.0) -> None:
        self._db = db
        self._ttl = ttl
        self._entries: dict[str, tuple[int | None, float]] = {}
        self._lock = threading.Lock()

    def store_for(self, key: str) -> int | None:
        if not key.startswith(WRITE_KEY_PREFIX) or len(key) > 200:
            return None
        hashed = digest(key)
        now = time.monotonic()
        cached = self._entries.get(hashed)
        if cached is not None and cached[1] > now:
            return cached[0]
        with self._db.reader() as session:
            store_id = session.scalar(
                sa.select(WriteKey.store_id).where(WriteKey.key_hash == hashed, WriteKey.revoked_at.is_(None))
            )
        with self._lock:
            if len(self._entries) > 10_000:  # bounded: unknown keys from a scanner must not grow memory
                self._entries.clear()
            self._entries[hashed] = (store_id, now + self._ttl)
        return store_id
