"""The sync engine through ESP faults, on the production shape: real PostgreSQL and Redis, ``espbridge serve``,
``espbridge worker`` and the ESP sandbox, each a real process.

Identifies, tracks and consents go in through the ingestion API while the sandbox answers, in turn, with a 5xx
storm, a 429 storm, requests held past the adapter's HTTP timeout, and while the worker is killed (-9) in the middle
of a batch and replaced. Afterwards every sync item settles, and the sandbox holds every acknowledged event exactly
once, every profile in the state of its contact's last identify, and every subscription as last set.

Each phase has its own users, identified last in that phase, so the final state checks each phase's convergence,
not only the last one's. Only PostgreSQL: the fault handling (adapter, engine, relay, sweeper) is the same code on
both databases, the shape with Redis and a separate worker is the PostgreSQL deployment, and the SQLite paths of
the engine (claims without SKIP LOCKED, link upserts) run in tests/integration/test_sync_engine.py.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from pydantic import SecretStr

from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.store import Database, Event, OutboxRow, OutboxStatus, SyncItem, SyncItemStatus, SyncKind
from connector.tenancy import NewStore
from tests.conftest import unprojected
from tests.services import RedisServer

from .conftest import Launcher
from .processes import ServiceProcess, wait_until
from .sandbox_support import SandboxAdmin, event_unique_ids, running_sandbox

pytestmark = [pytest.mark.slow, pytest.mark.integration]

API_KEY = "pk_e2e_sync_faults"
#: The sandbox's --time-scale and the connection's rate_limit_scale: the limiter's windows match the sandbox's.
TIME_SCALE = 10.0
#: The adapter's HTTP timeout (connection setting "timeout"), and how long the sandbox holds a "timed out" request.
HTTP_TIMEOUT = 2.0
HOLD = 4.0
#: Slow-down of every request while the worker is killed, so that a batch is surely in flight.
SLOW = 2.0
STORM = 12  # 429s in the 429 storm
PHASES = ("5xx", "429", "timeout", "kill")
USERS_PER_PHASE = 5
SETTLE_TIMEOUT = 45.0
PHASE_TIMEOUT = 25.0


def _user(phase: int, n: int) -> str:
    return f"p{phase}-user-{n}"


def _status(round_: int, n: int) -> str:
    return "subscribed" if (round_ + n) % 2 == 0 else "unsubscribed"


def _round(round_: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Round 0 reaches every user; round k (the k-th fault phase) the users of phases k and later, so each user's
    last identify and consent are in the round of their phase. Returns the messages and the tracks' messageIds."""
    timestamp = dt.datetime.now(dt.UTC).isoformat()
    messages: list[dict[str, Any]] = []
    tracks: list[str] = []
    for phase in range(1, len(PHASES) + 1):
        if round_ > phase:
            continue
        for n in range(USERS_PER_PHASE):
            user = _user(phase, n)
            common = {"userId": user, "timestamp": timestamp}
            messages.append(
                {
                    "type": "identify",
                    "messageId": f"r{round_}-identify-{user}",
                    "traits": {"email": f"{user}@example.com", "firstName": f"Round{round_}", "round": round_},
                }
                | common
            )
            for event, properties in (
                ("Product Viewed", {"product_id": f"sku-{round_}-{n}", "round": round_}),
                ("Consent Updated", {"channel": "email", "status": _status(round_, n)}),
            ):
                message_id = f"r{round_}-{event.split()[0].lower()}-{user}"
                messages.append(
                    {"type": "track", "event": event, "messageId": message_id, "properties": properties} | common
                )
                tracks.append(message_id)
    return messages, tracks


def _post(server: ServiceProcess, write_key: str, messages: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": messages}, auth=(write_key, ""), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": len(messages), "duplicates": 0}


def _item_statuses(db: Database, store_id: int) -> Counter[str]:
    with db.reader() as session:
        rows = session.execute(
            sa.select(SyncItem.status, sa.func.count(SyncItem.id))
            .where(SyncItem.store_id == store_id)
            .group_by(SyncItem.status)
        ).all()
    return Counter({status: count for status, count in rows})


def _settled(db: Database, store_id: int, stored: int) -> Counter[str] | None:
    """Sync item counts once every message is stored and projected, every outbox row fanned out and every sync
    item settled (no pending, enqueued or dead item)."""
    with db.reader() as session:
        events = session.scalar(sa.select(sa.func.count(Event.id)).where(Event.store_id == store_id))
        outbox = session.scalar(
            sa.select(sa.func.count(OutboxRow.id)).where(
                OutboxRow.store_id == store_id, OutboxRow.status != OutboxStatus.DONE
            )
        )
    if events != stored or outbox or unprojected(db, store_id):
        return None
    statuses = _item_statuses(db, store_id)
    return statuses if statuses and set(statuses) == {SyncItemStatus.DONE} else None


