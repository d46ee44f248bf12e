"""Segment criteria (DESIGN.md section 9): the JSON grammar, validated into a small typed tree.

Grammar::

    node      := {"all": [node, …]} | {"any": [node, …]} | {"not": node} | {field: test, …}   (several keys = all)
    test      := bare value (means eq) | {op: value, …} (several ops = all)
    op        := eq ne gt gte lt lte in nin contains exists between within_last_days
    events    := {"events": {"name": str, "within_days": int?, "count": test}}

Every error names the JSON path of the offending value (``all[1].orders.count.gte``) and why, through
:class:`InvalidInput`, so the admin API can answer a precise 400.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from connector.errors import InvalidInput

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains", "exists", "between", "within_last_days")
CHANNELS = ("email", "sms", "push", "whatsapp")
MAX_DEPTH = 16


class Kind(enum.StrEnum):
    """The type of a field's value, which decides the operators it accepts."""

    NUMBER = "number"
    STRING = "string"
    DATETIME = "datetime"
    ANY = "any"  # properties.<key>: JSON, typed by the compared value
    SET = "set"  # products/categories: a list of ids or names
    DAYS = "days"  # engagement.*_within_days: a window in days
    BOOL = "bool"


CONTACT_FIELDS: dict[str, Kind] = {
    "email": Kind.STRING,
    "phone": Kind.STRING,
    "external_id": Kind.STRING,
    "first_name": Kind.STRING,
    "last_name": Kind.STRING,
    "timezone": Kind.STRING,
    "locale": Kind.STRING,
    "created_at": Kind.DATETIME,
    "last_seen_at": Kind.DATETIME,
}
RFM_FIELDS: dict[str, Kind] = {
    "rfm.recency": Kind.NUMBER,
    "rfm.frequency": Kind.NUMBER,
    "rfm.monetary": Kind.NUMBER,
    "rfm.r": Kind.NUMBER,
    "rfm.f": Kind.NUMBER,
    "rfm.m": Kind.NUMBER,
    "rfm.composite": Kind.NUMBER,
    "rfm.group": Kind.STRING,
}
OTHER_FIELDS: dict[str, Kind] = {
    "lifecycle.stage": Kind.STRING,
    "lifecycle.churn_risk": Kind.NUMBER,
    "orders.count": Kind.NUMBER,
    "orders.revenue": Kind.NUMBER,
    "orders.aov": Kind.NUMBER,
    "days_since_first_order": Kind.NUMBER,
    "days_since_last_order": Kind.NUMBER,
    "promotions.redeemed_ratio": Kind.NUMBER,
    "products.purchased": Kind.SET,
    "products.not_purchased": Kind.SET,
    "categories.purchased": Kind.SET,
    "categories.not_purchased": Kind.SET,
    "categories.last_order_missing": Kind.SET,
    "engagement.opened_within_days": Kind.DAYS,
    "engagement.clicked_within_days": Kind.DAYS,
    "carts.abandoned_within_days": Kind.DAYS,
    "waitlists.active": Kind.BOOL,
}
ALLOWED_OPS: dict[Kind, frozenset[str]] = {
    Kind.NUMBER: frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists", "between"}),
    Kind.STRING: frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains", "exists"}),
    Kind.DATETIME: frozenset({"gt", "gte", "lt", "lte", "exists", "between", "within_last_days"}),
    Kind.ANY: frozenset(OPERATORS) - {"within_last_days"},
    Kind.SET: frozenset({"eq", "in"}),
    Kind.DAYS: frozenset({"eq"}),
    Kind.BOOL: frozenset({"eq"}),
}


@dataclass(frozen=True)
class Cond:
    """``field op value``: value already checked against the field's kind."""

    path: str
    field: str
    kind: Kind
    op: str
    value: Any


@dataclass(frozen=True)
class EventsCond:
    """How many events called ``name`` (within the last ``within_days`` days, or ever) the contact has."""

    path: str
    name: str
    within_days: int | None
    count: Node


@dataclass(frozen=True)
class All:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Any_:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    child: Node


Node = Cond | EventsCond | All | Any_ | Not


