"""Segments over the admin API (``/admin/api/segments``): CRUD, evaluation, daily counts, a streamed CSV of
members and the mirror to each ESP. Marketers and admins only (a segment decides who is marketed to)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request, stream_with_context

from connector import segments
from connector.errors import InvalidInput
from connector.segments import service
from connector.store import Role

from . import get_runtime
from .auth import current_principal, requires
from .errors import admin_errors

bp = Blueprint("admin_segments", __name__, url_prefix="/admin/api/segments")

EDITORS = (Role.MARKETER, Role.ADMIN)

admin_errors(bp)


def _body() -> object:
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidInput("body", "expected a JSON object (Content-Type: application/json)")
    return body


def _store() -> int:
    return current_principal().store_id


@bp.get("")
@requires(*EDITORS)
def list_() -> Response:
    """The store's segments."""
    return jsonify({"segments": service.list_segments(get_runtime().db, _store())})


@bp.post("")
@requires(*EDITORS)
def create() -> tuple[Response, int]:
    """Create a segment (``name``, ``criteria``, optional ``description``, ``marketing``) and evaluate it; 201."""
    return jsonify(service.create_segment(get_runtime().db, _store(), _body())), 201


@bp.get("/<int:segment_id>")
@requires(*EDITORS)
def show(segment_id: int) -> Response:
    """One segment: criteria, marketing flag, mirror, member count, last evaluation."""
    return jsonify(service.get_segment(get_runtime().db, _store(), segment_id))


@bp.put("/<int:segment_id>")
@requires(*EDITORS)
def update(segment_id: int) -> Response:
    """Change any editable field of a segment; new criteria or ``marketing`` are evaluated at once."""
    return jsonify(service.update_segment(get_runtime().db, _store(), segment_id, _body()))


@bp.delete("/<int:segment_id>")
@requires(*EDITORS)
def delete(segment_id: int) -> tuple[str, int]:
    """Delete a segment with its members, changes and daily counts; 204."""
    service.delete_segment(get_runtime().db, _store(), segment_id)
    return "", 204


@bp.post("/<int:segment_id>/evaluate")
@requires(*EDITORS)
def evaluate(segment_id: int) -> Response:
    """Evaluate the segment in full now: members, and how many entered and exited."""
    result = segments.evaluate(get_runtime().db, _store(), segment_id)
    return jsonify(
        {"segment_id": segment_id, "members": result.members, "entered": result.entered, "exited": result.exited}
    )


@bp.put("/<int:segment_id>/mirror/<esp>")
@requires(*EDITORS)
def mirror_on(segment_id: int, esp: str) -> Response:
    """Turn the mirror on (or change its options): the body is the options, ``{}`` for the defaults."""
    options = {} if not request.get_data() else _body()  # no body at all: the defaults
    return jsonify(service.set_mirror(get_runtime().db, _store(), segment_id, esp, options))


@bp.delete("/<int:segment_id>/mirror/<esp>")
@requires(*EDITORS)
def mirror_off(segment_id: int, esp: str) -> Response:
    """Turn the mirror to ``esp`` off (a no-op when it was off)."""
    return jsonify({"segment": service.remove_mirror(get_runtime().db, _store(), segment_id, esp)})


@bp.get("/<int:segment_id>/counts")
@requires(*EDITORS)
def counts(segment_id: int) -> Response:
    """Daily member counts of the segment."""
    return jsonify({"segment_id": segment_id, "counts": service.daily_counts(get_runtime().db, _store(), segment_id)})


@bp.get("/<int:segment_id>/members.csv")
@requires(*EDITORS)
def members_csv(segment_id: int) -> Response:
    """The segment's members as CSV, streamed."""
    rows = service.member_rows(get_runtime().db, _store(), segment_id)
    first = next(rows, None)  # a missing segment raises NotFound here, before the 200 is sent

    def generate() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(service.CSV_COLUMNS)
        if first is not None:
            writer.writerow(first)
            for row in rows:
                writer.writerow(row)
                if buffer.tell() > 64 * 1024:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()

    response = Response(stream_with_context(generate()), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="segment-{segment_id}-members.csv"'
    return response
