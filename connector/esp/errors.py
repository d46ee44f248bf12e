"""Errors every ESP adapter raises, whatever the ESP said: the sync engine decides retries from the type alone.

EspError
├── RateLimited   429: wait ``retry_after`` seconds, then retry (not a failure of the data)
├── Transient     5xx, 408, timeouts, network errors: retry with backoff
├── AuthFailed    401/403: the key is wrong, revoked or lacks a scope; retrying will not help until someone acts
├── Rejected      the ESP refused specific records (``records``); nothing in that request took effect
└── Permanent     any other refusal (4xx without per-record detail, unusable response): dead-letter at once

Messages carry the HTTP method, path, status and the ESP's own error text, never credentials.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import EspbridgeError


@dataclass(frozen=True)
class RecordError:
    """Why the ESP refused one record: ``index`` is its position in the caller's input sequence."""

    index: int
    detail: str
    code: str | None = None
    pointer: str | None = None


@dataclass(frozen=True)
class Accepted:
    """One request the ESP accepted: it covered the caller's input ``[offset, offset + count)``."""

    offset: int
    count: int
    job_id: str | None = None


class EspError(EspbridgeError):
    """Root of adapter errors.

    ``status`` is the HTTP status (None for network errors). ``accepted`` lists the requests of the same call
    that the ESP had already accepted before this one failed (a call split into several requests), so the
    caller can mark those records done and resend only the rest.
    """

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, accepted: Sequence[Accepted] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.accepted: tuple[Accepted, ...] = tuple(accepted)


class RateLimited(EspError):
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        status: int | None = 429,
        accepted: Sequence[Accepted] = (),
        operation: str | None = None,
    ) -> None:
        super().__init__(message, status=status, accepted=accepted)
        #: Seconds to wait before retrying (from Retry-After, seconds or HTTP date); None when not given.
        self.retry_after = retry_after
        #: The ESP operation whose limit was hit (rate limits are per operation), when the adapter knows it.
        self.operation = operation


class Transient(EspError):
    retryable = True


class AuthFailed(EspError):
    pass


class Permanent(EspError):
    pass


class Rejected(EspError):
    def __init__(
        self,
        message: str,
        *,
        records: Sequence[RecordError],
        status: int | None = None,
        accepted: Sequence[Accepted] = (),
    ) -> None:
        super().__init__(message, status=status, accepted=accepted)
        self.records: tuple[RecordError, ...] = tuple(records)


def with_accepted(error: EspError, accepted: Sequence[Accepted], offset: int) -> EspError:
    """The same error seen from the caller's whole input: record indexes shifted by ``offset``, ``accepted`` set."""
    error.accepted = tuple(accepted)
    if isinstance(error, Rejected):
        error.records = tuple(
            RecordError(r.index + offset, r.detail, code=r.code, pointer=r.pointer) for r in error.records
        )
    return error


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 section 10.2.3).

    A date in the past gives 0; an unparsable value gives None (the caller falls back to its own backoff).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds else None  # NaN is not a delay
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms are GMT by definition
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max((when - now).total_seconds(), 0.0)
