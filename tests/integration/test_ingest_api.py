"""The ingestion API over HTTP: durable acknowledgement, idempotency, per-message errors, auth, limits.

Every test runs on SQLite and on PostgreSQL (the ``backend`` fixture behind ``client``).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import re
import time
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from sqlalchemy.exc import OperationalError
from werkzeug.test import TestResponse

from connector.ingest.messages import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, MESSAGE_TYPES
from connector.runtime import Runtime
from connector.store import Database, Event
from connector.tenancy import NewStore
from tests.conftest import basic_auth, post_messages, track
from web import MAX_REQUEST_BYTES, create_app
from web.openapi_admin import OPERATIONS

Message = dict[str, Any]


# --- helpers --------------------------------------------------------------------------------------------------


def post_raw(
    client: FlaskClient,
    body: bytes,
    *,
    write_key: str | None,
    path: str = "/v1/batch",
    encoding: str | None = None,
    headers: dict[str, str] | None = None,
) -> TestResponse:
    """POST ``body`` exactly as given."""
    all_headers = {"Content-Type": "application/json", **(basic_auth(write_key) if write_key else {})}
    if encoding is not None:
        all_headers["Content-Encoding"] = encoding
    all_headers.update(headers or {})
    return client.post(path, data=body, headers=all_headers)


def stored(db: Database, store_id: int) -> list[Event]:
    with db.reader() as session:
        return list(session.scalars(sa.select(Event).where(Event.store_id == store_id).order_by(Event.id)))


def message_ids(db: Database, store_id: int) -> list[str]:
    return [event.message_id for event in stored(db, store_id)]


def assert_json_error(response: TestResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data()[:500])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict)
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    return body


def padded_track(message_id: str, size: int) -> Message:
    """A track message whose compact JSON is about ``size`` bytes."""
    message = track("Product Viewed", message_id, pad="")
    overhead = len(json.dumps(message, separators=(",", ":")))
    message["properties"]["pad"] = "x" * (size - overhead)
    return message


def batch_body(messages: list[Any], **envelope: Any) -> bytes:
    return json.dumps({"batch": messages, **envelope}).encode()


# --- acknowledgement means committed --------------------------------------------------------------------------


def test_a_batch_is_committed_before_the_200(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given a batch of each message type
    batch: list[Message] = [
        track("Product Viewed", "m-track", product_id="p1"),
        {"type": "identify", "messageId": "m-identify", "userId": "u1", "traits": {"email": "ann@example.com"}},
        {"type": "page", "messageId": "m-page", "anonymousId": "a1", "name": "Home"},
        {"type": "screen", "messageId": "m-screen", "anonymousId": "a1", "name": "Cart"},
        {"type": "group", "messageId": "m-group", "userId": "u1", "groupId": "g1"},
        {"type": "alias", "messageId": "m-alias", "previousId": "a1", "userId": "u1"},
    ]
    # When it is posted
    response = post_messages(client, store.write_key, batch)
    # Then the answer is a 200 with the exact body shape
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"success": True, "accepted": 6, "duplicates": 0}
    # And every row is already visible to another connection
    rows = {event.message_id: event for event in stored(db, store.id)}
    assert set(rows) == {m["messageId"] for m in batch}
    assert {rows[f"m-{kind}"].type for kind in MESSAGE_TYPES} == set(MESSAGE_TYPES)
    assert rows["m-track"].name == "Product Viewed"
    assert rows["m-page"].name == "Home"
    assert rows["m-track"].user_id == "u1"
    assert rows["m-page"].anonymous_id == "a1"
    assert rows["m-track"].payload == batch[0]
    assert rows["m-track"].projected_at is None


def test_timestamps_are_stored_in_utc_and_missing_ones_are_the_time_of_receipt(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    before = dt.datetime.now(dt.UTC)
    response = post_messages(
        client,
        store.write_key,
        [
            {**track("Cart Viewed", "m1"), "timestamp": "2024-05-01T12:30:00+02:00"},
            {**track("Cart Viewed", "m2"), "timestamp": "2024-05-01T12:30:00"},
            track("Cart Viewed", "m3"),
        ],
    )
    after = dt.datetime.now(dt.UTC)
    assert response.status_code == 200
    rows = {event.message_id: event for event in stored(db, store.id)}
    assert rows["m1"].timestamp == dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC)
    assert rows["m2"].timestamp == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    assert before <= rows["m3"].timestamp <= after
    assert rows["m3"].timestamp == rows["m3"].received_at


def test_when_the_store_cannot_commit_the_answer_is_503_not_200(
    client: FlaskClient, db: Database, store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a database that fails at commit time
    def unavailable(*_args: Any, **_kwargs: Any) -> int:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr("web.ingest.store_events", unavailable)
    # When a batch is posted
    response = post_messages(client, store.write_key, [track("Product Viewed", "m1")])
    # Then nothing is acknowledged: the client is told to retry
    assert_json_error(response, 503)
    assert response.headers["Retry-After"]
    assert stored(db, store.id) == []


def test_an_empty_batch_is_accepted_with_nothing_stored(client: FlaskClient, db: Database, store: NewStore) -> None:
    response = post_messages(client, store.write_key, [])
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "accepted": 0, "duplicates": 0}
    assert stored(db, store.id) == []


# --- idempotency ----------------------------------------------------------------------------------------------


def test_a_retried_message_id_is_accepted_and_ignored(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given a message already accepted
    first = post_messages(client, store.write_key, [track("Order Completed", "m1", order_id="o1", total=10)])
    assert first.get_json() == {"success": True, "accepted": 1, "duplicates": 0}
    # When a different payload with the same messageId arrives
    second = post_messages(client, store.write_key, [track("Order Completed", "m1", order_id="o1", total=999)])
    # Then it is acknowledged as a duplicate and the stored payload is unchanged
    assert second.status_code == 200
    assert second.get_json() == {"success": True, "accepted": 1, "duplicates": 1}
    rows = stored(db, store.id)
    assert len(rows) == 1
    assert rows[0].payload["properties"]["total"] == 10


def test_a_duplicate_message_id_inside_one_batch_is_stored_once(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a batch in which two messages share a messageId
    batch = [track("Product Viewed", "dup", product_id="first"), track("Product Viewed", "dup", product_id="second")]
    # When it is posted
    response = post_messages(client, store.write_key, batch)
    # Then both are acknowledged, one counted as a duplicate; the first occurrence wins
    assert response.get_json() == {"success": True, "accepted": 2, "duplicates": 1}
    rows = stored(db, store.id)
    assert [row.payload["properties"]["product_id"] for row in rows] == ["first"]


def test_a_batch_mixing_new_and_already_stored_messages_counts_duplicates(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    post_messages(client, store.write_key, [track("Product Viewed", "m1"), track("Product Viewed", "m2")])
    response = post_messages(
        client, store.write_key, [track("Product Viewed", "m2"), track("Product Viewed", "m3"), track("X", "m1")]
    )
    assert response.get_json() == {"success": True, "accepted": 3, "duplicates": 2}
    assert sorted(message_ids(db, store.id)) == ["m1", "m2", "m3"]


def test_a_retry_over_the_single_endpoint_is_a_duplicate_too(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    post_messages(client, store.write_key, [track("Product Viewed", "m1")])
    response = post_messages(client, store.write_key, track("Product Viewed", "m1"), path="/v1/track")
    assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 1}
    assert message_ids(db, store.id) == ["m1"]


def test_an_exact_retry_without_message_id_is_a_duplicate_even_in_a_larger_batch(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a message without messageId, sent alone
    message = {"type": "track", "event": "Product Viewed", "userId": "u1", "properties": {"b": 1, "a": 2}}
    assert post_messages(client, store.write_key, [message]).get_json()["duplicates"] == 0
    # When the client retries it inside a batch over 32 KB, keys in another order
    reordered = {"properties": {"a": 2, "b": 1}, "userId": "u1", "event": "Product Viewed", "type": "track"}
    filler = padded_track("filler", MAX_MESSAGE_BYTES - 100)
    response = post_messages(client, store.write_key, [reordered, filler])
    # Then the retry is recognised as the same message
    assert response.get_json() == {"success": True, "accepted": 2, "duplicates": 1}
    ids = message_ids(db, store.id)
    assert len(ids) == 2
    assert ids[0].startswith("auto-")


def test_the_same_message_id_in_two_stores_is_two_messages(
    client: FlaskClient, db: Database, store: NewStore, other_store: NewStore
) -> None:
    post_messages(client, store.write_key, [track("Product Viewed", "m1")])
    response = post_messages(client, other_store.write_key, [track("Product Viewed", "m1")])
    assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 0}
    assert message_ids(db, store.id) == ["m1"]
    assert message_ids(db, other_store.id) == ["m1"]


# --- per-message errors ---------------------------------------------------------------------------------------


def test_one_malformed_message_is_named_and_the_valid_ones_are_stored(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a batch whose second message has a numeric event name
    batch: list[Any] = [track("Product Viewed", "m0"), {**track("x", "m1"), "event": 5}, track("Cart Viewed", "m2")]
    # When it is posted
    response = post_messages(client, store.write_key, batch)
    # Then the valid messages are committed and the bad one is named by index, field and reason
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True
    assert (body["accepted"], body["duplicates"]) == (2, 0)
    assert len(body["errors"]) == 1
    error = body["errors"][0]
    assert (error["index"], error["field"], error["messageId"]) == (1, "event", "m1")
    assert error["reason"]
    assert message_ids(db, store.id) == ["m0", "m2"]


def test_every_kind_of_invalid_message_is_reported_with_its_index(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    batch: list[Any] = [
        5,
        {"type": "track", "userId": "u1"},
        {"type": "group", "userId": "u1"},
        {"type": "alias", "userId": "u1"},
        {"type": "identify"},
        {"type": "nope", "userId": "u1"},
        {"userId": "u1"},
        {**track("Product Viewed", "m7"), "properties": "x"},
        {**track("Product Viewed", "m8"), "userId": "u" * 201},
        track("Product Viewed", "ok"),
    ]
    response = post_messages(client, store.write_key, batch)
    assert response.status_code == 200
    errors = response.get_json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [
        (0, ""),
        (1, "event"),
        (2, "groupId"),
        (3, "previousId"),
        (4, "userId"),
        (5, "type"),
        (6, "type"),
        (7, "properties"),
        (8, "userId"),
    ]
    assert message_ids(db, store.id) == ["ok"]


def test_a_batch_of_only_invalid_messages_is_a_400_listing_them(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    response = post_messages(client, store.write_key, [{"type": "track", "userId": "u1"}, "x"])
    body = assert_json_error(response, 400)
    assert body["error"].startswith("message 0: event:")
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(0, "event"), (1, "")]
    assert stored(db, store.id) == []


def test_a_nul_escape_is_refused_with_its_path_and_nothing_else_is_lost(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a "\u0000" escape deep inside one message (PostgreSQL can store it in neither text nor jsonb)
    body = (
        b'{"batch": [{"type": "track", "event": "e", "userId": "u1", "messageId": "bad",'
        b' "properties": {"items": [{"sku": "a\\u0000b"}]}},'
        b' {"type": "track", "event": "e", "userId": "u1", "messageId": "good"}]}'
    )
    # When posted
    response = post_raw(client, body, write_key=store.write_key)
    # Then the message is refused with the path, the other one is stored
    assert response.status_code == 200
    (error,) = response.get_json()["errors"]
    assert (error["index"], error["field"]) == (0, "properties.items[0].sku")
    assert "NUL" in error["reason"]
    assert message_ids(db, store.id) == ["good"]


def test_a_nul_escape_anywhere_never_reaches_the_store(client: FlaskClient, db: Database, store: NewStore) -> None:
    cases: list[tuple[str, Message, dict[str, Any]]] = [
        ("userId", {**track("Product Viewed", "m1"), "userId": "u\x00"}, {}),
        ("event", {**track("Product Viewed", "m1"), "event": "\x00"}, {}),
        ("properties.a[0]", {**track("Product Viewed", "m1"), "properties": {"a": ["\x00"]}}, {}),
        ("context.\x00", {**track("Product Viewed", "m1"), "context": {"\x00": 1}}, {}),
        ("context.ip", track("Product Viewed", "m1"), {"context": {"ip": "\x00"}}),
        ("messageId", track("Product Viewed", "m\x00"), {}),
    ]
    for path, message, envelope in cases:
        response = post_raw(client, batch_body([message], **envelope), write_key=store.write_key)
        body = assert_json_error(response, 400)
        assert body["errors"][0]["field"] == path
        assert "NUL" in body["errors"][0]["reason"]
    assert stored(db, store.id) == []


@pytest.mark.parametrize("where", ["userId", "event", "property", "key"])
def test_a_lone_surrogate_escape_is_refused_per_message_not_a_500(
    client: FlaskClient, db: Database, store: NewStore, where: str
) -> None:
    for n, escape in enumerate([b"\\ud800", b"\\uDFFF", b"\\udc00x", b"x\\ud83d", b"\\ude00\\ud83d"]):
        # Given a lone UTF-16 surrogate escape (valid JSON syntax, but no Unicode text) next to a valid message
        value = b'"' + escape + b'"'
        bad = {
            "userId": b'{"type": "track", "event": "e", "userId": ' + value + b"}",
            "event": b'{"type": "track", "event": ' + value + b', "userId": "u1"}',
            "property": b'{"type": "track", "event": "e", "userId": "u1", "properties": {"a": [' + value + b"]}}",
            "key": b'{"type": "track", "event": "e", "userId": "u1", "properties": {' + value + b": 1}}",
        }[where]
        good = b'{"type": "track", "event": "e", "userId": "u1", "messageId": "good%d"}' % n
        # When posted, plain and gzipped
        for encoding in (None, "gzip"):
            body = b'{"batch": [' + bad + b", " + good + b"]}"
            response = post_raw(
                client, gzip.compress(body) if encoding else body, write_key=store.write_key, encoding=encoding
            )
            # Then only that message is refused
            assert response.status_code == 200, (escape, response.get_json())
            (error,) = response.get_json()["errors"]
            assert error["index"] == 0
            expected = {"userId": "userId", "event": "event", "property": "properties.a[0]"}.get(where)
            assert error["field"] == expected if expected else error["field"].startswith("properties.")
            assert "surrogate" in error["reason"] or "unicode" in error["reason"]
    assert message_ids(db, store.id) == [f"good{n}" for n in range(5)]


def test_a_surrogate_pair_escape_is_one_emoji_and_is_stored(client: FlaskClient, db: Database, store: NewStore) -> None:
    body = b'{"batch": [{"type": "track", "event": "\\ud83d\\ude00", "userId": "u1", "messageId": "m1"}]}'
    response = post_raw(client, body, write_key=store.write_key)
    assert response.status_code == 200
    assert [event.name for event in stored(db, store.id)] == ["\N{GRINNING FACE}"]


def test_non_ascii_text_round_trips(client: FlaskClient, db: Database, store: NewStore) -> None:
    message = track("Produkt angesehen", "m1", title="Grüner Tee 緑茶 \N{HOT BEVERAGE}", price=9.5)
    response = post_messages(client, store.write_key, [message])
    assert response.status_code == 200
    assert stored(db, store.id)[0].payload == message


# --- single-message endpoints ---------------------------------------------------------------------------------


SINGLE: dict[str, Message] = {
    "track": {"event": "Product Viewed", "userId": "u1"},
    "identify": {"userId": "u1", "traits": {"email": "ann@example.com"}},
    "page": {"anonymousId": "a1", "name": "Home"},
    "screen": {"anonymousId": "a1", "name": "Cart"},
    "group": {"userId": "u1", "groupId": "g1"},
    "alias": {"previousId": "a1", "userId": "u1"},
}


def test_a_single_endpoint_sets_the_type_from_its_path(client: FlaskClient, db: Database, store: NewStore) -> None:
    for kind in MESSAGE_TYPES:
        # Given a message without type, and one with a contradicting type, posted to /v1/<kind>
        for suffix, declared in (("none", None), ("other", "identify" if kind != "identify" else "track")):
            message = {**SINGLE[kind], "messageId": f"{kind}-{suffix}"}
            if declared:
                message["type"] = declared
            response = post_messages(client, store.write_key, message, path=f"/v1/{kind}")
            assert response.status_code == 200, (kind, response.get_json())
            assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 0}
    # Then each is stored as the kind its path names
    rows = stored(db, store.id)
    assert [(row.message_id, row.type, row.payload["type"]) for row in rows] == [
        (f"{kind}-{suffix}", kind, kind) for kind in MESSAGE_TYPES for suffix in ("none", "other")
    ]


def test_an_invalid_single_message_is_a_400_naming_the_field(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    response = post_messages(client, store.write_key, {"userId": "u1"}, path="/v1/group")
    body = assert_json_error(response, 400)
    assert body["error"].startswith("groupId:")
    assert body["errors"][0]["field"] == "groupId"
    assert stored(db, store.id) == []


def test_a_batch_posted_to_a_single_endpoint_is_not_a_message(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    response = post_messages(client, store.write_key, {"batch": [track("Product Viewed", "m1")]}, path="/v1/track")
    assert_json_error(response, 400)
    assert stored(db, store.id) == []


def test_batch_envelope_context_is_merged_into_messages(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given an envelope context and one message with its own ip
    body = batch_body(
        [track("Product Viewed", "m1"), {**track("Product Viewed", "m2"), "context": {"ip": "198.51.100.1"}}],
        context={"ip": "203.0.113.7"},
        integrations={"All": False},
    )
    response = post_raw(client, body, write_key=store.write_key)
    assert response.status_code == 200
    rows = {row.message_id: row.payload for row in stored(db, store.id)}
    # Then a message inherits the envelope, and a message's own context wins
    assert rows["m1"]["context"]["ip"] == "203.0.113.7"
    assert rows["m1"]["integrations"] == {"All": False}
    assert rows["m2"]["context"]["ip"] == "198.51.100.1"


# --- authentication -------------------------------------------------------------------------------------------


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


BAD_AUTH: dict[str, dict[str, str]] = {
    "missing": {},
    "unknown-key": basic_auth("wk_not-a-real-key"),
    "wrong-prefix": basic_auth("not-even-a-write-key"),
    "too-long": basic_auth("wk_" + "x" * 300),
    "malformed-base64": {"Authorization": "Basic !!!not base64!!!"},
    "truncated-base64": {"Authorization": "Basic d2tfYWJj="},
    "empty-basic": {"Authorization": "Basic"},
    "non-utf8-credentials": _basic(b"\xff\xfe:"),
    "empty-user-name": _basic(b":wk_password-only"),
    "unknown-scheme": {"Authorization": "Digest username=wk_abc"},
}


def test_requests_without_a_valid_write_key_are_401(client: FlaskClient, db: Database, store: NewStore) -> None:
    for name, headers in BAD_AUTH.items():
        for path in ("/v1/batch", "/v1/track"):
            body = batch_body([track("Product Viewed", "m1")]) if path == "/v1/batch" else b"{}"
            response = client.post(path, data=body, headers={"Content-Type": "application/json", **headers})
            assert response.status_code == 401, name
            assert_json_error(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert stored(db, store.id) == []


def test_a_write_key_sent_as_bearer_token_is_401(client: FlaskClient, db: Database, store: NewStore) -> None:
    response = client.post(
        "/v1/track",
        json=track("Product Viewed", "m1"),
        headers={"Authorization": f"Bearer {store.write_key}"},
    )
    assert_json_error(response, 401)
    assert stored(db, store.id) == []


def test_a_write_key_sent_as_password_only_is_401(client: FlaskClient, db: Database, store: NewStore) -> None:
    response = client.post(
        "/v1/track", json=track("Product Viewed", "m1"), headers=_basic(f"someone:{store.write_key}".encode())
    )
    assert_json_error(response, 401)


def test_a_write_key_with_a_password_is_accepted(client: FlaskClient, db: Database, store: NewStore) -> None:
    response = client.post(
        "/v1/track", json=track("Product Viewed", "m1"), headers=_basic(f"{store.write_key}:ignored".encode())
    )
    assert response.status_code == 200
    assert message_ids(db, store.id) == ["m1"]


def test_each_write_key_stores_into_its_own_store_only(
    client: FlaskClient, db: Database, store: NewStore, other_store: NewStore
) -> None:
    # Given two stores
    # When store A's key posts a message
    response = post_messages(client, store.write_key, [track("Product Viewed", "a1")])
    assert response.status_code == 200
    # Then store A has it and store B sees nothing
    assert message_ids(db, store.id) == ["a1"]
    assert stored(db, other_store.id) == []
    # And store B's key stores into store B only
    post_messages(client, other_store.write_key, [track("Product Viewed", "b1")], path="/v1/batch")
    assert message_ids(db, store.id) == ["a1"]
    assert message_ids(db, other_store.id) == ["b1"]


def test_authentication_comes_before_reading_the_body(client: FlaskClient, store: NewStore) -> None:
    response = post_raw(client, b"not json", write_key=None)
    assert_json_error(response, 401)


# --- gzip and encodings ---------------------------------------------------------------------------------------


def test_a_gzip_body_is_accepted(client: FlaskClient, db: Database, store: NewStore) -> None:
    response = post_messages(client, store.write_key, [track("Product Viewed", "m1")], gzip=True)
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 0}
    single = post_messages(client, store.write_key, track("Cart Viewed", "m2"), path="/v1/track", gzip=True)
    assert single.status_code == 200
    assert message_ids(db, store.id) == ["m1", "m2"]


def test_content_encoding_names_are_read_case_insensitively(client: FlaskClient, db: Database, store: NewStore) -> None:
    for encoding in ("GZIP", " gzip ", "Identity"):
        body = batch_body([track("Product Viewed", encoding)])
        if "gzip" in encoding.lower():
            body = gzip.compress(body)
        response = post_raw(client, body, write_key=store.write_key, encoding=encoding)
        assert response.status_code == 200, encoding
    assert message_ids(db, store.id) == ["GZIP", " gzip ", "Identity"]


def test_a_gzip_body_over_500_kb_is_accepted_up_to_the_limit(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a batch just under 500 KB once decompressed, far smaller compressed
    batch = [padded_track(f"m{i}", 30 * 1024) for i in range(16)]
    body = batch_body(batch)
    assert MAX_MESSAGE_BYTES < len(body) < MAX_BATCH_BYTES
    response = post_raw(client, gzip.compress(body), write_key=store.write_key, encoding="gzip")
    assert response.status_code == 200
    assert response.get_json()["accepted"] == 16


def test_a_truncated_gzip_body_is_400(client: FlaskClient, db: Database, store: NewStore) -> None:
    compressed = gzip.compress(batch_body([track("Product Viewed", f"m{i}") for i in range(20)]))
    response = post_raw(client, compressed[: len(compressed) // 2], write_key=store.write_key, encoding="gzip")
    body = assert_json_error(response, 400)
    assert "gzip" in body["error"]
    assert stored(db, store.id) == []


def test_a_gzip_body_missing_only_its_trailer_is_400(client: FlaskClient, db: Database, store: NewStore) -> None:
    compressed = gzip.compress(batch_body([track("Product Viewed", "m1")]))
    response = post_raw(client, compressed[:-8], write_key=store.write_key, encoding="gzip")
    assert_json_error(response, 400)
    assert stored(db, store.id) == []


def test_a_body_that_is_not_gzip_but_says_so_is_400(client: FlaskClient, store: NewStore) -> None:
    for body in (b'{"batch": []}', b"", b"\x1f\x8b", b"\x1f\x8b\x08\x00garbage", gzip.compress(b"{}")[:-1]):
        for path in ("/v1/batch", "/v1/track"):
            response = post_raw(client, body, write_key=store.write_key, encoding="gzip", path=path)
            assert response.status_code == 400, body
            assert_json_error(response, 400)


def test_a_gzip_bomb_is_413_without_being_inflated(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given 50 MB of zeros compressed to about 50 KB
    bomb = gzip.compress(b"0" * (50 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < MAX_REQUEST_BYTES
    # When posted
    started = time.monotonic()
    response = post_raw(client, bomb, write_key=store.write_key, encoding="gzip")
    elapsed = time.monotonic() - started
    # Then it is refused quickly (only the first 500 KB are ever inflated)
    body = assert_json_error(response, 413)
    assert "500 KB" in body["error"]
    assert elapsed < 1.0
    assert stored(db, store.id) == []


def test_a_gzip_bomb_on_a_single_endpoint_is_refused_at_32_kb(client: FlaskClient, store: NewStore) -> None:
    bomb = gzip.compress(b" " * (5 * 1024 * 1024))
    response = post_raw(client, bomb, write_key=store.write_key, path="/v1/track", encoding="gzip")
    body = assert_json_error(response, 413)
    assert "32 KB" in body["error"]


def test_an_unsupported_content_encoding_is_415(client: FlaskClient, db: Database, store: NewStore) -> None:
    for encoding in ("br", "deflate", "compress", "zstd", "gzip, br", "x-gzip"):
        body = batch_body([track("Product Viewed", "m1")])
        response = post_raw(client, body, write_key=store.write_key, encoding=encoding)
        assert response.status_code == 415, encoding
        assert_json_error(response, 415)
    assert stored(db, store.id) == []


# --- size limits ----------------------------------------------------------------------------------------------


def test_a_batch_over_500_kb_is_413(client: FlaskClient, db: Database, store: NewStore) -> None:
    body = batch_body([padded_track(f"m{i}", 30 * 1024) for i in range(18)])
    assert MAX_BATCH_BYTES < len(body) < MAX_REQUEST_BYTES
    response = post_raw(client, body, write_key=store.write_key)
    body_json = assert_json_error(response, 413)
    assert "500 KB" in body_json["error"]
    assert stored(db, store.id) == []


def test_a_single_message_over_32_kb_is_413(client: FlaskClient, db: Database, store: NewStore) -> None:
    message = padded_track("m1", MAX_MESSAGE_BYTES + 10)
    response = post_messages(client, store.write_key, message, path="/v1/track")
    body = assert_json_error(response, 413)
    assert "32 KB" in body["error"]
    assert stored(db, store.id) == []


def test_a_single_message_just_under_32_kb_is_accepted(client: FlaskClient, db: Database, store: NewStore) -> None:
    message = padded_track("m1", MAX_MESSAGE_BYTES - 100)
    response = post_messages(client, store.write_key, message, path="/v1/track")
    assert response.status_code == 200
    assert message_ids(db, store.id) == ["m1"]


def test_a_40_kb_message_inside_a_batch_is_refused_alone(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given a batch with one 40 KB message between small ones
    batch = [track("Product Viewed", "m0"), padded_track("big", 40 * 1024), track("Product Viewed", "m2")]
    # When posted
    response = post_messages(client, store.write_key, batch)
    # Then that message is refused by index and the others are stored
    assert response.status_code == 200
    body = response.get_json()
    assert body["accepted"] == 2
    (error,) = body["errors"]
    assert (error["index"], error["field"], error["messageId"]) == (1, "", "big")
    assert "32 KB" in error["reason"]
    assert message_ids(db, store.id) == ["m0", "m2"]


def test_a_message_of_non_ascii_text_under_32_kb_is_accepted_in_a_large_batch(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a 24 KB (UTF-8) message of "€" in a batch over 32 KB (so sizes are checked)
    euros = track("Product Viewed", "euros", note="\N{EURO SIGN}" * 8000)
    batch = [euros, padded_track("filler", 20 * 1024)]
    body = json.dumps({"batch": batch}, ensure_ascii=False).encode()
    assert len(body) > MAX_MESSAGE_BYTES
    # When posted
    response = post_raw(client, body, write_key=store.write_key)
    # Then it is accepted, as it would be on its own
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"success": True, "accepted": 2, "duplicates": 0}
    assert sorted(message_ids(db, store.id)) == ["euros", "filler"]


def test_a_raw_request_over_600_kb_is_413_json(client: FlaskClient, store: NewStore) -> None:
    body = batch_body([padded_track(f"m{i}", 30 * 1024) for i in range(22)])
    assert len(body) > MAX_REQUEST_BYTES
    for path in ("/v1/batch", "/v1/track"):
        response = post_raw(client, body, write_key=store.write_key, path=path)
        body_json = assert_json_error(response, 413)
        assert "too large" in body_json["error"]


def test_a_gzip_request_over_600_kb_raw_is_413_json(client: FlaskClient, store: NewStore) -> None:
    response = post_raw(client, b"\x1f\x8b" + b"\x00" * MAX_REQUEST_BYTES, write_key=store.write_key, encoding="gzip")
    assert_json_error(response, 413)


# --- hostile or broken input never yields a 500 ---------------------------------------------------------------

MEGABYTE_STRING = "x" * (1024 * 1024)

BAD_BODIES: dict[str, bytes] = {
    "event-number": batch_body([{"type": "track", "event": 5, "userId": "u1"}]),
    "properties-string": batch_body([{"type": "track", "event": "e", "userId": "u1", "properties": "x"}]),
    "batch-object": b'{"batch": {}}',
    "batch-string": b'{"batch": "x"}',
    "batch-null": b'{"batch": null}',
    "batch-missing": b'{"messages": []}',
    "unknown-type": batch_body([{"type": "purchase", "userId": "u1"}]),
    "megabyte-string-event": json.dumps({"batch": [{"type": "track", "event": MEGABYTE_STRING}]}).encode(),
    "400kb-string-property": json.dumps(
        {"batch": [{"type": "track", "event": "e", "userId": "u1", "properties": {"s": "x" * 400_000}}]}
    ).encode(),
    "not-json": b"hello",
    "json-array": b'[{"type": "track", "event": "e", "userId": "u1"}]',
    "json-string": b'"batch"',
    "json-null": b"null",
    "empty": b"",
    "whitespace": b"   \n ",
    "invalid-utf8": b'{"batch": [{"type": "track", "event": "\xff\xfe", "userId": "u1"}]}',
    "utf8-encoded-surrogate": (
        b'{"batch": [{"type": "track", "event": "e", "userId": "u1", "properties": {"a": "\xed\xa0\x80"}}]}'
    ),
    "utf16": '{"batch": [{"type": "track", "event": "\\u0000", "userId": "u1"}]}'.encode("utf-16"),
    "nan": b'{"batch": [{"type": "track", "event": "e", "userId": "u1", "properties": {"p": NaN}}]}',
    "infinity": b'{"batch": [{"type": "track", "event": "e", "userId": "u1", "properties": {"p": -Infinity}}]}',
    "1e400": b'{"batch": [{"type": "track", "event": "e", "userId": "u1", "properties": {"p": 1e400}}]}',
    "deep-nesting": b'{"batch": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deep-object-nesting": b'{"batch": [' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"]}",
    "huge-integer": b'{"batch": [{"type": "track", "event": "e", "userId": 1' + b"0" * 5000 + b"}]}",
    "raw-nul-byte": b'{"batch": [{"type": "track", "event": "a\x00b", "userId": "u1"}]}',
    "trailing-garbage": b'{"batch": []} {"batch": []}',
    "timestamp-out-of-range": batch_body(
        [{"type": "track", "event": "e", "userId": "u1", "timestamp": "9999-12-31T23:59:59-10:00"}]
    ),
    "timestamp-number-huge": batch_body([{"type": "track", "event": "e", "userId": "u1", "timestamp": 1e300}]),
}


def test_bad_bodies_are_refused_with_json_and_never_a_500(client: FlaskClient, db: Database, store: NewStore) -> None:
    for name, raw in BAD_BODIES.items():
        for encoding in (None, "gzip"):
            body = gzip.compress(raw) if encoding else raw
            response = post_raw(client, body, write_key=store.write_key, encoding=encoding)
            assert 400 <= response.status_code < 500, (name, encoding, response.status_code, response.get_data()[:300])
            assert_json_error(response, response.status_code)
    assert stored(db, store.id) == []


def test_a_non_object_envelope_context_is_ignored(client: FlaskClient, db: Database, store: NewStore) -> None:
    body = b'{"batch": [{"type": "track", "event": "e", "userId": "u1", "messageId": "m1"}], "context": [1]}'
    response = post_raw(client, body, write_key=store.write_key)
    assert response.status_code == 200
    assert "context" not in stored(db, store.id)[0].payload


def test_bad_single_messages_are_refused_with_json_and_never_a_500(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    bodies = [
        b"[]",
        b"5",
        b"",
        b"{",
        b"{}",
        b'{"userId": {"a": 1}}',
        b'{"userId": "\\u0000"}',
        b'{"userId": "\\udc00"}',
    ]
    for kind in MESSAGE_TYPES:
        for body in bodies:
            response = post_raw(client, body, write_key=store.write_key, path=f"/v1/{kind}")
            assert response.status_code == 400, (kind, body, response.get_data()[:300])
            assert_json_error(response, 400)
    assert stored(db, store.id) == []


def test_nesting_near_the_recursion_limit_is_stored_or_refused_never_a_500(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    filler = json.dumps(padded_track("filler", MAX_MESSAGE_BYTES)).encode()  # a body over 32 KB: sizes are checked
    for depth in (200, 500, 800, 900, 950, 975, 990, 1000, 1100, 2000):
        # Given properties nested below, at and above what the parser takes
        for nested in (b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth + b"]" * depth):
            message = b'{"type": "track", "event": "e", "userId": "u1", "properties": {"p": ' + nested + b"}}"
            for body in (b'{"batch": [' + message + b"]}", b'{"batch": [' + message + b", " + filler + b"]}"):
                # When posted
                response = post_raw(client, body, write_key=store.write_key)
                # Then the answer is a JSON 200 or 4xx
                assert response.status_code < 500, (depth, response.get_data()[:300])
                assert isinstance(response.get_json(), dict)


def test_the_nul_escape_in_a_single_message_is_a_400_naming_the_field(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    response = post_raw(
        client,
        b'{"event": "e", "userId": "u1", "traits": {"x": "\\u0000"}}',
        write_key=store.write_key,
        path="/v1/track",
    )
    body = assert_json_error(response, 400)
    assert body["errors"][0]["field"] == "traits.x"
    assert stored(db, store.id) == []


# --- routing and documents ------------------------------------------------------------------------------------


def test_other_methods_on_ingest_paths_are_405_json(client: FlaskClient, store: NewStore) -> None:
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        for path in ("/v1/batch", *(f"/v1/{kind}" for kind in MESSAGE_TYPES)):
            response = client.open(path, method=method, headers=basic_auth(store.write_key))
            assert response.status_code == 405, (method, path)
            assert_json_error(response, 405)
            assert "POST" in response.headers["Allow"]


def test_an_unknown_message_path_is_404_json(client: FlaskClient, store: NewStore) -> None:
    response = post_messages(client, store.write_key, track("Product Viewed", "m1"), path="/v1/purchase")
    assert_json_error(response, 404)


def test_the_openapi_document_is_valid_and_lists_every_ingestion_path(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    expected = {"/v1/batch", *(f"/v1/{kind}" for kind in MESSAGE_TYPES)}
    assert expected <= set(document["paths"])
    for path in expected:
        operation = document["paths"][path]["post"]
        assert operation["security"] == [{"writeKey": []}]
        assert {"200", "400", "401", "413", "415"} <= set(operation["responses"])
    schemas = document["components"]["schemas"]
    assert {"Track", "Identify", "Page", "Screen", "Group", "Alias", "Batch", "MessageError"} <= set(schemas)
    assert "event" in schemas["Track"]["required"]
    assert "groupId" in schemas["Group"]["required"]
    assert {"previousId", "userId"} <= set(schemas["Alias"]["required"])


def admin_operations(app: Flask) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(OpenAPI path, method, [(argument, converter)]) of every /admin/api rule of ``app``, read off its url_map."""
    argument = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
    found = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/admin/api"):
            path = argument.sub(lambda match: "{" + match[2] + "}", rule.rule)
            arguments = [(name, converter or "default") for converter, name in argument.findall(rule.rule)]
            found += [
                (path, method.lower(), arguments) for method in rule.methods or () if method not in {"HEAD", "OPTIONS"}
            ]
    return found


