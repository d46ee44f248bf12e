"""What every ``espbridge`` command shares: the settings (read once, at the edge) and how results print."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from connector import settings
from connector.errors import EspbridgeError
from connector.store import Database, Store, connect
from connector.tenancy import find_store

store_option = click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")


class Context:
    def __init__(self) -> None:
        try:
            self.settings = settings.load()
        except settings.ConfigurationError as exc:  # "Error: invalid configuration: ESPBRIDGE_…", exit status 1
            raise click.ClickException(str(exc)) from None


pass_context = click.make_pass_decorator(Context, ensure=True)


def emit(data: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the human-readable ``lines``."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        for line in lines:
            click.echo(line)


@contextmanager
def store_database(ctx: Context, store_id: int | None) -> Iterator[tuple[Database, Store]]:
    """The database and the store a command works on (``--store``, or the only one), disposed of afterwards; an
    EspbridgeError inside (no such store, bad input) is a usage error naming what is wrong."""
    db = connect(ctx.settings.database_url)
    try:
        with db.reader() as session:
            store = find_store(session, store_id)
        yield db, store
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
