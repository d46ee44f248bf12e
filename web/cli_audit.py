"""``espbridge audit …``: verify a store's consent ledger, print its anchor, export consent events."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import click

from connector import audit
from connector.errors import EspbridgeError
from connector.store import Database, connect
from connector.tenancy import find_store

from .cli_context import Context, emit, pass_context, store_option

#: Rows between two progress lines of an export.
PROGRESS_EVERY = 10_000


@click.group()
def audit_group() -> None:
    """Prove the consent ledger: verify its hash chain, print an anchor, export consent events."""


def _store(db: Database, store_id: int | None) -> int:
    with db.reader() as session:
        return find_store(session, store_id).id


@audit_group.command("verify")
@store_option
@click.option("--anchor", "anchor_text", help="An anchor printed earlier by `espbridge audit anchor`.")
@click.option("--anchor-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A file holding one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def verify(
    ctx: Context, store_id: int | None, anchor_text: str | None, anchor_file: Path | None, as_json: bool
) -> None:
    """Check every row of the ledger; exit 1 naming the first bad row when the chain is broken."""
    if anchor_text and anchor_file:
        raise click.UsageError("give --anchor or --anchor-file, not both")
    db = connect(ctx.settings.database_url)
    try:
        text = anchor_file.read_text().strip() if anchor_file else anchor_text
        anchor = audit.Anchor.parse(text) if text else None
        result = audit.verify(db, _store(db, store_id), anchor=anchor)
    except EspbridgeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    emit(result.as_dict(), as_json, [result.message()])
    if not result.ok:
        sys.exit(1)


@audit_group.command("anchor")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the anchor as an indented JSON object.")
@pass_context
def anchor(ctx: Context, store_id: int | None, as_json: bool) -> None:
    """Print the ledger's current head (seq, hash, time) to keep outside the database."""
    db = connect(ctx.settings.database_url)
    try:
        taken = audit.anchor(db, _store(db, store_id))
    except EspbridgeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    emit(taken.as_dict(), as_json, [taken.text()])


@audit_group.command("export")
@store_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), required=True)
@click.option("--email", help="Only this person's events (found by email).")
@click.option("--phone", help="Only this person's events (found by phone).")
@click.option("--contact", "contact_id", type=int, help="Only this contact's events (and contacts merged into it).")
@click.option("--since", help="From this day (YYYY-MM-DD, UTC) or ISO 8601 timestamp, on occurred_at.")
@click.option("--until", help="Up to and including this day (YYYY-MM-DD, UTC), or before this ISO 8601 timestamp.")
@click.option("--channel", help="Only this channel (email, sms, push, whatsapp).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@pass_context
def export(
    ctx: Context,
    store_id: int | None,
    fmt: str,
    email: str | None,
    phone: str | None,
    contact_id: int | None,
    since: str | None,
    until: str | None,
    channel: str | None,
    output: Path | None,
) -> None:
    """Export consent events with the chain's verification and anchor in the header; progress on stderr."""
    db = connect(ctx.settings.database_url)
    try:
        wanted = audit.ExportFilter(
            email=email,
            phone=phone,
            contact_id=contact_id,
            since=audit.parse_when("since", since) if since else None,
            until=audit.parse_when("until", until, until=True) if until else None,
            channel=channel,
        )
        store = _store(db, store_id)
        # The filter is checked and the person found before anything is written.
        verification, chunks = audit.export_document(db, store, wanted, fmt, watch=_counted)
        if output is None:
            _write(sys.stdout, chunks)
        else:
            with output.open("w", encoding="utf-8", newline="") as out:
                _write(out, chunks)
    except EspbridgeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    if not verification.ok:
        click.echo(f"warning: {verification.message()}", err=True)


def _counted(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    count = 0
    for row in rows:
        count += 1
        if count % PROGRESS_EVERY == 0:
            click.echo(f"exported {count:,} rows …", err=True)
        yield row
    click.echo(f"exported {count:,} rows", err=True)


def _write(out: TextIO, chunks: Iterator[str]) -> None:
    for chunk in chunks:
        out.write(chunk)
