"""Message validation and JSON parsing of the ingestion API, without a database.

Each message is validated on its own: a refused one names its index, the offending field and why.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from connector.ingest.messages import (
    MAX_ID_LENGTH,
    MAX_MESSAGE_BYTES,
    Accepted,
    MessageError,
    parse_json,
    validate_messages,
)

RECEIVED_AT = dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.UTC)


def validate(
    items: list[Any], *, check_size: bool = True, check_nul: bool = True, defaults: dict[str, Any] | None = None
) -> tuple[list[Accepted], list[MessageError]]:
    return validate_messages(
        items, received_at=RECEIVED_AT, check_size=check_size, check_nul=check_nul, defaults=defaults
    )


def accept_one(item: Any, **kwargs: Any) -> Accepted:
    accepted, errors = validate([item], **kwargs)
    assert errors == [], errors
    assert len(accepted) == 1
    return accepted[0]


def refuse_one(item: Any, **kwargs: Any) -> MessageError:
    accepted, errors = validate([item], **kwargs)
    assert accepted == [], accepted
    assert len(errors) == 1
    assert errors[0].index == 0
    return errors[0]


VALID: dict[str, dict[str, Any]] = {
    "track": {"type": "track", "event": "Product Viewed", "userId": "u1", "properties": {"product_id": "p1"}},
    "identify": {"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com"}},
    "page": {"type": "page", "anonymousId": "a1", "name": "Home", "properties": {"path": "/"}},
    "screen": {"type": "screen", "anonymousId": "a1", "name": "Cart"},
    "group": {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "ACME"}},
    "alias": {"type": "alias", "previousId": "a1", "userId": "u1"},
}


# --- Each type's required fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VALID))
def test_a_minimal_valid_message_of_each_type_is_accepted(kind: str) -> None:
    accepted = accept_one({**VALID[kind], "messageId": f"m-{kind}"})
    assert accepted.type == kind
    assert accepted.message_id == f"m-{kind}"
    assert accepted.payload["type"] == kind


def test_accepted_message_carries_its_name_and_people() -> None:
    track = accept_one({**VALID["track"], "anonymousId": "a9"})
    assert (track.name, track.user_id, track.anonymous_id) == ("Product Viewed", "u1", "a9")
    page = accept_one(VALID["page"])
    assert (page.name, page.user_id, page.anonymous_id) == ("Home", None, "a1")
    identify = accept_one(VALID["identify"])
    assert identify.name is None


@pytest.mark.parametrize(
    ("kind", "missing"),
    [("track", "event"), ("group", "groupId"), ("alias", "previousId"), ("alias", "userId")],
)
def test_a_message_without_a_required_field_is_refused_naming_it(kind: str, missing: str) -> None:
    message = {key: value for key, value in VALID[kind].items() if key != missing}
    error = refuse_one(message)
    assert error.field == missing
    assert "required" in error.reason.lower()


@pytest.mark.parametrize("kind", ["track", "identify", "page", "screen", "group"])
def test_a_message_without_user_id_or_anonymous_id_is_refused(kind: str) -> None:
    message = {key: value for key, value in VALID[kind].items() if key not in ("userId", "anonymousId")}
    error = refuse_one(message)
    assert error.field == "userId"
    assert error.reason == "userId or anonymousId is required"


@pytest.mark.parametrize("person", ["userId", "anonymousId"])
def test_either_user_id_or_anonymous_id_alone_is_enough(person: str) -> None:
    accepted = accept_one({"type": "track", "event": "Cart Viewed", person: "p1"})
    assert (accepted.user_id or accepted.anonymous_id) == "p1"


def test_inventory_updated_needs_no_person() -> None:
    accepted = accept_one({"type": "track", "event": "Inventory Updated", "properties": {"product_id": "p1"}})
    assert accepted.user_id is None and accepted.anonymous_id is None
    assert accepted.name == "Inventory Updated"


def test_other_track_events_still_need_a_person() -> None:
    error = refuse_one({"type": "track", "event": "Inventory Updated!"})
    assert error.field == "userId"


@pytest.mark.parametrize("field", ["userId", "anonymousId", "messageId"])
def test_integer_ids_are_coerced_to_strings(field: str) -> None:
    message = {**VALID["track"], field: 12345}
    accepted = accept_one(message)
    value = {"userId": accepted.user_id, "anonymousId": accepted.anonymous_id, "messageId": accepted.message_id}
    assert value[field] == "12345"


@pytest.mark.parametrize("value", [True, 1.5, ["u1"], {"id": "u1"}])
def test_non_string_non_integer_ids_are_refused(value: Any) -> None:
    error = refuse_one({**VALID["track"], "userId": value})
    assert error.field == "userId"


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("track", "userId"),
        ("track", "anonymousId"),
        ("track", "messageId"),
        ("track", "event"),
        ("group", "groupId"),
        ("alias", "previousId"),
        ("page", "name"),
    ],
)
def test_ids_and_names_over_200_characters_are_refused_naming_the_field(kind: str, field: str) -> None:
    # Given a value one character over the limit
    message = {**VALID[kind], field: "x" * (MAX_ID_LENGTH + 1)}
    # When validated
    error = refuse_one(message)
    # Then the error names that field and says why
    assert error.field == field
    assert "200" in error.reason


def test_ids_of_exactly_200_characters_are_accepted() -> None:
    accepted = accept_one({**VALID["track"], "userId": "u" * MAX_ID_LENGTH, "messageId": "m" * MAX_ID_LENGTH})
    assert accepted.user_id == "u" * MAX_ID_LENGTH
    assert accepted.message_id == "m" * MAX_ID_LENGTH


@pytest.mark.parametrize("field", ["userId", "messageId", "event"])
def test_empty_ids_are_refused(field: str) -> None:
    error = refuse_one({**VALID["track"], field: ""})
    assert error.field == field


def test_a_too_long_message_id_is_echoed_in_the_error() -> None:
    error = refuse_one({**VALID["track"], "messageId": "retry-me", "event": 5})
    assert error.message_id == "retry-me"
    assert error.as_dict() == {"index": 0, "field": "event", "reason": error.reason, "messageId": "retry-me"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event", 5),
        ("event", None),
        ("properties", "x"),
        ("properties", [1, 2]),
        ("traits", "x"),
        ("context", "x"),
        ("context", None),
        ("integrations", 3),
        ("timestamp", "yesterday"),
        ("timestamp", True),
        ("category", 7),
    ],
)
def test_known_fields_of_the_wrong_type_are_refused_naming_the_field(field: str, value: Any) -> None:
    kind = {"traits": "identify", "category": "page"}.get(field, "track")
    error = refuse_one({**VALID[kind], field: value})
    assert error.field == field


def test_unknown_fields_are_kept_in_the_payload() -> None:
    accepted = accept_one({**VALID["track"], "version": 2, "custom": {"a": [1, 2]}})
    assert accepted.payload["custom"] == {"a": [1, 2]}


# --- type -----------------------------------------------------------------------------------------------------


def test_a_message_without_a_type_is_refused() -> None:
    error = refuse_one({"event": "Product Viewed", "userId": "u1"})
    assert error.field == "type"
    assert "required" in error.reason
    assert "track" in error.reason


@pytest.mark.parametrize("value", ["Track", "purchase", "", 5, None, ["track"], {"t": 1}])
def test_an_unknown_type_is_refused(value: Any) -> None:
    error = refuse_one({"type": value, "event": "Product Viewed", "userId": "u1"})
    assert error.field == "type"
    assert "unknown type" in error.reason


@pytest.mark.parametrize(
    ("item", "json_type"),
    [
        (5, "number"),
        (1.5, "number"),
        ("track", "string"),
        ([VALID["track"]], "array"),
        (None, "null"),
        (True, "boolean"),
    ],
)
def test_a_non_object_message_is_refused_with_its_json_type(item: Any, json_type: str) -> None:
    error = refuse_one(item)
    assert error.field == ""
    assert error.reason == f"a message must be a JSON object, got {json_type}"


def test_one_bad_message_does_not_take_the_others_down() -> None:
    # Given a batch with invalid messages between valid ones
    items: list[Any] = [VALID["track"], 5, {**VALID["identify"], "traits": 1}, VALID["alias"], {"type": "nope"}]
    # When validated
    accepted, errors = validate(items)
    # Then the valid ones are accepted and each invalid one is named by its index
    assert [a.type for a in accepted] == ["track", "alias"]
    assert [(e.index, e.field) for e in errors] == [(1, ""), (2, "traits"), (4, "type")]


def test_an_empty_batch_accepts_and_refuses_nothing() -> None:
    assert validate([]) == ([], [])


# --- timestamp ------------------------------------------------------------------------------------------------


def test_a_timestamp_without_offset_is_read_as_utc() -> None:
    accepted = accept_one({**VALID["track"], "timestamp": "2024-05-01T12:30:00"})
    assert accepted.timestamp == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    assert accepted.timestamp.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("timestamp", "utc"),
    [
        ("2024-05-01T12:30:00+02:00", dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC)),
        ("2024-05-01T12:30:00-07:30", dt.datetime(2024, 5, 1, 20, 0, tzinfo=dt.UTC)),
        ("2024-05-01T23:30:00-05:00", dt.datetime(2024, 5, 2, 4, 30, tzinfo=dt.UTC)),
        ("2024-05-01T12:30:00.123Z", dt.datetime(2024, 5, 1, 12, 30, 0, 123000, tzinfo=dt.UTC)),
    ],
)
def test_a_timestamp_with_an_offset_is_converted_to_utc(timestamp: str, utc: dt.datetime) -> None:
    accepted = accept_one({**VALID["track"], "timestamp": timestamp})
    assert accepted.timestamp == utc
    assert accepted.timestamp.tzinfo is dt.UTC


def test_a_missing_timestamp_is_the_time_of_receipt() -> None:
    accepted = accept_one(VALID["track"])
    assert accepted.timestamp == RECEIVED_AT


@pytest.mark.parametrize("timestamp", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00"])
def test_a_timestamp_outside_the_representable_range_in_utc_is_refused(timestamp: str) -> None:
    error = refuse_one({**VALID["track"], "timestamp": timestamp})
    assert error.field == "timestamp"


# --- messageId ------------------------------------------------------------------------------------------------


def test_a_missing_message_id_gets_a_deterministic_auto_id() -> None:
    first = accept_one(dict(VALID["track"]))
    second = accept_one(dict(VALID["track"]))
    assert first.message_id.startswith("auto-")
    assert first.message_id == second.message_id
    assert len(first.message_id) <= MAX_ID_LENGTH


def test_different_content_gets_a_different_auto_id() -> None:
    first = accept_one(VALID["track"])
    second = accept_one({**VALID["track"], "properties": {"product_id": "p2"}})
    assert first.message_id != second.message_id


def test_the_auto_id_does_not_depend_on_key_order_or_on_the_size_check() -> None:
    # Given the same message with its keys in two orders
    message = {"type": "track", "event": "Product Added", "userId": "u1", "properties": {"a": 1, "b": [1, 2]}}
    reordered = {"properties": {"b": [1, 2], "a": 1}, "userId": "u1", "event": "Product Added", "type": "track"}
    # When validated in a small body (no size check) and in a large one (size check)
    ids = {
        accept_one(candidate, check_size=check_size).message_id
        for candidate in (message, reordered)
        for check_size in (False, True)
    }
    # Then a client's retry dedupes whatever batch it lands in
    assert len(ids) == 1


def test_the_auto_id_of_an_identical_message_in_a_batch_is_the_same() -> None:
    accepted, _ = validate([VALID["identify"], VALID["identify"]])
    assert accepted[0].message_id == accepted[1].message_id


# --- batch-envelope defaults ----------------------------------------------------------------------------------


def test_envelope_context_is_inherited_by_messages_without_one() -> None:
    defaults = {"context": {"ip": "203.0.113.7", "locale": "de-DE"}, "integrations": {"All": False}}
    accepted = accept_one(VALID["track"], defaults=defaults)
    assert accepted.payload["context"] == {"ip": "203.0.113.7", "locale": "de-DE"}
    assert accepted.payload["integrations"] == {"All": False}


def test_a_message_s_own_context_wins_over_the_envelope() -> None:
    defaults = {"context": {"ip": "203.0.113.7"}}
    accepted = accept_one({**VALID["track"], "context": {"ip": "198.51.100.1"}}, defaults=defaults)
    assert accepted.payload["context"]["ip"] == "198.51.100.1"


def test_envelope_defaults_do_not_leak_between_messages() -> None:
    defaults = {"context": {"ip": "203.0.113.7"}}
    accepted, errors = validate([VALID["track"], {**VALID["identify"], "context": {"ip": "x"}}], defaults=defaults)
    assert errors == []
    assert [a.payload["context"]["ip"] for a in accepted] == ["203.0.113.7", "x"]
    assert defaults == {"context": {"ip": "203.0.113.7"}}


# --- size -----------------------------------------------------------------------------------------------------


def _padded(size: int, char: str = "x") -> dict[str, Any]:
    """A track message whose compact JSON is about ``size`` bytes of UTF-8."""
    base = {**VALID["track"], "properties": {"pad": ""}}
    overhead = len(json.dumps(base, separators=(",", ":")).encode())
    width = len(char.encode())
    return {**base, "properties": {"pad": char * ((size - overhead) // width)}}


def test_a_message_over_32_kb_is_refused_when_sizes_are_checked() -> None:
    error = refuse_one(_padded(MAX_MESSAGE_BYTES + 100), check_size=True)
    assert error.field == ""
    assert "32 KB" in error.reason


def test_a_message_just_under_32_kb_is_accepted() -> None:
    accept_one(_padded(MAX_MESSAGE_BYTES - 10), check_size=True)


def test_the_size_limit_counts_utf8_bytes_not_ascii_escapes() -> None:
    # Given a message of 24 KB of UTF-8 ("€" is 3 bytes, but 6 as a \\u20ac escape)
    message = _padded(24 * 1024, "€")
    # When sizes are checked (it sits in a body over 32 KB), it is accepted as it is when they are not
    accept_one(message, check_size=True)
    accept_one(message, check_size=False)


def test_a_large_message_is_not_checked_when_the_caller_says_no_message_can_exceed_the_limit() -> None:
    accept_one(_padded(MAX_MESSAGE_BYTES + 100), check_size=False)


def test_envelope_defaults_count_towards_the_message_size() -> None:
    defaults = {"context": {"pad": "x" * (MAX_MESSAGE_BYTES // 2)}}
    error = refuse_one(_padded(MAX_MESSAGE_BYTES * 3 // 4), check_size=True, defaults=defaults)
    assert "32 KB" in error.reason


# --- characters the store cannot hold -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ({**VALID["track"], "properties": {"a": {"b": "x\x00y"}}}, "properties.a.b"),
        ({**VALID["track"], "properties": {"items": [{"sku": "ok"}, {"sku": "\x00"}]}}, "properties.items[1].sku"),
        ({**VALID["identify"], "traits": {"nested": {"k\x00": 1}}}, "traits.nested.k\x00"),
        ({**VALID["track"], "context": {"page": {"url\x00": "x"}}}, "context.page.url\x00"),
        ({**VALID["track"], "event": "Product\x00Viewed"}, "event"),
        ({**VALID["track"], "userId": "u\x00"}, "userId"),
    ],
)
def test_a_nul_character_anywhere_is_refused_with_its_path(message: dict[str, Any], path: str) -> None:
    error = refuse_one(message, check_nul=True)
    assert error.field == path
    assert "NUL" in error.reason


def test_a_nul_character_in_the_envelope_context_is_refused() -> None:
    error = refuse_one(VALID["track"], defaults={"context": {"ip": "\x00"}})
    assert error.field == "context.ip"


@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff", "a\udc00b"])
@pytest.mark.parametrize("where", ["userId", "properties.note", "properties.key"])
def test_a_lone_surrogate_is_refused_with_its_path(surrogate: str, where: str) -> None:
    # Given a lone UTF-16 surrogate (JSON's "\\ud800" escape decodes to one), which no UTF-8 store can hold
    if where == "userId":
        message, path = {**VALID["track"], "userId": surrogate}, "userId"
    elif where == "properties.note":
        message, path = {**VALID["track"], "properties": {"note": surrogate}}, "properties.note"
    else:
        message, path = {**VALID["track"], "properties": {surrogate: 1}}, f"properties.{surrogate}"
    # When validated (the caller saw a \\u escape in the body)
    error = refuse_one(message, check_nul=True)
    # Then it is refused with its path
    assert error.field == path
    assert "surrogate" in error.reason


def test_a_surrogate_pair_decodes_to_one_character_and_is_accepted() -> None:
    document = parse_json(b'{"type": "track", "event": "\\ud83d\\ude00", "userId": "u1"}')
    accepted = accept_one(document, check_nul=True)
    assert accepted.name == "\N{GRINNING FACE}"


def test_non_ascii_text_is_accepted() -> None:
    accepted = accept_one(
        {**VALID["track"], "event": "Produkt angesehen \N{EN DASH} \u00fc", "properties": {"名前": "商品"}}
    )
    assert accepted.payload["properties"] == {"名前": "商品"}


# --- parse_json -----------------------------------------------------------------------------------------------


def test_parse_json_decodes_utf8_json() -> None:
    assert parse_json('{"a": [1, 2.5, "ü", null, true]}'.encode()) == {"a": [1, 2.5, "ü", None, True]}


@pytest.mark.parametrize(
    "body", [b'{"a": NaN}', b"[Infinity]", b"[-Infinity]", b'{"p": {"x": [1, NaN]}}', b"[1e400]", b"[-1e400]"]
)
def test_parse_json_refuses_numbers_json_does_not_allow(body: bytes) -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_json(body)


def test_parse_json_accepts_large_but_finite_floats() -> None:
    assert parse_json(b"[1e308, -1e308, 5e-324]") == [1e308, -1e308, 5e-324]


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_parse_json_refuses_very_deep_nesting_with_a_clear_error(depth: int) -> None:
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        with pytest.raises(ValueError, match="nested too deeply"):
            parse_json(body)


def test_parse_json_accepts_moderate_nesting() -> None:
    assert parse_json(b"[" * 50 + b"]" * 50) is not None


@pytest.mark.parametrize("body", [b'"\xff"', b'{"a": "\xc3"}', b"\xfe\xff\x00{", b'["\xed\xa0\x80"]'])
def test_parse_json_refuses_invalid_utf8(body: bytes) -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_json(body)


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b'{"a": 1,}', b"nul", b'{"a": "\x00"}', b'{"a":1} x'])
def test_parse_json_refuses_malformed_json_with_a_position(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"invalid JSON: .* at line 1 column"):
        parse_json(body)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_parse_json_refuses_utf16_and_utf32_bodies(encoding: str) -> None:
    # Given a body json.loads would sniff as UTF-16/32, which hides a "\\u0000" escape from a byte search
    body = '{"batch": [{"type": "track", "event": "\\u0000", "userId": "u1"}]}'.encode(encoding)
    # Then it is refused (UTF-16-LE ASCII text is valid UTF-8, just not valid JSON): JSON between systems is UTF-8
    with pytest.raises(ValueError, match=r"not UTF-8|invalid JSON"):
        parse_json(body)


def test_parse_json_tolerates_a_utf8_byte_order_mark() -> None:
    assert parse_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}


def test_parse_json_refuses_huge_integers_with_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_json(b"[1" + b"0" * 5000 + b"]")


def test_parse_json_keeps_a_nul_escape_for_validation_to_refuse() -> None:
    document = parse_json(b'{"type": "track", "event": "e", "userId": "u1", "properties": {"a": "\\u0000"}}')
    error = refuse_one(document, check_nul=True)
    assert error.field == "properties.a"
