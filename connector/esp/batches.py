"""Sending a batch of records to an ESP so that one record it refuses never holds back the rest.

Shared by the adapters: send the input indexes; records the ESP rejects by index are recorded as rejected and
the rest sent again without them; anything else failing marks what is left failed in the ``Outcome`` (the
engine decides about retries), after honouring a 429's Retry-After through ``pause``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .base import Outcome
from .errors import Accepted, EspError, Permanent, RateLimited, Rejected

#: Rounds of "drop the rejected records, send the rest" before giving up on a batch.
MAX_REJECTION_ROUNDS = 5

#: Called with (operation, seconds) on a 429, so every worker honours the Retry-After.
Pause = Callable[[str, float], None]


def mark_failed(outcome: Outcome, indexes: Sequence[int], error: EspError, pause: Pause | None) -> None:
    """Mark ``indexes`` failed with ``error``; a 429 with a Retry-After first pauses its operation."""
    if isinstance(error, RateLimited) and error.retry_after and pause is not None and error.operation:
        pause(error.operation, error.retry_after)
    outcome.fail(indexes, error)


def send_resilient(
    indexes: list[int],
    send: Callable[[list[int]], list[Accepted]],
    outcome: Outcome,
    *,
    pause: Pause | None,
) -> list[tuple[Accepted, list[int]]]:
    """Send ``indexes``; records the ESP rejects by index are dropped and the rest sent again.

    ``send`` gets the indexes still to send and returns one ``Accepted`` per request, its range in positions of
    what it was given. Returns each accepted request with the input indexes it covered, and counts the requests
    in ``outcome.requests``. A rejection naming no record that was sent is ignored.
    """
    sent: list[tuple[Accepted, list[int]]] = []
    remaining = indexes
    for _ in range(MAX_REJECTION_ROUNDS):
        if not remaining:
            return sent
        try:
            accepted = send(remaining)
        except EspError as error:
            outcome.requests += len(error.accepted) + 1
            covered: set[int] = set()
            for item in error.accepted:
                span = range(item.offset, item.offset + item.count)
                covered.update(span)
                sent.append((item, [remaining[p] for p in span]))
            if not isinstance(error, Rejected):
                mark_failed(outcome, [remaining[p] for p in range(len(remaining)) if p not in covered], error, pause)
                return sent
            refused = {r.index for r in error.records}
            for record in error.records:
                if record.index < len(remaining):
                    outcome.rejected[remaining[record.index]] = record.detail
            remaining = [remaining[p] for p in range(len(remaining)) if p not in covered and p not in refused]
            continue
        outcome.requests += len(accepted)
        sent += [(item, remaining[item.offset : item.offset + item.count]) for item in accepted]
        return sent
    mark_failed(outcome, remaining, Permanent(f"still rejecting records after {MAX_REJECTION_ROUNDS} rounds"), pause)
    return sent
