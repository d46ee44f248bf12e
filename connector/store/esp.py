"""A store's connections to ESPs: where to reach the account and its credentials, encrypted at rest."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, StoreScoped, utcnow


class EspConnection(StoreScoped, Base):
    __tablename__ = "esp_connections"
    __table_args__ = (sa.UniqueConstraint("store_id", "esp"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    esp: Mapped[str] = mapped_column(sa.String(32))
    base_url: Mapped[str] = mapped_column(sa.String(500))
    #: Fernet token of the JSON credentials (connector.credentials); never the clear key.
    credentials: Mapped[str] = mapped_column(sa.Text)
    #: Per-store adapter settings, such as the contact field mapping.
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Where the next engagement poll starts (connector/esp/klaviyo_poll.py); None until the first poll.
    engagement_cursor: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
