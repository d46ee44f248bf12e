"""One POST of a batch to ``/v1/batch`` and what its answer means; nothing here sleeps or retries."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import logging
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._errors import Rejected

log = logging.getLogger("espbridge")

#: Bodies smaller than this are not worth compressing.
GZIP_MIN_BYTES = 1024
#: zlib level 1: about 6x smaller JSON at a fraction of level 6's CPU, which is the storefront's to spend.
GZIP_LEVEL = 1
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Outcome:
    """What to do with a batch after one attempt."""

    #: Settled: nothing more to send (accepted, or refused for good). ``rejected`` names the refused ones.
    settled: bool
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)
    #: Not settled: seconds the service asked us to wait (Retry-After), if it said.
    retry_after: float | None = None
    #: Not settled: the body was too large (413); send the batch in halves.
    too_large: bool = False
    status: int | None = None
    problem: str = ""


class Sender:
    def __init__(
        self, write_key: str, host: str, *, timeout: float, gzip: bool, user_agent: str, transport: Any = None
    ) -> None:
        self._url = host.rstrip("/") + "/v1/batch"
        self._headers = {
            "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": user_agent,
        }
        self._timeout = timeout
        self._gzip = gzip
        self._transport: httpx.BaseTransport | None = transport
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        # Dropped, not closed: the sockets are shared with the parent, which is still using them.
        self._http = None
        self._lock = threading.Lock()

    def _connection(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=self._timeout, transport=self._transport)
            return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def post(self, records: list[bytes]) -> Outcome:
        body = b'{"batch":[' + b",".join(records) + b'],"sentAt":"' + _now() + b'"}'
        headers = self._headers
        if self._gzip and len(body) >= GZIP_MIN_BYTES:
            body = zlib.compress(body, GZIP_LEVEL, wbits=31)
            headers = {**headers, "Content-Encoding": "gzip"}
        http = self._connection()
        started = time.monotonic()
        try:
            response = http.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # network, timeout, protocol: all worth another try
            return Outcome(settled=False, problem=f"{type(exc).__name__}: {exc}")
        log.debug(
            "POST /v1/batch: %d message(s), %d bytes -> %d in %.1f ms",
            len(records),
            len(body),
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return classify(response, len(records))


def classify(response: httpx.Response, count: int) -> Outcome:
    status = response.status_code
    if status in TRANSIENT_STATUSES or status >= 500:
        return Outcome(
            settled=False,
            status=status,
            retry_after=_retry_after(response.headers.get("Retry-After")),
            problem=f"HTTP {status}",
        )
    if status == 413:
        return Outcome(settled=False, status=status, too_large=True, problem="HTTP 413")
    body = _json(response)
    if status < 300:
        return Outcome(settled=True, status=status, rejected=_named(body, count, every=False))
    # Any other 4xx refuses the messages it names, or the whole batch (a bad write key, say).
    return Outcome(settled=True, status=status, rejected=_named(body, count, every=True, status=status))


def _named(body: Any, count: int, *, every: bool, status: int = 400) -> list[tuple[int, Rejected]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    named: dict[int, Rejected] = {}
    for error in errors if isinstance(errors, list) else []:
        index = error.get("index") if isinstance(error, dict) else None
        if isinstance(index, int) and 0 <= index < count and index not in named:
            named[index] = Rejected(400, str(error.get("reason") or "refused"), error.get("field") or None)
    if every:
        reason = str(body.get("error") if isinstance(body, dict) else "") or f"refused with HTTP {status}"
        for index in range(count):
            named.setdefault(index, Rejected(status, reason))
    return sorted(named.items())


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _now() -> bytes:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").encode("ascii")
