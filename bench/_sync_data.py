"""The store the sync benchmark syncs: contacts, consent and track events bulk-loaded into PostgreSQL.

Contacts and events go in with ``COPY … FROM STDIN`` (text format, rows built here from a seeded random
generator, so every run loads the same data); consent is derived in SQL from the contacts just loaded: each
consent_state row points at the consent_ledger row that produced it, as the ledger writer leaves them.

* contacts: email (unique), first and last name, timezone, locale, and three properties (``tier``,
  ``lifetime_value``, ``signup_source``);
* consent (email channel), by contact id: 30% granted (``grant`` → subscribed), 5% withdrawn (``withdraw`` →
  unsubscribed), 1% bounced (``bounce`` → unsubscribed, which the Klaviyo adapter sends as a suppression);
* events: ``type = 'track'``, one of five e-commerce names, a random contact, a unique messageId, a
  timestamp in the 90 days before the load, a Segment-shaped payload with properties (orders carry
  ``revenue`` and ``currency``), and ``projected_at`` set, so the projector leaves them alone.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

SEED = 20261122
BATCH_ROWS = 20_000  # rows per COPY write
FIRST_NAMES = ("Ann", "Ben", "Chloé", "Dara", "Emil", "Fatou", "Gus", "Hana", "Ines", "Jon", "Kai", "Lena")
LAST_NAMES = ("Lee", "Moreau", "Novak", "Okafor", "Patel", "Quinn", "Rossi", "Sato", "Tanaka", "Ueda", "Vega")
TIMEZONES = ("Europe/Paris", "Europe/Berlin", "America/New_York", "America/Chicago", "Asia/Tokyo", None)
LOCALES = ("fr-FR", "de-DE", "en-US", "en-GB", "ja-JP", None)
TIERS = ("bronze", "silver", "gold")
SOURCES = ("checkout", "newsletter", "import", "popup")
EVENT_NAMES = ("Product Viewed", "Product Added", "Cart Viewed", "Checkout Started", "Order Completed")
CATEGORIES = ("shoes", "shirts", "bags", "hats", "socks")
#: (share of contacts, ledger action, status) per email consent kind, by contact id modulo 100.
CONSENT_SHARES = ((30, "grant", "subscribed"), (5, "withdraw", "unsubscribed"), (1, "bounce", "unsubscribed"))


@dataclass(frozen=True)
class LoadStats:
    contacts: int
    events: int
    subscribed: int
    unsubscribed: int
    bounced: int
    seconds_contacts: float
    seconds_consent: float
    seconds_events: float
    seconds_analyze: float

    @property
    def seconds(self) -> float:
        return self.seconds_contacts + self.seconds_consent + self.seconds_events + self.seconds_analyze


def psycopg_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _text(value: object) -> str:
    """One field in COPY's text format."""
    if value is None:
        return "\\N"
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def _copy(conn: psycopg.Connection, statement: str, rows: Iterator[tuple[object, ...]]) -> int:
    count = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:  # type: ignore[arg-type]
        buffer: list[str] = []
        for row in rows:
            buffer.append("\t".join(_text(v) for v in row))
            count += 1
            if len(buffer) >= BATCH_ROWS:
                copy.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            copy.write("\n".join(buffer) + "\n")
    return count


def _contact_rows(store_id: int, n: int, rng: random.Random, now: dt.datetime) -> Iterator[tuple[object, ...]]:
    stamp = now.isoformat()
    for i in range(n):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        properties = {
            "tier": rng.choice(TIERS),
            "lifetime_value": round(rng.uniform(0, 2000), 2),
            "signup_source": rng.choice(SOURCES),
        }
        yield (
            store_id,
            f"{first.lower()}.{last.lower()}.{i}@example.com",
            None,
            f"cus_{i}",
            first,
            last,
            json.dumps(properties, ensure_ascii=False),
            rng.choice(TIMEZONES),
            rng.choice(LOCALES),
            stamp,
            stamp,
            stamp,
        )


