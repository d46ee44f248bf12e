"""Klaviyo's OpenAPI operations as the sandbox uses them: request validators and rate limits, built once.

``klaviyo_spec.json`` is a trimmed extract of the official spec (``scripts/extract_klaviyo_sandbox_spec.py``):
each emulated operation's method, path, ``x-klaviyo-ratelimit`` and request/response schemas, plus the component
schemas they reference. OpenAPI 3.0's ``nullable: true`` is not JSON Schema, so every such schema becomes
``anyOf: [{"type": "null"}, <schema>]`` before the validators are compiled (JSON Schema 2020-12, with
``#/components/schemas/…`` resolved through a ``referencing`` registry).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["Operation", "RateLimit", "SchemaError", "SpecOperations", "load_operations"]

SPEC_URI = "urn:espbridge:klaviyo-openapi"
_PERIODS = {"s": 1.0, "m": 60.0, "d": 86400.0}
_RATE = re.compile(r"^(\d+)/([smd])$")


@dataclass(frozen=True)
class RateLimit:
    """One fixed window: at most ``limit`` requests per ``seconds`` (real time, before ``--time-scale``)."""

    name: str  # burst | steady | daily
    limit: int
    seconds: float


@dataclass(frozen=True)
class SchemaError:
    """The first (best) violation of a request body, located by a JSON pointer into it."""

    pointer: str
    detail: str


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str  # OpenAPI template, e.g. /api/profiles/{id}
    rate_limits: tuple[RateLimit, ...]
    validator: Draft202012Validator | None = field(repr=False)
    response_validators: dict[str, Draft202012Validator] = field(repr=False)

    def validate(self, body: Any) -> SchemaError | None:
        """The best-matching schema violation of ``body``, or None when it is valid."""
        if self.validator is None:
            return None
        error = best_match(self.validator.iter_errors(body))
        return None if error is None else _schema_error(error)


SpecOperations = dict[str, Operation]


def _schema_error(error: ValidationError) -> SchemaError:
    while error.validator in ("anyOf", "oneOf") and error.context:
        # A nullable schema failed: report why the value failed its non-null alternative(s).
        alternatives = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
        deeper = best_match(alternatives) if alternatives else None
        if deeper is None:
            break
        error = deeper
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        required: list[str] = list(error.validator_value)  # type: ignore[arg-type]
        missing = [name for name in required if name not in error.instance]
        if missing:
            path.append(str(missing[0]))
    pointer = "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in path)
    return SchemaError(pointer=pointer, detail=error.message)


def _nullable_to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {
        key: ({k: _nullable_to_json_schema(v) for k, v in value.items()} if key == "properties" else value)
        if key in ("properties", "enum", "example", "default", "required")
        else _nullable_to_json_schema(value)
        for key, value in node.items()
        if key != "nullable"
    }
    if node.get("nullable") is True:
        return {"anyOf": [{"type": "null"}, converted]}
    return converted


def _rate_limits(declared: dict[str, str]) -> tuple[RateLimit, ...]:
    limits = []
    for name in ("burst", "steady", "daily"):
        if name in declared:
            match = _RATE.match(declared[name])
            if match is None:
                raise ValueError(f"unreadable x-klaviyo-ratelimit {name}: {declared[name]!r}")
            limits.append(RateLimit(name, int(match[1]), _PERIODS[match[2]]))
    return tuple(limits)


def spec_document() -> dict[str, Any]:
    """The vendored extract of Klaviyo's spec (parsed anew on each call)."""
    text = resources.files(__package__).joinpath("klaviyo_spec.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@cache
def load_operations() -> SpecOperations:
    """Every emulated operation by operationId, its validators compiled (once per process)."""
    document = spec_document()
    schemas = _nullable_to_json_schema(document["components"]["schemas"])
    resource = Resource.from_contents({"components": {"schemas": schemas}}, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)

    def compile_schema(schema: dict[str, Any] | None) -> Draft202012Validator | None:
        if schema is None:
            return None
        absolute = json.loads(json.dumps(schema).replace('"#/components/', f'"{SPEC_URI}#/components/'))
        return Draft202012Validator(absolute, registry=registry)

    operations: SpecOperations = {}
    for operation_id, op in document["operations"].items():
        responses = {code: compile_schema(schema) for code, schema in op["responses"].items()}
        operations[operation_id] = Operation(
            operation_id=operation_id,
            method=op["method"],
            path=op["path"],
            rate_limits=_rate_limits(op["ratelimit"]),
            validator=compile_schema(op["request_schema"]),
            response_validators={code: v for code, v in responses.items() if v is not None},
        )
    return operations


def spec_revision() -> str:
    return str(spec_document()["source"]["revision"])
