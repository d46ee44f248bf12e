"""``espbridge consent set``: withdraw or grant a contact's consent by hand (ledger method ``admin``)."""

from __future__ import annotations

import getpass

import click

from connector import consent_admin, contacts
from connector.errors import EspbridgeError, InvalidInput, NotFound
from connector.store import Channel, connect
from connector.tenancy import find_store

from .cli_context import Context, emit, pass_context


@click.group()
def consent() -> None:
    """Consent set by a person at the store."""


@consent.command("set")
@click.option("--contact", "contact_id", type=int, help="The contact's id.")
@click.option("--email", help="The contact's email (instead of --contact).")
@click.option("--channel", type=click.Choice([c.value for c in Channel]), required=True)
@click.option("--status", type=click.Choice(["subscribed", "unsubscribed"]), required=True)
@click.option("--actor", default=None, help="Who made the change (default: the OS user, as cli:<user>).")
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def consent_set(
    ctx: Context,
    contact_id: int | None,
    email: str | None,
    channel: str,
    status: str,
    actor: str | None,
    store_id: int | None,
    as_json: bool,
) -> None:
    """Record a withdrawal or grant; a withdrawal then goes to every connected ESP ahead of other sync work."""
    if (contact_id is None) == (email is None):
        raise click.UsageError("give exactly one of --contact, --email")
    db = connect(ctx.settings.database_url)
    try:
        with db.writer() as session:
            store = find_store(session, store_id)
            if contact_id is None:
                found = contacts.search(session, store.id, email=email)
                if not found:
                    raise NotFound(f"no contact has the email {email}")
                if len(found) > 1:
                    raise InvalidInput("email", "several contacts have it; use --contact")
                contact_id = int(found[0]["id"])
            result = consent_admin.set_consent(
                session, store.id, contact_id, channel, status, actor=actor or f"cli:{getpass.getuser()}"
            )
    except EspbridgeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    line = f"contact {result['contact_id']}: {channel} {status} (ledger entry {result['ledger_entry_id']})"
    emit(result, as_json, [line])
