"""The Segment HTTP Tracking API message shapes, validated one message at a time.

Validation is deliberately shallow: the top-level fields we index are typed and bounded; ``properties``,
``traits`` and ``context`` only need to be JSON objects. Deep checks of commerce properties happen in the
projection, where a bad value costs one event's projection, never the acknowledgement.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

#: Segment's documented limits (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/).
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_ID_LENGTH = 200

#: Server-side events that describe the store itself, so they carry no person.
PERSONLESS_EVENTS = frozenset({"Inventory Updated"})


def _id_to_str(value: Any) -> Any:
    # Segment clients send ids as strings, but some storefronts pass integer ids; both mean the same id.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Identifier = Annotated[str, BeforeValidator(_id_to_str), Field(min_length=1, max_length=MAX_ID_LENGTH)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=False, frozen=True)

    messageId: Identifier | None = None
    timestamp: dt.datetime | None = None
    userId: Identifier | None = None
    anonymousId: Identifier | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_a_person(self) -> _Message:
        if self.userId is None and self.anonymousId is None and not self.is_personless():
            raise ValueError("userId or anonymousId is required")
        return self

    def is_personless(self) -> bool:
        return False

    @property
    def name(self) -> str | None:
        return None


class Track(_Message):
    type: Literal["track"]
    event: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    properties: dict[str, Any] = Field(default_factory=dict)

    def is_personless(self) -> bool:
        return self.event in PERSONLESS_EVENTS

    @property
    def name(self) -> str | None:
        return self.event


class Identify(_Message):
    type: Literal["identify"]
    traits: dict[str, Any] = Field(default_factory=dict)


class Page(_Message):
    type: Literal["page"]
    name_: str | None = Field(None, alias="name", max_length=MAX_ID_LENGTH)
    category: str | None = Field(None, max_length=MAX_ID_LENGTH)
    properties: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return self.name_


class Screen(Page):
    type: Literal["screen"]  # type: ignore[assignment]


class Group(_Message):
    type: Literal["group"]
    groupId: Identifier
    traits: dict[str, Any] = Field(default_factory=dict)


class Alias(_Message):
    type: Literal["alias"]
    previousId: Identifier
    userId: Identifier

    @property
    def name(self) -> str | None:
        return None


Message = Annotated[Track | Identify | Page | Screen | Group | Alias, Field(discriminator="type")]
MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
_adapter: TypeAdapter[Message] = TypeAdapter(Message)


@dataclass(frozen=True, slots=True)
class MessageError:
    """Why one message was refused: ``index`` in the batch, the offending ``field`` path and a reason."""

    index: int
    field: str
    reason: str
    message_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "field": self.field, "reason": self.reason}
        if self.message_id is not None:
            out["messageId"] = self.message_id
        return out


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid message, ready to be stored."""

    message_id: str
    type: str
    name: str | None
    user_id: str | None
    anonymous_id: str | None
    timestamp: dt.datetime
    payload: dict[str, Any]