def _statuses(requests: list[dict[str, Any]]) -> Counter[int | None]:
    return Counter(entry["status"] for entry in requests)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_sync_survives_5xx_429_timeouts_and_a_killed_worker(
    launcher: Launcher,
    service_env: dict[str, str],
    redis_server: RedisServer,
    store: NewStore,
    db: Database,
    tmp_path: Path,
) -> None:
    queue = redis.Redis.from_url(redis_server.url)
    queue.flushdb()  # the Redis server is shared by the session: no job or limiter key of another test
    queue.close()
    credentials_key = new_key()
    env = {
        **service_env,
        "ESPBRIDGE_REDIS_URL": redis_server.url,
        "ESPBRIDGE_CREDENTIALS_KEY": credentials_key,
        "ESPBRIDGE_RETRY_MIN_BACKOFF": "0.2",
        "ESPBRIDGE_RETRY_MAX_BACKOFF": "2",
        "ESPBRIDGE_OUTBOX_VISIBILITY_TIMEOUT": "5",
    }
    with running_sandbox(tmp_path, api_key=API_KEY, time_scale=TIME_SCALE) as sandbox:
        admin = SandboxAdmin(sandbox.url)
        try:
            _run(launcher, env, credentials_key, store, db, sandbox, admin)
        finally:
            admin.close()


