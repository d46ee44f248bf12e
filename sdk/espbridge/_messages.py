"""Turning a call's arguments into one encoded message: cheap checks, a messageId, a timestamp, JSON bytes.

Messages are encoded at the call site: the queue then holds ``bytes``, which the garbage collector never
walks (a queue of dicts is what makes other clients pause for 100 ms and more), a caller mutating its dict
afterwards cannot change what is sent, and a value JSON cannot carry fails where the developer can see it.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import json
import math
import secrets
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ._errors import InvalidMessage

#: The ingestion service's limits (DESIGN.md section 3, Segment's documented limits).
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_ID_LENGTH = 200

Json = dict[str, Any]


def _to_json(value: Any) -> Any:
    """What ``json`` cannot encode by itself; anything else is refused with the value's type."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite number")
        return str(value)  # exact: the service reads amounts through Decimal too
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"a {type(value).__name__} cannot be sent as JSON")


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_to_json)


class IdSource:
    """messageIds unique across processes: a random 96-bit prefix per process and a counter.

    Four times cheaper than ``uuid4()`` on the hot path. :meth:`reseed` must run in a forked child, or parent
    and child would mint the same ids and the service would drop one side's messages as duplicates.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(12) + "-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


def identifier(value: Any, field: str) -> str:
    """A userId / anonymousId / groupId: a non-empty string (integers are accepted and sent as strings)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**MAX_ID_LENGTH:
        value = str(value)
    if isinstance(value, str):
        if not value or len(value) > MAX_ID_LENGTH:
            raise InvalidMessage(field, f"must be 1 to {MAX_ID_LENGTH} characters")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise InvalidMessage(field, f"must be at most {MAX_ID_LENGTH} characters as a string")
    raise InvalidMessage(field, f"must be a string, not {type(value).__name__}")


def name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(field, "must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidMessage(field, f"must be at most {MAX_ID_LENGTH} characters")
    return value


def mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidMessage(field, f"must be a dict, not {type(value).__name__}")
    return value


def timestamp(value: dt.datetime | None) -> str:
    """ISO 8601 in UTC; a naive datetime is taken to be UTC already."""
    if value is None:
        return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    if not isinstance(value, dt.datetime):
        raise InvalidMessage("timestamp", f"must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError):  # datetime(1, 1, 1, tzinfo=+01:00) is before year 1 in UTC
        raise InvalidMessage("timestamp", f"{value.isoformat()} cannot be expressed in UTC") from None


def encode(message: Json) -> bytes:
    """The message as compact UTF-8 JSON, or :class:`InvalidMessage` naming the path of the bad value."""
    try:
        data = _ENCODER.encode(message).encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError: a lone surrogate
        raise InvalidMessage(*_find_unencodable(message, "", set()) or ("message", str(exc))) from None
    if len(data) > MAX_MESSAGE_BYTES:
        biggest = max(message, key=lambda key: len(_ENCODER.encode(message[key])))
        raise InvalidMessage(
            biggest, f"the message is {len(data):,} bytes encoded; the service takes at most {MAX_MESSAGE_BYTES:,}"
        )
    if b"\\u0000" in data and (found := _find_nul(message, "")):
        raise InvalidMessage(found, "contains a NUL character, which the service cannot store")
    return data


def decode(data: bytes) -> Json:
    """A queued message back as a dict, to report it; a spool line that is not JSON (a damaged file) as text."""
    try:
        message: Json = json.loads(data)
    except ValueError:
        return {"unreadable": data.decode("utf-8", "replace")}
    return message


def _find_unencodable(value: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    """The slow path, only after encoding failed: walk the value to name where and why."""
    where = path or "message"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where, "contains a lone surrogate, which is not valid Unicode"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return where, f"{value} is not a finite number; JSON cannot carry it"
    if isinstance(value, dict | list | tuple):
        if id(value) in seen:
            return where, "contains itself (a circular reference)"
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str | int | float | bool | type(None)):
                return where, f"has a key of type {type(key).__name__}; keys must be strings"
            child = f"{path}[{key}]" if isinstance(value, list | tuple) else (f"{path}.{key}" if path else str(key))
            if found := _find_unencodable(item, child, seen):
                return found
        seen.discard(id(value))
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            int.__repr__(value)
        except ValueError:  # past sys.get_int_max_str_digits()
            return where, "is an integer too long to be written as JSON"
        return None
    if isinstance(value, bool | type(None)):
        return None
    try:
        _to_json(value)
    except (TypeError, ValueError) as exc:
        return where, str(exc)
    return None


def _find_nul(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return (path or "message") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return child
            if found := _find_nul(item, child):
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if found := _find_nul(item, f"{path}[{index}]"):
                return found
    return None
