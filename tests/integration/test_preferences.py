"""Signed preference links: a person unsubscribes from one channel from a link in a message, without logging in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector import preferences, store_keys
from connector.credentials import CredentialCipher, new_key
from connector.settings import Settings
from connector.store import ConsentEvidence, ConsentLedgerEntry, Contact, Database
from connector.tenancy import NewStore
from tests.conftest import post_messages, track
from tests.integration import consent_esps

EMAIL = "ada@example.com"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key="test-secret", credentials_key=new_key())


@pytest.fixture
def esps(db: Database, settings: Settings, store: NewStore) -> Iterator[consent_esps.Esps]:
    with consent_esps.connected(db, settings, store.id) as connected:
        yield connected


def subscribed(client: FlaskClient, store: NewStore, esps: consent_esps.Esps, db: Database) -> int:
    """A contact subscribed to email at both ESPs; returns its id."""
    post_messages(
        client,
        store.write_key,
        [
            {"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"email": EMAIL}},
            track("Consent Updated", "c1", "u1", channel="email", status="subscribed"),
        ],
    )
    esps.drain(store.id)
    assert esps.klaviyo_consent(EMAIL).get("email") == "SUBSCRIBED"
    assert esps.ac_status(EMAIL, esps.email_list) == "1"
    with db.reader() as session:
        contact_id = session.scalar(sa.select(Contact.id).where(Contact.store_id == store.id))
    assert contact_id is not None
    return contact_id


def link(db: Database, settings: Settings, store_id: int, contact_id: int, channel: str = "email") -> str:
    with db.writer() as session:
        key = store_keys.hmac_key(session, store_id, CredentialCipher(settings.credentials_key))
        return preferences.unsubscribe_url("http://x", key, store_id, contact_id, channel).removeprefix("http://x")


def test_the_link_unsubscribes_everywhere_after_the_button_not_on_the_get(
    client: FlaskClient, db: Database, settings: Settings, store: NewStore, esps: consent_esps.Esps
) -> None:
    contact_id = subscribed(client, store, esps, db)
    path = link(db, settings, store.id, contact_id)
    assert path.startswith(f"/consent/unsubscribe/{store.id}/{contact_id}/email/")

    page = client.get(path)  # a mail scanner's prefetch: a page, nothing recorded
    assert page.status_code == 200 and b'method="post"' in page.data
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ConsentLedgerEntry)) == 1

    done = client.post(path, headers={"User-Agent": "Phone/2"}, environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert done.status_code == 200 and b"unsubscribed" in done.data
    with db.reader() as session:
        last = session.scalars(sa.select(ConsentLedgerEntry).order_by(ConsentLedgerEntry.seq.desc())).first()
        assert last is not None
        assert (last.action, last.status_after, last.method, last.channel) == (
            "withdraw",
            "unsubscribed",
            "preference_center",
            "email",
        )
        evidence = session.get(ConsentEvidence, last.id)
        assert evidence is not None and (evidence.ip, evidence.user_agent) == ("198.51.100.4", "Phone/2")

    esps.drain(store.id)
    assert esps.klaviyo_consent(EMAIL).get("email") == "UNSUBSCRIBED"
    assert esps.ac_status(EMAIL, esps.email_list) == "2"


def test_a_link_that_is_not_signed_for_that_person_and_channel_is_404(
    client: FlaskClient,
    db: Database,
    settings: Settings,
    store: NewStore,
    other_store: NewStore,
    esps: consent_esps.Esps,
) -> None:
    contact_id = subscribed(client, store, esps, db)
    good = link(db, settings, store.id, contact_id)
    signature = good.rsplit("/", 1)[1]
    forged = [
        good[:-1] + ("0" if good[-1] != "0" else "1"),  # one character changed
        f"/consent/unsubscribe/{store.id}/{contact_id}/sms/{signature}",  # another channel
        f"/consent/unsubscribe/{store.id}/{contact_id + 1}/email/{signature}",  # another person
        f"/consent/unsubscribe/{other_store.id}/{contact_id}/email/{signature}",  # another store
        f"/consent/unsubscribe/{store.id}/{contact_id}/fax/{signature}",  # no such channel
    ]
    for path in forged:
        assert client.get(path).status_code == 404, path
        assert client.post(path).status_code == 404, path
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ConsentLedgerEntry)) == 1
    # Nor does a made-up signature of the right shape
    assert client.post(f"/consent/unsubscribe/{store.id}/{contact_id}/email/" + "0" * 64).status_code == 404