def _run(
    launcher: Launcher,
    env: dict[str, str],
    credentials_key: str,
    store: NewStore,
    db: Database,
    sandbox: ServiceProcess,
    admin: SandboxAdmin,
) -> None:
    # Given the store connected to the sandbox (the key encrypted with the processes' ESPBRIDGE_CREDENTIALS_KEY),
    # espbridge serve on Redis and one espbridge worker
    with db.writer() as session:
        connections.connect(
            session,
            CredentialCipher(SecretStr(credentials_key)),
            store.id,
            "klaviyo",
            api_key=API_KEY,
            base_url=sandbox.url,
            settings={"rate_limit_scale": TIME_SCALE, "timeout": HTTP_TIMEOUT},
        )
    server = launcher.serve(env)
    worker = launcher.worker(env)
    stored = 0
    tracked: list[str] = []

    def post_round(round_: int) -> None:
        nonlocal stored
        messages, tracks = _round(round_)
        _post(server, store.write_key, messages)
        stored += len(messages)
        tracked.extend(tracks)

    def settle(what: str) -> None:
        wait_until(lambda: _settled(db, store.id, stored), timeout=SETTLE_TIMEOUT, what=what)

    def answered(status: int, at_least: int) -> Callable[[], int | None]:
        def probe() -> int | None:
            count = _statuses(admin.requests())[status]
            return count if count >= at_least else None

        return probe

    # Round 0 goes through without faults
    post_round(0)
    settle("round 0 to reach the sandbox")

    # When the sandbox answers every request with a 503 for a while (every kind of item fails and is retried)
    admin.set_faults(error_rate=1.0, error_status=503)
    post_round(1)
    wait_until(answered(503, 8), timeout=PHASE_TIMEOUT, what="503s")
    wait_until(lambda: _retried(db, store.id) >= 3, timeout=PHASE_TIMEOUT, what="items retried after 503s")
    admin.set_faults()

    # And then answers the next STORM requests with a 429 (Retry-After: 1)
    admin.set_faults(storm_429=STORM, storm_retry_after=1)
    post_round(2)
    wait_until(lambda: admin.faults()["storm_429"] == 0, timeout=PHASE_TIMEOUT, what="the 429 storm to pass")
    admin.set_faults()

    # And then holds half of the requests longer than the adapter's HTTP timeout (then answers 504, no effect)
    admin.set_faults(timeout_rate=0.5, timeout_seconds=HOLD, seed=7)
    post_round(3)
    # (the adapter gave up after HTTP_TIMEOUT: an item failed with a timeout, not with the 504 that came later)
    wait_until(lambda: _failed_with(db, store.id, "timed out"), timeout=PHASE_TIMEOUT, what="an HTTP timeout")
    wait_until(answered(504, 3), timeout=PHASE_TIMEOUT, what="requests held past the HTTP timeout")
    admin.set_faults()

    # And then the worker is killed (-9) while an event request of a batch is in flight, and a new one starts
    # (first, the requests still held by the timeout phase end, so that "in flight" means this phase's)
    wait_until(lambda: None not in _statuses(admin.requests()), timeout=HOLD + 2, what="held requests to end")
    admin.set_faults(slow_seconds=SLOW)
    post_round(4)
    wait_until(
        lambda: [
            e
            for e in admin.requests()
            if e["status"] is None and e["operation"] in ("create_event", "bulk_create_events")
        ],
        timeout=PHASE_TIMEOUT,
        what="an event request in flight",
    )
    worker.kill()
    in_flight = _enqueued_events(db, store.id)  # what the killed worker held: the sweeper sends it again
    admin.set_faults()
    assert in_flight, "no event item was in the killed worker's hands"
    launcher.worker(env)

    # Then every sync item settles (done: none dead, none pending)
    settle("every sync item to settle after the faults")
    wait_until(lambda: None not in _statuses(admin.requests()), timeout=HOLD + SLOW, what="held requests to end")
    state = admin.state()
    requests = admin.requests()

    # The faults happened: 503s, 504s after the hold, items were retried, and the 429s were exactly the storm's
    # (no request exceeded the sandbox's own rate-limit windows, scaled like the limiter's)
    statuses = _statuses(requests)
    assert statuses[503] >= 8 and statuses[504] >= 3, statuses
    assert statuses[429] == STORM, statuses
    assert _retried(db, store.id) >= 3

    # Every acknowledged event is at the sandbox exactly once: none missing, none extra, none recorded twice
    recorded = Counter(event["unique_id"] for event in state["events"])
    assert set(recorded) == set(tracked), (set(tracked) - set(recorded), set(recorded) - set(tracked))
    assert {uid: n for uid, n in recorded.items() if n != 1} == {}

    # The sandbox itself drops a repeated unique_id, so the state alone cannot show whether we sent an event twice.
    # The accepted (2xx) requests can: an event was delivered more than once only if the killed worker held it
    # (its request reached the sandbox but the worker died before recording the outcome; the sweeper sent it
    # again). A 5xx, 429 or timed-out request took no effect at the sandbox, so its retry is no duplicate.
    delivered = Counter(
        uid for entry in requests if 200 <= (entry["status"] or 0) < 300 for uid in event_unique_ids(entry)
    )
    assert set(delivered) == set(tracked)
    twice = {uid: n for uid, n in delivered.items() if n > 1}
    assert set(twice) <= in_flight, sorted(set(twice) - in_flight)
    # ...and those re-deliveries are exactly what the sandbox deduplicated (its unique_id dedupe absorbed them)
    assert state["events_deduplicated"] == sum(n - 1 for n in twice.values())
    # The kill did catch an event request in flight, so at least one event was delivered twice and absorbed
    assert twice, "the in-flight event request of the killed worker was not sent again"

    # Every profile is in the state of its contact's last identify (each phase's users were last identified in
    # that phase's round), one profile per contact, and every email subscription is as last set
    profiles = {p["attributes"]["email"]: p for p in state["profiles"]}
    assert len(state["profiles"]) == len(PHASES) * USERS_PER_PHASE
    for phase in range(1, len(PHASES) + 1):
        for n in range(USERS_PER_PHASE):
            profile = profiles[f"{_user(phase, n)}@example.com"]
            attributes = profile["attributes"]
            where = f"{PHASES[phase - 1]} phase, {_user(phase, n)}"
            assert attributes["first_name"] == f"Round{phase}", where
            assert attributes["properties"]["round"] == phase, where
            expected = "SUBSCRIBED" if _status(phase, n) == "subscribed" else "UNSUBSCRIBED"
            assert state["subscriptions"].get(profile["id"], {}).get("email") == expected, where


def _retried(db: Database, store_id: int) -> int:
    """Sync items that needed more than one attempt."""
    with db.reader() as session:
        return (
            session.scalar(
                sa.select(sa.func.count(SyncItem.id)).where(SyncItem.store_id == store_id, SyncItem.attempts > 1)
            )
            or 0
        )


def _failed_with(db: Database, store_id: int, text: str) -> int:
    """Sync items waiting for a retry after an error mentioning ``text``."""
    with db.reader() as session:
        query = sa.select(sa.func.count(SyncItem.id)).where(
            SyncItem.store_id == store_id,
            SyncItem.status == SyncItemStatus.PENDING,
            SyncItem.last_error.contains(text),
        )
        return session.scalar(query) or 0


def _enqueued_events(db: Database, store_id: int) -> set[str]:
    """messageIds of the event items enqueued (handed to a worker, outcome not recorded)."""
    with db.reader() as session:
        query = (
            sa.select(Event.message_id)
            .join(SyncItem, sa.cast(SyncItem.subject_id, sa.BigInteger) == Event.id)
            .where(
                SyncItem.store_id == store_id,
                SyncItem.kind == SyncKind.EVENT,
                SyncItem.status == SyncItemStatus.ENQUEUED,
            )
        )
        return set(session.scalars(query))
