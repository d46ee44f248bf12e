"""The shared rate limiter (connector/sync/ratelimit.py) on a real Redis and in memory.

Every test runs on both stores. On Redis, two ``SharedRateLimiter`` instances with their own connections stand for
two workers (two processes, or two machines) sharing one account's budget. In memory they stand for two worker
threads of one process: each thread builds its own adapter (``AdapterCache`` is per thread), hence its own
limiter, and they must still share the process's budget.

``time_scale`` shortens the windows so that each test takes well under a second of waiting. Timing assertions
are tight where the limiter decides (never sooner than a window allows) and leave room for a busy machine where
only the scheduler does (``LATE``); the limits checked are the documented (scaled) windows, which the limiter's
``margin`` is there to keep us under.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import httpx
import pytest
import redis
from pydantic import SecretStr

from connector.esp.connections import Connection
from connector.esp.errors import RateLimited
from connector.esp.klaviyo import KlaviyoProfile
from connector.esp.klaviyo_adapter import KlaviyoAdapter
from connector.sandbox.klaviyo import KlaviyoSandbox
from connector.sync.adapters import AdapterOptions, build_adapter
from connector.sync.ratelimit import MARGIN, MIN_MARGIN, SharedRateLimiter, Window, account_key
from tests.services import RedisServer

pytestmark = pytest.mark.integration

#: How much later than due a thread may wake on a busy machine, in seconds (upper bounds only).
LATE = 0.15
#: Clock granularity (Redis TIME against time.monotonic), for lower bounds.
EPSILON = 0.01

Limits = Mapping[str, tuple[Window, ...]]
MakeLimiter = Callable[..., SharedRateLimiter]


def lengthened(seconds: float) -> float:
    """A window's length as the limiter enforces it (the documented length plus its margin)."""
    return seconds + max(seconds * MARGIN, MIN_MARGIN)


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> Iterator[MakeLimiter]:
    """``make_limiter(limits, **options)``: a new limiter instance on this test's own account (a "worker")."""
    account = account_key("klaviyo", f"pk_test_{uuid.uuid4().hex}")
    clients: list[redis.Redis] = []

    def make(limits: Limits, **options: Any) -> SharedRateLimiter:
        client = None
        if request.param == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            client = redis.Redis.from_url(server.url)
            clients.append(client)
        return SharedRateLimiter(account, limits, redis_client=client, **options)

    yield make
    for client in clients:
        client.close()


def crowded(acquisitions: list[tuple[float, float]], limit: int, length: float) -> list[float] | None:
    """``limit + 1`` acquisitions that surely fell inside one interval of ``length`` seconds, or None.

    Each acquisition is known to have been counted between ``a`` and ``b`` (the last try began at ``a``, returned
    at ``b``), so the check cannot be fooled by a thread descheduled before it noted the time: for every sliding
    interval, starting at each ``a``, it takes the ``limit + 1`` acquisitions that ended soonest.
    """
    for start, _ in acquisitions:
        ends = sorted(b for a, b in acquisitions if a >= start)
        if len(ends) > limit and ends[limit] - start < length:
            return [start, *ends[: limit + 1]]
    return None


def test_never_more_than_the_limit_in_any_window_across_workers(make_limiter: MakeLimiter) -> None:
    # Given two workers (limiter instances on one account), each hammering one operation from three threads
    limit, scale, seconds = 4, 5.0, 1.2
    window = 1.0 / scale  # the documented window, scaled: 0.2 s
    woke = threading.local()

    def sleep(seconds: float) -> None:  # the limiter's sleep: notes when the thread tries again
        time.sleep(seconds)
        woke.at = time.monotonic()

    limits = {"op": (Window(limit, 1.0),)}
    workers = [make_limiter(limits, time_scale=scale, max_wait=2.0, sleep=sleep) for _ in range(2)]
    acquisitions: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def hammer(limiter: SharedRateLimiter) -> None:
        try:
            while time.monotonic() < deadline:
                woke.at = time.monotonic()
                limiter.acquire("op")
                returned = time.monotonic()  # the request would leave now
                with lock:
                    acquisitions.append((woke.at, returned))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in workers for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 5)
    assert not any(t.is_alive() for t in threads), "a thread is still blocked in acquire"
    assert errors == []

    # Then no interval of the window's length holds more than `limit` acquisitions, whichever worker made them
    assert crowded(acquisitions, limit, window) is None, sorted(acquisitions)
    # And the budget was used, not merely refused: close to `limit` per lengthened window over the run
    assert len(acquisitions) >= limit * int(seconds / lengthened(window)) * 0.75, len(acquisitions)


