"""The production shape on real processes: ``espbridge serve`` with Redis (no job threads in the web processes)
and a separate ``espbridge worker``.

commit → outbox → Redis → actor → done must work end to end; and when Redis restarts empty while no worker
runs, the worker's relay must re-send everything from the database (DESIGN §1: losing a queue loses no data).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from connector.store import Database, Event, OutboxRow, OutboxStatus
from connector.tenancy import NewStore
from tests.conftest import unprojected
from tests.services import RedisServer

from .conftest import Launcher
from .processes import ServiceProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SETTLE_TIMEOUT = 45.0
#: How long events must stay unprojected while no worker runs.
IDLE_SECONDS = 1.0


def _batch(tag: str, users: int = 3) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for n in range(users):
        user_id = f"{tag}-user-{n}"
        messages.append(
            {
                "type": "identify",
                "messageId": f"{tag}-id-{n}",
                "userId": user_id,
                "traits": {"email": f"{user_id}@ex.com"},
            }
        )
        messages.append(
            {
                "type": "track",
                "event": "Product Viewed",
                "messageId": f"{tag}-pv-{n}",
                "userId": user_id,
                "properties": {"product_id": f"p{n}", "price": 12.5, "variant": {"size": "S"}},
            }
        )
        messages.append({"type": "page", "name": "Home", "messageId": f"{tag}-page-{n}", "userId": user_id})
    return messages


def test_serve_and_worker_through_redis_survive_a_redis_restart(
    launcher: Launcher,
    service_env: dict[str, str],
    redis_server: RedisServer,
    store: NewStore,
    db: Database,
) -> None:
    queue = redis.Redis.from_url(redis_server.url)
    try:
        queue.flushdb()  # the Redis server is shared by the session; start from an empty queue
        env = {**service_env, "ESPBRIDGE_REDIS_URL": redis_server.url}
        # Given espbridge serve on Redis (its processes run no job threads) and one espbridge worker
        server = launcher.serve(env)
        worker = launcher.worker(env)

        # When a batch is acknowledged
        first = _batch("first")
        _post(server, store.write_key, first)
        # Then the worker projects it and delivers every outbox row it produced
        wait_until(lambda: _settled(db, store.id, len(first)), timeout=SETTLE_TIMEOUT, what="first batch to settle")

        # When the worker stops and another batch is acknowledged
        assert worker.stop() == 0, worker.failure("did not exit cleanly on SIGTERM")
        second = _batch("second")
        _post(server, store.write_key, second)
        time.sleep(IDLE_SECONDS)
        # Then nobody projects it: the web processes only queue a job in Redis
        assert unprojected(db, store.id) == len(second)
        assert queue.dbsize() > 0, "the web process queued no projection job in Redis"

        # When Redis restarts empty, losing that job, and the worker comes back
        redis_server.restart()
        assert queue.dbsize() == 0
        launcher.worker(env)
        # Then the worker's relay finds the work in the database: everything is projected and delivered
        wait_until(
            lambda: _settled(db, store.id, len(first) + len(second)),
            timeout=SETTLE_TIMEOUT,
            what="second batch to settle after the Redis restart",
        )
    finally:
        queue.close()


def _post(server: ServiceProcess, write_key: str, messages: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": messages}, auth=(write_key, ""), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": len(messages), "duplicates": 0}


def _settled(db: Database, store_id: int, events: int) -> dict[str, int] | None:
    """Outbox counts by status once all ``events`` are stored and projected and every outbox row is done."""
    with db.reader() as session:
        stored = session.scalar(sa.select(sa.func.count(Event.id)).where(Event.store_id == store_id))
        statuses = dict(
            session.execute(
                sa.select(OutboxRow.status, sa.func.count(OutboxRow.id))
                .where(OutboxRow.store_id == store_id)
                .group_by(OutboxRow.status)
            ).all()
        )
    if stored == events and unprojected(db, store_id) == 0 and statuses and set(statuses) == {OutboxStatus.DONE}:
        return statuses
    return None
