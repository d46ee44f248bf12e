"""Connecting a store to an ESP account: the base URL, the credentials (encrypted), the adapter settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.orm import Session

from ..credentials import CredentialCipher, CredentialsUnavailable
from ..errors import InvalidInput, NotFound
from ..store import EspConnection
from ..store.base import utcnow

#: The ESPs espbridge has adapters for, and the base URL of each one's real API. ActiveCampaign has none: each
#: account has its own (``https://<account>.api-us1.com``, from Settings → Developer), so it must be given.
DEFAULT_BASE_URLS: dict[str, str | None] = {"klaviyo": "https://a.klaviyo.com", "activecampaign": None}
#: Shortest webhook signing secret accepted (an HMAC key: short ones are guessable).
MIN_WEBHOOK_SECRET = 16


@dataclass(frozen=True)
class Connection:
    """A connection with its credentials decrypted; the API key stays a SecretStr (never printed).

    ``webhook_secret`` signs the ESP's webhooks to this store (None: webhooks are not set up). ``secrets``: the
    ESP's other credentials by name (ActiveCampaign's event-tracking ``event_key``), stored encrypted likewise.
    """

    store_id: int
    esp: str
    base_url: str
    api_key: SecretStr
    settings: dict[str, Any] = field(default_factory=dict)
    webhook_secret: SecretStr | None = None
    secrets: dict[str, SecretStr] = field(default_factory=dict)


def connect(
    session: Session,
    cipher: CredentialCipher,
    store_id: int,
    esp: str,
    *,
    api_key: str,
    base_url: str | None = None,
    settings: dict[str, Any] | None = None,
    webhook_secret: str | None = None,
    secrets: dict[str, str] | None = None,
) -> EspConnection:
    """Create or replace the store's connection to ``esp``.

    ``webhook_secret``: the key the ESP signs its webhooks with, stored encrypted with the API key. None keeps the
    connection's current secret (a new API key does not break webhooks); "" removes it. ``secrets``: other
    credentials by name (None keeps the current ones).
    """
    if esp not in DEFAULT_BASE_URLS:
        raise InvalidInput("esp", f"must be one of {', '.join(sorted(DEFAULT_BASE_URLS))}")
    if not api_key.strip():
        raise InvalidInput("api_key", "required")
    url = (base_url or DEFAULT_BASE_URLS[esp] or "").rstrip("/")
    if not url:
        raise InvalidInput("base_url", f"required for {esp}: the account's own API URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput("base_url", f"must be an http(s) URL, not {url!r}")
    row = session.scalar(sa.select(EspConnection).where(EspConnection.store_id == store_id, EspConnection.esp == esp))
    if row is None:
        row = EspConnection(store_id=store_id, esp=esp)
        session.add(row)
    kept = _kept_credentials(row, cipher)
    secret = kept.get("webhook_secret") if webhook_secret is None else _checked_secret(webhook_secret)
    others = kept.get("secrets", {}) if secrets is None else {k: v.strip() for k, v in secrets.items() if v.strip()}
    row.base_url = url
    row.credentials = cipher.encrypt(
        {
            "api_key": api_key.strip(),
            **({"webhook_secret": secret} if secret else {}),
            **({"secrets": others} if others else {}),
        }
    )
    if settings is not None:
        row.settings = settings
    row.updated_at = utcnow()
    session.flush()
    return row


def load(session: Session, cipher: CredentialCipher, store_id: int, esp: str) -> Connection:
    row = session.scalar(sa.select(EspConnection).where(EspConnection.store_id == store_id, EspConnection.esp == esp))
    if row is None:
        raise NotFound(f"store {store_id} is not connected to {esp}")
    credentials = cipher.decrypt(row.credentials)
    secret = credentials.get("webhook_secret")
    return Connection(
        store_id,
        esp,
        row.base_url,
        SecretStr(credentials["api_key"]),
        dict(row.settings),
        SecretStr(secret) if secret else None,
        {name: SecretStr(value) for name, value in credentials.get("secrets", {}).items()},
    )


def set_webhook_secret(session: Session, cipher: CredentialCipher, store_id: int, esp: str, secret: str) -> None:
    """Store (replace) the secret ``esp`` signs this store's webhooks with, encrypted with the API key."""
    row = session.scalar(sa.select(EspConnection).where(EspConnection.store_id == store_id, EspConnection.esp == esp))
    if row is None:
        raise NotFound(f"store {store_id} is not connected to {esp}")
    credentials = cipher.decrypt(row.credentials)
    row.credentials = cipher.encrypt({**credentials, "webhook_secret": _checked_secret(secret)})
    row.updated_at = utcnow()
    session.flush()


def _checked_secret(secret: str) -> str:
    secret = secret.strip()
    if secret and len(secret) < MIN_WEBHOOK_SECRET:
        raise InvalidInput("webhook_secret", f"at least {MIN_WEBHOOK_SECRET} characters")
    return secret


def _kept_credentials(row: EspConnection, cipher: CredentialCipher) -> dict[str, Any]:
    """The connection's current credentials (to keep its secrets when only the API key changes)."""
    if not row.credentials:
        return {}
    try:
        return cipher.decrypt(row.credentials)
    except CredentialsUnavailable:
        return {}  # the old credentials cannot be read any more: nothing to keep


def connections(session: Session, store_id: int) -> list[EspConnection]:
    query = sa.select(EspConnection).where(EspConnection.store_id == store_id).order_by(EspConnection.esp)
    return list(session.scalars(query))


def disconnect(session: Session, store_id: int, esp: str) -> None:
    deleted = session.execute(
        sa.delete(EspConnection).where(EspConnection.store_id == store_id, EspConnection.esp == esp)
    )
    if not deleted.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"store {store_id} is not connected to {esp}")
