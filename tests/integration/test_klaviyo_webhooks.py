"""Inbound Klaviyo webhooks through the app (``POST /webhooks/klaviyo/<store id>``), on SQLite and PostgreSQL:
precise refusals (never a 500), engagement rows deduplicated by event id, the consent ledger entries they imply,
store scoping, and the ESP sandbox delivering signed webhooks to the app and serving the polling fallback."""

from __future__ import annotations

import datetime as dt
import email.utils
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr
from werkzeug.test import Client

from connector import identity
from connector.credentials import CredentialCipher, new_key
from connector.esp import connections, klaviyo_poll
from connector.esp.klaviyo import KlaviyoClient
from connector.esp.klaviyo_webhooks import TOPICS, sign
from connector.sandbox import DEFAULT_API_KEY, KlaviyoSandbox
from connector.settings import Settings
from connector.store import (
    ConsentLedgerEntry,
    ConsentState,
    Database,
    Engagement,
    EspConnection,
    EspLink,
    OutboxRow,
    utcnow,
)
from connector.tenancy import NewStore

SECRET = "whsec_integration_0123456789"
OTHER_SECRET = "whsec_other_store_9876543210"
WEBHOOK_ID = "01KP4928STE8FKCWB6WDHZ4ZB7"
PROFILE_ID = "01KP4EGHH8QJ3N3AY2Z6V7RMDK"
ANN = "ann@example.com"
_ids = itertools.count(1)


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
    """``store`` connected to Klaviyo (the sandbox's key) with a webhook secret, and Ann as a contact."""
    with db.writer() as session:
        connections.connect(
            session,
            cipher,
            store.id,
            "klaviyo",
            api_key=DEFAULT_API_KEY,
            base_url="http://sandbox.test",
            webhook_secret=SECRET,
        )
        identity.resolve(session, store.id, user_id="u-ann", email=ANN)
    return store


def klaviyo_event(
    metric_id: str = "SHi67A",
    *,
    event_id: str | None = None,
    profile_id: str = PROFILE_ID,
    when: dt.datetime | None = None,
    **properties: Any,
) -> dict[str, Any]:
    event_id = event_id or f"EV{next(_ids):09d}"
    when = when or utcnow() - dt.timedelta(minutes=1)
    return {
        "type": "event",
        "id": event_id,
        "attributes": {
            "timestamp": int(when.timestamp()),
            "datetime": when.isoformat(timespec="seconds"),
            "uuid": f"uuid-{event_id}",
            "event_properties": properties,
        },
        "relationships": {
            "profile": {"data": {"type": "profile", "id": profile_id}},
            "metric": {"data": {"type": "metric", "id": metric_id}},
        },
        "links": {"self": f"https://a.klaviyo.com/api/events/{event_id}/"},
    }


def delivery(
    *items: tuple[str, dict[str, Any]], webhook_id: str = WEBHOOK_ID, sent_at: dt.datetime | None = None
) -> bytes:
    document = {
        "data": [
            {"topic": f"event:klaviyo.{topic}", "external_id": resource["id"], "payload": {"data": resource}}
            for topic, resource in items
        ],
        "meta": {
            "klaviyo_account_id": "WBhXHN",
            "klaviyo_webhook_id": webhook_id,
            "timestamp": (sent_at or utcnow()).isoformat(),
            "version": "2026-07-15",
        },
    }
    return json.dumps(document).encode()


def signed(raw: bytes, *, secret: str = SECRET, webhook_id: str = WEBHOOK_ID) -> dict[str, str]:
    timestamp = email.utils.format_datetime(utcnow(), usegmt=True)
    return {
        "Content-Type": "application/json",
        "Klaviyo-Webhook-Id": webhook_id,
        "Klaviyo-Timestamp": timestamp,
        "Klaviyo-Signature": sign(secret, raw, timestamp),
    }


