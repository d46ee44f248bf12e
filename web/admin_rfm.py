"""RFM runs over the admin API (``/admin/api/rfm``): each run's cut-points, population, completeness, group
shares, drift alerts and transition count, for every role that reads marketing data."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from connector import rfm
from connector.errors import NotFound
from connector.store import Role

from . import get_runtime
from .auth import current_principal, requires
from .errors import admin_errors, limit_arg

bp = Blueprint("admin_rfm", __name__, url_prefix="/admin/api/rfm")

READERS = (Role.ADMIN, Role.MARKETER, Role.VIEWER)

admin_errors(bp)


@bp.get("/runs")
@requires(*READERS)
def runs() -> Response:
    """The latest RFM runs (``limit``, default 50), newest first."""
    limit = limit_arg(50, 1000)
    return jsonify({"runs": rfm.list_runs(get_runtime().db, current_principal().store_id, limit)})


@bp.get("/runs/<int:run_id>")
@requires(*READERS)
def run(run_id: int) -> Response:
    """One RFM run: cut-points, population, completeness, group shares, drift alerts, transitions."""
    found = rfm.get_run(get_runtime().db, current_principal().store_id, run_id)
    if found is None:
        raise NotFound(f"RFM run {run_id} does not exist in this store")
    return jsonify(found)
