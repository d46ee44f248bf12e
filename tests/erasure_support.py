"""Looking for a person's personal data anywhere in a store's tables (the erasure tests' proof)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from connector.store import Base, Database


def personal_data_left(
    db: Database, store_id: int, needles: Iterable[str], *, allowed: Iterable[tuple[str, str]] = ()
) -> list[tuple[str, str, str]]:
    """(table, column, needle) for every text or JSON value of the store's rows that contains a needle.

    Every table of the schema is read, so a table added later is covered without changing the test. ``allowed``
    names (table, column) pairs left out (the ERASE items' payload, until they are settled).
    """
    skip = set(allowed)
    wanted = [n.lower() for n in needles if n]
    found: list[tuple[str, str, str]] = []
    with db.reader() as session:
        for table in Base.metadata.sorted_tables:
            column = table.c.get("store_id") if table.name != "stores" else table.c.id
            if column is None:
                continue
            texts = [c for c in table.c if isinstance(c.type, sa.String | sa.Text | sa.JSON)]
            if not texts:
                continue
            for row in session.execute(sa.select(*texts).where(column == store_id)):
                for col, value in zip(texts, row, strict=True):
                    text = _text(value).lower()
                    if (table.name, col.name) not in skip:
                        found += [(table.name, col.name, n) for n in wanted if n in text]
    return found


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
