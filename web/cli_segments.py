"""``espbridge segments …``: segment CRUD, evaluation, CSV export, ESP mirrors and the pre-built segments."""

from __future__ import annotations

import csv
import json
import time
from typing import Any

import click

from connector import segments
from connector.segments import service

from .cli_context import Context, emit, pass_context, store_database, store_option

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("segments")
def segments_group() -> None:
    """Segments (DESIGN.md section 9)."""


def _line(s: dict[str, Any]) -> str:
    flags = " prebuilt" if s["prebuilt"] else ""
    return f"{s['id']}  {s['name']}  members {s['member_count']}{flags}  {json.dumps(s['criteria'])}"


@segments_group.command("list")
@store_option
@json_option
@pass_context
def list_(ctx: Context, store_id: int | None, as_json: bool) -> None:
    """The store's segments."""
    with store_database(ctx, store_id) as (db, store):
        rows = service.list_segments(db, store.id)
    emit({"segments": rows}, as_json, [_line(s) for s in rows] or ["no segments"])


@segments_group.command("create")
@click.argument("name")
@click.option("--criteria", required=True, help='Criteria JSON, e.g. \'{"rfm.composite": {"gte": 38}}\'.')
@click.option("--description")
@click.option("--not-marketing", is_flag=True, help="Keep contacts unsubscribed on email (not a marketing audience).")
@store_option
@json_option
@pass_context
def create(
    ctx: Context,
    name: str,
    criteria: str,
    description: str | None,
    not_marketing: bool,
    store_id: int | None,
    as_json: bool,
) -> None:
    """Create a segment."""
    try:
        parsed = json.loads(criteria)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"criteria: not valid JSON ({exc})") from None
    body = {"name": name, "criteria": parsed, "description": description, "marketing": not not_marketing}
    with store_database(ctx, store_id) as (db, store):
        created = service.create_segment(db, store.id, body)
    emit(created, as_json, [f"created {_line(created)}"])


@segments_group.command("show")
@click.argument("segment_id", type=int)
@store_option
@json_option
@pass_context
def show(ctx: Context, segment_id: int, store_id: int | None, as_json: bool) -> None:
    """One segment and its daily member counts."""
    with store_database(ctx, store_id) as (db, store):
        found = service.get_segment(db, store.id, segment_id)
        counts = service.daily_counts(db, store.id, segment_id)
    emit(found | {"counts": counts}, as_json, [_line(found), *(f"  {c['day']}  {c['members']}" for c in counts)])


@segments_group.command("delete")
@click.argument("segment_id", type=int)
@store_option
@pass_context
def delete(ctx: Context, segment_id: int, store_id: int | None) -> None:
    """Delete a segment (its members, changes and counts go with it)."""
    with store_database(ctx, store_id) as (db, store):
        service.delete_segment(db, store.id, segment_id)
    click.echo(f"deleted segment {segment_id}")


@segments_group.command("evaluate")
@click.argument("segment_id", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="Every segment of the store (installs the pre-built ones).")
@store_option
@json_option
@pass_context
def evaluate(ctx: Context, segment_id: int | None, all_: bool, store_id: int | None, as_json: bool) -> None:
    """Recompute membership in full and record who entered and exited."""
    if all_ == (segment_id is not None):
        raise click.UsageError("give a SEGMENT_ID or --all")
    with store_database(ctx, store_id) as (db, store):
        start = time.monotonic()
        if all_:
            results = segments.evaluate_all(db, store.id)
        else:
            assert segment_id is not None
            results = [segments.evaluate(db, store.id, segment_id)]
        seconds = time.monotonic() - start
    data = {"seconds": round(seconds, 3), "segments": [r.__dict__ for r in results]}
    lines = [f"{r.segment_id}  members {r.members}  entered {r.entered}  exited {r.exited}" for r in results]
    emit(data, as_json, [*lines, f"{len(results)} segment(s) in {seconds:.2f} s"])


@segments_group.command("export")
@click.argument("segment_id", type=int)
@click.option(
    "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True), help="CSV file (- for stdout)."
)
@store_option
@pass_context
def export(ctx: Context, segment_id: int, output: str, store_id: int | None) -> None:
    """Write the members as CSV (streamed page by page)."""
    with store_database(ctx, store_id) as (db, store), click.open_file(output, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(service.CSV_COLUMNS)
        count = 0
        for row in service.member_rows(db, store.id, segment_id):
            writer.writerow(row)
            count += 1
    if output != "-":
        click.echo(f"wrote {count} members to {output}")


@segments_group.command("mirror")
@click.argument("segment_id", type=int)
@click.option("--esp", required=True, help="klaviyo or activecampaign (a connected ESP).")
@click.option("--list-id", help="Mirror to this existing list (Klaviyo; ActiveCampaign with segment_mirror=lists).")
@click.option("--tag", help="ActiveCampaign tag name after 'espbridge: ' (segment_mirror=tags; default the name).")
@click.option("--off", is_flag=True, help="Stop mirroring (what the ESP already has stays there).")
@store_option
@json_option
@pass_context
def mirror(
    ctx: Context,
    segment_id: int,
    esp: str,
    list_id: str | None,
    tag: str | None,
    off: bool,
    store_id: int | None,
    as_json: bool,
) -> None:
    """Mirror a segment to an ESP (a list or tag kept in step); turning it on queues its current members."""
    options = {key: value for key, value in (("list_id", list_id), ("tag", tag)) if value is not None}
    if off and options:
        raise click.UsageError("--off takes no --list-id or --tag")
    data: dict[str, Any]
    with store_database(ctx, store_id) as (db, store):
        if off:
            data = {"segment": service.remove_mirror(db, store.id, segment_id, esp), "queued": 0}
            line = f"segment {segment_id} is not mirrored to {esp}"
        else:
            data = service.set_mirror(db, store.id, segment_id, esp, options)
            entry = json.dumps(data["segment"]["mirror"][esp])
            line = f"segment {segment_id} mirrored to {esp} {entry}; {data['queued']} member(s) queued"
    emit(data, as_json, [line])


@segments_group.command("install-prebuilt")
@store_option
@pass_context
def install_prebuilt(ctx: Context, store_id: int | None) -> None:
    """Create the pre-built segments the store lacks (VIP, Loyal, At Risk, Hibernating, …) and evaluate them (their
    baselines: from then on the incremental path keeps them up to date)."""
    with store_database(ctx, store_id) as (db, store):
        with db.writer() as session:
            created = [(s.id, s.name) for s in segments.install_prebuilt(session, store.id)]
        for segment_id, _ in created:
            segments.evaluate(db, store.id, segment_id)
    click.echo(f"installed {', '.join(n for _, n in created)}" if created else "all pre-built segments already exist")