def test_both_windows_hold_together_and_a_full_steady_window_costs_no_burst_slot(make_limiter: MakeLimiter) -> None:
    # burst 3 per 0.25 s, steady 5 per 1 s (the documented 1 s / 4 s, scaled by 4)
    limiter = make_limiter({"op": (Window(3, 1.0), Window(5, 4.0))}, time_scale=4.0)
    burst, steady = lengthened(0.25), lengthened(1.0)
    t0 = time.monotonic()
    assert [limiter.try_acquire("op") for _ in range(3)] == [0.0, 0.0, 0.0]
    first_three = time.monotonic() - t0
    # The burst window is full: the wait is what is left of it
    wait = limiter.try_acquire("op")
    assert burst - (time.monotonic() - t0) - EPSILON <= wait <= burst, wait
    time.sleep(wait)
    assert [limiter.try_acquire("op") for _ in range(2)] == [0.0, 0.0]
    # Now the burst window has room (2 of 3) but the steady one is full (5 of 5): refused until the steady frees
    wait = limiter.try_acquire("op")
    elapsed = time.monotonic() - t0
    assert steady - elapsed - EPSILON <= wait <= steady - elapsed + LATE, (wait, elapsed)
    assert wait > burst  # the steady window decides, although the burst one has room

    # When a worker keeps asking while the steady window is full (refused every 10 ms, many times the burst)
    refused = 0
    first_success = None
    while time.monotonic() - t0 < steady + 1.0:
        wait = limiter.try_acquire("op")
        if wait == 0:
            first_success = time.monotonic() - t0
            break
        refused += 1
        time.sleep(min(wait, 0.01))
    assert first_success is not None, "never allowed again"
    assert refused > 3 * 3  # enough refusals in the last burst window to have filled it thrice
    # Then the refusals counted in no window: the request goes as soon as the steady window frees...
    assert steady - EPSILON <= first_success <= steady + LATE, first_success
    # ...and the whole burst is still there (3 at once), then both windows are full again
    # (after the other two first entries, counted just after the first one, leave the steady window too; the
    # refusals of the last 0.25 s would still fill the burst window if they had been counted)
    time.sleep(first_three + 0.05)
    assert [limiter.try_acquire("op") for _ in range(2)] == [0.0, 0.0]
    assert limiter.try_acquire("op") > 0


