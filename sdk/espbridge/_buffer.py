"""Messages waiting for the consumer: a bounded in-memory queue first, the on-disk spool when it is full.

While anything this process spilled is still on disk, new messages go to disk too, so they are sent in the
order they were made. With ``durable=True`` every message goes to disk before the call returns.
Past the spool's cap (or the queue's, without a spool) the overflow policy decides, and every message it
discards is counted and reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ._errors import Dropped
from ._messages import Json, decode
from ._spool import Chunk, Spool

log = logging.getLogger("espbridge")

Overflow = Literal["block", "drop_oldest"]
Report = Callable[[Exception, list[Json]], None]


@dataclass(frozen=True)
class Batch:
    records: list[bytes]
    chunk: Chunk | None = None  # where on disk they came from; None for the in-memory queue


class Buffer:
    def __init__(
        self,
        *,
        max_queue_size: int,
        spool: Spool | None,
        overflow: Overflow,
        block_timeout: float,
        batch_size: int,
        report: Report,
    ) -> None:
        self.spool = spool
        self._max_queue_size = max_queue_size
        self._durable = spool is not None and spool.durable
        self._overflow = overflow
        self._block_timeout = block_timeout
        self._batch_size = batch_size
        self._report = report
        self._reset()

    def _reset(self) -> None:
        self._memory: deque[bytes] = deque()
        self.in_flight: Batch | None = None
        self._spilling = False
        self._space = threading.Condition()
        self.dropped = 0
        #: Set when a batch is ready; the consumer also wakes on its own timeouts, so a lost wake-up only delays.
        self.wake = threading.Event()

    def after_fork_in_child(self) -> None:
        """The parent's queued messages are the parent's to send."""
        if self.spool is not None:
            self.spool.after_fork_in_child()
        self._reset()

    # -- the calling threads ------------------------------------------------------------------------------

    def put(self, data: bytes) -> None:
        memory = self._memory
        if not self._spilling and not self._durable and len(memory) < self._max_queue_size:
            memory.append(data)
            if len(memory) == self._batch_size:
                self.wake.set()
            return
        if self.spool is None:
            self._put_memory_full(data)
            return
        self._spilling = not self._durable
        try:
            spooled = self.spool.append(data) or self._spool_full(data)
        except OSError as exc:  # a full or read-only disk: memory is all there is
            log.error("could not write to the spool in %s: %s", self.spool.directory, exc)
            self._put_memory_full(data)
            return
        if spooled and self.spool.unread_records % self._batch_size == 0:
            self.wake.set()

    def _spool_full(self, data: bytes) -> bool:
        """Apply the overflow policy at the spool's cap; True when ``data`` was spooled after all."""
        assert self.spool is not None
        if self._overflow == "drop_oldest":
            lost = self.spool.drop_oldest(len(data) + 1)
            if lost:
                self._dropped(Dropped(lost, f"the spool reached its cap of {self.spool.max_bytes:,} bytes"), [])
            if self.spool.append(data):
                return True
        else:
            deadline = time.monotonic() + self._block_timeout
            with self._space:
                while (remaining := deadline - time.monotonic()) > 0:
                    if self.spool.append(data):
                        return True
                    self._space.wait(remaining)
        self._dropped(Dropped(1, f"the spool stayed at its cap of {self.spool.max_bytes:,} bytes"), [decode(data)])
        return False

    def _put_memory_full(self, data: bytes) -> None:
        memory = self._memory
        if self._overflow == "drop_oldest":
            memory.append(data)
            lost: list[bytes] = []
            while len(memory) > self._max_queue_size:
                try:
                    lost.append(memory.popleft())
                except IndexError:  # the consumer took it meanwhile
                    break
            if lost:
                reason = f"the queue is full ({self._max_queue_size:,} messages) and there is no spool"
                self._dropped(Dropped(len(lost), reason), [decode(item) for item in lost])
            return
        deadline = time.monotonic() + self._block_timeout
        with self._space:
            while len(memory) >= self._max_queue_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = f"the queue stayed full ({self._max_queue_size:,} messages) for {self._block_timeout} s"
                    self._dropped(Dropped(1, reason), [decode(data)])
                    return
                self._space.wait(remaining)
            memory.append(data)

    def _dropped(self, error: Dropped, messages: list[Json]) -> None:
        with self._space:
            self.dropped += error.count
        self._report(error, messages)

    # -- the consumer thread ------------------------------------------------------------------------------

    def ready(self) -> int:
        """How many messages wait to be taken (an estimate: other threads keep adding)."""
        return len(self._memory) + (self.spool.unread_records if self.spool is not None else 0)

    def take(self, max_records: int, max_bytes: int) -> Batch | None:
        memory = self._memory
        if memory:
            records: list[bytes] = []
            self.in_flight = Batch(records)  # visible to is_empty() before the queue shrinks
            size = 0
            while memory and len(records) < max_records:
                size += len(memory[0]) + 1
                if size > max_bytes and records:
                    break
                records.append(memory.popleft())
            return self.in_flight
        if self.spool is None:
            return None
        chunk = self.spool.read(max_records, max_bytes)
        if chunk is not None:
            self.in_flight = Batch(chunk.records, chunk)
        return self.in_flight

    def idle(self) -> None:
        """Nothing left to take: once the spool is drained too, new messages may stay in memory again."""
        if self._spilling and self.spool is not None and self.spool.is_drained():
            self._spilling = False

    def done(self, batch: Batch) -> None:
        """The batch is settled (delivered or refused): its room is free again."""
        if batch.chunk is not None:
            assert self.spool is not None
            self.spool.ack(batch.chunk)
        self.in_flight = None
        with self._space:
            self._space.notify_all()

    def is_empty(self) -> bool:
        return not self._memory and self.in_flight is None and (self.spool is None or self.spool.is_drained())

    def persist(self, extra: Sequence[bytes] = ()) -> None:
        """What is only in memory - queued, or taken from the queue and not delivered - goes to the spool for
        the next process (a sibling or a restart) to deliver; without a spool it is lost, and reported."""
        in_flight = self.in_flight
        undelivered = in_flight.records if in_flight is not None and in_flight.chunk is None else []
        records = [*undelivered, *self._memory, *extra]
        self._memory.clear()
        if not records:
            return
        if self.spool is None:
            lost = [decode(data) for data in records]
            self._dropped(Dropped(len(records), "the process exited and there is no spool"), lost)
            return
        try:
            for data in records:
                if not self.spool.append(data):
                    self._spool_full(data)
            self.spool.flush()
        except OSError as exc:
            log.error("could not write to the spool in %s: %s", self.spool.directory, exc)
            self._dropped(Dropped(len(records), f"the spool could not be written: {exc}"), [])
