"""Outbox → relay → broker → actor → done, on the embedded broker and on a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from connector import outbox
from connector.jobs.broker import EmbeddedBroker, build_broker
from connector.jobs.relay import enqueue_due, sweep_stalled
from connector.runtime import Runtime
from connector.settings import Settings
from connector.store import Database, OutboxRow, OutboxStatus
from connector.tenancy import NewStore
from tests.services import RedisServer


def _add_rows(db: Database, store: NewStore, count: int) -> list[int]:
    with db.writer() as session:
        for i in range(count):
            outbox.add(session, store.id, outbox.Topic.EVENT_TRACKED, i)
        session.flush()
        return list(session.scalars(sa.select(OutboxRow.id).order_by(OutboxRow.id)))


def _statuses(db: Database) -> dict[str, int]:
    with db.reader() as session:
        return dict(session.execute(sa.select(OutboxRow.status, sa.func.count()).group_by(OutboxRow.status)).all())


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_outbox_rows_commit_and_roll_back_with_the_change(db: Database, store: NewStore) -> None:
    with pytest.raises(RuntimeError), db.writer() as session:
        outbox.add(session, store.id, outbox.Topic.CONTACT_UPSERT, 1)
        raise RuntimeError("the change failed")
    assert _statuses(db) == {}
    _add_rows(db, store, 1)
    assert _statuses(db) == {"pending": 1}


def test_coalescing_topics_keep_one_pending_row_per_subject(db: Database, store: NewStore) -> None:
    with db.writer() as session:
        for _ in range(3):
            outbox.add(session, store.id, outbox.Topic.CONTACT_UPSERT, 7)
        outbox.add(session, store.id, outbox.Topic.CONTACT_UPSERT, 8)
    with db.reader() as session:
        assert sorted(session.scalars(sa.select(OutboxRow.subject_id))) == ["7", "8"]


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite writers cannot interleave: no race to lose there
def test_a_coalesced_change_is_not_delivered_before_it_commits(db: Database, store: NewStore) -> None:
    with db.writer() as session:
        outbox.add(session, store.id, outbox.Topic.CONTACT_UPSERT, 7)
    sent: list[int] = []
    with db.writer() as session:
        # A second change to contact 7 joins the pending row instead of adding one...
        outbox.add(session, store.id, outbox.Topic.CONTACT_UPSERT, 7)
        # ...so a relay ticking before it commits must not claim that row: its job would send the state from
        # before this change, and nothing would be left pending for the change itself.
        assert enqueue_due(db, sent.append) == 0
    assert enqueue_due(db, sent.append) == 1
    assert _statuses(db) == {"enqueued": 1}


def test_relay_claims_each_due_row_once(db: Database, store: NewStore) -> None:
    ids = _add_rows(db, store, 5)
    sent: list[int] = []
    # When two relays tick one after the other
    assert enqueue_due(db, sent.append) == 5
    assert enqueue_due(db, sent.append) == 0
    # Then every row went out exactly once and is marked enqueued
    assert sorted(sent) == ids
    assert _statuses(db) == {"enqueued": 5}


def test_sweeper_resends_rows_stuck_in_flight(db: Database, store: NewStore) -> None:
    ids = _add_rows(db, store, 2)
    enqueue_due(db, lambda _id: None)  # the messages are lost (broker flushed, worker killed)
    resent: list[int] = []
    assert sweep_stalled(db, resent.append, visibility_timeout=60) == 0  # not stale yet
    time.sleep(0.05)
    assert sweep_stalled(db, resent.append, visibility_timeout=0.01) == 2
    assert sorted(resent) == ids


def test_embedded_worker_delivers_every_row(runtime: Runtime, db: Database, store: NewStore) -> None:
    # Given rows in the outbox and a running embedded worker + relay
    _add_rows(db, store, 20)
    assert isinstance(runtime.broker, EmbeddedBroker)
    runtime.start_background()
    # Then the relay enqueues them, the actor fans them out to the store's ESPs (none here) and marks them done
    assert _wait_for(lambda: _statuses(db) == {"done": 20}), _statuses(db)


class FlakyFanOut:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, session: object, row: OutboxRow) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("database unreachable")
        return 0


def test_failed_delivery_is_retried_with_backoff_from_the_row(
    runtime: Runtime, db: Database, store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fan-out that fails twice
    monkeypatch.setattr("connector.sync.queue.fan_out", FlakyFanOut(failures=2))
    (row_id,) = _add_rows(db, store, 1)
    runtime.start_background()
    # Then the row is retried (attempts and last error kept on the row) until it succeeds
    assert _wait_for(lambda: _statuses(db) == {"done": 1}), _statuses(db)
    with db.reader() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None
        assert row.attempts == 3
        assert row.last_error == "ConnectionError: database unreachable"


def test_delivery_failing_past_max_age_is_dead(
    settings: Settings, db: Database, store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Runtime(settings.model_copy(update={"retry_max_age": 0.001}), db=db)
    monkeypatch.setattr("connector.sync.queue.fan_out", FlakyFanOut(failures=10**6))
    (row_id,) = _add_rows(db, store, 1)
    time.sleep(0.01)
    runtime.jobs.deliver_outbox.fn(row_id)
    with db.reader() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None and row.status == OutboxStatus.DEAD
        assert row.last_error == "ConnectionError: database unreachable"


@pytest.mark.integration
def test_redis_broker_path_runs_for_real(
    settings: Settings, db: Database, store: NewStore, redis_server: RedisServer
) -> None:
    # Given a Runtime on a real Redis broker with a real Dramatiq worker
    redis_settings = settings.model_copy(update={"redis_url": redis_server.url})
    broker = build_broker(redis_settings)
    assert type(broker).__name__ == "RedisBroker"
    broker.flush_all()
    runtime = Runtime(redis_settings, db=db, broker=broker)
    try:
        _add_rows(db, store, 10)
        runtime.start_background()
        # Then every row goes commit → outbox → Redis → actor → done
        assert _wait_for(lambda: _statuses(db) == {"done": 10}), _statuses(db)
    finally:
        runtime.close()


def test_actors_are_bound_to_the_runtime_broker_not_a_global(runtime: Runtime) -> None:
    assert runtime.jobs.project_events.broker is runtime.broker
    assert runtime.jobs.deliver_outbox.broker is runtime.broker
    assert runtime.jobs.sync_items.broker is runtime.broker
    assert {"project_events", "deliver_outbox", "sync_items"} <= runtime.broker.get_declared_actors()


def test_one_thread_per_process_works_a_store_s_projection_and_a_kick_makes_it_look_again(
    runtime: Runtime, store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = runtime.jobs
    turn = jobs._projection_turns[store.id]
    calls: list[int] = []

    def project_pending(_db: Database, store_id: int, *, batch_size: int, doi: object = None) -> int:
        calls.append(store_id)
        if len(calls) == 1:
            # A commit lands and kicks while this thread works: the other job leaves at once, marking the kick
            jobs._project_events(store_id)
        return 0

    monkeypatch.setattr("connector.jobs.tasks.project_pending", project_pending)
    jobs._project_events(store.id)
    # The kicked job did not project (it would only have waited); the working one looked once more instead
    assert calls == [store.id, store.id]
    assert not turn.lock.locked()
