"""Fixed-window rate limiting as Klaviyo documents it: a burst (1 s) and a steady (1 min) window per operation
and account (API key), some operations also a daily window. ``time_scale`` divides every window's length, so a
benchmark can run the real limits faster (``--time-scale 60``: a steady minute lasts one second)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .spec import RateLimit

__all__ = ["Decision", "FixedWindowLimiter"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until the exhausted window resets (0 when allowed)
    limit: int  # of the steady window (RateLimit-Limit), or the first window when there is no steady one
    remaining: int
    reset: float  # seconds until that window resets


class FixedWindowLimiter:
    def __init__(self, *, time_scale: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], tuple[float, int]] = {}  # (key, op, window) → (start, count)

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()

    def hit(self, key: str, operation: str, limits: Sequence[RateLimit]) -> Decision:
        """Count one request against every window, unless one of them is exhausted (then nothing is counted)."""
        now = self._clock()
        with self._lock:
            current: list[tuple[RateLimit, float, int, float]] = []
            for rate in limits:
                length = rate.seconds / self.time_scale
                start, count = self._windows.get((key, operation, rate.name), (now, 0))
                if now - start >= length:
                    start, count = now, 0
                current.append((rate, start, count, length))
            blocked = [start + length - now for rate, start, count, length in current if count >= rate.limit]
            if blocked:
                return Decision(False, max(blocked), 0, 0, max(blocked))
            for rate, start, count, _length in current:
                self._windows[(key, operation, rate.name)] = (start, count + 1)
        shown = next((c for c in current if c[0].name == "steady"), current[0] if current else None)
        if shown is None:
            return Decision(True, 0.0, 0, 0, 0.0)
        rate, start, count, length = shown
        return Decision(True, 0.0, rate.limit, rate.limit - count - 1, start + length - now)


def retry_after_header(seconds: float) -> str:
    """Integer seconds, as Klaviyo sends them; never 0 while a window is still closed."""
    return str(max(1, math.ceil(seconds)))
