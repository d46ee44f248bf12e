"""The ceiling the documented Klaviyo rate limits put on a full sync: the least time its requests can take.

Klaviyo documents, per operation, a burst window (B requests per 1 s) and a steady one (M requests per 60 s),
both fixed windows (specs/klaviyo/RATE_LIMITS.md; the sandbox enforces them so, each window starting at the
first request after the previous one expired). The fastest any client can send n requests of one operation
is: full steady windows of M requests, then the rest (r = n - M·⌊(n-1)/M⌋) in bursts of B inside the last one:

    T(n) = 60 s · ⌊(n - 1) / M⌋  +  1 s · ⌈r / B⌉

i.e. the windows those n requests occupy (valid when B · 60 ≥ M, as for every operation Klaviyo lists). For
1,000 bulk event requests (10/s, 150/min): 6 full minutes + 100 requests in 10 one-second bursts = 370 s, an
average of 2.70 requests/s (the steady limit alone is 2.5/s: the last minute is only partly used). With the
sandbox's ``--time-scale S`` every window is S times shorter, so T is divided by S.

Operations have separate budgets, so within a phase whose operations could run side by side the phase's
ceiling is its slowest operation's T; a full sync's phases run one after the other (contacts with their
consent, then events), so the sync's ceiling time is the sum over its phases. The achieved share of the
ceiling is ceiling time / measured time (= achieved rate / ceiling rate, for requests, profiles or events).

ActiveCampaign (ESP_NOTES.md §2.1, §3) has ONE budget for the whole account: 5 requests per 1 s window, every
``/api/3`` request counted, no burst documented; the bulk importer also 100 multi-contact requests per minute,
inside the 5/s. The least time for n account requests is the 1 s windows they fill, A(n) = 1 s · ⌈n / 5⌉ / S.
A bulk import of k requests is the same T(k) as above with B = 5 (the account window) and M = 100, and every
other request the flow needs (status polls) shares the 5/s, so the bulk path's ceiling is the larger of the two
lower bounds: max(T(k; 5, 100), A(k + polls)) / S (``bulk_import_seconds``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: (burst per 1 s, steady per 60 s), from specs/klaviyo/RATE_LIMITS.md (the table connector.esp.klaviyo keeps).
BURST_SECONDS = 1.0
STEADY_SECONDS = 60.0


@dataclass(frozen=True)
class OperationCeiling:
    operation: str
    requests: int
    burst: int
    steady: int
    seconds: float  # T(n), already divided by the time scale

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else math.inf


def min_seconds(n: int, burst: int, steady: int, time_scale: float = 1.0) -> float:
    """T(n) above: the windows ``n`` requests of one operation occupy at the least, divided by ``time_scale``."""
    if n <= 0:
        return 0.0
    if burst * (STEADY_SECONDS / BURST_SECONDS) < steady:
        raise ValueError("the formula assumes the burst limit alone would allow the steady one")
    full_minutes = (n - 1) // steady
    rest = n - full_minutes * steady
    return (STEADY_SECONDS * full_minutes + BURST_SECONDS * math.ceil(rest / burst)) / time_scale


def simulate_seconds(n: int, burst: int, steady: int, time_scale: float = 1.0) -> float:
    """The same bound by simulation of two fixed windows with a greedy sender (a check of ``min_seconds``):
    the time the last window holding one of the ``n`` requests ends."""
    if n <= 0:
        return 0.0
    windows = [[BURST_SECONDS / time_scale, burst, -math.inf, 0], [STEADY_SECONDS / time_scale, steady, -math.inf, 0]]
    t = 0.0
    for _ in range(n):
        for _attempt in range(4):  # each window can push t at most once per request
            blocked = [w for w in windows if t < w[2] + w[0] and w[3] >= w[1]]
            if not blocked:
                break
            t = max(w[2] + w[0] for w in blocked)
        for w in windows:
            if t >= w[2] + w[0]:
                w[2], w[3] = t, 0
            w[3] += 1
    # The burst window of the last request is the one that closes last.
    return windows[0][2] + windows[0][0]


#: ActiveCampaign's documented limits: requests per 1 s window for the account, multi-contact bulk imports per 60 s.
AC_ACCOUNT_PER_SECOND = 5
AC_BULK_PER_MINUTE = 100


def account_seconds(n: int, per_second: int = AC_ACCOUNT_PER_SECOND, time_scale: float = 1.0) -> float:
    """A(n): the fixed 1 s windows ``n`` requests of one account budget fill at the least, divided by the scale."""
    return BURST_SECONDS * math.ceil(max(n, 0) / per_second) / time_scale


def bulk_import_seconds(imports: int, other_requests: int, time_scale: float = 1.0) -> float:
    """ActiveCampaign's bulk path: ``imports`` multi-contact bulk imports (100/min, inside the 5/s) and
    ``other_requests`` more requests of the same account budget (status polls): the larger lower bound."""
    return max(
        min_seconds(imports, AC_ACCOUNT_PER_SECOND, AC_BULK_PER_MINUTE, time_scale),
        account_seconds(imports + other_requests, AC_ACCOUNT_PER_SECOND, time_scale),
    )


def operation_ceilings(
    requests: Mapping[str, int], limits: Mapping[str, tuple[int, int]], time_scale: float
) -> list[OperationCeiling]:
    out = []
    for operation, n in sorted(requests.items()):
        if n <= 0 or operation not in limits:
            continue
        burst, steady = limits[operation]
        out.append(OperationCeiling(operation, n, burst, steady, min_seconds(n, burst, steady, time_scale)))
    return out


def phase_seconds(ceilings: Sequence[OperationCeiling]) -> float:
    """Operations have separate budgets: a phase takes at least as long as its slowest operation."""
    return max((c.seconds for c in ceilings), default=0.0)
