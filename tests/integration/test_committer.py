"""Group commit: concurrent requests share a transaction, yet each is answered for its own rows only."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.ingest.committer import CommitTimeout, GroupCommitter
from connector.store import Database, Event
from connector.tenancy import NewStore
from tests.conftest import post_messages, track

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def row(store_id: int, message_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "store_id": store_id,
        "message_id": message_id,
        "type": "track",
        "name": "Product Viewed",
        "user_id": "u1",
        "anonymous_id": None,
        "timestamp": NOW,
        "received_at": NOW,
        "payload": {"messageId": message_id},
        **overrides,
    }


def stored_ids(db: Database, store_id: int) -> list[str]:
    with db.reader() as session:
        return sorted(session.scalars(sa.select(Event.message_id).where(Event.store_id == store_id)))


@pytest.fixture
def committer(db: Database) -> Iterator[GroupCommitter]:
    committer = GroupCommitter(db)
    yield committer
    committer.close()


@pytest.fixture
def commits(db: Database) -> list[int]:
    """Counts transactions committed on the engine (one entry per commit)."""
    seen: list[int] = []
    sa.event.listen(db.engine, "commit", lambda _conn: seen.append(1))
    return seen


def submit_in_threads(committer: GroupCommitter, jobs: list[tuple[int, list[dict[str, Any]]]]) -> list[Any]:
    results: list[Any] = [None] * len(jobs)

    def run(i: int, store_id: int, rows: list[dict[str, Any]]) -> None:
        try:
            results[i] = committer.submit(store_id, rows)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def hold_first_commit_until(db: Database, committer: GroupCommitter, queued: int) -> threading.Event:
    """Block the first commit until ``queued`` more jobs wait in the committer's queue."""
    released = threading.Event()

    def before_commit(_conn: Any) -> None:
        if released.is_set():
            return
        deadline = time.monotonic() + 10
        while committer._queue.qsize() < queued and time.monotonic() < deadline:
            time.sleep(0.005)
        released.set()

    sa.event.listen(db.engine, "commit", before_commit)
    return released


@contextlib.contextmanager
def commit_in_progress(db: Database, committer: GroupCommitter, store: NewStore, *, queued: int) -> Iterator[None]:
    """A first request's commit is held while the body submits ``queued`` more; those then commit as one group."""
    released = hold_first_commit_until(db, committer, queued)
    first = threading.Thread(target=committer.submit, args=(store.id, [row(store.id, "warm-up")]))
    first.start()
    time.sleep(0.05)
    yield
    first.join(timeout=30)
    assert released.is_set()


def test_requests_waiting_together_share_one_commit(
    db: Database, committer: GroupCommitter, store: NewStore, commits: list[int]
) -> None:
    # Given a commit in progress while five more requests arrive
    with commit_in_progress(db, committer, store, queued=5):
        results = submit_in_threads(
            committer, [(store.id, [row(store.id, f"m{i}-a"), row(store.id, f"m{i}-b")]) for i in range(5)]
        )
    # Then the five were committed together, after the first: two commits in all, each told of its own rows
    assert results == [2, 2, 2, 2, 2]
    assert len(commits) == 2
    assert len(stored_ids(db, store.id)) == 11


def test_a_message_id_sent_twice_in_one_group_is_stored_once_and_counted_once(
    db: Database, committer: GroupCommitter, store: NewStore, other_store: NewStore
) -> None:
    with commit_in_progress(db, committer, store, queued=3):
        results = submit_in_threads(
            committer,
            [
                (store.id, [row(store.id, "same"), row(store.id, "a")]),
                (store.id, [row(store.id, "same"), row(store.id, "b")]),
                (other_store.id, [row(other_store.id, "same")]),
            ],
        )
    # The same messageId in one store is one event; in another store it is another message
    assert sorted(results) == [1, 1, 2]
    assert stored_ids(db, store.id) == ["a", "b", "same", "warm-up"]
    assert stored_ids(db, other_store.id) == ["same"]


def test_a_failing_request_fails_alone_and_its_group_mates_are_committed(
    db: Database, committer: GroupCommitter, store: NewStore
) -> None:
    with commit_in_progress(db, committer, store, queued=3):
        results = submit_in_threads(
            committer,
            [
                (store.id, [row(store.id, "good-1")]),
                (store.id, [row(store.id, "bad", type=None)]),  # NOT NULL violation
                (store.id, [row(store.id, "good-2")]),
            ],
        )
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], sa.exc.IntegrityError)
    assert stored_ids(db, store.id) == ["good-1", "good-2", "warm-up"]


def test_a_commit_that_does_not_finish_in_time_is_a_timeout_not_an_acknowledgement(
    db: Database, committer: GroupCommitter, store: NewStore
) -> None:
    stall = threading.Event()
    sa.event.listen(db.engine, "commit", lambda _conn: stall.wait(10))
    with pytest.raises(CommitTimeout):
        committer.submit(store.id, [row(store.id, "slow")], timeout=0.2)
    stall.set()


def test_a_commit_timeout_is_a_503_with_retry_after(
    client: FlaskClient, store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_slow(*_args: Any, **_kwargs: Any) -> int:
        raise CommitTimeout("no commit within 30 s")

    monkeypatch.setattr(GroupCommitter, "submit", too_slow)
    response = post_messages(client, store.write_key, [track("Product Viewed", "m1")])
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.get_json()["success"] is False


def test_close_finishes_queued_work_and_a_later_submit_starts_again(
    db: Database, committer: GroupCommitter, store: NewStore
) -> None:
    assert committer.submit(store.id, [row(store.id, "before")]) == 1
    committer.close()
    assert committer.submit(store.id, [row(store.id, "after")]) == 1
    assert stored_ids(db, store.id) == ["after", "before"]


def test_nothing_to_insert_needs_no_commit(committer: GroupCommitter, store: NewStore, commits: list[int]) -> None:
    assert committer.submit(store.id, []) == 0
    assert commits == []
