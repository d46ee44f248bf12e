"""The admin API's part of the OpenAPI document, generated from the app's ``url_map`` so that no route under
``/admin/api`` goes undocumented. Summaries are the view functions' docstrings and roles come from ``requires``;
what a rule cannot say (success status, media types, query parameters, extra errors) is in ``OPERATIONS``.
"""

from __future__ import annotations

import http
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flask import Flask
from werkzeug.routing import Rule

from .admin_audit import MEDIA_TYPES

PREFIX = "/admin/api"

_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_IGNORED_METHODS = {"HEAD", "OPTIONS"}  # Flask adds them to every rule
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_SCHEMAS = {"application/json": {"type": "object"}}


def error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


ADMIN_ERRORS = {"401": error("Missing or invalid admin token"), "403": error("Role not allowed")}


@dataclass(frozen=True)
class Operation:
    """What an endpoint's rule does not tell: the defaults are a 200 with JSON, and a JSON body for POST/PUT/PATCH."""

    status: int = 200
    media_types: tuple[str, ...] = ("application/json",)
    body: Literal["required", "optional", "none"] | None = None
    query: tuple[dict[str, Any], ...] = ()
    errors: tuple[tuple[str, str], ...] = ()


def _query(name: str, description: str, schema: dict[str, Any] | None = None, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _limit(maximum: int, default: int) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}
    return _query("limit", f"How many, newest first (1 to {maximum})", schema)


_WHEN = "A date (YYYY-MM-DD, UTC) or an ISO 8601 timestamp with an offset"

#: Per endpoint, read off each view; endpoints not listed answer 200 with JSON.
OPERATIONS: dict[str, Operation] = {
    "admin.start_full_sync": Operation(
        status=202,
        errors=(("404", "This store is not connected to that ESP"), ("409", "A full sync of that ESP is running")),
    ),
    "admin.list_sync_runs": Operation(query=(_limit(200, 20),)),
    "admin.replay_dead_letters": Operation(body="optional"),
    "admin_audit.verify": Operation(
        query=(_query("anchor", "An anchor's `text` (GET /admin/api/audit/anchor); also proves no truncation"),)
    ),
    "admin_audit.export": Operation(
        media_types=tuple(MEDIA_TYPES.values()),
        query=(
            _query("format", "Export format", {"type": "string", "enum": sorted(MEDIA_TYPES)}, required=True),
            _query("email", "Only this person (at most one of email, phone, contact)"),
            _query("phone", "Only this person"),
            _query("contact", "Only this contact id", {"type": "integer"}),
            _query("since", f"{_WHEN}; inclusive", {"type": "string"}),
            _query("until", f"{_WHEN}; a date includes the whole day", {"type": "string"}),
            _query("channel", "Only this channel"),
        ),
        errors=(("404", "No contact in this store matches the email, phone or contact"),),
    ),
    "admin_erasure.create": Operation(
        status=202,
        errors=(
            ("404", "No contact in this store matches the email, phone or contact_id"),
            ("503", "No credentials key opens the stored ESP credentials"),
        ),
    ),
    "admin_rfm.runs": Operation(query=(_limit(1000, 50),)),
    "admin_segments.create": Operation(status=201),
    "admin_segments.delete": Operation(status=204, media_types=()),
    "admin_segments.evaluate": Operation(body="none"),
    "admin_segments.mirror_on": Operation(body="optional"),
    "admin_segments.mirror_off": Operation(errors=(("400", "Unknown ESP (`field` is esp)"),)),
    "admin_segments.members_csv": Operation(media_types=("text/csv",)),
}


def admin_paths(app: Flask, documented: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Path items for every method of every ``/admin/api`` rule that ``documented`` (hand-written) lacks."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        if rule.rule != PREFIX and not rule.rule.startswith(f"{PREFIX}/"):
            continue
        path = _ARGUMENT.sub(r"{\g<name>}", rule.rule)
        methods = sorted(set(rule.methods or ()) - _IGNORED_METHODS)
        for method in methods:
            if method.lower() not in documented.get(path, {}):
                operation = _operation(app, rule, method, several=len(methods) > 1)
                paths.setdefault(path, {})[method.lower()] = operation
    return paths


def operation_id(endpoint: str, method: str | None = None) -> str:
    """``admin_segments.mirror_on`` -> ``adminSegmentsMirrorOn``; endpoints are unique, so are these."""
    first, *rest = [word for word in re.split(r"[._]+", endpoint) if word]
    return first + "".join(word.capitalize() for word in rest) + (method.capitalize() if method else "")


def _operation(app: Flask, rule: Rule, method: str, *, several: bool) -> dict[str, Any]:
    view = app.view_functions[rule.endpoint]
    spec = OPERATIONS.get(rule.endpoint, Operation())
    summary, _, details = (inspect.getdoc(view) or "").partition("\n")
    roles = ", ".join(str(role) for role in getattr(view, "required_roles", ()))
    operation: dict[str, Any] = {}
    if summary:  # the test requires one: a view without a docstring is undocumented
        operation["summary"] = _markdown(summary)
    description = " ".join(part for part in (_markdown(details.strip()), f"Roles: {roles}." if roles else "") if part)
    if description:
        operation["description"] = description
    operation["operationId"] = operation_id(rule.endpoint, method if several else None)
    operation["security"] = [{"adminToken": []}]
    arguments = [
        {
            "name": match["name"],
            "in": "path",
            "required": True,
            "schema": {"type": "integer" if match["converter"] == "int" else "string"},
        }
        for match in _ARGUMENT.finditer(rule.rule)
    ]
    if arguments or spec.query:
        operation["parameters"] = [*arguments, *spec.query]
    body = spec.body or ("required" if method in _BODY_METHODS else "none")
    if body != "none":
        operation["requestBody"] = {
            "required": body == "required",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    responses: dict[str, Any] = {str(spec.status): _success(spec)}
    if body != "none" or spec.query:
        responses["400"] = error("Invalid " + ("body" if body != "none" else "query") + "; `field` names what and why")
    if arguments:
        responses["404"] = error("Not found in this store")
    responses.update({status: error(text) for status, text in spec.errors})
    operation["responses"] = responses | ADMIN_ERRORS
    return operation


def _success(spec: Operation) -> dict[str, Any]:
    response: dict[str, Any] = {"description": http.HTTPStatus(spec.status).phrase}
    if spec.media_types:
        response["content"] = {media: {"schema": _SCHEMAS.get(media, {"type": "string"})} for media in spec.media_types}
    return response


def _markdown(text: str) -> str:
    """Docstrings quote with reST's double backticks; CommonMark's single ones render the same."""
    return text.replace("``", "`")
