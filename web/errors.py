"""Every error leaves as JSON: ``{"success": false, "error": "...", ...}`` with a precise 4xx where it can."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from connector.errors import InvalidInput, NotFound
from connector.ingest.committer import CommitTimeout

log = logging.getLogger(__name__)


def error_response(status: int, message: str, **extra: Any) -> Response:
    response = jsonify({"success": False, "error": message, **extra})
    response.status_code = status
    return response


def json_object() -> dict[str, Any]:
    """The request's JSON body, which must be an object (else a 400 naming ``body``)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    return body


def limit_arg(default: int, maximum: int) -> int:
    """The ``limit`` query parameter: a whole number from 1 to ``maximum`` (else a 400 naming it)."""
    limit = request.args.get("limit", str(default))
    if not limit.isdigit() or not 1 <= int(limit) <= maximum:
        raise InvalidInput("limit", f"must be a whole number from 1 to {maximum}")
    return int(limit)


def admin_errors(bp: Blueprint) -> None:
    """The admin blueprints' answers to the domain's errors: 404 for NotFound, 400 naming the field otherwise."""

    @bp.errorhandler(NotFound)
    def _not_found(exc: NotFound) -> Response:
        return error_response(404, str(exc))

    @bp.errorhandler(InvalidInput)
    def _invalid(exc: InvalidInput) -> Response:
        return error_response(400, str(exc), field=exc.field)


def init_app(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = error_response(exc.code or 500, exc.description or exc.name)
        # Keep what the exception adds beyond its HTML body, such as a 405's Allow header.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        if exc.code == 413:
            response.data = error_response(413, "request body too large").data
        if exc.code == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="espbridge"'
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(CommitTimeout)
    def _database_unavailable(exc: OperationalError | CommitTimeout) -> Response:
        # The store is down, locked or slow: nothing was acknowledged, and a retry is safe (messageIds dedupe).
        log.error("database unavailable: %s", getattr(exc, "orig", exc))
        response = error_response(503, "the store is temporarily unavailable; retry later")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal error")