def _event_rows(
    store_id: int, contact_ids: list[int], n: int, rng: random.Random, now: dt.datetime
) -> Iterator[tuple[object, ...]]:
    received = now.isoformat()
    start = now - dt.timedelta(days=90)
    span = 90 * 86_400
    for i in range(n):
        contact_id = rng.choice(contact_ids)
        name = EVENT_NAMES[i % len(EVENT_NAMES)] if rng.random() < 0.5 else rng.choice(EVENT_NAMES)
        message_id = f"bench-{i:08d}"
        timestamp = (start + dt.timedelta(seconds=rng.randrange(span))).isoformat()
        product = rng.randrange(500)
        price = round(rng.uniform(5, 200), 2)
        if name == "Order Completed":
            properties: dict[str, object] = {
                "order_id": f"A-{i}",
                "revenue": round(price * 2, 2),
                "currency": "EUR",
                "products": [{"product_id": f"p{product}", "price": price, "quantity": 2}],
            }
        else:
            properties = {
                "product_id": f"p{product}",
                "sku": f"SKU-{product:04d}",
                "category": CATEGORIES[product % len(CATEGORIES)],
                "price": price,
                "currency": "EUR",
                "quantity": 1,
            }
        user_id = f"cus_{contact_id}"
        payload = {
            "type": "track",
            "event": name,
            "userId": user_id,
            "messageId": message_id,
            "timestamp": timestamp,
            "properties": properties,
        }
        yield (
            store_id,
            message_id,
            "track",
            name,
            user_id,
            None,
            contact_id,
            timestamp,
            received,
            json.dumps(payload, separators=(",", ":")),
            received,
        )


def load(
    database_url: str, store_id: int, contacts: int, events: int, *, say: Callable[[str], None] = print
) -> LoadStats:
    """Load ``contacts`` contacts (with consent) and ``events`` track events into ``store_id``'s store."""
    rng = random.Random(SEED)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with psycopg.connect(psycopg_url(database_url), autocommit=False) as conn:
        t0 = time.monotonic()
        _copy(
            conn,
            "COPY contacts (store_id, email, phone, external_id, first_name, last_name, properties, timezone, "
            "locale, created_at, updated_at, last_seen_at) FROM STDIN",
            _contact_rows(store_id, contacts, rng, now),
        )
        conn.commit()
        ids = [r[0] for r in conn.execute("SELECT id FROM contacts WHERE store_id = %s ORDER BY id", (store_id,))]
        t1 = time.monotonic()
        say(f"  contacts: {len(ids):,} in {t1 - t0:.1f} s")
        counts = _load_consent(conn, store_id, now)
        conn.commit()
        t2 = time.monotonic()
        say(f"  consent: {sum(counts):,} ledger + state rows in {t2 - t1:.1f} s")
        loaded = _copy(
            conn,
            "COPY events (store_id, message_id, type, name, user_id, anonymous_id, contact_id, timestamp, "
            "received_at, payload, projected_at) FROM STDIN",
            _event_rows(store_id, ids, events, rng, now),
        )
        conn.commit()
        t3 = time.monotonic()
        say(f"  events: {loaded:,} in {t3 - t2:.1f} s ({loaded / max(t3 - t2, 1e-9):,.0f}/s)")
        conn.autocommit = True
        for table in ("contacts", "consent_ledger", "consent_state", "events"):
            conn.execute(f"ANALYZE {table}")  # type: ignore[arg-type]
        t4 = time.monotonic()
    return LoadStats(len(ids), loaded, *counts, t1 - t0, t2 - t1, t3 - t2, t4 - t3)


def _load_consent(conn: psycopg.Connection, store_id: int, now: dt.datetime) -> tuple[int, int, int]:
    """consent_ledger rows for a share of the contacts (by id modulo 100), then consent_state from them."""
    counts = []
    low = 0
    for share, action, status in CONSENT_SHARES:
        cur = conn.execute(
            """
            INSERT INTO consent_ledger (store_id, contact_id, channel, action, status_after, occurred_at,
                                        recorded_at, method, source)
            SELECT store_id, id, 'email', %(action)s, %(status)s,
                   %(now)s::timestamptz - (id %% 365) * interval '1 day', %(now)s, 'form', 'bench'
            FROM contacts WHERE store_id = %(store)s AND id %% 100 >= %(low)s AND id %% 100 < %(high)s
            """,
            {"action": action, "status": status, "now": now, "store": store_id, "low": low, "high": low + share},
        )
        counts.append(cur.rowcount)
        low += share
    conn.execute(
        """
        INSERT INTO consent_state (store_id, contact_id, channel, status, occurred_at, ledger_entry_id, updated_at)
        SELECT store_id, contact_id, channel, status_after, occurred_at, id, recorded_at
        FROM consent_ledger WHERE store_id = %s
        """,
        (store_id,),
    )
    return counts[0], counts[1], counts[2]
