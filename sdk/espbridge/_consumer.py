"""The background thread that batches, sends and retries; and the retry loop it shares with ``sync_mode``."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from ._buffer import Batch, Buffer, Report
from ._messages import decode
from ._transport import Sender

log = logging.getLogger("espbridge")

#: How often an idle consumer looks for new messages and for spool segments that dead processes left.
IDLE_POLL_SECONDS = 0.25
ORPHAN_SCAN_SECONDS = 30.0
#: Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 300.0


@dataclass
class Counters:
    sent: int = 0
    rejected: int = 0
    retries: int = 0


class Delivery:
    """Send records until the service settles them: accepted or refused. Network errors, 429 and 5xx are retried
    with exponential backoff and jitter, or after the Retry-After the service asked for."""

    def __init__(
        self,
        sender: Sender,
        *,
        report: Report,
        counters: Counters,
        min_backoff: float,
        max_backoff: float,
        stop: threading.Event,
    ) -> None:
        self._sender = sender
        self._report = report
        self._counters = counters
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._stop = stop
        self._lock = threading.Lock()

    def send(self, records: list[bytes], *, give_up_at: float | None = None, direct: bool = False) -> bool:
        """True once every record is settled; False when stopped (or past ``give_up_at``) before that.

        ``direct``: on the calling thread's own connection (sync mode), not the consumer's.
        """
        attempt = 0
        post = self._sender.post_direct if direct else self._sender.post
        while True:
            outcome = post(records)
            if outcome.settled:
                for index, error in outcome.rejected:
                    log.warning("the service refused a message: %s", error)
                    self._report(error, [decode(records[index])])
                with self._lock:  # sync-mode callers and the consumer may count at once
                    self._counters.rejected += len(outcome.rejected)
                    self._counters.sent += len(records) - len(outcome.rejected)
                return True
            if outcome.too_large and len(records) > 1:
                half = len(records) // 2
                first, rest = records[:half], records[half:]
                return self.send(first, give_up_at=give_up_at, direct=direct) and self.send(
                    rest, give_up_at=give_up_at, direct=direct
                )
            attempt += 1
            with self._lock:
                self._counters.retries += 1
            delay = self.backoff(attempt, outcome.retry_after)
            if give_up_at is not None and time.monotonic() + delay > give_up_at:
                return False
            log.info(
                "sending %d message(s) failed (%s); retry %d in %.2f s", len(records), outcome.problem, attempt, delay
            )
            if self._stop.wait(delay):
                return False

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER) * random.uniform(1.0, 1.1)
        ceiling = min(self._max_backoff, self._min_backoff * 2 ** min(attempt - 1, 30))
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter": never less than half the backoff


class Consumer(threading.Thread):
    """Takes batches from the buffer - by count, bytes, or once the oldest has waited ``flush_interval`` - and
    delivers them one at a time over one kept-alive connection."""

    def __init__(
        self,
        buffer: Buffer,
        delivery: Delivery,
        *,
        stop: threading.Event,
        max_batch_size: int,
        max_batch_bytes: int,
        flush_interval: float,
    ) -> None:
        super().__init__(name="espbridge-consumer", daemon=True)
        self._buffer = buffer
        self._delivery = delivery
        self._stopping = stop
        self._max_batch_size = max_batch_size
        self._max_batch_bytes = max_batch_bytes
        self._flush_interval = flush_interval
        self.flushing = 0  # callers waiting in flush(): send what there is without lingering
        self.progress = threading.Event()
        self._next_orphan_scan = 0.0
        #: Set once the spool was scanned for what earlier processes left: flush() waits for that too.
        self.started = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = self._next_batch()
                if batch is None:
                    continue
                while not self._deliver(batch):
                    if self._stopping.is_set():
                        return  # the batch stays the buffer's in_flight: the client persists it
                self._buffer.done(batch)
                self.progress.set()
            except Exception:  # a bug, or the spool's disk failing: never end delivery for the process's life
                log.exception("unexpected error in the espbridge consumer; going on in 1 s")
                self._stopping.wait(1.0)

    def _deliver(self, batch: Batch) -> bool:
        try:
            return self._delivery.send(batch.records)
        except Exception:
            log.exception("unexpected error while sending a batch; retrying it in 1 s")
            self._stopping.wait(1.0)
            return False

    def _next_batch(self) -> Batch | None:
        first_seen: float | None = None
        while True:
            self._adopt_orphans_when_due()
            ready = self._buffer.ready()
            now = time.monotonic()
            if ready:
                first_seen = first_seen or now
                if (
                    ready >= self._max_batch_size
                    or self.flushing
                    or self._stopping.is_set()
                    or now - first_seen >= self._flush_interval
                ):
                    batch = self._buffer.take(self._max_batch_size, self._max_batch_bytes)
                    if batch is not None and batch.records:
                        return batch
                    if batch is not None:  # an empty chunk (a corrupt spool tail): settled as it is
                        self._buffer.done(batch)
                        continue
                    wait = IDLE_POLL_SECONDS  # the count was an estimate; look again shortly
                else:
                    wait = self._flush_interval - (now - first_seen)
            else:
                self._buffer.idle()
                self.progress.set()
                if self._stopping.is_set():
                    return None
                first_seen = None
                wait = IDLE_POLL_SECONDS
            self._buffer.wake.wait(wait)
            self._buffer.wake.clear()

    def _adopt_orphans_when_due(self) -> None:
        spool = self._buffer.spool
        if spool is None:
            self.started.set()
            return
        if time.monotonic() < self._next_orphan_scan:
            return
        self._next_orphan_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
        try:
            spool.adopt_orphans()
        except OSError as exc:
            log.error("could not scan the spool for undelivered messages: %s", exc)
        finally:
            self.started.set()
