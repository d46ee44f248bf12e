"""One POST of a batch to ``/v1/batch`` and what its answer means; nothing here sleeps or retries."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.parse
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
    """POSTs batches to ``/v1/batch``: through httpx for the consumer, and through a stdlib ``http.client``
    keep-alive connection per thread for ``sync_mode``, one message at a time. httpx spends ~300 µs of Python
    per request on this kind of machine against ~130 µs for ``http.client`` (bench/README.md): amortised
    over a batch that is nothing, but a sync-mode call pays it every time. A custom ``transport`` (a proxy,
    a mock) always goes through httpx."""

    def __init__(
        self, write_key: str, host: str, *, timeout: float, gzip: bool, user_agent: str, transport: Any = None
    ) -> None:
        self._url = host.rstrip("/") + "/v1/batch"
        self._target = urllib.parse.urlsplit(self._url)
        self._headers = {
            "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": user_agent,
        }
        self._timeout = timeout
        self._gzip = gzip
        self._transport: httpx.BaseTransport | None = transport
        self._http: httpx.Client | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self.after_fork_in_child()

    def after_fork_in_child(self) -> None:
        # Dropped, not closed: the sockets are shared with the parent, which is still using them.
        self._http = None
        self._lock = threading.Lock()
        self._direct = threading.local()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        connection = getattr(self._direct, "connection", None)
        if connection is not None:
            connection.close()

    def post(self, records: list[bytes]) -> Outcome:
        """One batch through httpx (the consumer thread)."""
        body, headers = self._request(records)
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=self._timeout, transport=self._transport)
            http = self._http
        started = time.monotonic()
        try:
            response = http.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # network, timeout, protocol: all worth another try
            return Outcome(settled=False, problem=f"{type(exc).__name__}: {exc}")
        self._log(records, body, response.status_code, started)
        return classify(response.status_code, response.headers.get("Retry-After"), response.content, len(records))

    def post_direct(self, records: list[bytes]) -> Outcome:
        """One request on this thread's own kept-alive ``http.client`` connection (sync mode)."""
        if self._transport is not None:
            return self.post(records)
        body, headers = self._request(records)
        started = time.monotonic()
        for attempt in (1, 2):
            connection, reused = self._direct_connection()
            try:
                connection.request("POST", self._target.path, body=body, headers=headers)
                response = connection.getresponse()
                content = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                self._direct.connection = None
                if reused and attempt == 1:
                    continue  # the service closed the idle connection: try once on a fresh one
                return Outcome(settled=False, problem=f"{type(exc).__name__}: {exc}")
            if response.will_close:
                connection.close()
                self._direct.connection = None
            self._log(records, body, response.status, started)
            return classify(response.status, response.getheader("Retry-After"), content, len(records))
        raise AssertionError("unreachable")

    def _direct_connection(self) -> tuple[http.client.HTTPConnection, bool]:
        connection: http.client.HTTPConnection | None = getattr(self._direct, "connection", None)
        if connection is not None:
            return connection, True
        host, port = self._target.hostname or "", self._target.port
        if self._target.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()  # the trust store httpx itself uses
            connection = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._ssl_context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=self._timeout)
        self._direct.connection = connection
        return connection, False

    def _request(self, records: list[bytes]) -> tuple[bytes, dict[str, str]]:
        body = b'{"batch":[' + b",".join(records) + b'],"sentAt":"' + _now() + b'"}'
        if self._gzip and len(body) >= GZIP_MIN_BYTES:
            return zlib.compress(body, GZIP_LEVEL, wbits=31), {**self._headers, "Content-Encoding": "gzip"}
        return body, self._headers

    @staticmethod
    def _log(records: list[bytes], body: bytes, status: int, started: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            elapsed = (time.monotonic() - started) * 1000
            log.debug(
                "POST /v1/batch: %d message(s), %d bytes -> %d in %.1f ms", len(records), len(body), status, elapsed
            )


def classify(status: int, retry_after: str | None, content: bytes, count: int) -> Outcome:
    if status in TRANSIENT_STATUSES or status >= 500:
        return Outcome(settled=False, status=status, retry_after=_retry_after(retry_after), problem=f"HTTP {status}")
    if status == 413:
        return Outcome(settled=False, status=status, too_large=True, problem="HTTP 413")
    body = _json(content)
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


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
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
