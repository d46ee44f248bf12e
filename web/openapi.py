"""``GET /openapi.json``: the OpenAPI 3.1 document of the ingestion and admin APIs.

Message schemas come from the same pydantic models that validate requests, and every admin route is read off the
app's ``url_map`` (``openapi_admin``), so the document cannot drift from what the server accepts.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from connector.ingest.messages import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, MESSAGE_TYPES, iter_message_schemas

from .openapi_admin import ADMIN_ERRORS, admin_paths
from .openapi_admin import error as _error

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document."""
    return jsonify(document(current_app))


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


INGEST_ERRORS = {
    "400": _error("Malformed body, or every message invalid (each named in `errors`)"),
    "401": _error("Missing or unknown write key"),
    "413": _error("Body (after gzip) over the size limit"),
    "415": _error("Unsupported Content-Encoding"),
    "503": _error("Store unavailable; nothing was acknowledged, retry"),
}


def document(app: Flask) -> dict[str, Any]:
    """The document for ``app``, built once per app: its routes are fixed once it serves requests."""
    cached: dict[str, Any] | None = app.extensions.get("espbridge.openapi")
    if cached is None:
        cached = app.extensions["espbridge.openapi"] = _build(app)
    return cached


def _build(app: Flask) -> dict[str, Any]:
    schemas: dict[str, Any] = {name: schema for name, schema in iter_message_schemas()}
    schemas["Message"] = {
        "oneOf": [
            {"$ref": f"#/components/schemas/{name}"}
            for name in ("Track", "Identify", "Page", "Screen", "Group", "Alias")
        ],
        "discriminator": {"propertyName": "type"},
    }
    schemas["Batch"] = {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
            "context": {"type": "object", "description": "Defaults merged into every message"},
            "integrations": {"type": "object"},
        },
    }
    schemas["Accepted"] = {
        "type": "object",
        "required": ["success", "accepted", "duplicates"],
        "properties": {
            "success": {"type": "boolean", "const": True},
            "accepted": {"type": "integer", "description": "Valid messages, committed (new or duplicate)"},
            "duplicates": {"type": "integer", "description": "Of those, messageIds already stored (ignored)"},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/MessageError"}},
        },
    }
    schemas["MessageError"] = {
        "type": "object",
        "required": ["index", "field", "reason"],
        "properties": {
            "index": {"type": "integer"},
            "field": {
                "type": "string",
                "description": "Dotted path of the offending field; empty for the whole message",
            },
            "reason": {"type": "string"},
            "messageId": {"type": "string"},
        },
    }
    schemas["Error"] = {
        "type": "object",
        "required": ["success", "error"],
        "properties": {
            "success": {"type": "boolean", "const": False},
            "error": {"type": "string"},
            "field": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/MessageError"}},
        },
    }
    schemas["Contact"] = {"type": "object", "additionalProperties": True}

    paths: dict[str, Any] = {
        "/v1/batch": {
            "post": {
                "summary": f"Accept a batch of messages (≤ {MAX_BATCH_BYTES // 1024} KB, "
                f"each ≤ {MAX_MESSAGE_BYTES // 1024} KB)",
                "operationId": "batch",
                "security": [{"writeKey": []}],
                "parameters": [_content_encoding()],
                "requestBody": _body("Batch"),
                "responses": {"200": _accepted(), **INGEST_ERRORS},
            }
        }
    }
    for kind in MESSAGE_TYPES:
        paths[f"/v1/{kind}"] = {
            "post": {
                "summary": f"Accept one {kind} message (≤ {MAX_MESSAGE_BYTES // 1024} KB); the path sets `type`",
                "operationId": kind,
                "security": [{"writeKey": []}],
                "parameters": [_content_encoding()],
                "requestBody": _body(kind.capitalize()),
                "responses": {"200": _accepted(), **INGEST_ERRORS},
            }
        }
    paths["/admin/api/contacts"] = {
        "get": {
            "summary": "Find contacts by email or user_id (any role)",
            "operationId": "searchContacts",
            "security": [{"adminToken": []}],
            "parameters": [
                {"name": "email", "in": "query", "schema": {"type": "string"}},
                {"name": "user_id", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": _json("Matching contacts"), "400": _error("Neither or both given"), **ADMIN_ERRORS},
        }
    }
    paths["/admin/api/contacts/{contact_id}"] = {
        "get": {
            "summary": "One contact with identities, consent, orders, events, cart and waitlists (any role)",
            "operationId": "getContact",
            "security": [{"adminToken": []}],
            "parameters": [{"name": "contact_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": _json("The contact"), "404": _error("No such contact in this store"), **ADMIN_ERRORS},
        }
    }
    paths["/admin/api/stats"] = {
        "get": {
            "summary": "Counts of what the store holds (admin, marketer, viewer)",
            "operationId": "storeStats",
            "security": [{"adminToken": []}],
            "responses": {"200": _json("Counts"), **ADMIN_ERRORS},
        }
    }
    for path, item in admin_paths(app, documented=paths).items():
        paths.setdefault(path, {}).update(item)  # beside any hand-written method of the same path
    paths["/healthz"] = {"get": {"summary": "Liveness", "operationId": "healthz", "responses": {"200": _json("ok")}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "espbridge",
            "version": "1",
            "description": "Segment-compatible ingestion API and admin API of espbridge. A 200 from the ingestion "
            "API means the accepted messages are committed; duplicate messageIds are accepted and ignored.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "writeKey": {"type": "http", "scheme": "basic", "description": "The store's write key as user name"},
                "adminToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _content_encoding() -> dict[str, Any]:
    return {"name": "Content-Encoding", "in": "header", "schema": {"type": "string", "enum": ["gzip", "identity"]}}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _accepted() -> dict[str, Any]:
    return {
        "description": "Committed",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
    }


def _json(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}
