"""RFM snapshots (DESIGN.md section 8) against an independent numpy reference, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector import lifecycle, rfm
from connector.rfm import RfmConfig, local_yesterday, run_snapshot
from connector.settings import Settings
from connector.store.commerce import Order
from connector.store.contacts import Contact
from connector.store.db import Database
from connector.store.rfm import RfmRun, RfmScore, RfmTransition
from connector.tenancy import NewStore

AS_OF = dt.date(2026, 6, 30)
GROUPS = [(38, "VIP"), (28, "Loyal"), (18, "At Risk"), (10, "Hibernating")]


def _seed(db: Database, store_id: int, n: int, seed: int = 7) -> None:
    """n contacts with heavy ties: few distinct dates and a handful of prices; plus noise the run must ignore."""
    rng = random.Random(seed)
    prices = [1999, 1999, 2500, 5997, 10000]
    with db.writer() as session:
        contacts = [Contact(store_id=store_id, email=f"c{i}@example.com") for i in range(n)]
        session.add_all(contacts)
        session.flush()
        rows: list[dict[str, Any]] = []
        for i, contact in enumerate(contacts):
            for k in range(rng.choice([0, 1, 1, 2, 3, 5, 12])):
                days_ago = rng.choice([0, 3, 3, 30, 100, 364, 365, 400])
                placed = dt.datetime.combine(AS_OF, dt.time(rng.randrange(24)), dt.UTC) - dt.timedelta(days=days_ago)
                status = rng.choice(["completed"] * 6 + ["partially_refunded", "refunded", "cancelled"])
                price = rng.choice(prices)
                refunded = price // 2 if status == "partially_refunded" else (price if status == "refunded" else 0)
                rows.append(
                    dict(
                        store_id=store_id,
                        order_id=f"o{i}-{k}",
                        contact_id=contact.id,
                        status=status,
                        revenue_cents=price,
                        total_cents=price,
                        refunded_cents=refunded,
                        placed_at=placed,
                    )
                )
            # An order after as_of is ignored.
            rows.append(
                dict(
                    store_id=store_id,
                    order_id=f"late{i}",
                    contact_id=contact.id,
                    status="completed",
                    revenue_cents=99999,
                    total_cents=99999,
                    refunded_cents=0,
                    placed_at=dt.datetime.combine(AS_OF + dt.timedelta(days=1), dt.time(0, 1), dt.UTC),
                )
            )
        session.execute(sa.insert(Order), rows)


def _reference(
    db: Database, store_id: int, percentiles: bool, cfg: RfmConfig | None = None
) -> dict[int, tuple[int, int, int, int, int, str]]:
    """Recomputed in Python from the raw orders, cut-points from numpy.percentile; window and thresholds from cfg."""
    cfg = cfg or RfmConfig()
    with db.reader() as session:
        orders = session.execute(
            sa.select(Order.contact_id, Order.status, Order.revenue_cents, Order.refunded_cents, Order.placed_at).where(
                Order.store_id == store_id
            )
        ).all()
    per: dict[int, list[tuple[dt.date, int]]] = {}
    for contact_id, status, revenue, refunded, placed in orders:
        assert contact_id is not None and revenue is not None
        day = placed.astimezone(dt.UTC).date()
        if status in ("completed", "partially_refunded") and day <= AS_OF:
            per.setdefault(contact_id, []).append((day, max(revenue - refunded, 0)))
    values = {}
    for cid, items in per.items():
        window = [(d, v) for d, v in items if d > AS_OF - dt.timedelta(days=cfg.window_days)]
        values[cid] = ((AS_OF - max(d for d, _ in items)).days, len(window), sum(v for _, v in window))
    rec = np.array([v[0] for v in values.values()])
    mon = np.array([v[2] for v in values.values()])
    if percentiles:
        r_cuts = np.percentile(rec, [20, 40, 60, 80])
        m_cuts = np.percentile(mon, [20, 40, 60, 80])
    out = {}
    for cid, (recency, freq, money) in values.items():
        if percentiles:
            r = 1 + int(sum(recency < c for c in r_cuts))
            m = 1 + int(sum(money > c for c in m_cuts))
        else:
            r = 1 + sum(recency <= c for c in cfg.fixed_recency_days)
            m = 1 + sum(money >= c for c in cfg.fixed_monetary_cents)
        f = 1 + sum(freq >= c for c in cfg.frequency_thresholds)
        comp = 4 * r + 3 * f + 3 * m
        out[cid] = (r, f, m, comp, money, next(name for low, name in GROUPS if comp >= low))
    return out


def _scores(db: Database, store_id: int, run_id: int) -> dict[int, tuple[int, int, int, int, int, str]]:
    with db.reader() as session:
        rows = session.scalars(sa.select(RfmScore).where(RfmScore.store_id == store_id, RfmScore.run_id == run_id))
        return {s.contact_id: (s.r, s.f, s.m, s.composite, s.monetary_cents, s.group) for s in rows}


def test_percentile_scores_match_numpy_reference_with_heavy_ties(db: Database, store: NewStore) -> None:
    _seed(db, store.id, 900)
    run_id = run_snapshot(db, store.id, AS_OF)
    with db.reader() as session:
        run = session.get(RfmRun, run_id)
        assert run is not None
        assert run.method == "percentiles" and run.complete and run.scored == run.population
    expected = _reference(db, store.id, percentiles=True)
    assert run.scored == len(expected) > 500
    assert _scores(db, store.id, run_id) == expected
    # Equal values share a score (the point of strict comparisons against cut-points).
    got = _scores(db, store.id, run_id)
    with db.reader() as session:
        rows = session.execute(
            sa.select(RfmScore.contact_id, RfmScore.recency_days).where(RfmScore.run_id == run_id)
        ).all()
        recency = {cid: days for cid, days in rows}
    r_by_days: dict[int, set[int]] = {}
    m_by_cents: dict[int, set[int]] = {}
    for cid, (r, _, m, _, money, _) in got.items():
        r_by_days.setdefault(recency[cid], set()).add(r)
        m_by_cents.setdefault(money, set()).add(m)
    assert all(len(v) == 1 for v in [*r_by_days.values(), *m_by_cents.values()])
    assert len(m_by_cents) < len(got) // 4 and len(r_by_days) < 10  # the ties really are heavy


def test_rerun_keeps_scores_and_records_no_transitions(db: Database, store: NewStore) -> None:
    _seed(db, store.id, 600)
    first = run_snapshot(db, store.id, AS_OF)
    second = run_snapshot(db, store.id, AS_OF)
    assert _scores(db, store.id, first) == _scores(db, store.id, second)
    with db.reader() as session:
        run = session.get(RfmRun, second)
        assert run is not None and run.transitions == 0 and run.drift_alerts == []
        assert session.scalar(sa.select(sa.func.count()).select_from(RfmTransition)) == 0


def test_row_order_does_not_change_scores(db: Database, store: NewStore, other_store: NewStore) -> None:
    """The same data inserted in another order (another seed shuffles nothing but ids) scores the same."""
    _seed(db, store.id, 600, seed=11)
    with db.reader() as session:
        contacts = session.execute(sa.select(Contact.id, Contact.email).where(Contact.store_id == store.id)).all()
        orders = session.execute(sa.select(Order).where(Order.store_id == store.id)).scalars().all()
        snapshot = [
            (o.contact_id, o.order_id, o.status, o.revenue_cents, o.total_cents, o.refunded_cents, o.placed_at)
            for o in orders
        ]
    with db.writer() as session:
        mapping = {}
        for cid, email in reversed(contacts):
            c = Contact(store_id=other_store.id, email=email)
            session.add(c)
            session.flush()
            mapping[cid] = c.id
        rows = [
            dict(
                store_id=other_store.id,
                contact_id=mapping[c] if c is not None else None,
                order_id=oid,
                status=st,
                revenue_cents=rv,
                total_cents=tt,
                refunded_cents=rf,
                placed_at=at,
            )
            for c, oid, st, rv, tt, rf, at in reversed(snapshot)
        ]
        session.execute(sa.insert(Order), rows)
    a = _scores(db, store.id, run_snapshot(db, store.id, AS_OF))
    b = _scores(db, other_store.id, run_snapshot(db, other_store.id, AS_OF))
    assert {mapping[cid]: v for cid, v in a.items()} == b


def test_small_store_uses_fixed_thresholds(db: Database, store: NewStore) -> None:
    _seed(db, store.id, 120)
    run_id = run_snapshot(db, store.id, AS_OF)
    with db.reader() as session:
        run = session.get(RfmRun, run_id)
        assert run is not None and run.method == "fixed" and run.complete
    assert _scores(db, store.id, run_id) == _reference(db, store.id, percentiles=False)


def test_only_the_newest_runs_keep_their_scores(db: Database, store: NewStore) -> None:
    _seed(db, store.id, 60)
    cfg = rfm.config_from(Settings(rfm_keep_runs=2))
    runs = [run_snapshot(db, store.id, AS_OF + dt.timedelta(days=d), config=cfg) for d in range(4)]
    with db.reader() as s:
        kept = dict(s.execute(sa.select(RfmScore.run_id, sa.func.count()).group_by(RfmScore.run_id)).all())
    scored = {r: (rfm.get_run(db, store.id, r) or {})["scored"] for r in runs}  # every run keeps its summary
    assert all(n > 0 for n in scored.values())
    assert kept == {r: scored[r] for r in runs[2:]}
    every = rfm.config_from(Settings(rfm_keep_runs=0))
    run_snapshot(db, store.id, AS_OF, config=every)
    with db.reader() as s:
        assert s.scalar(sa.select(sa.func.count(sa.distinct(RfmScore.run_id)))) == 3


def test_thresholds_from_settings_change_the_scores_and_the_run_records_them(db: Database, store: NewStore) -> None:
    _seed(db, store.id, 120)
    settings = Settings(
        rfm_window_days=90,
        rfm_frequency_thresholds=(1, 2, 3, 4),
        rfm_fixed_recency_days=(200, 100, 50, 10),
        rfm_fixed_monetary_cents=(1000, 2000, 3000, 4000),
    )
    cfg = rfm.config_from(settings)
    run_id = run_snapshot(db, store.id, AS_OF, config=cfg, stages=lifecycle.config_from(settings))
    expected = _reference(db, store.id, percentiles=False, cfg=cfg)
    assert _scores(db, store.id, run_id) == expected != _reference(db, store.id, percentiles=False)
    run = rfm.get_run(db, store.id, run_id)
    assert run is not None and run["window_days"] == 90
    assert run["cutpoints"]["frequency"]["cuts"] == [1, 2, 3, 4]
    assert run["config"] == {
        "rfm": {
            "window_days": 90,
            "frequency_thresholds": [1, 2, 3, 4],
            "min_scored_for_percentiles": 500,
            "fixed_recency_days": [200, 100, 50, 10],
            "fixed_monetary_cents": [1000, 2000, 3000, 4000],
            "drift_alert_pct": 10.0,
            "keep_runs": 14,
        },
        "lifecycle": {"new_days": 30, "at_risk_days": 45, "churned_days": 90, "engaged_days": 30},
    }
    # The small-store bound: the store's ~100 scored contacts are enough for percentiles once it is lowered.
    lowered = rfm.config_from(Settings(rfm_min_scored=50))
    again = run_snapshot(db, store.id, AS_OF, config=lowered)
    assert _scores(db, store.id, again) == _reference(db, store.id, percentiles=True)
    assert (rfm.get_run(db, store.id, again) or {})["method"] == "percentiles"


def test_merged_and_erased_contacts_are_not_scored(db: Database, store: NewStore) -> None:
    _seed(db, store.id, 50)
    with db.writer() as session:
        ids = session.scalars(sa.select(Contact.id).where(Contact.store_id == store.id).order_by(Contact.id)).all()
        session.execute(sa.update(Contact).where(Contact.id == ids[0]).values(merged_into_id=ids[1]))
        session.execute(sa.update(Contact).where(Contact.id == ids[2]).values(erased_at=dt.datetime.now(dt.UTC)))
    scores = _scores(db, store.id, run_snapshot(db, store.id, AS_OF))
    assert ids[0] not in scores and ids[2] not in scores


def test_transitions_and_drift_against_previous_run(db: Database, store: NewStore) -> None:
    _seed(db, store.id, 200)
    first = run_snapshot(db, store.id, AS_OF)
    # 400 days later: the late orders count now (some contacts enter), everyone else ages and the shares drift.
    second = run_snapshot(db, store.id, AS_OF + dt.timedelta(days=400), config=RfmConfig(drift_alert_pct=5))
    before, after = _scores(db, store.id, first), _scores(db, store.id, second)
    group = {cid: (before.get(cid, (None,) * 6)[5], after.get(cid, (None,) * 6)[5]) for cid in before | after}
    moved = {cid for cid, (f, t) in group.items() if f != t}
    with db.reader() as session:
        run = session.get(RfmRun, second)
        assert run is not None
        got = session.execute(
            sa.select(RfmTransition.contact_id, RfmTransition.from_group, RfmTransition.to_group).where(
                RfmTransition.run_id == second
            )
        ).all()
    assert moved and {cid for cid, _, _ in got} == moved and run.transitions == len(moved)
    assert {(cid, f, t) for cid, f, t in got} == {(c, *group[c]) for c in moved}
    assert any(f is None for _, f, _ in got)  # entrants are transitions too
    assert run.drift_alerts and all(abs(a["moved_pct"]) > 5 for a in run.drift_alerts)


def test_cli_rfm_run_and_runs(db: Database, store: NewStore, database_url: str, monkeypatch: Any) -> None:
    from click.testing import CliRunner

    from web.cli import main

    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    _seed(db, store.id, 60)
    result = CliRunner().invoke(main, ["rfm", "run", "--as-of", AS_OF.isoformat(), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)
    assert run["as_of"] == AS_OF.isoformat() and run["complete"] and run["scored"] == run["population"] > 0
    assert set(run["group_shares"]) == {"VIP", "Loyal", "At Risk", "Hibernating"}
    assert run["lifecycle_contacts"] == run["population"]
    text = CliRunner().invoke(main, ["rfm", "run", "--as-of", AS_OF.isoformat()], catch_exceptions=False).output
    assert "complete yes" in text and "transitions 0" in text and "recency_days <= [365.0" in text
    runs = CliRunner().invoke(main, ["rfm", "runs", "--json"], catch_exceptions=False).output
    assert [r["id"] for r in json.loads(runs)["runs"]] == [run["id"] + 1, run["id"]]
    # Default as_of: yesterday in the store's timezone (Europe/Berlin).
    result = CliRunner().invoke(main, ["rfm", "run", "--json"], catch_exceptions=False)
    assert json.loads(result.output)["as_of"] == local_yesterday("Europe/Berlin").isoformat()
    # The thresholds come from the settings: the ~50 scored contacts take percentiles with a bound below them.
    assert run["method"] == "fixed" and run["config"]["rfm"] == dataclasses.asdict(RfmConfig()) | {
        "frequency_thresholds": [2, 3, 5, 10],
        "fixed_recency_days": [365, 180, 90, 30],
        "fixed_monetary_cents": [5000, 10000, 25000, 50000],
    }
    monkeypatch.setenv("ESPBRIDGE_RFM_MIN_SCORED", "20")
    monkeypatch.setenv("ESPBRIDGE_RFM_FREQUENCY_THRESHOLDS", "1,2,3,4")
    monkeypatch.setenv("ESPBRIDGE_LIFECYCLE_NEW_DAYS", "400")
    args = ["rfm", "run", "--as-of", AS_OF.isoformat(), "--json"]
    tuned = json.loads(CliRunner().invoke(main, args, catch_exceptions=False).output)
    assert tuned["method"] == "percentiles" and tuned["cutpoints"]["frequency"]["cuts"] == [1, 2, 3, 4]
    assert tuned["config"]["rfm"]["min_scored_for_percentiles"] == 20
    assert tuned["config"]["lifecycle"]["new_days"] == 400


def _body(response: Any) -> Any:
    return response.get_json()


def test_admin_api_runs(
    db: Database, store: NewStore, other_store: NewStore, client: FlaskClient, admin_token: Callable[..., str]
) -> None:
    _seed(db, store.id, 60)
    run_id = run_snapshot(db, store.id, AS_OF)
    headers = {"Authorization": f"Bearer {admin_token('marketer')}"}
    listed = client.get("/admin/api/rfm/runs", headers=headers)
    assert listed.status_code == 200 and [r["id"] for r in _body(listed)["runs"]] == [run_id]
    one = _body(client.get(f"/admin/api/rfm/runs/{run_id}", headers=headers))
    assert one["scored"] == one["population"] and one["cutpoints"]["frequency"]["cuts"] == [2, 3, 5, 10]
    bad = client.get("/admin/api/rfm/runs?limit=0", headers=headers)
    assert bad.status_code == 400 and _body(bad)["field"] == "limit"
    # Another store's admin sees neither the list entry nor the run.
    other = {"Authorization": f"Bearer {admin_token('admin', other_store.id)}"}
    assert _body(client.get("/admin/api/rfm/runs", headers=other))["runs"] == []
    assert client.get(f"/admin/api/rfm/runs/{run_id}", headers=other).status_code == 404
    assert client.get("/admin/api/rfm/runs").status_code == 401
    assert (
        client.get("/admin/api/rfm/runs", headers={"Authorization": f"Bearer {admin_token('compliance')}"}).status_code
        == 403
    )
