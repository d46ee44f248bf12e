"""``espbridge erase …`` and ``espbridge erasures show``: the right to erasure, from the command line."""

from __future__ import annotations

import getpass
import time
from typing import Any

import click

from connector import erasure
from connector.credentials import CredentialCipher

from .cli_context import Context, emit, pass_context, store_database, store_option


@click.command("erase")
@click.option("--email", help="The person's email address.")
@click.option("--phone", help="The person's phone number (E.164).")
@click.option("--contact", "contact_id", type=int, help="The person's contact id.")
@store_option
@click.option(
    "--wait", default=60.0, show_default=True, help="Seconds to wait for every ESP's outcome (0: do not wait)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress).")
@pass_context
def erase(
    ctx: Context,
    email: str | None,
    phone: str | None,
    contact_id: int | None,
    store_id: int | None,
    wait: float,
    as_json: bool,
) -> None:
    """Erase a person: their personal data here, and a deletion request at every connected ESP.

    The request to each ESP is sent by the worker (``espbridge serve``); this waits up to --wait seconds for
    the outcomes. The email or phone is kept only as a keyed digest, so the person is never synced again.
    """
    settings = ctx.settings
    with store_database(ctx, store_id) as (db, store):
        erasure_id = erasure.erase(
            db,
            CredentialCipher(settings.credentials_key),
            store.id,
            email=email,
            phone=phone,
            contact_id=contact_id,
            requested_by=f"cli:{getpass.getuser()}",
        )
        report = _wait(db, store.id, erasure_id, wait, show=not as_json)
    emit(report, as_json, _lines(report))


@click.group()
def erasures() -> None:
    """Erasure reports."""


@erasures.command("show")
@click.argument("erasure_id", type=int)
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_context
def erasures_show(ctx: Context, erasure_id: int, store_id: int | None, as_json: bool) -> None:
    """One erasure's report: what was erased locally, and each ESP's outcome."""
    with store_database(ctx, store_id) as (db, store):
        report = erasure.get(db, store.id, erasure_id)
    emit(report, as_json, _lines(report))


def _wait(db: Any, store_id: int, erasure_id: int, seconds: float, *, show: bool) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    shown = None
    while True:
        report = erasure.get(db, store_id, erasure_id)
        progress = _esps(report)
        if show and progress != shown:
            click.echo(f"erasure {erasure_id}: {progress or 'no ESP connected'}", err=True)
            shown = progress
        if report["status"] != "running" or time.monotonic() >= deadline:
            return report
        time.sleep(0.5)


def _esps(report: dict[str, Any]) -> str:
    return ", ".join(f"{esp} {r['status']}" for esp, r in sorted(report["report"].get("esps", {}).items()))


def _lines(report: dict[str, Any]) -> list[str]:
    body = report["report"]
    local = ", ".join(f"{table} {count}" for table, count in sorted(body.get("local", {}).items()) if count)
    lines = [
        f"erasure {report['id']}: {report['status']}",
        f"requested by {report['requested_by']} at {report['requested_at']}",
        f"contacts: {', '.join(str(c) for c in body.get('contacts', []))}",
        f"erased here: {local or 'nothing'}",
        f"ledger entries: {', '.join(str(s) for s in body.get('ledger_seqs', []))}",
    ]
    for esp, outcome in sorted(body.get("esps", {}).items()):
        error = f": {outcome['error']}" if outcome.get("error") else ""
        lines.append(f"{esp}: {outcome['status']}{error}")
    if report["status"] == "running":
        lines.append(f"still waiting on an ESP: `espbridge erasures show {report['id']}` shows the outcome later")
    return lines