def parse_json(body: bytes) -> Any:
    """Decode a request body; raise ValueError with a client-facing reason.

    NaN/Infinity are refused: they are not JSON, and PostgreSQL's jsonb cannot store them. The body must be
    UTF-8 (RFC 8259): ``json.loads`` on bytes would also take UTF-16/32, and UTF-8-encoded surrogates.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON: {name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"invalid JSON: number {text[:40]} is out of range")
    return value


def validate_messages(
    items: list[Any],
    *,
    received_at: dt.datetime,
    check_size: bool = True,
    check_nul: bool = True,
    defaults: dict[str, Any] | None = None,
) -> tuple[list[Accepted], list[MessageError]]:
    """Validate each item on its own, so one bad message never takes the others down.

    ``check_size`` is False when the whole body is under the per-message limit (no message can exceed it),
    which saves re-encoding every message on the hot path; likewise ``check_nul`` is False when the body has
    no ``\\u0000`` nor ``\\ud800``-``\\udfff`` escape, the only ways to spell the characters the store cannot
    hold (a raw NUL byte is already invalid JSON, a raw surrogate invalid UTF-8). ``defaults`` are batch-level
    fields (Segment's ``context``/``integrations`` on the batch envelope) that messages inherit.
    """
    accepted: list[Accepted] = []
    errors: list[MessageError] = []
    for index, item in enumerate(items):
        result = _validate_one(
            index, item, received_at=received_at, check_size=check_size, check_nul=check_nul, defaults=defaults
        )
        (accepted if isinstance(result, Accepted) else errors).append(result)  # type: ignore[arg-type]
    return accepted, errors


def _validate_one(
    index: int,
    item: Any,
    *,
    received_at: dt.datetime,
    check_size: bool,
    check_nul: bool,
    defaults: dict[str, Any] | None,
) -> Accepted | MessageError:
    if not isinstance(item, dict):
        return MessageError(index, "", f"a message must be a JSON object, got {_json_type(item)}")
    if defaults:
        item = {**defaults, **item}
    raw_id = item.get("messageId")
    message_id = raw_id if isinstance(raw_id, str) else None
    if check_size:
        # UTF-8 bytes, as clients count them (ASCII escapes would triple the size of non-Latin text).
        size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size > MAX_MESSAGE_BYTES:
            return MessageError(index, "", f"message exceeds {MAX_MESSAGE_BYTES // 1024} KB", message_id)
    if "type" not in item:
        return MessageError(index, "type", f"required; one of {', '.join(MESSAGE_TYPES)}", message_id)
    if item["type"] not in MESSAGE_TYPES:
        return MessageError(index, "type", f"unknown type; one of {', '.join(MESSAGE_TYPES)}", message_id)
    try:
        message = _adapter.validate_python(item)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"][1:])  # [0] is the union tag
        reason = first["msg"].removeprefix("Value error, ")
        if not field and reason.startswith("userId or anonymousId"):
            field = "userId"
        return MessageError(index, field, reason, message_id)
    unstorable = _find_unstorable(item) if check_nul else None
    if unstorable is not None:
        return MessageError(index, *unstorable, message_id)
    timestamp = message.timestamp or received_at
    try:
        # Segment reads a timestamp without an offset as UTC.
        timestamp = timestamp.replace(tzinfo=dt.UTC) if timestamp.tzinfo is None else timestamp.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return MessageError(index, "timestamp", "out of range", message_id)
    if message.messageId is None:
        # No id means no idempotency key from the client; a content hash makes exact retries dedupe.
        # Sorted keys: the same content gets the same id whatever its key order or the batch it arrives in.
        encoded = json.dumps(item, separators=(",", ":"), sort_keys=True)
        message_id = "auto-" + hashlib.sha256(encoded.encode()).hexdigest()[:40]
    else:
        message_id = message.messageId
    return Accepted(
        message_id=message_id,
        type=item["type"],
        name=message.name,
        user_id=message.userId,
        anonymous_id=message.anonymousId,
        timestamp=timestamp,
        payload=item,
    )


#: Characters PostgreSQL cannot store: NUL (in text and jsonb) and lone UTF-16 surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _find_unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """The path of the first string (or key) with a character the store cannot hold, and why; else None."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            if _UNSTORABLE.search(node):
                return where, _unstorable_reason(node)
        elif isinstance(node, dict):
            for key, child in node.items():
                child_path = f"{where}.{key}" if where else str(key)
                if _UNSTORABLE.search(key):
                    return child_path, _unstorable_reason(key)
                stack.append((child_path, child))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(node))
    return None


def _unstorable_reason(text: str) -> str:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    return "contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode text"


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def iter_message_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    """JSON Schemas of each message type, for the OpenAPI document."""
    for model in (Track, Identify, Page, Screen, Group, Alias):
        yield model.__name__, model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
