"""How fast ``espbridge audit verify`` walks a large consent ledger, next to the floor of the same work.

Starts a throwaway PostgreSQL (bench/_procs.py), migrates it, writes N chained ledger rows for one store
(precomputed with connector.ledger and loaded with COPY), then times, each in a fresh child process:

* **verify** - ``connector.audit.verify(db, store_id)``: the real check (hash, seq and link of every row,
  head row at the end);
* **peer** - a plain psycopg loop over a server-side cursor fetching the same columns and SHA-256-hashing each
  row's text, with no checks: the floor for "read every row once and hash it" in Python.

Prints seconds, rows/s and peak RSS of each, and verify ÷ peer. ``make bench-audit`` runs it with 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from _procs import Processes, start_postgres
from _sync_data import psycopg_url

from connector import audit, ledger, migrate
from connector.store import Contact
from connector.store.db import connect
from connector.tenancy import create_store

COLUMNS = ("id", *ledger.HASHED_COLUMNS, "entry_hash")
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def build(url: str, rows: int) -> int:
    """Migrate, create a store and a contact, COPY ``rows`` chained ledger rows in; return the store id."""
    db = connect(url)
    migrate.upgrade(db)
    with db.writer() as session:
        store_id = create_store(session, "bench-audit").id
        contact = Contact(store_id=store_id, email="ledger@example.com", properties={})
        session.add(contact)
        session.flush()
        contact_id = contact.id
    db.dispose()
    names = [c for c in ledger.HASHED_COLUMNS] + ["entry_hash"]
    prev = ledger.GENESIS
    started = time.monotonic()
    with psycopg.connect(psycopg_url(url)) as conn, conn.cursor() as cur:
        # The trigger refuses UPDATE/DELETE only; COPY appends like any writer would.
        with cur.copy(f"COPY consent_ledger ({', '.join(names)}) FROM STDIN") as copy:
            for seq in range(1, rows + 1):
                at = T0 + dt.timedelta(seconds=seq)
                channel = ("email", "sms")[seq % 2]
                values = [
                    store_id, seq, contact_id, channel, "newsletter", ("grant", "withdraw")[seq % 3 == 0],
                    ("subscribed", "unsubscribed")[seq % 3 == 0], at, at, "form", "https://shop.example/signup",
                    "footer", "3", "a" * 64, "2", "storefront", f"m-{seq}", None, prev,
                ]  # fmt: skip
                prev = ledger.row_hash(values)
                copy.write_row([*values, prev])
        cur.execute(
            "INSERT INTO consent_ledger_heads (store_id, seq, entry_hash, updated_at) VALUES (%s, %s, %s, now())",
            (store_id, rows, prev),
        )
        conn.commit()
        cur.execute("ANALYZE consent_ledger")
    print(f"built {rows:,} rows in {time.monotonic() - started:.1f} s", flush=True)
    return store_id


def child(kind: str, url: str, store_id: int) -> dict[str, float | int | bool]:
    started = time.perf_counter()
    if kind == "verify":
        db = connect(url)
        result = audit.verify(db, store_id)
        count, ok = result.rows, result.ok
        db.dispose()
    else:
        count, ok = 0, True
        with psycopg.connect(psycopg_url(url)) as conn, conn.cursor(name="peer") as cur:
            cur.itersize = 10_000
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM consent_ledger WHERE store_id = %s ORDER BY id", (store_id,))
            sha256 = hashlib.sha256
            for row in cur:
                sha256("|".join(map(str, row)).encode()).hexdigest()
                count += 1
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "rows": count, "ok": ok, "peak_rss_mib": round(peak_kib / 1024, 1)}


def measure(kind: str, url: str, store_id: int) -> dict[str, float | int | bool]:
    argv = [sys.executable, __file__, "--child", kind, "--url", url, "--store", str(store_id)]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", choices=("verify", "peer"))
    parser.add_argument("--url")
    parser.add_argument("--store", type=int)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.store)))
        return
    with Processes() as procs:
        url = start_postgres(procs)
        store_id = build(url, args.rows)
        figures = {kind: measure(kind, url, store_id) for kind in ("verify", "peer")}
    out = io.StringIO()
    out.write(f"{'':8}{'seconds':>10}{'rows/s':>12}{'peak RSS MiB':>14}  ok\n")
    for kind, f in figures.items():
        rate = float(f["rows"]) / float(f["seconds"])
        out.write(f"{kind:8}{f['seconds']:>10.2f}{rate:>12,.0f}{f['peak_rss_mib']:>14}  {f['ok']}\n")
    ratio = float(figures["verify"]["seconds"]) / float(figures["peer"]["seconds"])
    out.write(f"verify ÷ peer: {ratio:.2f}   rows: {figures['verify']['rows']:,}   goal: < 30 s\n")
    print(out.getvalue(), end="")


if __name__ == "__main__":
    main()
