"""Double opt-in: a grant on a protected channel is pending until the person confirms through the mailed link.

Runs the whole path (ingestion → projection → sync → both sandboxes → confirmation page → sync again), so "an
unconfirmed grant never subscribes anyone at an ESP" is checked where it matters: at Klaviyo and ActiveCampaign.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient

from connector.credentials import new_key
from connector.double_opt_in import EVENT_NAME
from connector.settings import Settings
from connector.store import (
    Base,
    ConsentConfirmation,
    ConsentEvidence,
    ConsentLedgerEntry,
    ConsentState,
    Contact,
    Database,
    Event,
    Store,
)
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track
from tests.integration import consent_esps
from web.cli import main as cli

EMAIL = "ada@example.com"
PUBLIC = "https://consent.shop.example"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key="test-secret",
        credentials_key=new_key(),
        public_url=PUBLIC + "/",
        double_opt_in_ttl=3600,
    )


@pytest.fixture
def esps(db: Database, settings: Settings, store: NewStore) -> Iterator[consent_esps.Esps]:
    with consent_esps.connected(db, settings, store.id) as connected:
        yield connected


def require_email_confirmation(db: Database, store_id: int) -> None:
    with db.writer() as session:
        row = session.get(Store, store_id)
        assert row is not None
        row.double_opt_in = ["email"]


def sign_up(client: FlaskClient, store: NewStore, esps: consent_esps.Esps, n: int = 1) -> str:
    """Identify + an email grant (from a form), synced; returns the token of the confirmation link."""
    post_messages(
        client,
        store.write_key,
        [
            {"type": "identify", "userId": "u1", "messageId": f"i{n}", "traits": {"email": EMAIL}},
            track("Consent Updated", f"c{n}", "u1", channel="email", status="subscribed", method="form"),
        ],
    )
    esps.drain(store.id)
    [event] = [e for e in esps.klaviyo.state()["events"] if e["metric"] == EVENT_NAME][-1:]
    url: str = event["properties"]["confirm_url"]
    assert url.startswith(f"{PUBLIC}/consent/confirm/")
    return url.removeprefix(PUBLIC)


def stored_rows(db: Database) -> list[dict[str, object]]:
    """Every row of every table, as text (to look for something that must not be stored)."""
    with db.engine.connect() as connection:
        return [
            {key: str(value) for key, value in row._mapping.items()}
            for table in Base.metadata.sorted_tables
            for row in connection.execute(sa.select(table))
        ]


def ledger(db: Database, store_id: int) -> list[ConsentLedgerEntry]:
    with db.reader() as session:
        query = sa.select(ConsentLedgerEntry).where(ConsentLedgerEntry.store_id == store_id)
        return list(session.scalars(query.order_by(ConsentLedgerEntry.seq)))


def state(db: Database, store_id: int) -> str | None:
    with db.reader() as session:
        return session.scalar(sa.select(ConsentState.status).where(ConsentState.store_id == store_id))


def test_a_grant_waits_for_the_confirmation_and_only_then_subscribes_at_both_esps(
    client: FlaskClient, db: Database, store: NewStore, esps: consent_esps.Esps
) -> None:
    require_email_confirmation(db, store.id)
    path = sign_up(client, store, esps)

    # The grant is pending: in the ledger, in the state, and at neither ESP
    assert [(e.action, e.status_after) for e in ledger(db, store.id)] == [("pending", "pending")]
    assert state(db, store.id) == "pending"
    assert esps.klaviyo_consent(EMAIL) == {}
    assert esps.ac_status(EMAIL, esps.email_list) is None
    # The link went out to both ESPs as an event, with the expiry and an unsubscribe link
    [sent] = [e for e in esps.klaviyo.state()["events"] if e["metric"] == EVENT_NAME]
    assert sent["properties"]["channel"] == "email"
    assert sent["properties"]["unsubscribe_url"].startswith(f"{PUBLIC}/consent/unsubscribe/{store.id}/")
    expires = dt.datetime.fromisoformat(sent["properties"]["expires_at"])
    assert dt.timedelta(minutes=59) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=1)
    [ac_event] = [e for e in esps.ac.tracked_events if e["event"] == EVENT_NAME]
    assert PUBLIC + path in json.dumps(ac_event["eventdata"])
    # Only the token's hash is stored
    with db.reader() as session:
        [confirmation] = session.scalars(sa.select(ConsentConfirmation))
    assert path.rsplit("/", 1)[1] not in confirmation.token_hash and len(confirmation.token_hash) == 64
    # and the link is not in the database at all: the stored event gets it only as it is sent
    token = path.rsplit("/", 1)[1]
    assert all(token not in json.dumps(row) for row in stored_rows(db))

    # A GET (a mail scanner prefetching the link) shows the button and changes nothing
    page = client.get(path)
    assert page.status_code == 200 and b'method="post"' in page.data
    assert len(ledger(db, store.id)) == 1

    confirmed = client.post(path, headers={"User-Agent": "Mail/1.0"}, environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert confirmed.status_code == 200 and b"confirmed" in confirmed.data
    *_, last = ledger(db, store.id)
    assert (last.action, last.status_after, last.method) == ("confirm", "subscribed", "double_opt_in")
    assert last.evidence_ref == f"confirmation:{confirmation.id}"
    with db.reader() as session:
        evidence = session.get(ConsentEvidence, last.id)
        assert evidence is not None and (evidence.ip, evidence.user_agent) == ("203.0.113.7", "Mail/1.0")
        assert session.scalar(sa.select(ConsentConfirmation.confirmed_at)) is not None
    assert state(db, store.id) == "subscribed"

    esps.drain(store.id)
    assert esps.klaviyo_consent(EMAIL).get("email") == "SUBSCRIBED"
    assert esps.ac_status(EMAIL, esps.email_list) == "1"


def test_a_second_confirmation_is_answered_without_a_second_ledger_row(
    client: FlaskClient, db: Database, store: NewStore, esps: consent_esps.Esps
) -> None:
    require_email_confirmation(db, store.id)
    path = sign_up(client, store, esps)
    assert client.post(path).status_code == 200
    again = client.post(path)
    assert again.status_code == 200 and b"already confirmed" in again.data
    page = client.get(path)
    assert page.status_code == 200 and b"already confirmed" in page.data and b"<form" not in page.data
    assert [e.action for e in ledger(db, store.id)] == ["pending", "confirm"]


def test_unknown_expired_and_superseded_links(
    client: FlaskClient, db: Database, store: NewStore, esps: consent_esps.Esps
) -> None:
    require_email_confirmation(db, store.id)
    assert client.get("/consent/confirm/not-a-token").status_code == 404
    assert client.post("/consent/confirm/not-a-token").status_code == 404

    path = sign_up(client, store, esps)
    with db.writer() as session:
        session.execute(sa.update(ConsentConfirmation).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(1)))
    assert client.post(path).status_code == 410
    assert client.get(path).status_code == 410  # the page says so before any click
    assert state(db, store.id) == "pending"

    # A new sign-up, then the person withdraws before clicking: the old link can no longer subscribe them
    path = sign_up(client, store, esps, n=2)
    post_messages(
        client, store.write_key, [track("Consent Updated", "w1", "u1", channel="email", status="unsubscribed")]
    )
    esps.drain(store.id)
    assert client.post(path).status_code == 409
    assert state(db, store.id) == "unsubscribed"
    assert [e.action for e in ledger(db, store.id)] == ["pending", "pending", "withdraw"]
    esps.drain(store.id)
    assert esps.klaviyo_consent(EMAIL).get("email") != "SUBSCRIBED"
    assert esps.ac_status(EMAIL, esps.email_list) != "1"


def test_channels_without_double_opt_in_subscribe_at_once(
    client: FlaskClient, db: Database, store: NewStore, esps: consent_esps.Esps
) -> None:
    post_messages(
        client,
        store.write_key,
        [
            {"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"email": EMAIL}},
            track("Consent Updated", "c1", "u1", channel="email", status="subscribed"),
        ],
    )
    esps.drain(store.id)
    assert [e.action for e in ledger(db, store.id)] == ["grant"]
    assert esps.klaviyo_consent(EMAIL).get("email") == "SUBSCRIBED"
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Event).where(Event.name == EVENT_NAME)) == 0


def run(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"ESPBRIDGE_DATABASE_URL": database_url})


def test_the_cli_turns_double_opt_in_on_and_off(database_url: str, db: Database, store: NewStore) -> None:
    result = run(database_url, "stores", "double-opt-in", "--store", str(store.id), "--channels", "sms, email")
    assert result.exit_code == 0, result.output
    listed = run(database_url, "stores", "list", "--json")
    assert json.loads(listed.output)["stores"][0]["double_opt_in"] == ["email", "sms"]
    assert "double opt-in: email, sms" in run(database_url, "stores", "list").output

    bad = run(database_url, "stores", "double-opt-in", "--store", str(store.id), "--channels", "email,fax")
    assert bad.exit_code == 2 and "--channels" in bad.output and "fax" in bad.output
    both = run(database_url, "stores", "double-opt-in", "--store", str(store.id), "--channels", "email", "--off")
    assert both.exit_code == 2 and "--off" in both.output

    assert run(database_url, "stores", "double-opt-in", "--store", str(store.id), "--off").exit_code == 0
    with db.reader() as session:
        assert session.scalar(sa.select(Store.double_opt_in).where(Store.id == store.id)) == []


def test_a_confirmed_subscriber_granting_again_is_not_asked_again(
    client: FlaskClient, db: Database, store: NewStore, esps: consent_esps.Esps
) -> None:
    require_email_confirmation(db, store.id)
    assert client.post(sign_up(client, store, esps)).status_code == 200
    post_messages(client, store.write_key, [track("Consent Updated", "c9", "u1", channel="email", status="subscribed")])
    esps.drain(store.id)
    assert [e.action for e in ledger(db, store.id)] == ["pending", "confirm", "grant"]
    assert state(db, store.id) == "subscribed"
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ConsentConfirmation)) == 1
    assert esps.klaviyo_consent(EMAIL).get("email") == "SUBSCRIBED"


def test_an_admin_grant_on_a_double_opt_in_channel_is_refused_naming_the_field(
    client: FlaskClient, db: Database, store: NewStore, admin_token: Callable[..., str]
) -> None:
    require_email_confirmation(db, store.id)
    post_messages(client, store.write_key, [{"type": "identify", "userId": "u1", "messageId": "i1", "traits": {}}])
    project_all(db, store.id)
    with db.reader() as session:
        contact_id = session.scalar(sa.select(Contact.id))
    response = client.post(
        f"/admin/api/contacts/{contact_id}/consent",
        json={"channel": "email", "status": "subscribed"},
        headers={"Authorization": f"Bearer {admin_token('admin')}"},
    )
    assert response.status_code == 400 and "double opt-in" in response.json["error"], response.json
    assert ledger(db, store.id) == []
