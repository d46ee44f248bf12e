"""``Client``: the calls a storefront makes, and the lifecycle of the thread that sends them.

A call validates its arguments, stamps a messageId and a timestamp, encodes the message and queues the bytes;
it never waits for the network and never raises for a send failure. One consumer thread per process batches
and sends. After ``fork()`` the child starts with an empty queue, its own consumer, connection and spool
segments, and fresh messageIds; at exit, what could not be delivered in ``exit_timeout`` stays in the spool
for the next process.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import logging
import os
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ._buffer import Buffer, Overflow
from ._consumer import Consumer, Counters, Delivery
from ._errors import Dropped, InvalidMessage
from ._events import Events
from ._messages import MAX_BATCH_BYTES, IdSource, Json, encode, identifier, mapping, name, timestamp
from ._spool import Spool
from ._transport import Sender
from ._version import __version__

log = logging.getLogger("espbridge")

DEFAULT_HOST = "http://127.0.0.1:8000"
_LIBRARY = {"name": "espbridge-python", "version": __version__}
_LIBRARY_CONTEXT = {"library": _LIBRARY}

OnError = Callable[[Exception, list[Json]], None]


def _optional_name(value: Any, field: str) -> str | None:
    return None if value is None else name(value, field)


#: How each message field is checked; the field's name in errors is the keyword argument's.
_CHECKS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "event": ("event", name),
    "name": ("name", _optional_name),
    "category": ("category", _optional_name),
    "properties": ("properties", mapping),
    "traits": ("traits", mapping),
    "groupId": ("group_id", identifier),
    "previousId": ("previous_id", identifier),
}


@dataclass(frozen=True)
class Stats:
    """Counters since the client was created (in this process)."""

    queued: int  #: waiting to be sent: in memory, or on disk and not yet read back
    spooled_bytes: int  #: on disk and not yet delivered
    sent: int  #: accepted by the service (duplicates included: the service acknowledges and ignores them)
    rejected: int  #: refused by the service, reported to on_error
    dropped: int  #: discarded by the overflow policy (or at exit without a spool), reported to on_error
    retries: int  #: failed attempts that were retried


class Client(Events):
    """Sends tracking calls to espbridge's ingestion API (the Segment HTTP Tracking API).

    See sdk/README.md for every option; ``write_key`` is the store's write key, ``host`` the service's base URL.
    """

    def __init__(
        self,
        write_key: str,
        host: str = DEFAULT_HOST,
        *,
        max_batch_size: int = 500,
        max_batch_bytes: int = 480_000,
        flush_interval: float = 0.5,
        max_queue_size: int = 10_000,
        spool: bool = True,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        durable: bool = False,
        overflow: Overflow = "drop_oldest",
        block_timeout: float = 1.0,
        timeout: float = 10.0,
        retry_min_backoff: float = 0.2,
        retry_max_backoff: float = 10.0,
        gzip: bool = True,
        sync_mode: bool = False,
        send: bool = True,
        debug: bool = False,
        raise_on_invalid: bool = True,
        on_error: OnError | None = None,
        exit_timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(write_key, str) or not write_key:
            raise ValueError("write_key: required, the store's write key")
        if not isinstance(host, str) or not host.startswith(("http://", "https://")):
            raise ValueError(f"host: must be an http:// or https:// URL, not {host!r}")
        _require(max_batch_size >= 1, "max_batch_size", "must be at least 1")
        _require(1024 <= max_batch_bytes <= MAX_BATCH_BYTES, "max_batch_bytes", f"must be 1024..{MAX_BATCH_BYTES}")
        _require(flush_interval > 0, "flush_interval", "must be positive")
        _require(max_queue_size >= 1, "max_queue_size", "must be at least 1")
        _require(spool_max_bytes >= 64 * 1024, "spool_max_bytes", "must be at least 64 KiB")
        _require(overflow in ("block", "drop_oldest"), "overflow", 'must be "block" or "drop_oldest"')
        _require(block_timeout >= 0, "block_timeout", "must not be negative")
        _require(timeout > 0, "timeout", "must be positive")
        _require(0 < retry_min_backoff <= retry_max_backoff, "retry_min_backoff", "must be in (0, retry_max_backoff]")
        _require(exit_timeout >= 0, "exit_timeout", "must not be negative")
        _require(not durable or spool, "durable", "needs the spool (spool=True)")
        if debug:
            log.setLevel(logging.DEBUG)
            if not log.handlers:
                log.addHandler(logging.StreamHandler())

        self._send = send
        self._sync_mode = sync_mode
        self._raise_on_invalid = raise_on_invalid
        self._on_error = on_error
        self._exit_timeout = exit_timeout
        self._timeout = timeout
        self._closed = False
        self._ids = IdSource()
        self._counters = Counters()
        self._batching = {"max_batch_size": max_batch_size, "max_batch_bytes": max_batch_bytes}
        self._flush_interval = flush_interval
        self._backoff = {"min_backoff": retry_min_backoff, "max_backoff": retry_max_backoff}
        self._sender = Sender(
            write_key,
            host,
            timeout=timeout,
            gzip=gzip,
            transport=transport,
            user_agent=f"espbridge-python/{__version__}",
        )
        spooler = (
            Spool(_spool_directory(spool_dir, host, write_key), max_bytes=spool_max_bytes, durable=durable)
            if spool and send
            else None
        )
        self._buffer = Buffer(
            max_queue_size=max_queue_size,
            spool=spooler,
            overflow=overflow,
            block_timeout=block_timeout,
            batch_size=max_batch_size,
            report=self._report,
        )
        self._in_this_process()
        if send:
            self._start_consumer()  # at once: it also delivers what an earlier process left in the spool
            atexit.register(self._at_exit)
            me = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _after_fork_in_child(me))

    # -- the Segment calls ----------------------------------------------------------------------------------

    def identify(
        self,
        user_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: dt.datetime | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Who the person is and what we know of them (``traits``: email, phone, first_name, …)."""
        return self._enqueue(
            "identify", {"traits": traits}, user_id, anonymous_id, context, timestamp, integrations, message_id
        )

    def track(
        self,
        user_id: str | int | None = None,
        event: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: dt.datetime | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Something the person did: ``event`` is its name ("Product Viewed", …), ``properties`` its details.

        Returns the messageId, or None when the call was invalid and ``raise_on_invalid`` is False.
        """
        fields = {"event": event, "properties": properties}
        return self._enqueue("track", fields, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def page(
        self,
        user_id: str | int | None = None,
        category: str | None = None,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: dt.datetime | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """A page view on the web storefront."""
        fields = {"category": category, "name": name, "properties": properties}
        return self._enqueue("page", fields, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def screen(
        self,
        user_id: str | int | None = None,
        category: str | None = None,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: dt.datetime | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """A screen view in a mobile app."""
        fields = {"category": category, "name": name, "properties": properties}
        return self._enqueue("screen", fields, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def group(
        self,
        user_id: str | int | None = None,
        group_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: dt.datetime | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """The person belongs to a group (a company account, a household)."""
        fields = {"groupId": group_id, "traits": traits}
        return self._enqueue("group", fields, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def alias(
        self,
        previous_id: str | int | None = None,
        user_id: str | int | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: dt.datetime | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """``previous_id`` (an anonymousId or an old userId) and ``user_id`` are the same person."""
        fields = {"previousId": previous_id}
        return self._enqueue("alias", fields, user_id, None, context, timestamp, integrations, message_id)

    # -- lifecycle --------------------------------------------------------------------------------------

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Send what is queued now, without waiting for ``flush_interval``; wait until nothing is left.

        Returns True when everything was settled (delivered, or refused and reported), False when ``timeout``
        seconds passed first (the service is down, say): the messages stay queued, nothing is lost.
        """
        consumer = self._consumer
        if consumer is None or not consumer.is_alive():
            return self._buffer.is_empty()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not consumer.started.wait(timeout):
            return False
        with self._lock:
            consumer.flushing += 1
        try:
            while not self._buffer.is_empty():
                remaining = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if remaining <= 0:
                    return False
                consumer.progress.clear()
                self._buffer.wake.set()
                consumer.progress.wait(remaining)
            return True
        finally:
            with self._lock:
                consumer.flushing -= 1

    def shutdown(self, timeout: float | None = 10.0) -> bool:
        """Flush for up to ``timeout`` seconds, then stop the consumer and release the spool.

        What was not delivered stays in the spool, where the next process using it delivers it (or, without a
        spool, is reported to ``on_error`` as :class:`Dropped`). Returns True when everything was delivered.
        Calls made after shutdown go straight to the spool.
        """
        if self._closed:
            return self._buffer.is_empty()
        started = time.monotonic()
        delivered = self.flush(timeout)
        self._closed = True
        self._stop.set()
        self._buffer.wake.set()
        consumer = self._consumer
        if consumer is not None and consumer.is_alive():
            spent = time.monotonic() - started
            consumer.join(max(0.1, min(self._timeout, (timeout or self._timeout) - spent)))
        self._buffer.persist()
        if self._buffer.spool is not None:
            self._buffer.spool.close()
        self._sender.close()
        return delivered

    def stats(self) -> Stats:
        spool = self._buffer.spool
        return Stats(
            queued=self._buffer.ready(),
            spooled_bytes=spool.pending_bytes if spool is not None else 0,
            sent=self._counters.sent,
            rejected=self._counters.rejected,
            dropped=self._buffer.dropped,
            retries=self._counters.retries,
        )

    # -- internals --------------------------------------------------------------------------------------

    def _enqueue(
        self,
        kind: str,
        fields: dict[str, Any],
        user_id: Any,
        anonymous_id: Any,
        context: Any,
        timestamp_: dt.datetime | None,
        integrations: Any,
        message_id: str | None,
    ) -> str | None:
        message: Json = {"type": kind}
        try:
            for key, value in fields.items():
                argument, check = _CHECKS[key]
                if (checked := check(value, argument)) is not None:
                    message[key] = checked
            if user_id is not None:
                message["userId"] = identifier(user_id, "user_id")
            if anonymous_id is not None:
                message["anonymousId"] = identifier(anonymous_id, "anonymous_id")
            if "userId" not in message and "anonymousId" not in message and not _personless(message):
                raise InvalidMessage("user_id", "user_id or anonymous_id is required")
            message["messageId"] = self._ids.next() if message_id is None else identifier(message_id, "message_id")
            message["timestamp"] = timestamp(timestamp_)
            message["context"] = {**mapping(context, "context"), **_LIBRARY_CONTEXT} if context else _LIBRARY_CONTEXT
            if integrations is not None:
                message["integrations"] = mapping(integrations, "integrations")
            data = encode(message)
        except InvalidMessage as exc:
            if self._raise_on_invalid:
                raise
            self._report(exc, [message])
            return None
        mid: str = message["messageId"]
        if not self._send:
            return mid
        if self._closed:
            self._buffer.persist([data])
        elif self._sync_mode:
            self._send_now(data)
        else:
            if self._consumer is None:
                self._start_consumer()  # the first call in a forked child
            self._buffer.put(data)
        return mid

    def _send_now(self, data: bytes) -> None:
        try:
            settled = self._delivery.send([data], give_up_at=time.monotonic() + self._timeout, direct=True)
        except Exception:  # never into the caller
            log.exception("unexpected error while sending; the message goes to the queue")
            settled = False
        if not settled:
            self._buffer.put(data)  # the consumer keeps trying; the spool keeps it across restarts

    def _report(self, error: Exception, messages: list[Json]) -> None:
        if isinstance(error, Dropped):
            log.warning("%s", error)
        if self._on_error is None:
            return
        try:
            self._on_error(error, messages)
        except Exception:
            log.exception("on_error raised")

    def _in_this_process(self) -> None:
        """Fresh per-process state: at construction, and in a child after fork()."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._delivery = Delivery(
            self._sender,
            report=self._report,
            counters=self._counters,
            **self._backoff,
            stop=self._stop,
        )

    def _start_consumer(self) -> None:
        with self._lock:
            if self._consumer is not None or self._closed:
                return
            self._consumer = Consumer(
                self._buffer, self._delivery, stop=self._stop, flush_interval=self._flush_interval, **self._batching
            )
            self._consumer.start()
            if "multiprocessing" in sys.modules:
                # A multiprocessing child ends with os._exit(): atexit never runs there, its finalizers do.
                from multiprocessing import util

                util.Finalize(self, self._at_exit, exitpriority=10)

    def _after_fork(self) -> None:
        self._ids.reseed()
        self._counters = Counters()
        self._buffer.after_fork_in_child()
        self._sender.after_fork_in_child()
        self._in_this_process()

    def _at_exit(self) -> None:
        if not self._closed:
            self.shutdown(self._exit_timeout)


def _require(ok: bool, option: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{option}: {why}")


def _personless(message: Json) -> bool:
    """Server-side events about the store itself carry no person (DESIGN.md section 3)."""
    return message.get("event") == "Inventory Updated"


def _spool_directory(spool_dir: str | os.PathLike[str] | None, host: str, write_key: str) -> Path:
    """One directory per (host, write key): a spooled message is only ever sent where it was meant to go."""
    root = Path(spool_dir) if spool_dir is not None else Path(tempfile.gettempdir()) / f"espbridge-spool-{os.getuid()}"
    digest = hashlib.sha256(f"{host.rstrip('/')}\n{write_key}".encode()).hexdigest()[:16]
    return root / digest


def _after_fork_in_child(client: weakref.ref[Client]) -> None:
    alive = client()
    if alive is not None:
        alive._after_fork()
