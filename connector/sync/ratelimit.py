"""A rate limiter shared by every worker on every machine: one budget per ESP account and operation.

Each operation has windows (Klaviyo: a burst window of 1 s and a steady one of 60 s; ActiveCampaign: 5 per
second). A request is allowed only when *every* window has room, and then it is counted in all of them at once.
A window with a ``name`` is one log shared by every operation that lists it: ActiveCampaign's 5 requests/s are
one budget for the whole account, and its bulk import also has its own per-minute windows.
That is why this is hand-written rather than dramatiq's ``WindowRateLimiter``: that one counts one window per
call (acquiring burst then steady wastes a burst slot whenever steady is full, so pollers starve the burst
budget), and it cannot say how long to wait, only "no".

The windows are sliding logs (a sorted set of request times per window), which keep *any* interval of a
window's length under its limit. That is stricter than the fixed windows Klaviyo documents, so staying under
ours means no 429 there. Each window is lengthened by ``margin`` to absorb the time between being allowed here
and arriving there. On Redis the check-and-count is one Lua script using Redis's clock, so machines with
skewed clocks still share one timeline. Without Redis (the embedded single-process mode) the same algorithm
runs in memory, in one budget per process that every limiter instance shares (each worker thread builds its own
adapter, hence its own limiter).

``pause(operation, seconds)`` records a 429's Retry-After so every worker waits, not only the one that got it.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

from ..esp.errors import RateLimited

__all__ = ["SharedRateLimiter", "Window", "account_key"]

#: Fraction of each window added as slack, and its floor in seconds (network + server time before counting).
MARGIN = 0.02
MIN_MARGIN = 0.05

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS - 1
local wait = 0
local paused = redis.call('PTTL', KEYS[n + 1])
if paused > 0 then wait = paused * 1000 end
for i = 1, n do
  local length = tonumber(ARGV[2 * i])
  local limit = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - length)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + length - now
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for i = 1, n do
  redis.call('ZADD', KEYS[i], now, ARGV[1] .. ':' .. now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(tonumber(ARGV[2 * i]) / 1000) + 1000)
end
return 0
"""


@dataclass(frozen=True)
class Window:
    limit: int
    seconds: float
    #: Operations listing windows of the same name count in one log (None: the window is the operation's own).
    name: str | None = None


def account_key(esp: str, api_key: str) -> str:
    """The limiter's name for an account: a digest of its key (the key itself never reaches Redis)."""
    return f"{esp}:{hashlib.sha256(api_key.encode()).hexdigest()[:16]}"


class SharedRateLimiter:
    """Blocks ``acquire(operation)`` until the account's windows for it have room.

    Parameters:
        account: ``account_key(...)``; workers using the same one share the budget.
        limits: operation → windows. Operations not listed are not limited.
        redis_client: the shared store; None keeps the budget in this process only.
        time_scale: divides every window (for the ESP sandbox's ``--time-scale``); 1 for a real ESP.
        max_wait: longest ``acquire`` blocks before raising ``RateLimited`` (the job is then rescheduled).
        shared_pause: a 429 on any operation pauses all of them (one account-wide budget, as ActiveCampaign's).
    """

    def __init__(
        self,
        account: str,
        limits: Mapping[str, tuple[Window, ...]],
        *,
        redis_client: redis.Redis | None = None,
        time_scale: float = 1.0,
        max_wait: float = 120.0,
        shared_pause: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.account = account
        self.max_wait = max_wait
        self.shared_pause = shared_pause
        self._windows = {
            op: tuple(
                self._lengthen(Window(w.limit, w.seconds / time_scale, w.name or f"{op}:{i}"))
                for i, w in enumerate(windows)
            )
            for op, windows in limits.items()
        }
        self._redis = redis_client
        self._script = redis_client.register_script(_SCRIPT) if redis_client is not None else None
        self._sleep = sleep
        self._local = _PROCESS_WINDOWS
        self.waited = 0.0  # seconds spent blocked, for benchmarks and logs

    @staticmethod
    def _lengthen(window: Window) -> Window:
        return Window(window.limit, window.seconds + max(window.seconds * MARGIN, MIN_MARGIN), window.name)

    def _pause_key(self, operation: str) -> str:
        return "*" if self.shared_pause else operation

    def acquire(self, operation: str) -> None:
        windows = self._windows.get(operation)
        if not windows:
            return
        waited = 0.0
        while True:
            wait = self.try_acquire(operation)
            if wait <= 0:
                return
            if waited + wait > self.max_wait:
                raise RateLimited(f"{operation}: local rate limit, {wait:.1f} s until a slot", retry_after=wait)
            self._sleep(wait)
            waited += wait
            self.waited += wait

    def try_acquire(self, operation: str) -> float:
        """Count one request if every window has room (returns 0), else the seconds until one will."""
        windows = self._windows.get(operation, ())
        if not windows:
            return 0.0
        if self._script is None:
            return self._local.try_acquire(self.account, self._pause_key(operation), windows)
        keys = [f"espbridge:rl:{self.account}:{window.name}" for window in windows]
        keys.append(f"espbridge:rl:{self.account}:{self._pause_key(operation)}:paused")
        args: list[str | int] = [uuid.uuid4().hex]
        for window in windows:
            args += [int(window.seconds * 1_000_000), window.limit]
        wait_us = int(self._script(keys=keys, args=args))
        return wait_us / 1_000_000

    def pause(self, operation: str, seconds: float) -> None:
        """Hold every worker's requests for ``operation`` for ``seconds`` (an ESP's Retry-After)."""
        if seconds <= 0:
            return
        if self._redis is None:
            self._local.pause(self.account, self._pause_key(operation), seconds)
            return
        key = f"espbridge:rl:{self.account}:{self._pause_key(operation)}:paused"
        self._redis.set(key, 1, px=max(1, int(seconds * 1000)))


class _LocalWindows:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, str | None], collections.deque[float]] = collections.defaultdict(collections.deque)
        self._paused: dict[tuple[str, str], float] = {}

    def try_acquire(self, account: str, pause_key: str, windows: tuple[Window, ...]) -> float:
        now = time.monotonic()
        with self._lock:
            wait = max(0.0, self._paused.get((account, pause_key), 0.0) - now)
            logs = [self._logs[(account, window.name)] for window in windows]
            for window, log in zip(windows, logs, strict=True):
                while log and log[0] <= now - window.seconds:
                    log.popleft()
                if len(log) >= window.limit:
                    wait = max(wait, log[len(log) - window.limit] + window.seconds - now)
            if wait > 0:
                return wait
            for log in logs:
                log.append(now)
            return 0.0

    def pause(self, account: str, pause_key: str, seconds: float) -> None:
        with self._lock:
            self._paused[(account, pause_key)] = time.monotonic() + seconds


#: The in-memory budgets of this process, shared by every limiter without Redis: the worker threads each build
#: their own adapter and limiter (``AdapterCache`` is per thread), and must still share one account's budget.
_PROCESS_WINDOWS = _LocalWindows()
