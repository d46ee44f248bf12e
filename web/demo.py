"""``espbridge demo``: a fresh embedded espbridge, a generated storefront day sent over HTTP, a summary.

It runs the real pieces as a user would: ``espbridge migrate``-equivalent on a new SQLite file, a store and
an admin user, ``espbridge serve`` as a child process (embedded broker, worker threads in the web process),
then the day's messages posted in batches through the Segment HTTP API, and the admin API read back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx

from connector import migrate
from connector.sample_data import batches, storefront_day
from connector.store import connect
from connector.tenancy import create_admin_user, create_store

READY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 120.0


def run_demo(*, customers: int, port: int, db_path: str, exit_after: bool, as_json: bool) -> int:
    path = Path(db_path).resolve()
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    database_url = f"sqlite:///{path}"

    def say(message: str) -> None:
        if not as_json:
            click.echo(message, err=True)

    say(f"• creating {path.name} and migrating it")
    db = connect(database_url)
    migrate.upgrade(db)
    with db.writer() as session:
        store = create_store(session, "Demo Store", "Europe/Berlin")
        admin = create_admin_user(session, store.id, "admin@demo-store.example", "admin")
    db.dispose()

    port = port or _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPBRIDGE_")}
    env.update(
        ESPBRIDGE_DATABASE_URL=database_url,
        ESPBRIDGE_PORT=str(port),
        ESPBRIDGE_HOST="127.0.0.1",
        ESPBRIDGE_LOG_LEVEL="WARNING",
    )
    say(f"• starting espbridge serve on {base_url} (embedded broker)")
    server = subprocess.Popen(
        [sys.executable, "-m", "web.cli", "serve"], env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            _wait_ready(http, server)
            messages = storefront_day(customers=customers)
            _replay(http, store.write_key, messages, say)
            stats = _settle(http, admin.token, say)
        summary = {
            "url": base_url,
            "store_id": store.id,
            "write_key": store.write_key,
            "admin_token": admin.token,
            "messages_sent": len(messages),
            **stats,
        }
        _print_summary(summary, as_json)
        if not exit_after:
            say(
                f"\nespbridge is serving on {base_url} — try:\n"
                f"  curl -H 'Authorization: Bearer {admin.token}' {base_url}/admin/api/stats\n"
                "Ctrl-C stops it."
            )
            server.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(server)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(http: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException(f"espbridge serve exited with status {server.returncode}")
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"espbridge serve did not answer within {READY_TIMEOUT:.0f} s")


def _replay(http: httpx.Client, write_key: str, messages: list[dict[str, Any]], say: Callable[[str], None]) -> None:
    chunks = list(batches(messages, 100))
    with click.progressbar(chunks, label="  sending the storefront day", file=sys.stderr, show_pos=True) as bar:
        for chunk in bar:
            response = http.post("/v1/batch", json={"batch": chunk}, auth=(write_key, ""))
            if response.status_code != 200 or response.json().get("errors"):
                raise click.ClickException(f"ingestion refused a batch: {response.status_code} {response.text[:500]}")
    say(f"• {len(messages)} messages acknowledged (committed)")


def _settle(http: httpx.Client, token: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Wait until every event is projected and every outbox row delivered, showing progress."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = ""
    while True:
        stats: dict[str, Any] = http.get("/admin/api/stats", headers=headers).json()
        busy = stats["events_unprojected"] + stats["outbox"]["pending"] + stats["outbox"]["enqueued"]
        line = (
            f"  projecting: {stats['events'] - stats['events_unprojected']}/{stats['events']} events, "
            f"outbox delivered {stats['outbox']['done']}"
        )
        if line != last:
            say(line)
            last = line
        if busy == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.25)


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    consent = summary["consent_state"]
    lines = [
        "",
        "What landed in the local store:",
        f"  events stored        {summary['events']} (of {summary['messages_sent']} sent; "
        f"{summary['events_not_applied']} not applicable)",
        f"  contacts             {summary['contacts']} (+{summary['contacts_merged']} merged identities)",
        f"  orders               {summary['orders']}",
        f"  open carts           {summary['carts_open']}",
        f"  consent ledger rows  {summary['consent_ledger_entries']}  "
        + ", ".join(f"{k} {v}" for k, v in sorted(consent.items())),
        f"  waitlist entries     {summary['waitlist_entries']}",
        f"  catalog products     {summary['products']}",
        "  outbox rows          " + ", ".join(f"{k} {v}" for k, v in summary["outbox"].items()),
        "",
        f"  URL          {summary['url']}   (OpenAPI: {summary['url']}/openapi.json)",
        f"  write key    {summary['write_key']}",
        f"  admin token  {summary['admin_token']}",
    ]
    click.echo("\n".join(lines))


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
