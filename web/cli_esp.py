"""``espbridge esp …``: connect a store to an ESP account, list and remove connections, make a credentials key."""

from __future__ import annotations

import click

from connector.credentials import CredentialCipher, new_key
from connector.errors import EspbridgeError
from connector.esp import connections
from connector.settings import Settings
from connector.store import connect
from connector.tenancy import find_store


@click.group()
def esp() -> None:
    """Connections to ESP accounts (credentials are stored encrypted with ESPBRIDGE_CREDENTIALS_KEY)."""


@esp.command("keygen")
def esp_keygen() -> None:
    """Print a new key for ESPBRIDGE_CREDENTIALS_KEY."""
    click.echo(new_key())


@esp.command("connect")
@click.argument("esp_name", metavar="ESP", type=click.Choice(sorted(connections.DEFAULT_BASE_URLS)))
@click.option(
    "--api-key",
    envvar="ESPBRIDGE_ESP_API_KEY",
    prompt=True,
    hide_input=True,
    help="The account's private API key (or ESPBRIDGE_ESP_API_KEY; asked for when left out).",
)
@click.option("--base-url", help="The API's base URL (default: the real ESP; the sandbox's URL for tests and demos).")
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
def esp_connect(esp_name: str, api_key: str, base_url: str | None, store_id: int | None) -> None:
    """Connect a store to an ESP account, replacing an earlier connection to the same ESP."""
    settings = Settings()
    db = connect(settings.database_url)
    try:
        cipher = CredentialCipher(settings.credentials_key)
        with db.writer() as session:
            store = find_store(session, store_id)
            row = connections.connect(session, cipher, store.id, esp_name, api_key=api_key, base_url=base_url)
            url = row.base_url
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    click.echo(f"store {store.id} connected to {esp_name} at {url} (API key stored encrypted)")


@esp.command("list")
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
def esp_list(store_id: int | None) -> None:
    """List a store's ESP connections (never their credentials)."""
    db = connect(Settings().database_url)
    try:
        with db.reader() as session:
            store = find_store(session, store_id)
            rows = [(row.esp, row.base_url, row.updated_at) for row in connections.connections(session, store.id)]
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    for name, url, updated_at in rows:
        click.echo(f"{name}\t{url}\tupdated {updated_at:%Y-%m-%d %H:%M} UTC")
    if not rows:
        click.echo(f"store {store.id} has no ESP connection")


@esp.command("disconnect")
@click.argument("esp_name", metavar="ESP", type=click.Choice(sorted(connections.DEFAULT_BASE_URLS)))
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
def esp_disconnect(esp_name: str, store_id: int | None) -> None:
    """Remove a store's connection to an ESP (its stored credentials are deleted)."""
    db = connect(Settings().database_url)
    try:
        with db.writer() as session:
            store = find_store(session, store_id)
            connections.disconnect(session, store.id, esp_name)
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    click.echo(f"store {store.id} disconnected from {esp_name}")