def test_the_openapi_document_lists_every_admin_route_with_each_method(app: Flask, client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    validate(document)
    operations = admin_operations(app)
    assert len(operations) > 20  # segments, RFM, audit, erasures, consent, full syncs, dead letters, contacts, stats
    for path, method, arguments in operations:
        assert method in document["paths"].get(path, {}), f"{method.upper()} {path} is not in /openapi.json"
        operation = document["paths"][path][method]
        assert operation["summary"], f"{method.upper()} {path}: its view needs a docstring"
        assert operation["security"] == [{"adminToken": []}]
        responses = set(operation["responses"])
        assert {"401", "403"} <= responses
        assert len(responses & {"200", "201", "202", "204"}) == 1, (path, method, responses)
        if arguments:
            assert "404" in responses, (path, method)
        parameters = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
        for name, converter in arguments:
            assert parameters[name]["required"] is True
            assert parameters[name]["schema"]["type"] == ("integer" if converter == "int" else "string")
        if "requestBody" in operation or any(p["in"] == "query" for p in operation.get("parameters", [])):
            assert "400" in responses, (path, method)
    documented_admin = {
        (path, method) for path, item in document["paths"].items() if path.startswith("/admin/api") for method in item
    }
    assert documented_admin == {(path, method) for path, method, _ in operations}  # nothing the app does not serve
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_the_openapi_document_says_what_each_admin_endpoint_answers(app: Flask, client: FlaskClient) -> None:
    assert set(OPERATIONS) <= set(app.view_functions)  # a renamed endpoint would lose its entry silently
    paths = client.get("/openapi.json").get_json()["paths"]
    # The hand-written entries stay.
    assert paths["/admin/api/contacts"]["get"]["operationId"] == "searchContacts"
    assert {p["name"] for p in paths["/admin/api/contacts"]["get"]["parameters"]} == {"email", "user_id"}
    assert paths["/admin/api/stats"]["get"]["operationId"] == "storeStats"
    # Statuses other than 200, read off the views.
    assert "201" in paths["/admin/api/segments"]["post"]["responses"]
    assert "202" in paths["/admin/api/erasures"]["post"]["responses"]
    assert {"202", "404", "409"} <= set(paths["/admin/api/sync/full"]["post"]["responses"])
    deleted = paths["/admin/api/segments/{segment_id}"]["delete"]["responses"]["204"]
    assert "content" not in deleted
    # Streamed exports carry their media types.
    export = paths["/admin/api/audit/export"]["get"]
    assert set(export["responses"]["200"]["content"]) == {"text/csv; charset=utf-8", "application/json"}
    assert {p["name"] for p in export["parameters"]} >= {"format", "since", "until", "contact"}
    members = paths["/admin/api/segments/{segment_id}/members.csv"]["get"]["responses"]["200"]
    assert set(members["content"]) == {"text/csv"}
    # Bodies, query parameters and the roles the view requires.
    mirror = paths["/admin/api/segments/{segment_id}/mirror/{esp}"]
    assert mirror["put"]["requestBody"]["required"] is False  # no body: the defaults
    assert "requestBody" not in mirror["delete"]
    assert "requestBody" not in paths["/admin/api/segments/{segment_id}/evaluate"]["post"]
    assert paths["/admin/api/rfm/runs"]["get"]["parameters"][0]["schema"]["maximum"] == 1000
    assert "Roles: compliance." in paths["/admin/api/audit/verify"]["get"]["description"]


def test_an_admin_route_added_to_an_app_is_in_that_apps_document_only(app: Flask, runtime: Runtime) -> None:
    widgets = Blueprint("widgets", __name__, url_prefix="/admin/api/widgets")

    @widgets.post("/<int:widget_id>/polish")
    def polish(widget_id: int) -> str:
        """Polish a widget."""
        return ""

    app.register_blueprint(widgets)
    other = create_app(runtime=runtime)
    operation = app.test_client().get("/openapi.json").get_json()["paths"]["/admin/api/widgets/{widget_id}/polish"]
    assert operation["post"]["summary"] == "Polish a widget."
    assert operation["post"]["operationId"] == "widgetsPolish"
    assert {"200", "400", "404", "401", "403"} <= set(operation["post"]["responses"])
    # Built per app: the first app's document is not served by the next one, nor the other way round.
    assert "/admin/api/widgets/{widget_id}/polish" not in other.test_client().get("/openapi.json").get_json()["paths"]


def test_healthz_is_200(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
