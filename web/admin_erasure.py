"""The erasure admin API (``/admin/api/erasures``): compliance officers only."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from connector import erasure
from connector.credentials import CredentialCipher, CredentialsUnavailable
from connector.errors import InvalidInput
from connector.store import Role

from . import get_runtime
from .auth import current_principal, requires
from .errors import admin_errors, error_response, json_object

bp = Blueprint("admin_erasure", __name__, url_prefix="/admin/api/erasures")

_FIELDS = ("email", "phone", "contact_id")

admin_errors(bp)


@bp.errorhandler(CredentialsUnavailable)
def _no_key(exc: CredentialsUnavailable) -> Response:
    return error_response(503, str(exc))


@bp.post("")
@requires(Role.COMPLIANCE)
def create() -> Response:
    """Erase the person named by exactly one of ``email``, ``phone``, ``contact_id``; 202 with the erasure."""
    body = json_object()
    given = _identifier(body)
    runtime = get_runtime()
    principal = current_principal()
    erasure_id = erasure.erase(
        runtime.db,
        CredentialCipher(runtime.settings.credentials_key),
        principal.store_id,
        requested_by=principal.email,
        **given,
    )
    response = jsonify(erasure.get(runtime.db, principal.store_id, erasure_id))
    response.status_code = 202
    response.headers["Location"] = f"/admin/api/erasures/{erasure_id}"
    return response


@bp.get("/<int:erasure_id>")
@requires(Role.COMPLIANCE)
def show(erasure_id: int) -> Response:
    """One erasure and its report (each ESP's outcome as the worker settles it)."""
    return jsonify(erasure.get(get_runtime().db, current_principal().store_id, erasure_id))


def _identifier(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise InvalidInput(unknown[0], "unknown field; give exactly one of email, phone, contact_id")
    given = {name: body[name] for name in _FIELDS if body.get(name) is not None}
    if len(given) != 1:
        raise InvalidInput("body", "give exactly one of email, phone, contact_id")
    ((name, value),) = given.items()
    if name == "contact_id" and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidInput("contact_id", "must be an integer")
    if name != "contact_id" and not isinstance(value, str):
        raise InvalidInput(name, "must be a string")
    return given
