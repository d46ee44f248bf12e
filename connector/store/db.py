"""Engines and sessions. Built from Settings by the caller; nothing here is created at import time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from ..errors import AppendOnlyViolation
from .consent import ConsentLedgerEntry

APPEND_ONLY_MODELS: tuple[type[Any], ...] = (ConsentLedgerEntry,)


@dataclass(frozen=True)
class Database:
    """One engine and its two session factories.

    ``writer()`` sessions start with ``BEGIN IMMEDIATE`` on SQLite so a transaction that reads and then
    writes never fails half-way with SQLITE_BUSY, and the threads of one process take turns on a lock
    first: SQLite's busy handler polls with growing sleeps, so threads left to race for its write lock
    waste tens of milliseconds each. PostgreSQL needs neither.
    """

    engine: sa.Engine
    read: sessionmaker[Session]
    write: sessionmaker[Session]
    _write_turn: contextlib.AbstractContextManager[object] = field(default_factory=contextlib.nullcontext)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def writer(self) -> Iterator[Session]:
        """A session in a transaction that commits on success and rolls back on error."""
        with self._write_turn, self.write.begin() as session:
            yield session

    @contextlib.contextmanager
    def reader(self) -> Iterator[Session]:
        with self.read() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if isinstance(self._write_turn, WriteTurn):
            self._write_turn.close()


#: work_mem for one whole-store set-based computation (RFM snapshot, lifecycle, a full segment evaluation).
BULK_WORK_MEM = "64MB"


def bulk_work_mem(session: Session) -> None:
    """Give this transaction's sorts and hashes ``BULK_WORK_MEM`` on PostgreSQL (``SET LOCAL``: it ends with the
    transaction, pooled connections keep the server default).

    The default 4 MB suits many small concurrent queries; a statement that groups a store's million orders by
    contact spills its hash aggregate to disk in dozens of batches with it. Measured on the 1M-contact benchmark,
    the New Customers evaluation (an INSERT … SELECT, which PostgreSQL runs without parallel workers) took 21.4 s
    with 4 MB and 5.6 s with 64 MB. These computations run one at a time per store (nightly, or on demand), so the
    extra memory is bounded: a few hash tables of this size at once, on the server."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text(f"SET LOCAL work_mem = '{BULK_WORK_MEM}'"))


def connect(url: str, *, pool_size: int = 5) -> Database:
    """Create the engine for ``url`` with the settings each backend needs."""
    is_sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {}
    if not is_sqlite:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    engine = sa.create_engine(url, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    writer = sessionmaker(engine.execution_options(immediate=True), expire_on_commit=False)
    for maker in (factory, writer):
        event.listen(maker, "before_flush", _refuse_append_only_changes)
    turn: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if is_sqlite:
        path = engine.url.database
        turn = WriteTurn(f"{path}.write-turn") if path and path != ":memory:" else threading.RLock()
    return Database(engine=engine, read=factory, write=writer, _write_turn=turn)


class WriteTurn:
    """Writers to one SQLite file take turns on an OS file lock, across threads and processes.

    SQLite's own wait for its write lock is a busy handler that sleeps and polls (1 ms growing to 100 ms),
    so writers of several web processes racing for it lose tens of milliseconds a turn. ``flock`` puts
    them to sleep in the kernel and wakes the next one the moment the lock is free. Re-entrant within a
    thread; after ``fork()`` the child opens its own lock file (a shared descriptor would share the lock).
    Writers that do not use it (another program) still meet SQLite's busy handler, so nothing depends on it.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd = -1
        self._pid = 0

    def __enter__(self) -> WriteTurn:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth += 1
        return self

    def __exit__(self, *_exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, 0

    def _descriptor(self) -> int:
        if self._pid != os.getpid():
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd


def _configure_sqlite(engine: sa.Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; take control of it
    # (the recipe in SQLAlchemy's SQLite dialect docs) and choose IMMEDIATE for writer sessions.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed (acknowledged) transaction survives power loss too, not only a crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        immediate = connection.get_execution_options().get("immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _refuse_append_only_changes(session: Session, _context: Any, _instances: Any) -> None:
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, APPEND_ONLY_MODELS) and (obj in session.deleted or session.is_modified(obj)):
            raise AppendOnlyViolation(f"{type(obj).__name__} rows are append-only; refusing to change one")
