"""kill -9 of the whole ``espbridge serve`` process group under load loses no acknowledged message.

A 200 means committed (DESIGN §3), so every messageId acknowledged before the crash must be stored exactly
once after it. The embedded broker dies with the processes, taking queued projection and delivery jobs with it;
after a restart on the same database the relay must find that work in the database and finish it.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from connector.store import Database, OutboxRow, OutboxStatus
from connector.tenancy import NewStore
from tests.conftest import stored_counts, unprojected

from .conftest import Launcher
from .processes import wait_until

pytestmark = pytest.mark.slow

BATCHES = 40
BATCH_SIZE = 50
SENDERS = 4
KILL_AFTER_ACKED_BATCHES = 10
USERS = 120
SEND_TIMEOUT = 60.0
RECOVERY_TIMEOUT = 60.0
#: The restarted server re-sends outbox rows a dead broker held after this many seconds (default 300).
VISIBILITY_TIMEOUT = "2"


def _message(batch: int, index: int) -> dict[str, Any]:
    n = batch * BATCH_SIZE + index
    user_id = f"crash-user-{n % USERS}"
    message_id = f"crash-{batch:03d}-{index:03d}"
    if index % 10 == 0:
        return {
            "type": "identify",
            "messageId": message_id,
            "userId": user_id,
            "traits": {"email": f"{user_id}@example.com", "visits": n},
        }
    if index % 3 == 0:
        properties = {"product_id": f"p{n % 17}", "price": 9.5 + n % 5, "position": {"list": "home", "slot": index}}
        return {
            "type": "track",
            "event": "Product Viewed",
            "messageId": message_id,
            "userId": user_id,
            "properties": properties,
        }
    return {"type": "page", "name": "Home", "messageId": message_id, "userId": user_id, "properties": {"n": n}}


def test_kill_9_under_load_loses_no_acknowledged_message(
    launcher: Launcher, service_env: dict[str, str], store: NewStore, db: Database
) -> None:
    # Given espbridge serve (2 workers x 4 threads, embedded broker) taking batches from concurrent senders
    server = launcher.serve(service_env)
    work: queue.Queue[list[dict[str, Any]]] = queue.Queue()
    for batch in range(BATCHES):
        work.put([_message(batch, index) for index in range(BATCH_SIZE)])
    lock = threading.Lock()
    acked: list[str] = []
    acked_batches = 0
    refused: list[str] = []
    transport_errors: list[str] = []
    enough = threading.Event()

    def send() -> None:
        nonlocal acked_batches
        with httpx.Client(base_url=server.url, auth=(store.write_key, ""), timeout=SEND_TIMEOUT) as http:
            while True:
                try:
                    batch = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    response = http.post("/v1/batch", json={"batch": batch})
                except httpx.TransportError as exc:  # the crash cut this request off: not acknowledged
                    with lock:
                        transport_errors.append(repr(exc))
                    continue
                with lock:
                    if response.status_code == 200 and response.json().get("accepted") == BATCH_SIZE:
                        acked.extend(message["messageId"] for message in batch)
                        acked_batches += 1
                        if acked_batches >= KILL_AFTER_ACKED_BATCHES:
                            enough.set()
                    else:
                        refused.append(f"{response.status_code} {response.text[:300]}")

    senders = [threading.Thread(target=send, name=f"sender-{i}", daemon=True) for i in range(SENDERS)]
    for thread in senders:
        thread.start()

    # When the whole process group is killed with SIGKILL while batches are still being sent
    assert enough.wait(SEND_TIMEOUT), f"only {acked_batches} batches acknowledged; refused: {refused[:3]}"
    os.killpg(server.pgid, signal.SIGKILL)
    for thread in senders:
        thread.join(SEND_TIMEOUT)
    assert not any(thread.is_alive() for thread in senders), "a sender hung after the crash"
    server.kill()  # reap the group leader
    assert refused == []
    assert acked_batches < BATCHES, "every batch was acknowledged before the kill: nothing was in flight"
    assert transport_errors, "no request was cut off by the kill"

    # And espbridge serve is started again on the same database
    restarted_env = {**service_env, "ESPBRIDGE_OUTBOX_VISIBILITY_TIMEOUT": VISIBILITY_TIMEOUT}
    launcher.serve(restarted_env)

    # Then every acknowledged message is stored, exactly once
    stored = stored_counts(db, store.id)
    missing = sorted(set(acked) - set(stored))
    assert missing == [], f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    assert {message_id: n for message_id, n in stored.items() if n != 1} == {}

    # And every stored event is projected and every outbox row delivered: the relay recovered the jobs the
    # killed embedded broker held
    wait_until(lambda: _settled(db, store.id), timeout=RECOVERY_TIMEOUT, what="projection and delivery to finish")
    assert unprojected(db, store.id) == 0
    assert set(_outbox_statuses(db, store.id)) == {OutboxStatus.DONE}


def _outbox_statuses(db: Database, store_id: int) -> dict[str, int]:
    with db.reader() as session:
        rows = session.execute(
            sa.select(OutboxRow.status, sa.func.count(OutboxRow.id))
            .where(OutboxRow.store_id == store_id)
            .group_by(OutboxRow.status)
        ).all()
    return {status: count for status, count in rows}


def _settled(db: Database, store_id: int) -> tuple[int, dict[str, int]] | None:
    pending, statuses = unprojected(db, store_id), _outbox_statuses(db, store_id)
    if pending == 0 and statuses and set(statuses) == {OutboxStatus.DONE}:
        return pending, statuses
    return None
