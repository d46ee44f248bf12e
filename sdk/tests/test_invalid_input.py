"""A call the service could not take fails at the call site with a clear error: ``InvalidMessage`` naming the
field (the path to the bad value) and why; with ``raise_on_invalid=False`` it goes to ``on_error`` instead, the call
returns None, and nothing is sent. Values JSON has a faithful spelling for are converted and sent."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from conftest import Sink
from espbridge import Client, InvalidMessage


def _circular() -> dict[str, Any]:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    return loop


def test_a_1_mb_property_is_refused_naming_properties_and_the_32_kb_limit(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    with pytest.raises(InvalidMessage) as raised:
        client.track("u1", "Big", properties={"blob": "x" * 1_000_000})
    assert raised.value.field == "properties"
    assert "at most 32,768" in raised.value.reason  # the service's 32 KB per-message limit, in bytes
    assert "1,000," in raised.value.reason  # and how big this one is
    assert str(raised.value).startswith("properties: ")
    assert client.flush(1)
    assert sink.requests == []


def test_with_raise_on_invalid_false_it_is_reported_not_raised_and_nothing_is_sent(
    make_client: Any, sink: Sink
) -> None:
    reported: list[tuple[Exception, list[dict[str, Any]]]] = []
    client: Client = make_client(
        raise_on_invalid=False, on_error=lambda error, messages: reported.append((error, messages))
    )

    assert client.track("u1", "Big", properties={"blob": "x" * 1_000_000}) is None
    assert client.track("u1", "Odd", properties={"when": {"x": object()}}) is None

    assert [(type(error), getattr(error, "field", None)) for error, _ in reported] == [
        (InvalidMessage, "properties"),
        (InvalidMessage, "properties.when.x"),
    ]
    assert [messages[0]["event"] for _, messages in reported] == ["Big", "Odd"]  # the message as far as it got
    assert client.stats().queued == 0
    assert client.flush(1)
    assert sink.requests == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (object(), "a object cannot be sent as JSON"),
        (b"bytes", "a bytes cannot be sent as JSON"),
        (float("nan"), "nan is not a finite number"),
        (float("inf"), "inf is not a finite number"),
        (Decimal("NaN"), "NaN is not a finite number"),
        ({("a", "tuple"): 1}, "has a key of type tuple"),
        ("lone \ud800 surrogate", "lone surrogate"),
        ("nul \x00 char", "NUL character"),
    ],
    ids=["object", "bytes", "nan", "inf", "decimal-nan", "tuple-key", "surrogate", "nul"],
)
def test_a_value_json_cannot_carry_is_refused_naming_its_path(
    make_client: Any, sink: Sink, value: Any, reason: str
) -> None:
    client: Client = make_client()
    with pytest.raises(InvalidMessage) as raised:
        client.track("u1", "Odd", properties={"ok": 1, "when": {"fine": "yes", "x": value}})
    assert raised.value.field == "properties.when.x"
    assert reason in raised.value.reason
    assert client.flush(1)
    assert sink.requests == []


def test_a_circular_dict_is_refused_naming_where_it_contains_itself(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    with pytest.raises(InvalidMessage) as raised:
        client.track("u1", "Loop", properties={"when": {"x": _circular()}})
    assert raised.value.field == "properties.when.x.self"
    assert "circular" in raised.value.reason
    with pytest.raises(InvalidMessage) as raised:
        client.identify("u1", traits={"items": [1, _circular()]})
    assert raised.value.field == "traits.items[1].self"


def test_a_bad_value_in_context_is_named_too(make_client: Any) -> None:
    client: Client = make_client()
    with pytest.raises(InvalidMessage) as raised:
        client.track("u1", "E", context={"page": {"referrer": b"raw"}})
    assert raised.value.field == "context.page.referrer"


def test_sets_and_datetimes_are_sent_as_lists_and_iso_strings(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    when = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    client.track("u1", "Typed", properties={"tags": {"b"}, "frozen": frozenset({1}), "when": {"x": when}})
    assert client.flush(5)
    assert sink.messages[0]["properties"] == {"tags": ["b"], "frozen": [1], "when": {"x": "2026-03-04T05:06:07+01:00"}}


# -- found while writing these tests: each fails today ---------------------------------------------------------


def test_a_timestamp_that_cannot_be_converted_to_utc_is_invalid_not_an_overflow_error(make_client: Any) -> None:
    """``timestamp()`` in _messages.py calls ``value.astimezone(dt.UTC)`` unguarded: a datetime near
    ``datetime.min`` with a positive offset raises OverflowError, out of every call, even with raise_on_invalid=False
    (only InvalidMessage is caught in Client._enqueue)."""
    early = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    client: Client = make_client()
    with pytest.raises(InvalidMessage) as raised:
        client.track("u1", "E", timestamp=early)
    assert raised.value.field == "timestamp"

    reported: list[Exception] = []
    lenient: Client = make_client(raise_on_invalid=False, on_error=lambda error, messages: reported.append(error))
    assert lenient.track("u1", "E", timestamp=early) is None
    assert [type(error) for error in reported] == [InvalidMessage]


@pytest.mark.parametrize("digits", [201, 5_000])
def test_an_integer_id_longer_than_the_services_200_characters_is_invalid(make_client: Any, digits: int) -> None:
    """``identifier()`` in _messages.py bounds a str id to 200 characters but returns ``str(value)`` of an int
    unchecked: a 201-digit user_id passes the SDK and is refused by the service ("String should have at most 200
    characters"), found only later in on_error; a 5,000-digit one makes ``str()`` raise ValueError (Python's
    4,300-digit limit) out of the call, even with raise_on_invalid=False."""
    client: Client = make_client()
    with pytest.raises(InvalidMessage) as raised:
        client.track(10 ** (digits - 1), "E")
    assert raised.value.field == "user_id"

    reported: list[Exception] = []
    lenient: Client = make_client(raise_on_invalid=False, on_error=lambda error, messages: reported.append(error))
    assert lenient.identify(10 ** (digits - 1)) is None
    assert [type(error) for error in reported] == [InvalidMessage]


def test_an_integer_too_long_for_python_to_print_is_named_by_its_path(make_client: Any) -> None:
    """_find_unencodable() in _messages.py passes every int as fine, so the 4,300-digit ValueError of the encoder is
    reported as field "message" instead of the path to the value."""
    client: Client = make_client()
    with pytest.raises(InvalidMessage) as raised:
        client.track("u1", "E", properties={"when": {"x": 10**5_000}})
    assert raised.value.field == "properties.when.x"
