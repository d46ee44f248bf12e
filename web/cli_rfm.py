"""``espbridge rfm run`` and ``espbridge rfm runs``: RFM snapshots (and lifecycle stages) from the command line."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from connector import lifecycle, rfm

from .cli_context import Context, emit, pass_context, store_database, store_option


@click.group("rfm")
def rfm_group() -> None:
    """RFM snapshots (DESIGN.md section 8)."""


def _lines(run: dict[str, Any]) -> list[str]:
    cuts = run["cutpoints"]
    lines = [
        f"run {run['id']}  as_of {run['as_of']}  method {run['method']}  window {run['window_days']} days",
        f"population {run['population']}  scored {run['scored']}  complete {'yes' if run['complete'] else 'NO'}",
        *(f"  {name} {c['op']} {c['cuts']}" for name, c in cuts.items()),
        "groups: " + "  ".join(f"{g} {v['count']} ({v['share']:.1%})" for g, v in run["group_shares"].items()),
        f"transitions {run['transitions']}",
    ]
    lines += [
        f"DRIFT {a['group']}: {a['from_share']:.1%} -> {a['to_share']:.1%} ({a['moved_pct']:+} points)"
        for a in run["drift_alerts"]
    ]
    return lines


@rfm_group.command("run")
@store_option
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(["%Y-%m-%d"]),
    help="Score as of this date (default: yesterday in the store's timezone).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@pass_context
def rfm_run(ctx: Context, store_id: int | None, as_of: dt.datetime | None, as_json: bool) -> None:
    """Take an RFM snapshot and recompute lifecycle stages, as of a date."""
    settings = ctx.settings
    with store_database(ctx, store_id) as (db, store):
        day = as_of.date() if as_of else rfm.local_yesterday(store.timezone)
        run_id = rfm.run_snapshot(
            db, store.id, day, config=rfm.config_from(settings), stages=lifecycle.config_from(settings)
        )
        staged = lifecycle.staged(db, store.id)
        run = rfm.get_run(db, store.id, run_id)
    assert run is not None
    emit(run | {"lifecycle_contacts": staged}, as_json, [*_lines(run), f"lifecycle stages {staged}"])


@rfm_group.command("runs")
@store_option
@click.option("--limit", default=20, show_default=True, help="How many of the latest runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@pass_context
def rfm_runs(ctx: Context, store_id: int | None, limit: int, as_json: bool) -> None:
    """The store's latest RFM runs."""
    with store_database(ctx, store_id) as (db, store):
        runs = rfm.list_runs(db, store.id, limit)
    lines = [
        f"{r['id']}  {r['as_of']}  {r['method']}  scored {r['scored']}/{r['population']}"
        f"  transitions {r['transitions']}  drift alerts {len(r['drift_alerts'])}"
        for r in runs
    ]
    emit({"runs": runs}, as_json, lines or ["no runs yet"])
