"""Engines and sessions. Built from Settings by the caller; nothing here is created at import time."""

from __future__ import annotations

import contextlib
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
    turn: contextlib.AbstractContextManager[object] = threading.RLock() if is_sqlite else contextlib.nullcontext()
    return Database(engine=engine, read=factory, write=writer, _write_turn=turn)


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
