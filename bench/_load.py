"""Load generators of the ingestion benchmark.

* Saturation (closed loop): ``wrk`` with a Lua script that builds every body with unique messageIds
  (``<prefix>-<wrk thread>-<request counter>-<index in batch>``), counts 200 responses exactly in
  ``response()`` and prints one JSON line from ``done()`` with wrk's latency percentiles.
* Fixed rate (open loop): an asyncio + httpx generator that sends request *i* at ``start + i / rate``
  whatever happened to earlier requests, and measures each latency from that scheduled time, so a
  stalled server cannot hide its stall by slowing the generator down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import resource
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

WRK = "/usr/bin/wrk"
WRK_THREADS = 1  # one core's worth of generator at most; the server keeps the other
WRK_TIMEOUT = "30s"  # a request slower than this counts as an error and its latency is lost
EVENT_TIMESTAMP = "2026-11-20T10:00:00Z"
OPEN_LOOP_CONNECTIONS = 64
OPEN_LOOP_TIMEOUT = 30.0

LUA_SCRIPT = r"""
-- args: shape ("single" | "batch"), messages per batch, messageId prefix, Authorization header value
local threads = {}
local counter = 0
local shape, size, prefix

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  shape, size, prefix = args[1], tonumber(args[2]), args[3]
  wrk.method = "POST"
  wrk.headers["Authorization"] = args[4]
  wrk.headers["Content-Type"] = "application/json"
  ok200, non200 = 0, 0
end

local function message(n, i)
  return string.format(
    '{"type":"track","event":"Product Viewed","userId":"u%d","messageId":"%s-%d-%d-%d",' ..
    '"timestamp":"__TS__","properties":{"product_id":"p%d","price":19.99}}',
    n % 1000, prefix, tid, n, i, i % 50)
end

function request()
  counter = counter + 1
  local body
  if shape == "single" then
    body = message(counter, 0)
  else
    local parts = {}
    for i = 1, size do parts[i] = message(counter, i) end
    body = '{"batch":[' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status == 200 then ok200 = ok200 + 1 else non200 = non200 + 1 end
end

function done(summary, latency, requests)
  local ok, bad = 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok200")
    bad = bad + t:get("non200")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"ok":%d,"non200":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, ok, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