def field_kind(field: str, path: str) -> Kind:
    if field in CONTACT_FIELDS:
        return CONTACT_FIELDS[field]
    if field in RFM_FIELDS:
        return RFM_FIELDS[field]
    if field in OTHER_FIELDS:
        return OTHER_FIELDS[field]
    if field.startswith("properties."):
        if not field[len("properties.") :]:
            raise InvalidInput(path, "a property name is needed after 'properties.'")
        return Kind.ANY
    if field.startswith("consent."):
        channel = field[len("consent.") :]
        if channel not in CHANNELS:
            raise InvalidInput(path, f"unknown consent channel {channel!r} (one of {', '.join(CHANNELS)})")
        return Kind.STRING
    raise InvalidInput(path, f"unknown field {field!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_scalar(kind: Kind, value: Any, path: str) -> Any:
    """One comparable value for a field of ``kind``; datetimes arrive as ISO 8601 strings."""
    if kind is Kind.NUMBER:
        if not _is_number(value):
            raise InvalidInput(path, f"expected a number, got {type(value).__name__}")
        return value
    if kind is Kind.STRING:
        if not isinstance(value, str):
            raise InvalidInput(path, f"expected a string, got {type(value).__name__}")
        return value
    if kind is Kind.DATETIME:
        if not isinstance(value, str):
            raise InvalidInput(path, "expected an ISO 8601 date or datetime string")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(path, f"not an ISO 8601 date or datetime: {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    if kind is Kind.ANY:
        if value is None or isinstance(value, dict | list):
            raise InvalidInput(path, "expected a string, number or boolean")
        return value
    raise AssertionError(kind)  # pragma: no cover - SET/DAYS/BOOL are checked by _parse_special


def _check_op(kind: Kind, op: str, value: Any, path: str) -> Any:
    if op not in OPERATORS:
        raise InvalidInput(path, f"unknown operator {op!r} (one of {', '.join(OPERATORS)})")
    if op not in ALLOWED_OPS[kind]:
        raise InvalidInput(path, f"operator {op!r} does not apply to a {kind.value} field")
    if op == "exists":
        if not isinstance(value, bool):
            raise InvalidInput(path, "expected true or false")
        return value
    if op == "within_last_days":
        if not _is_number(value) or value < 0:
            raise InvalidInput(path, "expected a number of days ≥ 0")
        return value
    if op in ("in", "nin"):
        if not isinstance(value, list) or not value:
            raise InvalidInput(path, "expected a non-empty list")
        return tuple(_check_scalar(kind, item, f"{path}[{i}]") for i, item in enumerate(value))
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise InvalidInput(path, "expected a list of two bounds [low, high]")
        low, high = (_check_scalar(kind, item, f"{path}[{i}]") for i, item in enumerate(value))
        if low > high:
            raise InvalidInput(path, "the low bound is greater than the high bound")
        return (low, high)
    if op == "contains":
        if not isinstance(value, str) or not value:
            raise InvalidInput(path, "expected a non-empty string")
        return value
    return _check_scalar(kind, value, path)


def _parse_test(field: str, kind: Kind, test: Any, path: str) -> Node:
    if kind is Kind.SET:
        values = test.get("in", test.get("eq")) if isinstance(test, dict) and len(test) == 1 else test
        if isinstance(test, dict) and (len(test) != 1 or not set(test) <= {"in", "eq"}):
            raise InvalidInput(path, "expected a name, a list of names, or {'in': [names]}")
        names = [values] if isinstance(values, str) else values
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise InvalidInput(path, "expected a non-empty string or a non-empty list of non-empty strings")
        return Cond(path, field, kind, "in", tuple(names))
    if kind is Kind.DAYS:
        days = test.get("eq") if isinstance(test, dict) and set(test) == {"eq"} else test
        if not _is_number(days) or days is None or days < 0:
            raise InvalidInput(path, "expected a number of days ≥ 0")
        return Cond(path, field, kind, "eq", days)
    if kind is Kind.BOOL:
        flag = test.get("eq") if isinstance(test, dict) and set(test) == {"eq"} else test
        if not isinstance(flag, bool):
            raise InvalidInput(path, "expected true or false")
        return Cond(path, field, kind, "eq", flag)
    if not isinstance(test, dict):
        return Cond(path, field, kind, "eq", _check_op(kind, "eq", test, path))
    if not test:
        raise InvalidInput(path, "expected at least one operator")
    conds: list[Node] = []
    for op, value in test.items():
        here = _join(path, op)
        conds.append(Cond(here, field, kind, op, _check_op(kind, op, value, here)))
    return conds[0] if len(conds) == 1 else All(tuple(conds))


def _parse_events(spec: Any, path: str) -> Node:
    if not isinstance(spec, dict):
        raise InvalidInput(path, "expected {'name': …, 'within_days': …, 'count': …}")
    unknown = set(spec) - {"name", "within_days", "count"}
    if unknown:
        raise InvalidInput(_join(path, sorted(unknown)[0]), "unknown key (expected name, within_days, count)")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(_join(path, "name"), "expected a non-empty event name")
    within = spec.get("within_days")
    if within is not None and (not isinstance(within, int) or isinstance(within, bool) or within <= 0):
        raise InvalidInput(_join(path, "within_days"), "expected a whole number of days > 0")
    # Without a count, the question is "did it happen at all": count ≥ 1.
    count = _parse_test("count", Kind.NUMBER, spec.get("count", {"gte": 1}), _join(path, "count"))
    return EventsCond(path, name, within, count)


def parse(raw: Any, path: str = "", depth: int = 0) -> Node:
    """The typed tree of a criteria document, or InvalidInput naming the path of the first problem."""
    if depth > MAX_DEPTH:
        raise InvalidInput(path or "criteria", f"nested more than {MAX_DEPTH} levels deep")
    if not isinstance(raw, dict):
        raise InvalidInput(path or "criteria", f"expected an object, got {type(raw).__name__}")
    if not raw:
        raise InvalidInput(path or "criteria", "expected at least one condition")
    nodes: list[Node] = []
    for key, value in raw.items():
        here = _join(path, key)
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                raise InvalidInput(here, "expected a non-empty list of conditions")
            children = tuple(parse(item, f"{here}[{i}]", depth + 1) for i, item in enumerate(value))
            nodes.append(All(children) if key == "all" else Any_(children))
        elif key == "not":
            nodes.append(Not(parse(value, here, depth + 1)))
        elif key == "events":
            nodes.append(_parse_events(value, here))
        else:
            nodes.append(_parse_test(key, field_kind(key, here), value, here))
    return nodes[0] if len(nodes) == 1 else All(tuple(nodes))


def mentions_consent(node: Node) -> bool:
    """A segment that asks about consent decides for itself whom it includes (no default exclusion)."""
    if isinstance(node, Cond):
        return node.field.startswith("consent.")
    if isinstance(node, All | Any_):
        return any(mentions_consent(child) for child in node.children)
    if isinstance(node, Not):
        return mentions_consent(node.child)
    return False


class Criteria(BaseModel):
    """The pydantic face of the grammar (admin API bodies): ``Criteria(criteria={...}).tree``."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    criteria: dict[str, Any]

    @model_validator(mode="after")
    def _valid(self) -> Criteria:
        parse(self.criteria)
        return self

    @property
    def tree(self) -> Node:
        return parse(self.criteria)
