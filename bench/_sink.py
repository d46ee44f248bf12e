"""The SDK benchmark's sink: a fast local stand-in for a Segment-compatible ingestion endpoint.

A single-threaded asyncio HTTP/1.1 server (keep-alive, Content-Length or chunked bodies, gzip) on
127.0.0.1 that answers ``200 {"success": true}`` at once to any POST under ``/v1/`` (``/v1/batch``,
``/v1/import``, ``/v1/track``, ``/v1/identify``, ...), after gunzipping the body when it is sent with
``Content-Encoding: gzip``, parsing the JSON and recording every ``messageId``. It does no other work, so
what a client achieves against it is the client's own ceiling.

Control endpoints (not counted):

* ``GET /_stats`` - JSON: ``messages`` received, ``unique`` messageIds, ``duplicates``, ``no_id``,
  ``requests``, ``bad_requests``, ``body_bytes``, ``max_batch``, ``first_at``/``last_at`` (the
  ``time.monotonic()`` at which the first/last message-carrying request had been parsed - the clock is
  CLOCK_MONOTONIC, shared by every process of the machine), ``cpu_s`` (this process's CPU seconds, all
  incarnations) and ``paths`` (requests per path).
* ``POST /_reset`` - forget everything.

An outage is a real one: SIGTERM closes the listening socket and every open connection (clients get a
reset, then "connection refused"), writes the state (seen messageIds and counters) to ``--state`` and
exits; started again with the same ``--state`` on the same port, the sink continues counting where it
stopped, so duplicates across the outage are still recognised.

``--delay-ms D`` delays every answer to an ingestion request by D ms (without blocking other connections),
to stand in for the round trip to a real ingestion service; the default is 0, answer at once.

    .venv/bin/python bench/_sink.py --port 8123 [--state /tmp/sink.json] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import signal
import time
import zlib
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
OK_BODY = b'{"success": true}'
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
COUNTERS = ("messages", "duplicates", "no_id", "requests", "bad_requests", "body_bytes", "max_batch")


class State:
    """What the sink has received since the last reset."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.counts: dict[str, int] = {}
        self.paths: dict[str, int] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.cpu_before = 0.0  # CPU seconds of earlier incarnations (outage restarts)
        self.cpu_reset_at = 0.0
        self.reset()

    def reset(self) -> None:
        self.seen = set()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.paths = {}
        self.first_at = self.last_at = None
        self.cpu_before, self.cpu_reset_at = 0.0, time.process_time()

    def record(self, path: str, messages: list[Any]) -> None:
        counts = self.counts
        seen = self.seen
        counts["requests"] += 1
        self.paths[path] = self.paths.get(path, 0) + 1
        if not messages:
            return
        new = 0
        for message in messages:
            message_id = message.get("messageId") if isinstance(message, dict) else None
            if not isinstance(message_id, str):
                counts["no_id"] += 1
                continue
            if message_id in seen:
                counts["duplicates"] += 1
            else:
                seen.add(message_id)
                new += 1
        counts["messages"] += len(messages)
        counts["max_batch"] = max(counts["max_batch"], len(messages))
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "unique": len(self.seen),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "cpu_s": self.cpu_before + time.process_time() - self.cpu_reset_at,
            "paths": dict(self.paths),
        }

    def dump(self, path: Path) -> None:
        payload = {**self.stats(), "seen": sorted(self.seen)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        payload = json.loads(path.read_text())
        self.seen = set(payload["seen"])
        self.counts = {name: int(payload[name]) for name in COUNTERS}
        self.paths = dict(payload["paths"])
        self.first_at, self.last_at = payload["first_at"], payload["last_at"]
        self.cpu_before = float(payload["cpu_s"])


def decode_messages(path: str, headers: dict[str, str], body: bytes) -> list[Any]:
    """The messages of one ingestion request; raises ValueError on a body that is not valid."""
    encoding = headers.get("content-encoding", "").lower()
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise ValueError("body is not a JSON object")
    if path.endswith(("/batch", "/import")):
        batch = payload.get("batch")
        if not isinstance(batch, list):
            raise ValueError("no batch array")
        return batch
    return [payload]


class Sink:
    def __init__(self, state: State, delay: float = 0.0) -> None:
        self.state = state
        self.delay = delay
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while await self.one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await read_chunked(reader)
        else:
            length = int(headers.get("content-length", "0") or "0")
            if length > MAX_BODY:
                raise ValueError("body too large")
            body = await reader.readexactly(length) if length else b""
        path = target.split("?", 1)[0]
        status, payload = self.dispatch(method, path, headers, body)
        if self.delay and path.startswith("/v1/"):
            await asyncio.sleep(self.delay)
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        close = "" if keep_alive else "Connection: close\r\n"
        response_head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        )
        writer.write(f"{response_head}{close}\r\n".encode("latin-1") + payload)
        await writer.drain()
        return keep_alive

    def dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if method == "POST" and path.startswith("/v1/"):
            try:
                messages = decode_messages(path, headers, body)
            except (ValueError, OSError, EOFError, zlib.error):
                self.state.counts["bad_requests"] += 1
                return 400, b'{"success": false, "code": "bad_request", "message": "invalid body"}'
            self.state.counts["body_bytes"] += len(body)
            self.state.record(path, messages)
            return 200, OK_BODY
        if method == "GET" and path == "/_stats":
            return 200, json.dumps(self.state.stats()).encode()
        if method == "POST" and path == "/_reset":
            self.state.reset()
            return 200, OK_BODY
        return 404, b'{"success": false}'

    def abort_connections(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        total += size
        if total > MAX_BODY:
            raise ValueError("body too large")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def serve(port: int, state_path: Path | None, delay: float) -> None:
    state = State()
    if state_path is not None and state_path.exists():
        state.load(state_path)
    sink = Sink(state, delay)
    server = await asyncio.start_server(sink.handle, HOST, port, limit=MAX_HEAD, backlog=512, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"sink listening on http://{HOST}:{port}", flush=True)
    await stop.wait()
    server.close()  # stop accepting: from now on, connection refused
    sink.abort_connections()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 2.0)
    if state_path is not None:
        state.dump(state_path)
    print("sink stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="SDK benchmark sink")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, default=None, help="load on start, write on SIGTERM")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay every ingestion answer (default 0)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.state, max(0.0, args.delay_ms) / 1000))


if __name__ == "__main__":
    main()
