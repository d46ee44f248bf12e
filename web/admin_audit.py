"""The compliance officer's audit API (``/admin/api/audit``): verify the consent ledger, read its anchor, export
consent events as CSV or JSON, streamed."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, stream_with_context

from connector import audit
from connector.errors import InvalidInput
from connector.store import Role

from . import get_runtime
from .auth import current_principal, requires
from .errors import admin_errors

bp = Blueprint("admin_audit", __name__, url_prefix="/admin/api/audit")

MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}

admin_errors(bp)


@bp.get("/verify")
@requires(Role.COMPLIANCE)
def verify() -> Response:
    """Walk the whole chain; ``anchor`` (the text `espbridge audit anchor` prints) also proves no truncation."""
    text = request.args.get("anchor")
    anchor = audit.Anchor.parse(text) if text else None
    result = audit.verify(get_runtime().db, current_principal().store_id, anchor=anchor)
    return jsonify(result.as_dict() | {"message": result.message()})


@bp.get("/anchor")
@requires(Role.COMPLIANCE)
def anchor() -> Response:
    """The ledger's head now (``seq``, ``hash``, ``at``) and its ``text``, to keep elsewhere and pass to verify."""
    taken = audit.anchor(get_runtime().db, current_principal().store_id)
    return jsonify(taken.as_dict() | {"text": taken.text()})


@bp.get("/export")
@requires(Role.COMPLIANCE)
def export() -> Response:
    """Consent events, one per row, after a header with the chain's verification and anchor; streamed."""
    args = request.args
    fmt = args.get("format", "")
    if fmt not in MEDIA_TYPES:
        raise InvalidInput("format", "must be csv or json")
    contact = args.get("contact")
    if contact is not None and not contact.isdigit():
        raise InvalidInput("contact", "must be a contact id")
    wanted = audit.ExportFilter(
        email=args.get("email") or None,
        phone=args.get("phone") or None,
        contact_id=int(contact) if contact else None,
        since=audit.parse_when("since", args["since"]) if args.get("since") else None,
        until=audit.parse_when("until", args["until"], until=True) if args.get("until") else None,
        channel=args.get("channel") or None,
    )
    db, store_id = get_runtime().db, current_principal().store_id
    _, chunks = audit.export_document(db, store_id, wanted, fmt)  # bad filters, unknown people: 4xx before the 200
    response = Response(stream_with_context(chunks), mimetype=MEDIA_TYPES[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="consent-ledger-{store_id}.{fmt}"'
    return response