def test_acquire_blocks_until_the_oldest_entry_expires(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter({"op": (Window(2, 1.0),)}, time_scale=4.0)
    other = make_limiter({"op": (Window(2, 1.0),)}, time_scale=4.0)
    window = lengthened(0.25)
    t0 = time.monotonic()
    limiter.acquire("op")
    limiter.acquire("op")
    assert limiter.waited == 0  # room for two: no wait
    # The third request, from another worker, blocks until the oldest of the two leaves the window
    other.acquire("op")
    blocked = time.monotonic() - t0
    assert window - EPSILON <= blocked <= window + LATE, blocked
    assert blocked >= 0.25  # never sooner than the documented window
    assert window - LATE <= other.waited <= window + EPSILON, other.waited


def test_a_pause_holds_every_worker(make_limiter: MakeLimiter) -> None:
    limits = {"op": (Window(100, 1.0),), "other": (Window(100, 1.0),)}
    got_429, peer = make_limiter(limits), make_limiter(limits)
    # When one worker gets a 429 with Retry-After and pauses the operation
    got_429.pause("op", 0.4)
    # Then another worker is told to wait for it, for that operation only
    paused_at = time.monotonic()
    wait = peer.try_acquire("op")
    assert 0.4 - LATE < wait <= 0.4, wait
    assert peer.try_acquire("other") == 0
    started = time.monotonic()
    peer.acquire("op")
    done = time.monotonic()
    assert done - paused_at >= 0.4 - EPSILON  # not before the pause ends
    assert done - started <= 0.4 + LATE
    # And a pause of nothing changes nothing
    peer.pause("other", 0)
    peer.pause("other", -3)
    assert peer.try_acquire("other") == 0


def test_max_wait_raises_rate_limited_with_retry_after(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter({"op": (Window(1, 10.0),), "paused": (Window(10, 1.0),)}, max_wait=0.5)
    limiter.acquire("op")
    with pytest.raises(RateLimited) as raised:
        limiter.acquire("op")  # the next slot is 10 s away, beyond max_wait: no sleeping at all
    assert limiter.waited == 0
    assert raised.value.retry_after is not None
    assert lengthened(10.0) - 1.0 < raised.value.retry_after <= lengthened(10.0), raised.value.retry_after
    # A pause longer than max_wait raises too, with the pause's remainder
    limiter.pause("paused", 3.0)
    with pytest.raises(RateLimited) as raised:
        limiter.acquire("paused")
    assert raised.value.retry_after is not None and 2.5 < raised.value.retry_after <= 3.0
    # A wait within max_wait is waited out
    patient = make_limiter({"short": (Window(10, 1.0),)}, max_wait=0.5)
    paused_at = time.monotonic()
    patient.pause("short", 0.2)
    started = time.monotonic()
    patient.acquire("short")
    done = time.monotonic()
    assert done - paused_at >= 0.2 - EPSILON  # not before the pause ends
    assert done - started <= 0.2 + LATE
    assert 0 < patient.waited <= 0.2


def test_redis_keys_name_the_account_by_digest_never_by_api_key(redis_server: RedisServer) -> None:
    api_key = f"pk_S3cretKlaviyoKey{uuid.uuid4().hex}"
    account = account_key("klaviyo", api_key)
    assert api_key not in account and api_key[3:11] not in account
    assert account == account_key("klaviyo", api_key) != account_key("klaviyo", api_key + "x")
    client = redis.Redis.from_url(redis_server.url)
    try:
        # When the real adapter (built from a stored connection) sends a request through the shared limiter
        sandbox = KlaviyoSandbox(api_keys=[api_key])
        connection = Connection(1, "klaviyo", "http://127.0.0.1", SecretStr(api_key), {})
        options = AdapterOptions(redis_client=client, transport=httpx.WSGITransport(app=sandbox))
        adapter = cast(KlaviyoAdapter, build_adapter(connection, options))
        try:
            adapter.client.import_profile(KlaviyoProfile(email="ada@example.com"))
        finally:
            adapter.close()
        limiter = SharedRateLimiter(account, {"create_or_update_profile": (Window(1, 1.0),)}, redis_client=client)
        limiter.pause("create_or_update_profile", 5.0)
        # Then the keys it left name the account by its digest; neither keys nor values carry the API key
        ours = sorted(k.decode() for k in client.scan_iter(match=f"espbridge:rl:{account}:*"))
        assert f"espbridge:rl:{account}:create_or_update_profile:0" in ours
        assert f"espbridge:rl:{account}:create_or_update_profile:paused" in ours
        for key in client.scan_iter(match="*"):
            assert api_key.encode() not in key
            kind = client.type(key)
            if kind == b"zset":
                members = cast(list[bytes], client.zrange(key, 0, -1))
            elif kind == b"string":
                members = [cast(bytes, client.get(key) or b"")]
            else:
                continue
            assert all(api_key.encode() not in member for member in members), key
        # And every key of ours expires on its own (an account that stops sending leaves nothing behind)
        assert all(0 < client.pttl(key) <= 63_000 for key in ours), {k: client.pttl(k) for k in ours}
    finally:
        client.close()


def test_named_windows_are_one_budget_for_every_operation_listing_them(make_limiter: MakeLimiter) -> None:
    # ActiveCampaign: 5 requests/s for the whole account, and the bulk import also its own per-minute window
    limits = {
        "contact_sync": (Window(5, 1.0, "account"),),
        "contact_lists": (Window(5, 1.0, "account"),),
        "bulk_import": (Window(5, 1.0, "account"), Window(2, 60.0, "bulk")),
    }
    worker, peer = make_limiter(limits), make_limiter(limits)
    # Two operations of two workers draw on one budget: the sixth request of the second, whatever it is, waits
    assert [worker.try_acquire("contact_sync") for _ in range(3)] == [0.0] * 3
    assert [peer.try_acquire("contact_lists") for _ in range(2)] == [0.0] * 2
    assert peer.try_acquire("bulk_import") > 0
    assert worker.try_acquire("contact_sync") > 0
    # A refusal by one window counts in none: once the account window frees, the bulk window has both slots
    time.sleep(lengthened(1.0) + EPSILON)
    assert [peer.try_acquire("bulk_import") for _ in range(2)] == [0.0, 0.0]
    wait = peer.try_acquire("bulk_import")
    assert wait > lengthened(1.0), wait  # the bulk window (a minute) decides now
    assert worker.try_acquire("contact_sync") == 0.0  # and the account window still has room for the others


def test_a_shared_pause_holds_every_operation_of_the_account(make_limiter: MakeLimiter) -> None:
    limits = {"contact_sync": (Window(100, 1.0, "account"),), "trackcmp": (Window(100, 1.0, "trackcmp"),)}
    got_429 = make_limiter(limits, shared_pause=True)
    peer = make_limiter(limits, shared_pause=True)
    # When one worker's request of one operation is answered 429
    got_429.pause("contact_sync", 0.4)
    # Then the other worker waits for every operation, not only that one
    for operation in ("contact_sync", "trackcmp"):
        wait = peer.try_acquire(operation)
        assert 0.4 - LATE < wait <= 0.4, (operation, wait)
