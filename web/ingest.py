"""The ingestion API: Segment's HTTP Tracking API (``/v1/batch``, ``/v1/track``, …), write-key auth.

A 200 means the accepted messages are committed. Invalid messages are refused one by one with their index,
field and reason; the valid ones of the same batch are stored all the same.
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from typing import Any

from flask import Blueprint, Response, jsonify, request

from connector.ingest.accept import store_events
from connector.ingest.messages import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    MessageError,
    parse_json,
    validate_messages,
)

from . import get_runtime
from .errors import error_response

bp = Blueprint("ingest", __name__, url_prefix="/v1")

#: JSON escapes of characters the store cannot hold: NUL and UTF-16 surrogates (hex digits in either case).
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")

#: Batch-envelope fields Segment lets a batch set once for all its messages.
ENVELOPE_DEFAULTS = ("context", "integrations")


class RequestRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@bp.post("/batch")
def batch() -> Response:
    """Accept up to 500 KB of messages in ``{"batch": [...]}``."""
    return _ingest(kind=None)


@bp.post("/<any(" + ",".join(MESSAGE_TYPES) + "):kind>")
def single(kind: str) -> Response:
    """Accept one message of the type named by the path."""
    return _ingest(kind=kind)


def _ingest(kind: str | None) -> Response:
    store_id = _authenticate()
    if store_id is None:
        response = error_response(401, "a valid write key is required as the HTTP Basic user name")
        response.headers["WWW-Authenticate"] = 'Basic realm="espbridge"'
        return response
    received_at = dt.datetime.now(dt.UTC)
    limit = MAX_BATCH_BYTES if kind is None else MAX_MESSAGE_BYTES
    try:
        body = _read_body(limit)
        document = parse_json(body)
    except RequestRefused as exc:
        return error_response(exc.status, exc.message)
    except ValueError as exc:
        return error_response(400, str(exc))
    try:
        items, defaults = _messages_of(document, kind)
    except RequestRefused as exc:
        return error_response(exc.status, exc.message)
    accepted, errors = validate_messages(
        items,
        received_at=received_at,
        check_size=kind is None and len(body) > MAX_MESSAGE_BYTES,
        check_nul=_UNSTORABLE_ESCAPE.search(body) is not None,
        defaults=defaults,
    )
    runtime = get_runtime()
    stored = store_events(runtime.committer, store_id, accepted, received_at)
    if stored:
        runtime.kick_projection(store_id)
    return _answer(kind, len(accepted), stored, errors)


def _authenticate() -> int | None:
    auth = request.authorization
    if auth is None or auth.type != "basic" or not auth.username:
        return None
    return get_runtime().write_keys.store_for(auth.username)


def _read_body(limit: int) -> bytes:
    raw = request.get_data(cache=False)
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "gzip":
        raw = _gunzip(raw, limit)
    elif encoding != "identity":
        raise RequestRefused(415, f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    if len(raw) > limit:
        raise RequestRefused(413, f"body exceeds {limit // 1024} KB")
    return raw


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress at most ``limit`` + 1 bytes: a small gzip bomb never becomes a large allocation."""
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise RequestRefused(400, f"body is not valid gzip: {exc}") from None
    if len(out) > limit:
        raise RequestRefused(413, f"decompressed body exceeds {limit // 1024} KB")
    if not decompressor.eof:
        raise RequestRefused(400, "gzip body is truncated")
    return out


def _messages_of(document: Any, kind: str | None) -> tuple[list[Any], dict[str, Any]]:
    if not isinstance(document, dict):
        raise RequestRefused(400, "body must be a JSON object")
    if kind is not None:
        return [{**document, "type": kind}], {}
    items = document.get("batch")
    if not isinstance(items, list):
        raise RequestRefused(400, 'field "batch": required, an array of messages')
    defaults = {key: document[key] for key in ENVELOPE_DEFAULTS if isinstance(document.get(key), dict)}
    return items, defaults


def _answer(kind: str | None, accepted: int, stored: int, errors: list[MessageError]) -> Response:
    if errors and not accepted:
        first = errors[0]
        message = (
            f"message {first.index}: {first.field or 'message'}: {first.reason}"
            if kind is None
            else (f"{first.field or 'message'}: {first.reason}")
        )
        return error_response(400, message, errors=[e.as_dict() for e in errors])
    body: dict[str, Any] = {"success": True, "accepted": accepted, "duplicates": accepted - stored}
    if errors:
        body["errors"] = [e.as_dict() for e in errors]
    return jsonify(body)
