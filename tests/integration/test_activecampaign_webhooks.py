"""Inbound ActiveCampaign webhooks through the app (``POST /webhooks/activecampaign/<store id>/<token>``), on SQLite
and PostgreSQL: each recorded type as engagement rows and consent ledger entries, idempotence under redelivery (also
concurrent), our own API changes not echoed, one 404 for every wrong URL, precise refusals and never a 500 (a bounded
fuzz loop), the token kept out of every log line, and ``espbridge esp register-webhook activecampaign`` against a
stand-in for ActiveCampaign's webhook API on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from connector import identity
from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.esp.activecampaign_webhooks import EVENTS, SOURCES, delivery_key, parse_form
from connector.settings import Settings
from connector.store import ConsentLedgerEntry, ConsentState, Database, Engagement, EspLink, OutboxRow
from connector.tenancy import NewStore

TOKEN = "tok_integration_0123456789abcdefXYZ"
OTHER_TOKEN = "tok_other_store_9876543210zyxwvuTS"
ANN = "ann@example.com"
AC = "activecampaign"


@pytest.fixture
def credentials_key() -> str:
    return new_key()


@pytest.fixture
def settings(database_url: str, credentials_key: str) -> Settings:
    return Settings(database_url=database_url, secret_key="test-secret", credentials_key=credentials_key)


@pytest.fixture
def cipher(credentials_key: str) -> CredentialCipher:
    return CredentialCipher(SecretStr(credentials_key))


@pytest.fixture
def connected(db: Database, store: NewStore, cipher: CredentialCipher) -> NewStore:
    """``store`` connected to ActiveCampaign with a webhook token, and Ann as a contact."""
    with db.writer() as session:
        connections.connect(
            session, cipher, store.id, AC, api_key="ac-key", base_url="http://127.0.0.1:9", webhook_secret=TOKEN
        )
        identity.resolve(session, store.id, user_id="u-ann", email=ANN)
    return store


def form(type_: str, *, email: str = ANN, when: str = "2026-04-13T22:16:46-05:00", **fields: str) -> bytes:
    document = {
        "type": type_,
        "date_time": when,
        "initiated_from": "public",
        "initiated_by": "0",
        "list": "3",
        "contact[id]": "42",
        "contact[email]": email,
        "contact[first_name]": "Ann",
        "contact[fields][12]": "blue",
        "campaign[id]": "5",
        "campaign[message][id]": "9",
        **fields,
    }
    return urlencode(document).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def post(client: FlaskClient, store_id: int, raw: bytes, token: str = TOKEN, **headers: str) -> Any:
    return client.post(f"/webhooks/activecampaign/{store_id}/{token}", data=raw, headers={**FORM, **headers})


def rows(db: Database, model: Any, store_id: int) -> list[Any]:
    with db.reader() as session:
        return list(session.scalars(sa.select(model).where(model.store_id == store_id).order_by(model.id)))


def ann_id(db: Database, store_id: int) -> int:
    with db.reader() as session:
        contact = identity.resolve(session, store_id, email=ANN)
        assert contact is not None
        return contact.id


# --- recording ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "fields", "kind", "channel", "action"),
    [
        ("open", {}, "opened", "email", None),
        ("click", {"link[id]": "2", "link[url]": "https://shop.example/p/1"}, "clicked", "email", None),
        ("bounce", {"bounce[type]": "soft", "bounce[code]": "4.2.2"}, "bounced", "email", None),
        ("bounce", {"bounce[type]": "hard", "bounce[code]": "5.1.1"}, "bounced", "email", "bounce"),
        ("unsubscribe", {"list[][id]": "3"}, "unsubscribed", "email", "withdraw"),
        ("sms_unsub", {"sms[id]": "77", "sms[phone]": "+15550100"}, "unsubscribed", "sms", "withdraw"),
    ],
)
def test_each_type_is_recorded_with_the_consent_it_implies(
    client: FlaskClient,
    db: Database,
    connected: NewStore,
    type_: str,
    fields: dict[str, str],
    kind: str,
    channel: str,
    action: str | None,
) -> None:
    raw = form(type_, **fields)
    response = post(client, connected.id, raw)
    assert response.status_code == 200, response.json
    assert response.json == {
        "success": True,
        "received": 1,
        "ignored": 0,
        "echo": 0,
        "recorded": 1,
        "duplicates": 0,
        "consent_entries": int(action is not None),
        "unknown_people": 0,
        "linked": 0,
    }
    (row,) = rows(db, Engagement, connected.id)
    key = delivery_key(parse_form(raw))
    assert (row.esp, row.esp_event_id, row.kind, row.channel) == (AC, key, kind, channel)
    assert row.contact_id == ann_id(db, connected.id)
    assert row.occurred_at.replace(tzinfo=None).isoformat() == "2026-04-14T03:16:46"
    assert row.details["campaign_id"] == "5" and row.details["lists"] == ["3"]
    if type_ == "click":
        assert row.details["url"] == "https://shop.example/p/1"
    assert "blue" not in json.dumps(row.details) and ANN not in json.dumps(row.details)
    ledger = rows(db, ConsentLedgerEntry, connected.id)
    outbox = [r for r in rows(db, OutboxRow, connected.id) if r.topic == "consent.changed"]
    if action is None:
        assert ledger == [] and outbox == []
        return
    (entry,) = ledger
    assert (entry.action, entry.status_after, entry.channel) == (action, "unsubscribed", channel)
    assert (entry.method, entry.actor, entry.source, entry.evidence_ref) == ("esp_webhook", AC, AC, key)
    assert entry.contact_id == row.contact_id and entry.occurred_at == row.occurred_at
    with db.reader() as session:
        state = session.scalar(sa.select(ConsentState).where(ConsentState.store_id == connected.id))
        assert state is not None and (state.channel, state.status, state.ledger_entry_id) == (
            channel,
            "unsubscribed",
            entry.id,
        )
    assert len(outbox) == 1


def test_a_redelivery_records_nothing_new(client: FlaskClient, db: Database, connected: NewStore) -> None:
    raw = form("unsubscribe")
    first, again = post(client, connected.id, raw), post(client, connected.id, raw)
    # a redelivery whose contact details changed in between is the same occurrence
    changed = post(client, connected.id, form("unsubscribe", **{"contact[fields][12]": "red", "contact[tags]": "x"}))
    assert (first.json["recorded"], again.json["recorded"], changed.json["recorded"]) == (1, 0, 0)
    assert again.json["duplicates"] == changed.json["duplicates"] == 1
    assert len(rows(db, Engagement, connected.id)) == len(rows(db, ConsentLedgerEntry, connected.id)) == 1
    # another occurrence (a second later) is recorded
    later = post(client, connected.id, form("unsubscribe", when="2026-04-13T22:16:47-05:00"))
    assert later.json["recorded"] == 1 and len(rows(db, Engagement, connected.id)) == 2


def test_concurrent_deliveries_of_one_event_record_it_once(app: Flask, db: Database, connected: NewStore) -> None:
    raw = form("bounce", **{"bounce[type]": "hard"})
    statuses: list[int] = []
    start = threading.Barrier(4)

    def deliver() -> None:
        with app.test_client() as own:
            start.wait(30)
            statuses.append(post(own, connected.id, raw).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 4
    assert len(rows(db, Engagement, connected.id)) == 1
    assert len(rows(db, ConsentLedgerEntry, connected.id)) == 1


def test_our_own_api_changes_are_acknowledged_and_not_recorded(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    for type_ in EVENTS:
        response = post(client, connected.id, form(type_, initiated_from="api", **{"bounce[type]": "hard"}))
        assert response.status_code == 200 and (response.json["echo"], response.json["recorded"]) == (1, 0)
    assert rows(db, Engagement, connected.id) == rows(db, ConsentLedgerEntry, connected.id) == []


def test_other_types_are_acknowledged_and_ignored(client: FlaskClient, db: Database, connected: NewStore) -> None:
    for raw in (form("subscribe"), form("update"), b"type=deal_add&deal[id]=1", b"type=list_add&list[id]=4"):
        response = post(client, connected.id, raw)
        assert response.status_code == 200 and (response.json["ignored"], response.json["recorded"]) == (1, 0)
    assert rows(db, Engagement, connected.id) == []


def test_an_unknown_person_is_recorded_without_contact_or_ledger(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    response = post(client, connected.id, form("unsubscribe", email="stranger@example.com"))
    assert (response.json["recorded"], response.json["unknown_people"], response.json["consent_entries"]) == (1, 1, 0)
    (row,) = rows(db, Engagement, connected.id)
    assert row.contact_id is None and row.details["contact_id"] == "42"
    assert "stranger" not in json.dumps(row.details)
    assert rows(db, ConsentLedgerEntry, connected.id) == []


def test_the_esp_link_resolves_the_person_before_the_email(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    with db.writer() as session:
        bob = identity.resolve(session, connected.id, user_id="u-bob", email="bob@example.com")
        assert bob is not None
        session.add(EspLink(store_id=connected.id, esp=AC, contact_id=bob.id, remote_id="77"))
        bob_id = bob.id
    response = post(client, connected.id, form("sms_unsub", email="", **{"contact[id]": "77"}))
    assert response.json["consent_entries"] == 1
    (entry,) = rows(db, ConsentLedgerEntry, connected.id)
    assert (entry.contact_id, entry.channel, entry.action) == (bob_id, "sms", "withdraw")


# --- refusals ----------------------------------------------------------------------------------------------------


def test_every_wrong_url_is_the_same_404(
    client: FlaskClient, db: Database, connected: NewStore, other_store: NewStore, cipher: CredentialCipher
) -> None:
    raw = form("unsubscribe")
    with db.writer() as session:  # a connection without a webhook secret
        connections.connect(session, cipher, other_store.id, AC, api_key="k", base_url="http://127.0.0.1:9")
    answers = [
        post(client, connected.id, raw, token="tok_wrong_0123456789abcdefXYZ"),
        post(client, connected.id, raw, token=TOKEN[:-1]),
        post(client, connected.id, raw, token=TOKEN + "x"),
        post(client, connected.id, raw, token=TOKEN.upper()),
        post(client, connected.id, raw, token="%C3%A9" * 20),
        post(client, other_store.id, raw, token=TOKEN),  # connected, no secret
        post(client, 999_999, raw, token=TOKEN),  # no such store
        post(client, connected.id, b"x" * 300_000, token="wrong_token_0123456789"),  # oversize, yet unauthenticated
        client.post(f"/webhooks/activecampaign/{connected.id}/", data=raw, headers=FORM),
        client.post(f"/webhooks/activecampaign/{connected.id}", data=raw, headers=FORM),
    ]
    assert [a.status_code for a in answers] == [404] * len(answers)
    assert len({a.json["error"] for a in answers}) == 1  # which of them it was is not told
    assert client.get(f"/webhooks/activecampaign/{connected.id}/{TOKEN}").status_code == 405
    assert rows(db, Engagement, connected.id) == []


def test_a_store_only_answers_to_its_own_token(
    client: FlaskClient, db: Database, connected: NewStore, other_store: NewStore, cipher: CredentialCipher
) -> None:
    with db.writer() as session:
        connections.connect(
            session, cipher, other_store.id, AC, api_key="k2", base_url="http://127.0.0.1:9", webhook_secret=OTHER_TOKEN
        )
        identity.resolve(session, other_store.id, user_id="u-ann-b", email=ANN)  # the same person, other store
    raw = form("unsubscribe")
    assert post(client, other_store.id, raw, token=TOKEN).status_code == 404
    assert post(client, connected.id, raw, token=OTHER_TOKEN).status_code == 404
    assert post(client, connected.id, raw).json["consent_entries"] == 1
    assert rows(db, Engagement, other_store.id) == rows(db, ConsentLedgerEntry, other_store.id) == []
    other = post(client, other_store.id, raw, token=OTHER_TOKEN)  # the same occurrence, other store
    assert (other.json["recorded"], other.json["consent_entries"]) == (1, 1)
    (entry,) = rows(db, ConsentLedgerEntry, other_store.id)
    assert entry.contact_id != ann_id(db, connected.id)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"type=open&&x=1", "body"),
        (b"type=open&contact[email=a", "contact[email"),
        (b"type=open&a[]=1&a[k]=2", "a[k]"),
        (b"type=open&type=click", "type"),
        (b"type=open&x=%GG", "x"),
        (b"type=open&x=%FF", "x"),
        (b"type=open&contact[email]=a@b.c", "date_time"),
        (b"type=click&date_time=2026-04-13T22:16:46Z", "contact[email]"),
        (b"initiated_from=public", "type"),
        (b"", "type"),
    ],
)
def test_a_malformed_delivery_is_400_naming_the_field(
    client: FlaskClient, db: Database, connected: NewStore, raw: bytes, field: str
) -> None:
    response = post(client, connected.id, raw)
    assert response.status_code == 400, response.json
    assert response.json["success"] is False and response.json["field"] == field
    assert field in response.json["error"]
    assert rows(db, Engagement, connected.id) == []


def test_limits_not_form_encoded_and_missing_credentials_key(
    client: FlaskClient, db: Database, connected: NewStore, database_url: str
) -> None:
    assert post(client, connected.id, form("open") + b"&pad=" + b"x" * (256 * 1024)).status_code == 413
    too_many = "&".join(f"f{i}=1" for i in range(1001)).encode()
    assert post(client, connected.id, too_many).json["field"] == "body"
    deep = b"type=open&a" + b"[x]" * 9 + b"=1"
    assert post(client, connected.id, deep).status_code == 400
    as_json = client.post(
        f"/webhooks/activecampaign/{connected.id}/{TOKEN}", json={"type": "open"}, headers={"X-Any": "1"}
    )
    assert as_json.status_code == 415
    assert rows(db, Engagement, connected.id) == []

    from connector.runtime import Runtime
    from web import create_app

    runtime = Runtime(Settings(database_url=database_url), db=db)  # no ESPBRIDGE_CREDENTIALS_KEY
    try:
        response = (
            create_app(runtime=runtime)
            .test_client()
            .post(f"/webhooks/activecampaign/{connected.id}/{TOKEN}", data=form("open"), headers=FORM)
        )
    finally:
        runtime.close()
    assert response.status_code == 503 and response.headers["Retry-After"]


def test_arbitrary_bodies_never_get_a_500_or_a_410(client: FlaskClient, db: Database, connected: NewStore) -> None:
    rng = random.Random(20261122)
    pieces = ["type", "open", "click", "bounce", "unsubscribe", "sms_unsub", "date_time", "contact", "[", "]", "[]"]
    pieces += ["=", "&", "%", "%5B", "%5D", "%ZZ", "%FF", "%C3%A9", "+", "id", "email", "a@b.c", "2026-04-13T22:16:46Z"]
    pieces += ["initiated_from", "api", "bounce[type]", "hard", "list[][id]", "\x00", "é", ";", "0", "-1", "9" * 30]
    statuses: dict[int, int] = {}
    for _ in range(300):
        if rng.random() < 0.2:
            raw = rng.randbytes(rng.randrange(0, 200))
        else:
            raw = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40))).encode()
        response = post(client, connected.id, raw)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400), (raw, response.status_code, response.get_data(as_text=True))
        assert response.is_json and response.json["success"] is (response.status_code == 200)
    assert statuses.get(400, 0) > 0  # the loop did reach the parser's refusals


# --- the token never reaches a log line ------------------------------------------------------------------------


def test_the_token_is_in_no_log_line(
    app: Flask,
    client: FlaskClient,
    connected: NewStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    post(client, connected.id, form("open"))
    post(client, connected.id, b"type=open&&")  # refused with a warning
    # werkzeug's dev server logs each request line, path included
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
            served = http.post(f"/webhooks/activecampaign/{connected.id}/{TOKEN}", content=form("click"), headers=FORM)
            assert served.status_code == 200
            # an error after the token was accepted: logged with its traceback, by the app
            from connector import engagement

            def broken(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError(f"boom at /webhooks/activecampaign/{connected.id}/{TOKEN}")

            monkeypatch.setattr(engagement, "record", broken)
            failed = http.post(f"/webhooks/activecampaign/{connected.id}/{TOKEN}", content=form("open"), headers=FORM)
            assert failed.status_code == 500
    finally:
        server.shutdown()
        thread.join(10)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"/webhooks/activecampaign/{connected.id}/[redacted]" in logged  # the request lines were logged
    assert TOKEN not in logged and TOKEN not in caplog.text


# --- the CLI: registering the webhook ---------------------------------------------------------------------------


class FakeActiveCampaign:
    """ActiveCampaign's ``POST /api/3/webhooks`` as the spec's example answers it, recording each request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 201

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append(
            {"path": request.path, "token": request.headers.get("Api-Token"), "json": request.get_json(silent=True)}
        )
        if self.status != 201:
            return Response(json.dumps({"message": "No"}), status=self.status)(environ, start_response)
        webhook = {**(request.get_json(silent=True) or {}).get("webhook", {}), "id": str(len(self.requests))}
        return Response(json.dumps({"webhook": webhook}), status=201, mimetype="application/json")(
            environ, start_response
        )


