"""RFM snapshot + lifecycle (+ every pre-built segment) for 1,000,000 contacts and 5,000,000 orders on PostgreSQL.

Starts a throwaway PostgreSQL (bench/_procs.py), migrates it, generates the data inside the server
(``generate_series``: skewed order counts, 2 years of dates, a few dozen prices, refunds and cancellations), then
times, each in a fresh child process so peak RSS is that step's own:

- ``rfm``: connector.rfm.run_snapshot with lifecycle stages (``stages=``: one per-contact aggregate for both, as
  the nightly job and ``espbridge rfm run`` do), then connector.segments.evaluate_all (the pre-built segments'
  first, baseline evaluation);
- ``peer``: the same RFM scores as one hand-written SQL statement (percentile_cont + CASE) sent with psycopg,
  the floor for "computed in the database".

Goal (issue 7): RFM + all pre-built segments in under 60 s, Python peak RSS under 500 MiB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import sqlalchemy as sa
from _procs import Processes, start_postgres
from _sync_data import psycopg_url

from connector import lifecycle, migrate, rfm
from connector.store.db import connect
from connector.store.rfm import RfmScore
from connector.tenancy import create_store

AS_OF = dt.date(2026, 6, 30)

PEER_SQL = """
WITH agg AS (
  SELECT o.contact_id,
         %(as_of)s::date - max(o.placed_at AT TIME ZONE 'UTC')::date AS recency_days,
         count(*) FILTER (WHERE o.placed_at >= %(start)s) AS frequency,
         coalesce(sum(greatest(coalesce(o.revenue_cents, o.total_cents, 0) - o.refunded_cents, 0))
                  FILTER (WHERE o.placed_at >= %(start)s), 0) AS monetary_cents
  FROM orders o JOIN contacts c ON c.id = o.contact_id
  WHERE o.store_id = %(store)s AND c.store_id = %(store)s AND c.merged_into_id IS NULL AND c.erased_at IS NULL
    AND o.status IN ('completed', 'partially_refunded') AND o.placed_at < %(end)s
  GROUP BY o.contact_id
), cuts AS (
  SELECT percentile_cont(ARRAY[0.2, 0.4, 0.6, 0.8]) WITHIN GROUP (ORDER BY recency_days) AS r,
         percentile_cont(ARRAY[0.2, 0.4, 0.6, 0.8]) WITHIN GROUP (ORDER BY monetary_cents) AS m
  FROM agg
), scored AS (
  SELECT a.*,
    1 + (a.recency_days < r[1])::int + (a.recency_days < r[2])::int + (a.recency_days < r[3])::int
      + (a.recency_days < r[4])::int AS rs,
    1 + (a.frequency >= 2)::int + (a.frequency >= 3)::int + (a.frequency >= 5)::int + (a.frequency >= 10)::int AS fs,
    1 + (a.monetary_cents > m[1])::int + (a.monetary_cents > m[2])::int + (a.monetary_cents > m[3])::int
      + (a.monetary_cents > m[4])::int AS ms
  FROM agg a CROSS JOIN cuts
)
SELECT count(*), sum(4 * rs + 3 * fs + 3 * ms) FROM scored
"""


def build(url: str, contacts: int, orders: int) -> int:
    db = connect(url)
    migrate.upgrade(db)
    with db.writer() as session:
        store_id = create_store(session, "bench-rfm").id
    db.dispose()
    started = time.monotonic()
    with psycopg.connect(psycopg_url(url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT setseed(0.42)")
        cur.execute(
            "INSERT INTO contacts (store_id, email, properties, created_at, updated_at)"
            " SELECT %s, 'c' || g || '@example.com', '{}', now(), now() FROM generate_series(1, %s) g",
            (store_id, contacts),
        )
        cur.execute("SELECT min(id) FROM contacts WHERE store_id = %s", (store_id,))
        first = cur.fetchone()[0]  # type: ignore[index]
        # Skewed: power(random, 3) puts most orders on few contacts, many contacts get one or none.
        cur.execute(
            """
            INSERT INTO orders (store_id, order_id, contact_id, status, currency, total_cents, revenue_cents,
                                refunded_cents, placed_at, updated_at)
            SELECT %(store)s, 'o' || g, %(first)s + floor(power(random(), 3) * %(contacts)s)::int,
                   s.status, 'EUR', s.price, s.price,
                   CASE s.status WHEN 'partially_refunded' THEN s.price / 2 WHEN 'refunded' THEN s.price ELSE 0 END,
                   %(end)s - make_interval(secs => floor(random() * 730 * 86400)), now()
            FROM generate_series(1, %(orders)s) g,
                 LATERAL (SELECT (ARRAY['completed','completed','completed','completed','completed','completed',
                                        'completed','partially_refunded','refunded','cancelled'])[1 + (g %% 10)]
                                 AS status,
                                 (ARRAY[999, 1999, 1999, 2500, 4999, 5997, 7500, 12000, 19999, 45000])
                                 [1 + ((g * 7) %% 10)] AS price) s
            """,
            {
                "store": store_id,
                "first": first,
                "contacts": contacts,
                "orders": orders,
                "end": dt.datetime.combine(AS_OF, dt.time(23, 59), dt.UTC),
            },
        )
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE contacts")
        cur.execute("VACUUM ANALYZE orders")
    print(f"built {contacts:,} contacts and {orders:,} orders in {time.monotonic() - started:.1f} s", flush=True)
    return store_id


def child(kind: str, url: str, store_id: int) -> dict[str, Any]:
    steps: dict[str, float] = {}
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if kind == "rfm":
        db = connect(url)
        run_id = rfm.run_snapshot(db, store_id, AS_OF, stages=lifecycle.LifecycleConfig())
        steps["rfm+lifecycle"] = time.perf_counter() - started
        try:
            from connector import segments
        except ImportError:
            segments = None  # type: ignore[assignment]
        if segments is not None and hasattr(segments, "evaluate_all"):
            t = time.perf_counter()
            evaluations = segments.evaluate_all(db, store_id, now=dt.datetime.combine(AS_OF, dt.time(23, 59), dt.UTC))
            steps["segments"] = time.perf_counter() - t
            extra["segments"] = len(evaluations)
        run = rfm.get_run(db, store_id, run_id)
        assert run is not None
        extra["lifecycle_contacts"] = lifecycle.staged(db, store_id)
        extra |= {"scored": run["scored"], "population": run["population"], "complete": run["complete"]}
        with db.reader() as session:  # the same figure the peer prints: equal sums = equal scores, near enough
            extra["composite_sum"] = int(
                session.execute(
                    sa.select(sa.func.sum(RfmScore.composite)).where(RfmScore.run_id == run_id)
                ).scalar_one()
            )
        db.dispose()
    else:
        start = dt.datetime.combine(AS_OF - dt.timedelta(days=364), dt.time(), dt.UTC)
        end = dt.datetime.combine(AS_OF + dt.timedelta(days=1), dt.time(), dt.UTC)
        with psycopg.connect(psycopg_url(url)) as conn, conn.cursor() as cur:
            cur.execute(PEER_SQL, {"as_of": AS_OF, "start": start, "end": end, "store": store_id})
            row = cur.fetchone()
            assert row is not None
            extra = {"scored": row[0], "composite_sum": int(row[1])}
        steps["rfm"] = time.perf_counter() - started
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "steps": steps, "peak_rss_mib": round(peak_kib / 1024, 1)} | extra


def measure(kind: str, url: str, store_id: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", kind, "--url", url, "--store", str(store_id)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=5_000_000)
    parser.add_argument("--child", choices=("rfm", "peer"))
    parser.add_argument("--url")
    parser.add_argument("--store", type=int)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.store)))
        return
    with Processes() as procs:
        url = start_postgres(procs)
        store_id = build(url, args.contacts, args.orders)
        figures = {kind: measure(kind, url, store_id) for kind in ("peer", "rfm")}
    for kind, f in figures.items():
        steps = "  ".join(f"{k} {v:.2f} s" for k, v in f["steps"].items())
        rest = {k: v for k, v in f.items() if k not in ("seconds", "steps", "peak_rss_mib")}
        print(f"{kind:5} total {f['seconds']:7.2f} s  peak RSS {f['peak_rss_mib']:7.1f} MiB  [{steps}]  {rest}")
    print("goal: rfm total < 60 s, peak RSS < 500 MiB")


if __name__ == "__main__":
    main()
