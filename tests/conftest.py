"""Shared fixtures. Every test that touches the store runs twice: on SQLite and on a real PostgreSQL.

- ``database_url``: a fresh, migrated database per test (copied from a template migrated once per session).
- ``db`` / ``settings`` / ``runtime`` / ``app`` / ``client``: the layers on top of it (flaskr's pattern).
- ``store`` / ``other_store``: tenants with write keys; ``admin_token(role)`` makes admin users.
- ``postgres_server`` / ``redis_server``: real servers started from the machine's binaries.
"""

from __future__ import annotations

import base64
import gzip as gzip_module
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from psycopg import sql

from connector import migrate
from connector.runtime import Runtime
from connector.settings import Settings
from connector.store import Database, Event, connect
from connector.tenancy import NewStore, create_admin_user, create_store
from tests.services import PostgresServer, RedisServer, fail_on_service_error, start_postgres, start_redis
from web import create_app

TEMPLATE_DB = "espbridge_template"
_counter = itertools.count()


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ESPBRIDGE_* variable of the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("ESPBRIDGE_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with fail_on_service_error():
        server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with fail_on_service_error():
        server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _postgres_template(postgres_server: PostgresServer) -> str:
    db = connect(postgres_server.create_database(TEMPLATE_DB))
    migrate.upgrade(db)
    db.dispose()
    return TEMPLATE_DB


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    db = connect(f"sqlite:///{path}")
    migrate.upgrade(db)
    db.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated database for this test, on the backend ``backend`` names."""
    if backend == "sqlite":
        path = tmp_path / "espbridge.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    template: str = request.getfixturevalue("_postgres_template")
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server.url().replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key="test-secret", relay_interval=0.05, retry_min_backoff=0.05)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = connect(settings.database_url)
    yield database
    database.dispose()


@pytest.fixture
def runtime(settings: Settings, db: Database) -> Iterator[Runtime]:
    """A Runtime with an embedded broker; background threads are not started (tests call tick/start)."""
    rt = Runtime(settings, db=db)
    yield rt
    rt.close()


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    flask_app = create_app(runtime=runtime)
    flask_app.config.update(TESTING=True)
    return flask_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(db: Database) -> NewStore:
    with db.writer() as session:
        return create_store(session, "Test Store", "Europe/Berlin")


@pytest.fixture
def other_store(db: Database) -> NewStore:
    with db.writer() as session:
        return create_store(session, "Other Store")


@pytest.fixture
def admin_token(db: Database, store: NewStore) -> Callable[..., str]:
    """``admin_token("viewer")`` creates a user with that role in ``store`` and returns their token."""
    counter = itertools.count()

    def make(role: str = "admin", store_id: int | None = None) -> str:
        with db.writer() as session:
            user = create_admin_user(session, store_id or store.id, f"user{next(counter)}-{role}@example.com", role)
        return user.token

    return make


def basic_auth(write_key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}


def post_messages(
    client: FlaskClient,
    write_key: str,
    messages: list[dict[str, Any]] | dict[str, Any],
    *,
    path: str = "/v1/batch",
    gzip: bool = False,
) -> Any:
    """POST ``messages`` (a list → /v1/batch envelope; a dict → as is) and return the response."""
    document = {"batch": messages} if isinstance(messages, list) else messages
    body = json.dumps(document).encode()
    headers = {**basic_auth(write_key), "Content-Type": "application/json"}
    if gzip:
        body = gzip_module.compress(body)
        headers["Content-Encoding"] = "gzip"
    return client.post(path, data=body, headers=headers)


def track(event: str, message_id: str, user_id: str | None = "u1", **properties: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": event, "messageId": message_id, "properties": properties}
    if user_id is not None:
        message["userId"] = user_id
    return message


def stored_counts(db: Database, store_id: int) -> dict[str, int]:
    """How many events the store holds per messageId."""
    query = (
        sa.select(Event.message_id, sa.func.count(Event.id))
        .where(Event.store_id == store_id)
        .group_by(Event.message_id)
    )
    with db.reader() as session:
        return {message_id: count for message_id, count in session.execute(query).all()}


def unprojected(db: Database, store_id: int) -> int:
    """How many of the store's stored events wait for projection."""
    query = sa.select(sa.func.count(Event.id)).where(Event.store_id == store_id, Event.projected_at.is_(None))
    with db.reader() as session:
        return session.scalar(query) or 0


def project_all(db: Database, store_id: int) -> int:
    """Run the projector until nothing is pending; returns how many events it projected."""
    from connector.ingest.projection import project_pending

    total = 0
    while count := project_pending(db, store_id):
        total += count
    return total
