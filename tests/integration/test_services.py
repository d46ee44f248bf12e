"""The throwaway PostgreSQL/Redis launchers in tests/services.py really start usable servers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy

from tests import services
from tests.services import (
    PostgresServer,
    RedisServer,
    fail_on_service_error,
    free_port,
    start_postgres,
    start_redis,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with fail_on_service_error():
        server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with fail_on_service_error():
        server = start_redis()
    try:
        yield server
    finally:
        server.stop()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_postgres_create_connect_drop(postgres: PostgresServer) -> None:
    assert postgres.host == "127.0.0.1"
    assert postgres.url() == f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/postgres"
    url = postgres.create_database("espbridge_services_test")
    assert url == postgres.url("espbridge_services_test")

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1")).scalar_one() == 1
            assert conn.execute(sqlalchemy.text("select current_database()")).scalar_one() == (
                "espbridge_services_test"
            )
            assert conn.execute(sqlalchemy.text("show max_connections")).scalar_one() == "200"
            assert conn.execute(sqlalchemy.text("show server_encoding")).scalar_one() == "UTF8"
        # DROP ... WITH (FORCE) must succeed even while the pool still holds a connection.
        postgres.drop_database("espbridge_services_test")
    finally:
        engine.dispose()

    engine = sqlalchemy.create_engine(postgres.url())
    try:
        with engine.connect() as conn:
            names = conn.execute(sqlalchemy.text("select datname from pg_database")).scalars().all()
    finally:
        engine.dispose()
    assert "espbridge_services_test" not in names


def test_postgres_stop_removes_everything() -> None:
    with fail_on_service_error():
        server = start_postgres()
    basedir = server.basedir
    assert (server.datadir / "postmaster.pid").exists()
    server.stop()
    server.stop()  # idempotent
    assert not basedir.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0


def test_redis_set_get_restart(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_server.url) as client:
        client.set("espbridge:key", "value")
        assert client.get("espbridge:key") == b"value"

    port = redis_server.port
    redis_server.restart()
    assert redis_server.port == port

    with redis.Redis.from_url(redis_server.url, socket_timeout=5) as client:
        assert client.ping()
        assert client.get("espbridge:key") is None  # no persistence: a restart starts empty


def test_redis_stop_removes_everything(tmp_path: Path) -> None:
    with fail_on_service_error():
        server = start_redis(base_dir=tmp_path)
    basedir = server.basedir
    assert basedir.parent == tmp_path
    server.stop()
    server.stop()  # idempotent
    assert not basedir.exists()
    with (
        pytest.raises(redis.ConnectionError),
        redis.Redis.from_url(server.url, socket_connect_timeout=1) as c,
    ):
        c.ping()


def test_missing_binaries_fail_with_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config, initdb or redis-server on PATH
    monkeypatch.delenv("ESPBRIDGE_PG_BINDIR", raising=False)
    monkeypatch.delenv("ESPBRIDGE_REDIS_SERVER", raising=False)
    monkeypatch.setattr(services, "PG_VERSIONS_ROOT", tmp_path)
    monkeypatch.setattr(services, "REDIS_FALLBACK_PATHS", ())
    for start in (start_postgres, start_redis):
        with (
            pytest.raises(pytest.fail.Exception, match="apt-get install -y postgresql redis-server"),
            fail_on_service_error(),
        ):
            start()
    assert list(tmp_path.iterdir()) == []
