"""Declarative base and the column types every model shares."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: JSON everywhere, JSONB on PostgreSQL so later segment queries can index into properties.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
#: 64-bit ids on PostgreSQL; SQLite only auto-increments a plain INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset, so we store naive UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSONType}


class StoreScoped:
    """Mixin for every tenant-owned table: the store id is part of every query against it."""

    store_id: Mapped[int] = mapped_column(sa.ForeignKey("stores.id", ondelete="CASCADE"), index=True)


class Derived:
    """Mixin for rows computed in bulk from other tables (RFM scores, lifecycle stages, segment members): scoped to
    a store like every table, but without foreign keys.

    Each is written only by an INSERT … SELECT over the store's own contacts (and the run or segment row created
    in the same transaction) and removed by the code that removes its parent (contacts are never deleted; a
    segment's delete removes its members first), so every reference is right by construction. A foreign key would
    check it again per row: on the 1M-contact benchmark, the checks took as long as the inserts themselves (12.7 s
    of triggers beside 12.6 s of insert for 880k scores, EXPLAIN ANALYZE)."""

    store_id: Mapped[int]
