"""Group commit: concurrent requests share one transaction, each acknowledged only after that commit.

One writer thread per process takes every request waiting in its queue, inserts all their events in one
statement, commits once, then wakes each request with its own count of new rows. Under load this turns N
commits (N fsyncs, N turns of SQLite's write lock) into one; at low load a request goes straight through,
so no latency is added by waiting for company. This is what rudder-server's gateway does (it groups up to
128 requests or 15 ms); grouping only what is already queued needs neither knob.

Duplicates inside a group are resolved as they would be sequentially: the first request to carry a
(store, messageId) stores it, later ones count it as a duplicate.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from ..store import Database, Event

log = logging.getLogger(__name__)

#: Rows one transaction takes at most (a few 500 KB batches); more waits for the next turn.
MAX_ROWS_PER_COMMIT = 5000
#: A request gives up (and is answered 503, nothing acknowledged) after this many seconds.
SUBMIT_TIMEOUT = 30.0


class CommitTimeout(Exception):
    """The store did not commit in time; the request must not be acknowledged."""


@dataclass(eq=False)
class _Job:
    store_id: int
    rows: Sequence[dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    stored: int = 0
    error: BaseException | None = None


class GroupCommitter:
    def __init__(self, db: Database, *, max_rows: int = MAX_ROWS_PER_COMMIT) -> None:
        self._db = db
        self._max_rows = max_rows
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._insert = _insert_json if db.dialect == "postgresql" else _insert_values

    def submit(self, store_id: int, rows: Sequence[dict[str, Any]], *, timeout: float = SUBMIT_TIMEOUT) -> int:
        """Insert ``rows`` for ``store_id``; returns how many were new once they are committed."""
        if not rows:
            return 0
        self._ensure_started()
        job = _Job(store_id, rows)
        self._queue.put(job)
        if not job.done.wait(timeout):
            raise CommitTimeout(f"no commit within {timeout:.0f} s")
        if job.error is not None:
            raise job.error
        return job.stored

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="espbridge-committer", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, rows = [first], len(first.rows)
            while rows < self._max_rows:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # finish this group, then stop
                    break
                jobs.append(job)
                rows += len(job.rows)
            self._commit_group(jobs)

    def _commit_group(self, jobs: list[_Job]) -> None:
        try:
            self._commit(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                log.error("commit failed: %s", exc)
                jobs[0].error = exc
            else:
                # Isolate: one request's rows must never fail the requests it happened to share a commit with.
                for job in jobs:
                    self._commit_group([job])
                return
        for job in jobs:
            job.done.set()

    def _commit(self, jobs: list[_Job]) -> None:
        owner: dict[tuple[int, str], _Job] = {}
        rows: list[dict[str, Any]] = []
        for job in jobs:
            job.stored = 0
            for row in job.rows:
                key = (job.store_id, row["message_id"])
                if key not in owner:
                    owner[key] = job
                    rows.append(row)
        with self._db.writer() as session:
            inserted = self._insert(session, rows)
        for store_id, message_id in inserted:
            owner[(store_id, message_id)].stored += 1


_COLUMNS = ("store_id", "message_id", "type", "name", "user_id", "anonymous_id", "timestamp", "received_at", "payload")
_INSERT_VALUES = (
    sqlite.insert(Event)
    .on_conflict_do_nothing(index_elements=["store_id", "message_id"])
    .returning(Event.store_id, Event.message_id)
)
#: The rows travel as one JSON document: the statement's text is the same for any number of rows, so psycopg
#: parses it once and the server prepares it once (a multi-row VALUES list is new text for every batch size,
#: parsed anew by psycopg in Python), and the whole batch is encoded by one C-speed json.dumps.
_INSERT_JSON = sa.text(
    f"INSERT INTO events ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(store_id integer, message_id varchar, type varchar, "
    "name varchar, user_id varchar, anonymous_id varchar, timestamp timestamptz, received_at timestamptz, "
    "payload jsonb) "
    "ON CONFLICT (store_id, message_id) DO NOTHING RETURNING store_id, message_id"
)


def _insert_values(session: Session, rows: list[dict[str, Any]]) -> Sequence[tuple[int, str]]:
    return [(r.store_id, r.message_id) for r in session.execute(_INSERT_VALUES, rows)]


def _insert_json(session: Session, rows: list[dict[str, Any]]) -> Sequence[tuple[int, str]]:
    document = json.dumps(rows, default=_iso, separators=(",", ":"))
    return [(r.store_id, r.message_id) for r in session.execute(_INSERT_JSON, {"rows": document})]


def _iso(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
