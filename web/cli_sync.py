"""``espbridge sync …`` and ``espbridge dead-letters …``: full syncs and the sync engine's dead letters."""

from __future__ import annotations

import sys
from typing import Any

import click
import redis
import sqlalchemy as sa

from connector.credentials import CredentialCipher
from connector.errors import EspbridgeError
from connector.esp import connections
from connector.esp.errors import EspError
from connector.store import Database, SyncRun, connect
from connector.sync import queue
from connector.sync.adapters import AdapterOptions, build_adapter
from connector.sync.full import FullSync, FullSyncOptions, start, summary
from connector.tenancy import find_store

from .cli_context import Context, emit, pass_context

ESPS = click.Choice(sorted(connections.DEFAULT_BASE_URLS))


@click.group()
def sync() -> None:
    """Full syncs of a store to an ESP."""


@sync.command("full")
@click.option("--esp", "esp_name", type=ESPS, required=True, help="The ESP to sync to.")
@click.option("--dry-run", is_flag=True, help="Report what would be created or updated; send nothing.")
@click.option("--force", is_flag=True, help="Send every contact and event, even those the ESP already has.")
@click.option("--page-size", default=10_000, show_default=True, help="Contacts per page (one bulk import job).")
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (no progress bar).")
@pass_context
def sync_full(
    ctx: Context, esp_name: str, dry_run: bool, force: bool, page_size: int, store_id: int | None, as_json: bool
) -> None:
    """Push every contact, consent and event of a store to an ESP; resumes an interrupted run.

    Unchanged contacts (same as when last sent) cost no request unless --force.
    """
    settings = ctx.settings
    options = FullSyncOptions(dry_run=dry_run, force=force, page_size=page_size, requested_by="cli")
    db = connect(settings.database_url)
    redis_client = redis.Redis.from_url(settings.redis_url) if settings.redis_url else None
    try:
        with db.reader() as session:
            store = find_store(session, store_id)
            connection = connections.load(session, CredentialCipher(settings.credentials_key), store.id, esp_name)
        run_id = start(db, store.id, esp_name, options)
        adapter = build_adapter(connection, AdapterOptions(redis_client=redis_client, max_wait=3600.0))
        try:
            run = _run_with_progress(db, adapter, run_id, options, show=not as_json)
        finally:
            adapter.close()
    except (EspbridgeError, EspError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
        if redis_client is not None:
            redis_client.close()
    result = summary(run)
    verb = "would create" if dry_run else "created"
    lines = [
        f"full sync {run.id} of store {store.id} to {esp_name}: {run.status} in {run.duration:.1f} s",
        f"  contacts: {run.processed} ({verb} {run.created}, updated {run.updated}, unchanged {run.unchanged}, "
        f"rejected {run.rejected}, failed {run.failed}, skipped {run.skipped})",
        f"  events: {run.events_sent} {'to send' if dry_run else 'sent'}; requests: {run.requests}",
        *(f"  rejected contact {r['contact_id']}: {r['reason']}" for r in run.rejections[:10]),
    ]
    emit(result, as_json, lines)
    if run.failed:
        raise SystemExit(1)


def _run_with_progress(db: Database, adapter: Any, run_id: int, options: FullSyncOptions, *, show: bool) -> SyncRun:
    if not show:
        return FullSync(db, adapter, run_id, options=options).run()
    with db.reader() as session:
        run = session.get(SyncRun, run_id)
        total = run.total if run is not None else 0
        done = run.processed if run is not None else 0
    with click.progressbar(length=max(total, 1), label="contacts", show_pos=True, file=sys.stderr) as bar:
        bar.update(done)

        def progress(current: SyncRun) -> None:
            nonlocal done
            bar.label = f"contacts (events sent {current.events_sent})"
            bar.update(current.processed - done)
            done = current.processed

        return FullSync(db, adapter, run_id, options=options, progress=progress).run()


@sync.command("runs")
@click.option("--limit", default=10, show_default=True)
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def sync_runs(ctx: Context, limit: int, store_id: int | None, as_json: bool) -> None:
    """The latest full syncs with their counts."""
    db = connect(ctx.settings.database_url)
    try:
        with db.reader() as session:
            store = find_store(session, store_id)
            query = sa.select(SyncRun).where(SyncRun.store_id == store.id).order_by(SyncRun.id.desc()).limit(limit)
            runs = [summary(run) for run in session.scalars(query)]
    except EspbridgeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    lines = [
        f"{r['id']}\t{r['esp']}\t{r['status']}{' (dry run)' if r['dry_run'] else ''}\t{r['processed']}/{r['total']} "
        f"created {r['created']} updated {r['updated']} unchanged {r['unchanged']} rejected {r['rejected']} "
        f"failed {r['failed']}\t{r['duration_seconds']} s"
        for r in runs
    ]
    emit({"store_id": store.id, "runs": runs}, as_json, lines or ["no full sync yet"])


@click.group("dead-letters")
def dead_letters() -> None:
    """Changes an ESP refused or that kept failing, with the ESP's last error; replay them once fixed."""


@dead_letters.command("list")
@click.option("--esp", "esp_name", type=ESPS, help="Only this ESP.")
@click.option("--limit", default=50, show_default=True)
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def dead_letters_list(ctx: Context, esp_name: str | None, limit: int, store_id: int | None, as_json: bool) -> None:
    """List dead letters, newest first, and how many there are."""
    db = connect(ctx.settings.database_url)
    try:
        with db.reader() as session:
            store = find_store(session, store_id)
            total, items = queue.dead_letters(session, store.id, esp=esp_name, limit=limit)
    except EspbridgeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    lines = [
        f"{i['id']}\t{i['esp']}\t{i['kind']} {i['subject']}\t{i['attempts']} attempts\t{i['last_error']}" for i in items
    ]
    emit({"store_id": store.id, "total": total, "dead_letters": items}, as_json, [*lines, f"{total} dead letters"])


@dead_letters.command("replay")
@click.option("--id", "ids", type=int, multiple=True, help="A dead letter's id (repeatable). Default: all of them.")
@click.option("--esp", "esp_name", type=ESPS, help="Only this ESP.")
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def dead_letters_replay(
    ctx: Context, ids: tuple[int, ...], esp_name: str | None, store_id: int | None, as_json: bool
) -> None:
    """Queue dead letters again with a fresh retry budget (the worker sends them on its next tick)."""
    db = connect(ctx.settings.database_url)
    try:
        with db.writer() as session:
            store = find_store(session, store_id)
            count = queue.replay(session, store_id=store.id, esp=esp_name, ids=list(ids) if ids else None)
    except EspbridgeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    emit({"store_id": store.id, "replayed": count}, as_json, [f"{count} dead letters queued again"])