""".replace("__TS__", EVENT_TIMESTAMP)


@dataclass(frozen=True)
class Shape:
    """What one request carries: one message on /v1/track, or ``size`` messages on /v1/batch."""

    name: str
    path: str
    size: int

    @property
    def wrk_shape(self) -> str:
        return "single" if self.path == "/v1/track" else "batch"


@dataclass(frozen=True)
class LoadResult:
    """What a load run measured: ``ok`` requests answered 200 (each carrying ``shape.size`` messages)."""

    mode: str  # "saturation" (wrk, closed loop) or "fixed-rate" (open loop)
    connections: int
    offered_rps: float | None  # fixed-rate runs only
    seconds: float
    requests: int
    ok: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    generator_cpu: float  # cores the load generator itself used on average
    max_send_lag_ms: float | None = None  # fixed-rate: worst delay between scheduled and actual send

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok_rps": self.rps}


# ------------------------------------------------------------------------------------------- wrk


def run_wrk(url: str, authorization: str, shape: Shape, prefix: str, connections: int, seconds: float) -> LoadResult:
    """Saturate ``url`` with ``connections`` keep-alive connections for ``seconds``; parse done()'s JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="ingest-") as script:
        script.write(LUA_SCRIPT)
        script.flush()
        argv = [
            WRK,
            "-t",
            str(min(WRK_THREADS, connections)),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            WRK_TIMEOUT,
            "-s",
            script.name,
            url,
            "--",
            shape.wrk_shape,
            str(shape.size),
            prefix,
            authorization,
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        output = _run_wrk_process(argv, timeout=seconds + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = _parse_wrk(output)
    duration = stats["duration_us"] / 1e6
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    socket_errors = sum(stats[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return LoadResult(
        mode="saturation",
        connections=connections,
        offered_rps=None,
        seconds=duration,
        requests=stats["requests"],
        ok=stats["ok"],
        errors=stats["non200"] + socket_errors,
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        max_ms=stats["max_us"] / 1000,
        generator_cpu=cpu / duration if duration else 0.0,
    )


def _run_wrk_process(argv: Sequence[str], timeout: float) -> str:
    # Own process group, killed on any exit path (including KeyboardInterrupt while waiting).
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
    return text


def _parse_wrk(output: str) -> dict[str, int]:
    match = re.search(r"^WRK_JSON (\{.*\})$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no WRK_JSON line:\n{output}")
    return {key: int(value) for key, value in json.loads(match.group(1)).items()}


# ------------------------------------------------------------------------------------ open loop


def message(message_id: str, n: int) -> dict[str, Any]:
    """The same message the Lua script builds."""
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"u{n % 1000}",
        "messageId": message_id,
        "timestamp": EVENT_TIMESTAMP,
        "properties": {"product_id": f"p{n % 50}", "price": 19.99},
    }


def build_bodies(shape: Shape, prefix: str, count: int) -> list[bytes]:
    """``count`` request bodies with unique messageIds, built before the clock starts."""
    bodies = []
    for n in range(count):
        if shape.wrk_shape == "single":
            payload: dict[str, Any] = message(f"{prefix}-{n}", n)
        else:
            payload = {"batch": [message(f"{prefix}-{n}-{i}", i) for i in range(shape.size)]}
        bodies.append(json.dumps(payload, separators=(",", ":")).encode())
    return bodies


@dataclass(frozen=True)
class _Sample:
    status: int  # 0: transport error
    scheduled: float  # event-loop clock
    completed: float
    send_lag: float  # seconds from the scheduled send time to the moment the request was started

    @property
    def latency(self) -> float:
        """Seconds from the scheduled send time (not the actual one) to the response."""
        return self.completed - self.scheduled


def run_open_loop(url: str, authorization: str, shape: Shape, prefix: str, rate: float, seconds: float) -> LoadResult:
    """Offer ``rate`` requests/s for ``seconds`` (at most rate*seconds requests, bounded by a timeout)."""
    count = max(1, math.floor(rate * seconds))
    bodies = build_bodies(shape, prefix, count)
    before = resource.getrusage(resource.RUSAGE_SELF)
    samples = asyncio.run(_offer(url, authorization, bodies, rate))
    after = resource.getrusage(resource.RUSAGE_SELF)
    # From the first scheduled send to the last response: a server that falls behind takes longer than
    # count / rate, and its achieved rate (ok / elapsed) drops below the offered one.
    elapsed = max(s.completed for s in samples) - min(s.scheduled for s in samples)
    latencies = sorted(s.latency for s in samples if s.status == 200)
    ok = len(latencies)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return LoadResult(
        mode="fixed-rate",
        connections=OPEN_LOOP_CONNECTIONS,
        offered_rps=rate,
        seconds=elapsed,
        requests=len(samples),
        ok=ok,
        errors=len(samples) - ok,
        p50_ms=_percentile(latencies, 50) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
        max_ms=(latencies[-1] if latencies else math.nan) * 1000,
        generator_cpu=cpu / elapsed if elapsed else 0.0,
        max_send_lag_ms=max(s.send_lag for s in samples) * 1000,
    )


async def _offer(url: str, authorization: str, bodies: Sequence[bytes], rate: float) -> list[_Sample]:
    limits = httpx.Limits(max_connections=OPEN_LOOP_CONNECTIONS, max_keepalive_connections=OPEN_LOOP_CONNECTIONS)
    headers = {"Authorization": authorization, "Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=OPEN_LOOP_TIMEOUT, headers=headers) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks = []
        for i, body in enumerate(bodies):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            tasks.append(asyncio.create_task(_send(client, url, body, scheduled)))
        return await asyncio.gather(*tasks)


async def _send(client: httpx.AsyncClient, url: str, body: bytes, scheduled: float) -> _Sample:
    loop = asyncio.get_running_loop()
    lag = loop.time() - scheduled
    try:
        response = await client.post(url, content=body)
        status = response.status_code
    except httpx.HTTPError:
        status = 0
    return _Sample(status=status, scheduled=scheduled, completed=loop.time(), send_lag=lag)


def _percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
