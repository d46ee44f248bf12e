"""The on-disk spool: undelivered messages as newline-delimited JSON in segment files.

One directory per (host, write key) holds the segments of every process using it. A process owns the segments
it creates and holds an exclusive ``flock`` on each for as long as it lives, so after a crash (or a clean exit
that could not deliver) another process - a restarted storefront, a sibling gunicorn worker - finds them
unlocked and adopts them: it resumes from the offset recorded in ``<segment>.ack`` after every delivered batch.
A batch delivered just before a crash may be sent again; the service drops it as a duplicate by messageId.

Segments are written with ``os.write``: at once in durable mode (the message is in the kernel before the call
returns, so it survives the process being killed), otherwise from a 64 KiB user-space buffer.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("espbridge")

SEGMENT_SUFFIX = ".seg"
ACK_SUFFIX = ".ack"
NEW_SUFFIX = ".new"
STALE_NEW_SECONDS = 60.0
WRITE_BUFFER_BYTES = 64 * 1024
MAX_SEGMENT_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    size: int = 0  # bytes of complete records (written, or handed to the write buffer)
    records: int = 0
    acked: int = 0  # offset up to which every record was delivered (or refused)
    read: int = 0  # offset up to which records were handed to the consumer
    read_records: int = 0
    ack_fd: int = -1
    closed: bool = False

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(ACK_SUFFIX)


@dataclass(frozen=True)
class Chunk:
    """Records read from one segment; :meth:`Spool.ack` records them as delivered."""

    segment: _Segment
    end: int
    records: list[bytes]


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, durable: bool) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.durable = durable
        self._segment_bytes = max(4096, min(MAX_SEGMENT_BYTES, max_bytes // 8))
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []  # oldest first; the active writer, if any, is last
        self._writer: _Segment | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.pending_bytes = 0  # written and not yet acknowledged
        self.unread_records = 0  # written and not yet handed to the consumer

    # -- the calling threads ------------------------------------------------------------------------------

    def append(self, data: bytes) -> bool:
        """Append one record; False when it would take the spool past ``max_bytes``."""
        size = len(data) + 1
        with self._lock:
            if self.pending_bytes + size > self.max_bytes:
                return False
            writer = self._writer or self._open_segment()
            if self.durable:
                _write_all(writer.fd, data + b"\n")
            else:
                self._buffer.append(data + b"\n")
                self._buffered += size
                if self._buffered >= WRITE_BUFFER_BYTES:
                    self._flush_buffer()
            writer.size += size
            writer.records += 1
            self.pending_bytes += size
            self.unread_records += 1
            if writer.size >= self._segment_bytes:
                self._seal()
            return True

    def drop_oldest(self, needed: int) -> int:
        """Discard whole segments, oldest first, until ``needed`` more bytes fit; the number of records lost.

        Records the consumer has already read (a batch in flight) are not counted: they are still delivered.
        """
        dropped = 0
        with self._lock:
            while self.pending_bytes + needed > self.max_bytes and self._segments:
                segment = self._segments[0]
                if segment is self._writer:
                    self._seal()
                dropped += segment.records - segment.read_records
                self._remove(segment)
        return dropped

    def flush(self) -> None:
        """Hand buffered records to the kernel (a clean exit; the consumer reading the active segment)."""
        with self._lock:
            self._flush_buffer()

    # -- the consumer thread ------------------------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int) -> Chunk | None:
        with self._lock:
            segment = next((s for s in self._segments if s.read < s.size), None)
            if segment is None:
                return None
            if segment is self._writer:
                self._flush_buffer()
            start = segment.read
            data = os.pread(segment.fd, min(segment.size - start, max_bytes), start)
            records: list[bytes] = []
            end = 0
            while len(records) < max_records:
                newline = data.find(b"\n", end)
                if newline < 0:
                    break
                if newline > end:
                    record = data[end:newline]
                    if record[:1] == b"{" and record[-1:] == b"}":
                        records.append(record)
                    else:  # a damaged file: sending it would get its whole batch refused
                        log.error("skipping a damaged record in %s at offset %d", segment.path, start + end)
                end = newline + 1
            if end == 0:  # no complete record in max_bytes: not ours (we never write one that long)
                log.error("spool segment %s is corrupt after offset %d; skipping its rest", segment.path, start)
                end = segment.size - start
                lines = segment.records - segment.read_records
            else:
                lines = data.count(b"\n", 0, end)  # the skipped lines too
            segment.read = start + end
            segment.read_records += lines
            self.unread_records -= lines
            return Chunk(segment, segment.read, records)

    def ack(self, chunk: Chunk) -> None:
        with self._lock:
            segment = chunk.segment
            if segment.closed:  # dropped by the overflow policy while its batch was in flight
                return
            self.pending_bytes -= chunk.end - segment.acked
            segment.acked = chunk.end
            if segment is not self._writer and segment.acked >= segment.size:
                self._remove(segment)
                return
            if segment.ack_fd < 0:
                segment.ack_fd = os.open(segment.ack_path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(segment.ack_fd, b"%020d\n" % segment.acked, 0)

    def is_drained(self) -> bool:
        with self._lock:
            return self.pending_bytes == 0

    def adopt_orphans(self) -> int:
        """Take over the segments of processes that are gone; the number of records adopted."""
        adopted: list[_Segment] = []
        if not self.directory.is_dir():
            return 0
        for path in sorted(self.directory.iterdir()):
            if path.suffix == ACK_SUFFIX and not path.with_suffix(SEGMENT_SUFFIX).exists():
                path.unlink(missing_ok=True)  # its segment was delivered and removed just before a crash
            elif path.suffix == NEW_SUFFIX:
                _remove_stale_new(path)
            elif path.suffix == SEGMENT_SUFFIX and (segment := _try_adopt(path)) is not None:
                adopted.append(segment)
        if not adopted:
            return 0
        with self._lock:
            for segment in adopted:
                self.pending_bytes += segment.size - segment.acked
                self.unread_records += segment.records
            self._segments[:0] = adopted  # older than ours
        count = sum(segment.records for segment in adopted)
        log.info("adopted %d undelivered message(s) from the spool in %s", count, self.directory)
        return count

    def close(self) -> None:
        """Flush and release the segments (a clean exit): another process may adopt what is left."""
        with self._lock:
            self._flush_buffer()
            for segment in list(self._segments):
                if segment.acked >= segment.size:
                    self._remove(segment)
                else:
                    _close_fds(segment)
            self._segments.clear()
            self._writer = None

    def after_fork_in_child(self) -> None:
        """Forget the parent's segments without touching them: they stay the parent's to deliver."""
        for segment in self._segments:
            _close_fds(segment)
        self._reset()

    # -- internals (the lock is held) ---------------------------------------------------------------------

    def _open_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # first use: a client that never spills
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"  # leaves no directory behind
        # Created under a name no scan adopts, locked, then renamed: no other process ever sees the segment of
        # a living process unlocked.
        temporary = self.directory / f"{name}{NEW_SUFFIX}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = temporary.with_suffix(SEGMENT_SUFFIX)
        os.rename(temporary, path)
        self._writer = _Segment(path, fd)
        self._segments.append(self._writer)
        return self._writer

    def _seal(self) -> None:
        self._flush_buffer()
        self._writer = None

    def _flush_buffer(self) -> None:
        if self._buffer and self._writer is not None:
            _write_all(self._writer.fd, b"".join(self._buffer))
        self._buffer.clear()
        self._buffered = 0

    def _remove(self, segment: _Segment) -> None:
        if segment is self._writer:
            self._buffer.clear()
            self._buffered = 0
            self._writer = None
        self.pending_bytes -= segment.size - segment.acked
        self.unread_records -= segment.records - segment.read_records
        segment.path.unlink(missing_ok=True)  # unlinked while still locked: nobody adopts it half-removed
        segment.ack_path.unlink(missing_ok=True)
        _close_fds(segment)
        self._segments.remove(segment)


def _try_adopt(path: Path) -> _Segment | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its process is alive
        os.close(fd)
        return None
    if os.fstat(fd).st_nlink == 0:  # removed by its owner meanwhile
        os.close(fd)
        return None
    segment = _Segment(path, fd)
    with contextlib.suppress(FileNotFoundError, ValueError):
        segment.acked = int(segment.ack_path.read_bytes().strip() or 0)
    size = os.fstat(fd).st_size
    segment.acked = segment.read = min(segment.acked, size)
    # Count the complete records after the acknowledged offset; a torn last line (a crash mid-write of a
    # message whose call never returned) is left out.
    offset, complete = segment.acked, segment.acked
    while offset < size:
        data = os.pread(fd, min(_READ_CHUNK, size - offset), offset)
        segment.records += data.count(b"\n")
        last = data.rfind(b"\n")
        if last >= 0:
            complete = offset + last + 1
        offset += len(data)
    segment.size = complete
    if segment.records == 0:
        segment.path.unlink(missing_ok=True)
        segment.ack_path.unlink(missing_ok=True)
        os.close(fd)
        return None
    return segment


def _remove_stale_new(path: Path) -> None:
    """A segment a crash left between its creation and its rename: empty, and unlocked once its process is gone.

    The age check keeps a scan from racing the creating process between ``open`` and ``flock``."""
    with contextlib.suppress(FileNotFoundError):
        if time.time() - path.stat().st_mtime > STALE_NEW_SECONDS:
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _close_fds(segment: _Segment) -> None:
    segment.closed = True
    for fd in (segment.fd, segment.ack_fd):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    segment.fd = segment.ack_fd = -1
