"""The admin API (``/admin/api``): bearer-token auth, a role check on every endpoint, store-scoped reads."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify, request

from connector import consent_admin, contacts
from connector.errors import InvalidInput, NotFound
from connector.esp.connections import DEFAULT_BASE_URLS
from connector.stats import store_stats
from connector.store import EspConnection, Role, SyncRun
from connector.sync import queue
from connector.sync.full import FullSyncOptions, SyncRunning, start, summary

from . import get_runtime
from .auth import ALL_ROLES, current_principal, requires
from .errors import admin_errors, error_response, json_object, limit_arg

bp = Blueprint("admin", __name__, url_prefix="/admin/api")

admin_errors(bp)


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


@bp.errorhandler(SyncRunning)
def _running(exc: SyncRunning) -> Response:
    return error_response(409, str(exc))


@bp.post("/sync/full")
@requires(Role.ADMIN)
def start_full_sync() -> Response:
    """Start (or resume) a full sync: ``{"esp": "klaviyo", "dry_run": false, "force": false}``. 202 + the run."""
    body = json_object()
    esp = body.get("esp")
    if esp not in DEFAULT_BASE_URLS:
        raise InvalidInput("esp", f"must be one of {', '.join(sorted(DEFAULT_BASE_URLS))}")
    flags = {}
    for name in ("dry_run", "force"):
        value = body.get(name, False)
        if not isinstance(value, bool):
            raise InvalidInput(name, "must be true or false")
        flags[name] = value
    principal = current_principal()
    runtime = get_runtime()
    with runtime.db.reader() as session:
        connected = session.scalar(
            sa.select(EspConnection.id).where(EspConnection.store_id == principal.store_id, EspConnection.esp == esp)
        )
    if connected is None:
        raise NotFound(f"this store is not connected to {esp}")
    options = FullSyncOptions(**flags, requested_by=principal.email)
    run_id = start(runtime.db, principal.store_id, esp, options)
    runtime.jobs.full_sync.send(run_id)
    return _run_response(run_id, 202)


@bp.get("/sync/runs")
@requires(*ALL_ROLES)
def list_sync_runs() -> Response:
    """The latest full syncs (``limit``, default 20), newest first, with progress and counts."""
    limit = limit_arg(20, 200)
    query = (
        sa.select(SyncRun)
        .where(SyncRun.store_id == current_principal().store_id)
        .order_by(SyncRun.id.desc())
        .limit(limit)
    )
    with get_runtime().db.reader() as session:
        return jsonify({"runs": [summary(run) for run in session.scalars(query)]})


@bp.get("/sync/runs/<int:run_id>")
@requires(*ALL_ROLES)
def sync_run(run_id: int) -> Response:
    """One full sync with its progress and counts."""
    return _run_response(run_id, 200)


def _run_response(run_id: int, status: int) -> Response:
    with get_runtime().db.reader() as session:
        run = session.get(SyncRun, run_id)
        if run is None or run.store_id != current_principal().store_id:
            raise NotFound(f"sync run {run_id} does not exist")
        response = jsonify({"run": summary(run)})
    response.status_code = status
    return response


@bp.get("/dead-letters")
@requires(Role.ADMIN, Role.MARKETER, Role.VIEWER)
def list_dead_letters() -> Response:
    """Changes an ESP refused or that kept failing, newest first, with the ESP's last error."""
    with get_runtime().db.reader() as session:
        total, items = queue.dead_letters(session, current_principal().store_id, limit=100)
    return jsonify({"total": total, "dead_letters": items})


@bp.post("/dead-letters/replay")
@requires(Role.ADMIN)
def replay_dead_letters() -> Response:
    """Queue dead letters again: ``{"ids": [...]}`` or ``{}`` for all of the store's."""
    body = request.get_json(silent=True) or {}
    ids = body.get("ids") if isinstance(body, dict) else None
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, int) for i in ids)):
        raise InvalidInput("ids", "must be a list of integers")
    with get_runtime().db.writer() as session:
        count = queue.replay(session, store_id=current_principal().store_id, ids=ids)
    return jsonify({"replayed": count})


@bp.post("/contacts/<int:contact_id>/consent")
@requires(Role.ADMIN, Role.COMPLIANCE)
def set_contact_consent(contact_id: int) -> Response:
    """Withdraw or grant consent by hand: ``{"channel": "email", "status": "unsubscribed"|"subscribed"}``.

    Ledger method ``admin``, actor the signed-in user; a withdrawal goes to every connected ESP like any other.
    """
    body = json_object()
    principal = current_principal()
    with get_runtime().db.writer() as session:
        result = consent_admin.set_consent(
            session, principal.store_id, contact_id, body.get("channel"), body.get("status"), actor=principal.email
        )
    return jsonify(result)
