"""Connecting a store to an ESP: credentials encrypted at rest, never printed, scoped to their store."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pydantic import SecretStr

from connector.credentials import CredentialCipher, CredentialsUnavailable, new_key
from connector.errors import InvalidInput, NotFound
from connector.esp import connections
from connector.store import Database, EspConnection
from connector.tenancy import NewStore
from web.cli import main

API_KEY = "pk_live_0123456789abcdef"


@pytest.fixture
def cipher() -> CredentialCipher:
    return CredentialCipher(SecretStr(new_key()))


def test_credentials_are_encrypted_at_rest_and_read_back(
    db: Database, store: NewStore, cipher: CredentialCipher
) -> None:
    with db.writer() as session:
        connections.connect(session, cipher, store.id, "klaviyo", api_key=API_KEY, base_url="http://127.0.0.1:8100/")
    with db.reader() as session:
        stored = session.scalar(sa.select(EspConnection.credentials))
        connection = connections.load(session, cipher, store.id, "klaviyo")
    assert stored is not None and API_KEY not in stored
    assert connection.api_key.get_secret_value() == API_KEY
    assert connection.base_url == "http://127.0.0.1:8100"
    assert API_KEY not in repr(connection)


def test_a_connection_belongs_to_its_store(
    db: Database, store: NewStore, other_store: NewStore, cipher: CredentialCipher
) -> None:
    with db.writer() as session:
        connections.connect(session, cipher, store.id, "klaviyo", api_key=API_KEY)
    with db.reader() as session, pytest.raises(NotFound):
        connections.load(session, cipher, other_store.id, "klaviyo")


def test_connecting_again_replaces_the_key(db: Database, store: NewStore, cipher: CredentialCipher) -> None:
    for key in ("first-key", "second-key"):
        with db.writer() as session:
            connections.connect(session, cipher, store.id, "klaviyo", api_key=key)
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count(EspConnection.id))) == 1
        assert connections.load(session, cipher, store.id, "klaviyo").api_key.get_secret_value() == "second-key"


def test_keys_rotate_and_a_lost_key_is_a_clear_error(db: Database, store: NewStore) -> None:
    old, new = new_key(), new_key()
    with db.writer() as session:
        connections.connect(session, CredentialCipher(SecretStr(old)), store.id, "klaviyo", api_key=API_KEY)
    rotated = CredentialCipher(SecretStr(f"{new},{old}"))  # the new key first: it encrypts; both decrypt
    with db.reader() as session:
        assert connections.load(session, rotated, store.id, "klaviyo").api_key.get_secret_value() == API_KEY
        with pytest.raises(CredentialsUnavailable, match="cannot be decrypted"):
            connections.load(session, CredentialCipher(SecretStr(new)), store.id, "klaviyo")


def test_bad_input_is_refused_by_field(db: Database, store: NewStore, cipher: CredentialCipher) -> None:
    with db.writer() as session:
        for kwargs, field in (
            ({"esp": "mailchimp", "api_key": API_KEY}, "esp"),
            ({"esp": "klaviyo", "api_key": "  "}, "api_key"),
            ({"esp": "klaviyo", "api_key": API_KEY, "base_url": "ftp://x"}, "base_url"),
        ):
            with pytest.raises(InvalidInput) as raised:
                connections.connect(session, cipher, store.id, **kwargs)
            assert raised.value.field == field
    with pytest.raises(CredentialsUnavailable, match="ESPBRIDGE_CREDENTIALS_KEY is not set"):
        CredentialCipher(None).encrypt({"api_key": API_KEY})
    with pytest.raises(CredentialsUnavailable, match="32 url-safe"):
        CredentialCipher(SecretStr("not-a-key"))


def test_cli_connects_lists_and_disconnects_without_printing_the_key(
    monkeypatch: pytest.MonkeyPatch, database_url: str, store: NewStore, db: Database
) -> None:
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ESPBRIDGE_CREDENTIALS_KEY", new_key())
    cli = CliRunner()
    connect = ["esp", "connect", "klaviyo", "--base-url", "http://127.0.0.1:8100"]
    result = cli.invoke(main, connect, input=f"{API_KEY}\n")  # asked for, not echoed
    assert result.exit_code == 0, result.output
    listed = cli.invoke(main, ["esp", "list"])
    assert "klaviyo\thttp://127.0.0.1:8100" in listed.output
    as_json = cli.invoke(main, ["esp", "list", "--json"])
    assert [c["base_url"] for c in json.loads(as_json.output)["connections"]] == ["http://127.0.0.1:8100"]
    assert API_KEY not in result.output + listed.output + as_json.output
    assert cli.invoke(main, ["esp", "disconnect", "klaviyo"]).exit_code == 0
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count(EspConnection.id))) == 0

    monkeypatch.delenv("ESPBRIDGE_CREDENTIALS_KEY")
    refused = cli.invoke(main, [*connect, "--api-key", API_KEY])
    assert refused.exit_code == 2 and "ESPBRIDGE_CREDENTIALS_KEY is not set" in refused.output
    assert len(cli.invoke(main, ["esp", "keygen"]).output.strip()) == 44


@pytest.mark.parametrize("backend", ["sqlite"])
def test_cli_settings_merge_and_bad_ones_are_refused_by_key(
    monkeypatch: pytest.MonkeyPatch, database_url: str, store: NewStore, db: Database
) -> None:
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ESPBRIDGE_CREDENTIALS_KEY", new_key())
    cli = CliRunner()
    connect = ["esp", "connect", "klaviyo", "--api-key", API_KEY, "--json"]
    mapping = '{"fields": {"properties.company": "organization"}}'
    first = cli.invoke(main, [*connect, "--setting", "list_id=Xy12", "--setting", f"mapping={mapping}"])
    assert first.exit_code == 0, first.output
    # Settings not given again are kept; null removes one
    again = cli.invoke(main, [*connect, "--setting", "rate_limit_scale=4", "--setting", "list_id=null"])
    assert json.loads(again.output)["settings"] == {
        "mapping": {"fields": {"properties.company": "organization"}},
        "rate_limit_scale": 4,
    }
    for bad, field in [
        ("rate_limit_scale=0", "setting.rate_limit_scale"),
        ("timeout=fast", "setting.timeout"),
        ("colour=blue", "setting"),
        ('mapping={"fields": {"properties.x": "favourite_colour"}}', "fields.properties.x"),
    ]:
        refused = cli.invoke(main, [*connect, "--setting", bad])
        assert refused.exit_code == 2 and field in refused.output, (bad, refused.output)
    with db.reader() as session:
        assert session.scalar(sa.select(EspConnection.settings))["rate_limit_scale"] == 4


def test_activecampaign_needs_its_account_url_and_keeps_its_event_key_encrypted(
    db: Database, store: NewStore, cipher: CredentialCipher
) -> None:
    # ActiveCampaign has no one API host: each account has its own, so a connection without it is refused
    with db.writer() as session, pytest.raises(InvalidInput) as info:
        connections.connect(session, cipher, store.id, "activecampaign", api_key=API_KEY)
    assert info.value.field == "base_url"
    event_key = "ac-event-key-0123456789"
    with db.writer() as session:
        connections.connect(
            session,
            cipher,
            store.id,
            "activecampaign",
            api_key=API_KEY,
            base_url="https://acme.api-us1.com",
            secrets={"event_key": event_key},
        )
    # When only the API key changes, the event key is kept
    with db.writer() as session:
        connections.connect(
            session, cipher, store.id, "activecampaign", api_key="new-key", base_url="https://acme.api-us1.com"
        )
    with db.reader() as session:
        stored = session.scalar(sa.select(EspConnection.credentials).where(EspConnection.esp == "activecampaign"))
        connection = connections.load(session, cipher, store.id, "activecampaign")
    assert stored is not None and event_key not in stored
    assert connection.secrets["event_key"].get_secret_value() == event_key
    assert connection.api_key.get_secret_value() == "new-key"
    assert event_key not in repr(connection)