def post(client: FlaskClient, store_id: int, raw: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post(f"/webhooks/klaviyo/{store_id}", data=raw, headers=signed(raw) if headers is None else headers)


def rows(db: Database, model: Any, store_id: int) -> list[Any]:
    with db.reader() as session:
        return list(session.scalars(sa.select(model).where(model.store_id == store_id).order_by(model.id)))


def ann_id(db: Database, store_id: int) -> int:
    with db.reader() as session:
        contact = identity.resolve(session, store_id, email=ANN)
        assert contact is not None
        return contact.id


# --- recording ---------------------------------------------------------------------------------------------------


def test_a_signed_delivery_is_recorded_for_the_right_contact(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    opened = klaviyo_event(email_address=ANN, **{"$message": "MSG1", "Campaign Name": "Spring"})
    response = post(client, connected.id, delivery(("opened_email", opened)))
    assert response.status_code == 200, response.json
    assert response.json == {
        "success": True,
        "received": 1,
        "ignored": 0,
        "skipped": 0,
        "recorded": 1,
        "duplicates": 0,
        "consent_entries": 0,
        "unknown_people": 0,
        "linked": 0,
    }
    (row,) = rows(db, Engagement, connected.id)
    assert (row.esp, row.esp_event_id, row.kind, row.channel) == ("klaviyo", opened["id"], "opened", "email")
    assert row.contact_id == ann_id(db, connected.id)
    assert row.occurred_at == dt.datetime.fromisoformat(opened["attributes"]["datetime"])
    assert row.details == {
        "source": "webhook",
        "metric": "Opened Email",
        "profile_id": PROFILE_ID,
        "message_id": "MSG1",
        "campaign_name": "Spring",
    }
    assert rows(db, ConsentLedgerEntry, connected.id) == []


@pytest.mark.parametrize(
    ("topic", "properties", "kind", "action"),
    [
        ("received_email", {}, "delivered", None),
        ("opened_email", {}, "opened", None),
        ("clicked_email", {"URL": "https://shop.example/p/1"}, "clicked", None),
        ("bounced_email", {"Bounce Type": "soft"}, "bounced", None),
        ("bounced_email", {"Bounce Type": "hard"}, "bounced", "bounce"),
        ("marked_email_as_spam", {}, "marked_spam", "complaint"),
        ("unsubscribed_from_email_marketing", {}, "unsubscribed", "withdraw"),
    ],
)
def test_each_kind_and_the_consent_it_implies(
    client: FlaskClient,
    db: Database,
    connected: NewStore,
    topic: str,
    properties: dict[str, Any],
    kind: str,
    action: str | None,
) -> None:
    event = klaviyo_event(email_address=ANN, **properties)
    response = post(client, connected.id, delivery((topic, event)))
    assert response.status_code == 200 and response.json["recorded"] == 1
    (row,) = rows(db, Engagement, connected.id)
    assert row.kind == kind
    ledger = rows(db, ConsentLedgerEntry, connected.id)
    outbox = [r for r in rows(db, OutboxRow, connected.id) if r.topic == "consent.changed"]
    if action is None:
        assert ledger == [] and outbox == [] and response.json["consent_entries"] == 0
        return
    (entry,) = ledger
    assert (entry.action, entry.status_after, entry.channel) == (action, "unsubscribed", "email")
    assert (entry.method, entry.actor, entry.source, entry.evidence_ref) == (
        "esp_webhook",
        "klaviyo",
        "klaviyo",
        event["id"],
    )
    assert entry.contact_id == ann_id(db, connected.id) and entry.occurred_at == row.occurred_at
    state = _state(db, connected.id)
    assert (state.status, state.ledger_entry_id) == ("unsubscribed", entry.id)
    assert len(outbox) == 1  # the other ESPs learn of it through the outbox


def _state(db: Database, store_id: int) -> ConsentState:
    with db.reader() as session:
        state = session.scalar(sa.select(ConsentState).where(ConsentState.store_id == store_id))
        assert state is not None
        return state


def test_a_redelivery_records_nothing_new(client: FlaskClient, db: Database, connected: NewStore) -> None:
    raw = delivery(("unsubscribed_from_email_marketing", klaviyo_event(email_address=ANN)))
    headers = signed(raw)
    first = post(client, connected.id, raw, headers)
    again = post(client, connected.id, raw, headers)  # the very same bytes and signature
    resent = post(client, connected.id, raw)  # re-signed later, as a retry would be
    assert (first.status_code, again.status_code, resent.status_code) == (200, 200, 200)
    assert (first.json["recorded"], again.json["recorded"], resent.json["recorded"]) == (1, 0, 0)
    assert again.json["duplicates"] == resent.json["duplicates"] == 1
    assert len(rows(db, Engagement, connected.id)) == 1
    assert len(rows(db, ConsentLedgerEntry, connected.id)) == 1


def test_one_event_twice_in_one_delivery_is_recorded_once(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    event = klaviyo_event(email_address=ANN)
    response = post(client, connected.id, delivery(("marked_email_as_spam", event), ("marked_email_as_spam", event)))
    assert (response.json["recorded"], response.json["duplicates"], response.json["consent_entries"]) == (1, 1, 1)
    assert len(rows(db, ConsentLedgerEntry, connected.id)) == 1


def test_concurrent_deliveries_of_one_event_record_it_once(app: Flask, db: Database, connected: NewStore) -> None:
    raw = delivery(("unsubscribed_from_email_marketing", klaviyo_event(email_address=ANN)))
    headers = signed(raw)
    statuses: list[int] = []
    start = threading.Barrier(4)

    def deliver() -> None:
        with app.test_client() as own:
            start.wait()
            statuses.append(own.post(f"/webhooks/klaviyo/{connected.id}", data=raw, headers=headers).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 4
    assert len(rows(db, Engagement, connected.id)) == 1
    assert len(rows(db, ConsentLedgerEntry, connected.id)) == 1


def test_an_unknown_person_is_recorded_without_contact_or_ledger(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    response = post(
        client, connected.id, delivery(("unsubscribed_from_email_marketing", klaviyo_event(email_address="x@y.io")))
    )
    assert response.json["unknown_people"] == 1 and response.json["consent_entries"] == 0
    (row,) = rows(db, Engagement, connected.id)
    assert row.contact_id is None and row.details["profile_id"] == PROFILE_ID
    assert "x@y.io" not in json.dumps(row.details)
    assert rows(db, ConsentLedgerEntry, connected.id) == []


def test_the_esp_link_resolves_the_person_and_merges_are_followed(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    with db.writer() as session:
        old = identity.resolve(session, connected.id, anonymous_id="anon-1")
        assert old is not None
        session.add(EspLink(store_id=connected.id, esp="klaviyo", contact_id=old.id, remote_id="01LINKED"))
        session.flush()
        survivor = identity.resolve(session, connected.id, user_id="u-ann", anonymous_id="anon-1")  # merges
        assert survivor is not None and survivor.id != old.id
        survivor_id = survivor.id
    hard = klaviyo_event(profile_id="01LINKED", **{"Bounce Type": "hard"})  # no email in the payload
    response = post(client, connected.id, delivery(("bounced_email", hard)))
    assert response.json["consent_entries"] == 1
    (row,) = rows(db, Engagement, connected.id)
    (entry,) = rows(db, ConsentLedgerEntry, connected.id)
    assert row.contact_id == entry.contact_id == survivor_id and entry.action == "bounce"


def test_a_later_report_with_a_known_person_links_the_row_once(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    event = klaviyo_event(profile_id="01NOTLINKED")  # nobody espbridge can resolve
    assert post(client, connected.id, delivery(("marked_email_as_spam", event))).json["unknown_people"] == 1
    with db.writer() as session:
        session.add(
            EspLink(store_id=connected.id, esp="klaviyo", contact_id=ann_id(db, connected.id), remote_id="01NOTLINKED")
        )
    again = post(client, connected.id, delivery(("marked_email_as_spam", event)))
    assert (again.json["duplicates"], again.json["linked"], again.json["consent_entries"]) == (1, 1, 1)
    once_more = post(client, connected.id, delivery(("marked_email_as_spam", event)))
    assert (once_more.json["linked"], once_more.json["consent_entries"]) == (0, 0)
    (row,) = rows(db, Engagement, connected.id)
    (entry,) = rows(db, ConsentLedgerEntry, connected.id)
    assert row.contact_id == entry.contact_id == ann_id(db, connected.id) and entry.action == "complaint"


# --- refusals: precise 4xx, nothing recorded -----------------------------------------------------------------------


def _refusals(raw: bytes) -> list[tuple[str, bytes, dict[str, str], int]]:
    good = signed(raw)
    stale = delivery(("opened_email", klaviyo_event()), sent_at=utcnow() - dt.timedelta(minutes=6))
    other_webhook = delivery(("opened_email", klaviyo_event()), webhook_id="01SOMEOTHER")
    return [
        ("no signature", raw, {k: v for k, v in good.items() if k != "Klaviyo-Signature"}, 401),
        ("no timestamp", raw, {k: v for k, v in good.items() if k != "Klaviyo-Timestamp"}, 401),
        ("no webhook id", raw, {k: v for k, v in good.items() if k != "Klaviyo-Webhook-Id"}, 401),
        ("no headers", raw, {"Content-Type": "application/json"}, 401),
        ("bad signature", raw, {**good, "Klaviyo-Signature": "ab" * 32}, 401),
        ("other store's secret", raw, signed(raw, secret=OTHER_SECRET), 401),
        ("altered body", raw.replace(b"opened", b"clicked"), good, 401),
        ("stale", stale, signed(stale), 403),
        ("webhook id mismatch", other_webhook, signed(other_webhook), 403),
        ("not json", b"{not json", signed(b"{not json"), 400),
        ("no data", b'{"meta": {}}', signed(b'{"meta": {}}'), 400),
        (
            "bad meta timestamp",
            raw.replace(b'"timestamp": "', b'"timestamp": "x'),
            signed(raw.replace(b'"timestamp": "', b'"timestamp": "x')),
            400,
        ),
    ]


def test_every_refusal_is_a_precise_4xx_and_records_nothing(
    client: FlaskClient, db: Database, connected: NewStore
) -> None:
    raw = delivery(("opened_email", klaviyo_event(email_address=ANN)))
    for name, body, headers, status in _refusals(raw):
        response = post(client, connected.id, body, headers)
        assert response.status_code == status, (name, response.json)
        assert response.json["success"] is False and response.json["error"], name
        if status == 401:
            assert "Klaviyo-Signature" in response.headers["WWW-Authenticate"]
    assert rows(db, Engagement, connected.id) == []


def test_stores_without_a_webhook_endpoint_are_404(
    client: FlaskClient, db: Database, store: NewStore, other_store: NewStore, cipher: CredentialCipher
) -> None:
    raw = delivery(("opened_email", klaviyo_event()))
    with db.writer() as session:  # connected, but without a webhook secret
        connections.connect(session, cipher, other_store.id, "klaviyo", api_key=DEFAULT_API_KEY)
    for store_id in (store.id, other_store.id, 999_999):
        assert post(client, store_id, raw).status_code == 404
    assert client.post("/webhooks/klaviyo/abc", data=raw, headers=signed(raw)).status_code == 404
    assert client.get(f"/webhooks/klaviyo/{store.id}").status_code == 405


def test_a_body_over_the_limit_is_413(client: FlaskClient, connected: NewStore) -> None:
    raw = b"{" + b" " * (10 * 1024 * 1024) + b"}"
    assert post(client, connected.id, raw).status_code == 413


def test_a_missing_credentials_key_is_503_not_500(db: Database, connected: NewStore, database_url: str) -> None:
    from connector.runtime import Runtime
    from web import create_app

    runtime = Runtime(Settings(database_url=database_url), db=db)  # no ESPBRIDGE_CREDENTIALS_KEY
    try:
        response = (
            create_app(runtime=runtime)
            .test_client()
            .post(f"/webhooks/klaviyo/{connected.id}", data=b"{}", headers=signed(b"{}"))
        )
    finally:
        runtime.close()
    assert response.status_code == 503 and response.headers["Retry-After"]


def test_a_delivery_for_one_store_never_touches_another(
    client: FlaskClient, db: Database, connected: NewStore, other_store: NewStore, cipher: CredentialCipher
) -> None:
    with db.writer() as session:
        connections.connect(session, cipher, other_store.id, "klaviyo", api_key="pk_b", webhook_secret=OTHER_SECRET)
        identity.resolve(session, other_store.id, user_id="u-ann-b", email=ANN)  # the same person, other store
    raw = delivery(("unsubscribed_from_email_marketing", klaviyo_event(email_address=ANN)))
    assert post(client, other_store.id, raw).status_code == 401  # signed with the first store's secret
    assert post(client, connected.id, raw).status_code == 200
    assert len(rows(db, ConsentLedgerEntry, connected.id)) == 1
    assert rows(db, Engagement, other_store.id) == rows(db, ConsentLedgerEntry, other_store.id) == []
    other = post(client, other_store.id, raw, signed(raw, secret=OTHER_SECRET))  # the same event id, other store
    assert other.json["recorded"] == 1 and len(rows(db, ConsentLedgerEntry, other_store.id)) == 1


# --- the sandbox delivering to the app, and polling it ------------------------------------------------------------


@pytest.fixture
def sandbox(app: Flask) -> Iterator[KlaviyoSandbox]:
    """The Klaviyo sandbox, delivering its webhooks to ``app`` in-process; rate-limit windows 100 times short."""
    emulated = KlaviyoSandbox(time_scale=100)
    emulated.engagement.transport = httpx.WSGITransport(app=app)
    emulated.engagement.retry_delay = 0.01
    yield emulated
    emulated.engagement.join()


def sandbox_client(sandbox: KlaviyoSandbox) -> KlaviyoClient:
    return KlaviyoClient(DEFAULT_API_KEY, base_url="http://sandbox.test", transport=httpx.WSGITransport(app=sandbox))


def emit(sandbox: KlaviyoSandbox, metric: str, email_address: str = ANN, **extra: Any) -> dict[str, Any]:
    response = Client(sandbox).post("/_sandbox/engagement", json={"email": email_address, "metric": metric, **extra})
    assert response.status_code in (201, 202), response.get_data(as_text=True)
    document: dict[str, Any] = response.json
    return document


def test_the_sandbox_emits_signed_webhooks_that_land_as_engagement_and_consent(
    db: Database, connected: NewStore, sandbox: KlaviyoSandbox
) -> None:
    with sandbox_client(sandbox) as klaviyo:
        webhook_id = klaviyo.create_webhook(
            name="espbridge",
            endpoint_url=f"https://shop.example/webhooks/klaviyo/{connected.id}",
            secret_key=SECRET,
            topics=TOPICS,
        )
    sent = [
        emit(sandbox, "Received Email"),
        emit(sandbox, "Opened Email"),
        emit(sandbox, "Bounced Email", bounce_type="soft"),
        emit(sandbox, "Marked Email as Spam"),
        emit(sandbox, "Unsubscribed from Email Marketing"),
        emit(sandbox, "Subscribed to Email Marketing"),  # a topic the webhook is not subscribed to
    ]
    assert [len(s["deliveries"]) for s in sent] == [1, 1, 1, 1, 1, 0]
    assert all(
        d["delivered"] and d["status"] == 200 and d["webhook_id"] == webhook_id for s in sent for d in s["deliveries"]
    )
    recorded = {row.esp_event_id: row.kind for row in rows(db, Engagement, connected.id)}
    kinds = ["delivered", "opened", "bounced", "marked_spam", "unsubscribed"]
    assert recorded == {sent[i]["data"]["id"]: kind for i, kind in enumerate(kinds)}
    ledger = rows(db, ConsentLedgerEntry, connected.id)
    assert [e.action for e in ledger] == ["withdraw"]  # only the unsubscribe names Ann by email
    # a redelivery of exactly what the sandbox sent records nothing
    (first,) = (
        Client(sandbox)
        .get("/_sandbox/webhook-deliveries", query_string={"event_id": sent[4]["data"]["id"]})
        .json["deliveries"]
    )
    with httpx.Client(transport=sandbox.engagement.transport) as http:
        again = http.post(first["endpoint_url"], content=first["body"].encode(), headers=first["headers"])
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert len(rows(db, ConsentLedgerEntry, connected.id)) == 1


def test_a_failed_delivery_is_retried_a_bounded_number_of_times(
    db: Database, connected: NewStore, sandbox: KlaviyoSandbox
) -> None:
    real = sandbox.engagement.transport
    answers = iter([503, 500])

    def flaky(request: httpx.Request) -> httpx.Response:
        status = next(answers, None)
        if status is not None:
            return httpx.Response(status)
        assert real is not None
        return real.handle_request(request)

    sandbox.engagement.transport = httpx.MockTransport(flaky)
    with sandbox_client(sandbox) as klaviyo:
        klaviyo.create_webhook(
            name="w",
            endpoint_url=f"https://shop.example/webhooks/klaviyo/{connected.id}",
            secret_key=SECRET,
            topics=TOPICS,
        )
    (attempted,) = emit(sandbox, "Opened Email")["deliveries"]
    assert (attempted["attempts"], attempted["delivered"]) == (3, True)
    assert len(rows(db, Engagement, connected.id)) == 1
    sandbox.engagement.transport = httpx.MockTransport(lambda request: httpx.Response(500))
    (failed,) = emit(sandbox, "Opened Email")["deliveries"]
    assert (failed["attempts"], failed["delivered"], failed["status"]) == (3, False, 500)


def test_polling_records_events_since_the_cursor_and_again_records_nothing(
    db: Database, connected: NewStore, sandbox: KlaviyoSandbox, cipher: CredentialCipher
) -> None:
    # no webhook registered: an account that cannot have one
    sent = [emit(sandbox, metric) for metric in ("Received Email", "Opened Email", "Clicked Email")]
    sent.append(emit(sandbox, "Bounced Email", bounce_type="hard"))
    sent.append(emit(sandbox, "Opened Email", email_address="stranger@example.com"))
    with sandbox_client(sandbox) as klaviyo:  # an API event of another metric is not engagement
        from connector.esp.klaviyo import KlaviyoEvent, KlaviyoProfile

        klaviyo.create_event(KlaviyoEvent("Placed Order", KlaviyoProfile(email=ANN), unique_id="o-1"))
    transport = httpx.WSGITransport(app=sandbox)
    first = klaviyo_poll.poll(db, cipher, connected.id, transport=transport)
    assert (first.fetched, first.recorded, first.duplicates, first.complete) == (5, 5, 0, True)
    assert (first.consent_entries, first.unknown_people) == (1, 1)  # Ann's hard bounce; the stranger
    assert set(first.metrics) == {"Received Email", "Opened Email", "Clicked Email", "Bounced Email"}
    kinds = sorted(row.kind for row in rows(db, Engagement, connected.id))
    assert kinds == ["bounced", "clicked", "delivered", "opened", "opened"]
    (entry,) = rows(db, ConsentLedgerEntry, connected.id)
    assert (entry.action, entry.method, entry.evidence_ref) == ("bounce", "esp_poll", sent[3]["data"]["id"])
    with db.reader() as session:
        row = session.scalar(sa.select(EspConnection).where(EspConnection.store_id == connected.id))
    assert row is not None and row.engagement_cursor == first.next_since
    assert row.settings == {}  # the cursor is no adapter setting (the sync engine checks those)
    assert first.next_since > first.since

    second = klaviyo_poll.poll(db, cipher, connected.id, transport=transport)
    assert second.since == first.next_since
    assert (second.recorded, second.consent_entries) == (0, 0)
    assert second.duplicates == second.fetched == 5  # the overlap is read again, and recognised
    assert len(rows(db, Engagement, connected.id)) == 5

    later = emit(sandbox, "Unsubscribed from Email Marketing")
    third = klaviyo_poll.poll(db, cipher, connected.id, transport=transport)
    assert (third.recorded, third.consent_entries) == (1, 1)
    assert rows(db, ConsentLedgerEntry, connected.id)[-1].evidence_ref == later["data"]["id"]


def test_a_polled_event_already_delivered_by_webhook_is_recorded_once(
    db: Database, connected: NewStore, sandbox: KlaviyoSandbox, cipher: CredentialCipher
) -> None:
    with sandbox_client(sandbox) as klaviyo:
        klaviyo.create_webhook(
            name="w",
            endpoint_url=f"https://shop.example/webhooks/klaviyo/{connected.id}",
            secret_key=SECRET,
            topics=TOPICS,
        )
    emit(sandbox, "Unsubscribed from Email Marketing")
    emit(sandbox, "Marked Email as Spam")  # no email in the payload: unknown until polled
    assert [r.contact_id is None for r in rows(db, Engagement, connected.id)] == [False, True]
    polled = klaviyo_poll.poll(db, cipher, connected.id, transport=httpx.WSGITransport(app=sandbox))
    assert (polled.recorded, polled.duplicates, polled.linked, polled.consent_entries) == (0, 2, 1, 1)
    assert all(r.contact_id == ann_id(db, connected.id) for r in rows(db, Engagement, connected.id))
    assert sorted(e.action for e in rows(db, ConsentLedgerEntry, connected.id)) == ["complaint", "withdraw"]


def test_a_poll_cut_short_resumes_where_it_stopped(
    db: Database, connected: NewStore, sandbox: KlaviyoSandbox, cipher: CredentialCipher
) -> None:
    base = utcnow().replace(microsecond=0) - dt.timedelta(hours=2)  # the sandbox keeps whole seconds
    for i in range(5):
        emit(sandbox, "Opened Email", time=(base + dt.timedelta(minutes=20 * i)).isoformat())
    transport = httpx.WSGITransport(app=sandbox)
    whole = klaviyo_poll.poll(db, cipher, connected.id, transport=transport, max_pages=1, since=base)
    assert whole.complete and whole.recorded == 5  # one page of 200 holds them
    for i in range(201):  # more than a page
        emit(sandbox, "Received Email", time=(base + dt.timedelta(seconds=i)).isoformat())
    short = klaviyo_poll.poll(db, cipher, connected.id, transport=transport, max_pages=1, since=base)
    assert not short.complete and short.recorded == 200
    assert short.next_since == base + dt.timedelta(seconds=199)
    rest = klaviyo_poll.poll(db, cipher, connected.id, transport=transport)
    assert rest.complete and rest.recorded == 1
    assert len(rows(db, Engagement, connected.id)) == 206


def test_polling_a_store_without_klaviyo_is_not_found(db: Database, store: NewStore, cipher: CredentialCipher) -> None:
    from connector.errors import NotFound

    with pytest.raises(NotFound):
        klaviyo_poll.poll(db, cipher, store.id)


# --- the CLI: connect with a webhook secret, register the webhook, poll ------------------------------------------


@pytest.fixture
def served_sandbox(sandbox: KlaviyoSandbox) -> Iterator[str]:
    """``sandbox`` served over HTTP on 127.0.0.1 by a thread (the CLI builds its own Klaviyo client)."""
    from connector.sandbox import SandboxServer

    server = SandboxServer(sandbox, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    thread.join(10)


def test_the_cli_connects_registers_the_webhook_and_polls(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    credentials_key: str,
    db: Database,
    store: NewStore,
    other_store: NewStore,
    cipher: CredentialCipher,
    sandbox: KlaviyoSandbox,
    served_sandbox: str,
) -> None:
    from click.testing import CliRunner

    from web.cli import main

    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ESPBRIDGE_CREDENTIALS_KEY", credentials_key)
    cli = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = cli.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    connect = ("esp", "connect", "klaviyo", "--api-key", DEFAULT_API_KEY, "--base-url", served_sandbox)
    assert "at least 16 characters" in run(*connect, "--store", str(store.id), "--webhook-secret", "short", code=2)
    run(*connect, "--store", str(store.id), "--webhook-secret", SECRET, "--json")
    run(*connect, "--store", str(store.id))  # a new connection without --webhook-secret keeps the secret
    with db.reader() as session:
        secret = connections.load(session, cipher, store.id, "klaviyo").webhook_secret
    assert secret is not None and secret.get_secret_value() == SECRET
    assert "not connected" in run(
        "esp", "register-webhook", "klaviyo", "--url", "https://x", "--store", str(other_store.id), code=2
    )

    url = f"https://shop.example/webhooks/klaviyo/{store.id}"
    registered = json.loads(run("esp", "register-webhook", "klaviyo", "--url", url, "--store", str(store.id), "--json"))
    stored = sandbox.webhooks[registered["webhook_id"]]
    assert (stored["endpoint_url"], stored["secret_key"], stored["topics"]) == (url, SECRET, list(TOPICS))

    run(*connect, "--store", str(other_store.id))  # no secret yet: registering makes one
    run(
        "esp",
        "register-webhook",
        "klaviyo",
        "--url",
        "https://shop.example/webhooks/klaviyo/2",
        "--store",
        str(other_store.id),
    )
    with db.reader() as session:
        made = connections.load(session, cipher, other_store.id, "klaviyo").webhook_secret
    assert made is not None and len(made.get_secret_value()) >= 16
    assert made.get_secret_value() in {w["secret_key"] for w in sandbox.webhooks.values()}

    # engagement delivered by webhook (in-process, to the app) and then polled: recorded once
    with db.writer() as session:
        identity.resolve(session, store.id, user_id="u-ann", email=ANN)
    with httpx.Client(base_url=served_sandbox) as http:
        for metric in ("Opened Email", "Unsubscribed from Email Marketing"):
            assert http.post("/_sandbox/engagement", json={"email": ANN, "metric": metric}).status_code == 201
    assert len(rows(db, Engagement, store.id)) == 2
    polled = json.loads(run("esp", "poll", "klaviyo", "--store", str(store.id), "--json"))
    assert (polled["fetched"], polled["recorded"], polled["duplicates"], polled["linked"]) == (2, 0, 2, 1)
    output = run("esp", "poll", "klaviyo", "--store", str(store.id))
    assert "2 klaviyo events since" in output and "0 recorded, 2 already known" in output
    since = json.loads(run("esp", "poll", "klaviyo", "--store", str(store.id), "--since", "2020-01-01", "--json"))
    assert since["since"] == "2020-01-01T00:00:00+00:00" and since["recorded"] == 0
    assert len(rows(db, Engagement, store.id)) == 2 and len(rows(db, ConsentLedgerEntry, store.id)) == 1
    run(*connect, "--store", str(store.id), "--json")  # connecting again after polls is still fine
    run("esp", "poll", "klaviyo", "--store", str(other_store.id), "--since", "2020-01-01")  # nothing there
    assert "Error" in run("esp", "poll", "klaviyo", "--store", "999", code=2)
