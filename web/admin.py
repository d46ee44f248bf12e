"""The admin API (``/admin/api``): bearer-token auth, a role check on every endpoint, store-scoped reads."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from connector import contacts
from connector.errors import InvalidInput, NotFound
from connector.stats import store_stats
from connector.store import Role

from . import get_runtime
from .auth import ALL_ROLES, current_principal, requires
from .errors import error_response

bp = Blueprint("admin", __name__, url_prefix="/admin/api")


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Response:
    return error_response(404, str(exc))


@bp.errorhandler(InvalidInput)
def _invalid(exc: InvalidInput) -> Response:
    return error_response(400, str(exc), field=exc.field)


@bp.get("/contacts")
@requires(*ALL_ROLES)
def search_contacts() -> Response:
    """Find contacts by ``email`` or ``user_id``."""
    with get_runtime().db.reader() as session:
        found = contacts.search(
            session, current_principal().store_id, email=request.args.get("email"), user_id=request.args.get("user_id")
        )
    return jsonify({"contacts": found})


@bp.get("/contacts/<int:contact_id>")
@requires(*ALL_ROLES)
def contact_detail(contact_id: int) -> Response:
    """One contact: identities, properties, consent per channel, order and event counts, cart, waitlists."""
    with get_runtime().db.reader() as session:
        return jsonify(contacts.detail(session, current_principal().store_id, contact_id))


@bp.get("/stats")
@requires(Role.ADMIN, Role.MARKETER, Role.VIEWER)
def stats() -> Response:
    """Counts of what the store holds, outbox rows by status included."""
    with get_runtime().db.reader() as session:
        return jsonify(store_stats(session, current_principal().store_id))