@pytest.fixture
def fake_ac() -> Iterator[tuple[FakeActiveCampaign, str]]:
    fake = FakeActiveCampaign()
    server = make_server("127.0.0.1", 0, fake, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join(10)


def test_the_cli_registers_the_webhook_with_a_stored_token(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    credentials_key: str,
    client: FlaskClient,
    db: Database,
    store: NewStore,
    other_store: NewStore,
    cipher: CredentialCipher,
    fake_ac: tuple[FakeActiveCampaign, str],
) -> None:
    from click.testing import CliRunner

    from web.cli import main

    fake, base_url = fake_ac
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ESPBRIDGE_CREDENTIALS_KEY", credentials_key)
    cli = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = cli.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    with db.writer() as session:
        connections.connect(session, cipher, store.id, AC, api_key="ac-key-1", base_url=base_url + "/")
        identity.resolve(session, store.id, user_id="u-ann", email=ANN)
    endpoint = f"https://shop.example/webhooks/activecampaign/{store.id}"
    register = ("esp", "register-webhook", AC, "--url", endpoint, "--store", str(store.id))
    assert "not connected" in run(
        "esp", "register-webhook", AC, "--url", endpoint, "--store", str(other_store.id), code=2
    )
    assert "does not exist" in run("esp", "register-webhook", AC, "--url", endpoint, "--store", "999", code=2)
    printed = json.loads(run(*register, "--json"))
    with db.reader() as session:
        secret = connections.load(session, cipher, store.id, AC).webhook_secret
    assert secret is not None
    token = secret.get_secret_value()
    assert len(token) >= 40  # 32 random bytes, URL-safe
    (sent,) = fake.requests
    assert (sent["path"], sent["token"]) == ("/api/3/webhooks", "ac-key-1")
    assert sent["json"] == {
        "webhook": {
            "name": f"espbridge store {store.id}",
            "url": f"{endpoint}/{token}",
            "events": list(EVENTS),
            "sources": list(SOURCES),
        }
    }
    assert "api" not in sent["json"]["webhook"]["sources"]
    assert printed["webhook_id"] == "1" and printed["url"] == f"{endpoint}/{token[:4]}…"
    human = run(*register)  # registering again keeps the stored token
    assert token not in human and f"{endpoint}/{token[:4]}…" in human
    assert fake.requests[1]["json"]["webhook"]["url"] == f"{endpoint}/{token}"
    # the registered URL works against the app
    response = client.post(f"/webhooks/activecampaign/{store.id}/{token}", data=form("open"), headers=FORM)
    assert response.status_code == 200 and response.json["recorded"] == 1

    # refused by ActiveCampaign: nothing stored, a clear error, no token or key in it
    with db.writer() as session:
        connections.connect(session, cipher, other_store.id, AC, api_key="ac-key-2", base_url=base_url)
    fake.status = 403
    other = ("esp", "register-webhook", AC, "--url", endpoint, "--store", str(other_store.id))
    output = run(*other, code=2)
    assert "403" in output and "ac-key-2" not in output
    fake.status = 422
    assert "422" in run(*other, code=2)
    with db.reader() as session:
        assert connections.load(session, cipher, other_store.id, AC).webhook_secret is None
    fake.status = 201
    with db.writer() as session:  # a secret that cannot be a URL segment is not used
        connections.set_webhook_secret(session, cipher, other_store.id, AC, "has/slash and space 0123456789")
    assert "URL-safe" in run(*other, code=2)
