"""What the full-sync benchmarks (bench/sync_klaviyo.py, bench/sync_activecampaign.py) share: the sync run as a
child process bounded in time, a sampler of CPU per process and of the run's sync_runs row, the digest of the
measured code, the sandbox's admin reads, and the table of measured time against the ceiling.
"""

from __future__ import annotations

import hashlib
import json
import pstats
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from _cpu import CLOCK_TICKS, _process_table
from _procs import REPO, BenchError, Proc, Processes, tail
from _sync_data import psycopg_url

#: Warning lines each process logged (name -> lines), reported with the figures.
WARNINGS: dict[str, list[str]] = {}
SAMPLE_INTERVAL = 0.25


@dataclass
class Sample:
    t: float  # monotonic
    cpu: dict[str, float]  # CPU seconds so far per component
    run: dict[str, Any] | None  # the sync_runs row (processed, events_sent, requests, heartbeat_at, status)


@dataclass
class Requests:
    """What the sandbox's request log says about one client's requests, per operation."""

    by_operation: dict[str, dict[str, int]] = field(default_factory=dict)  # op -> {status: count}
    throttled_after_first_window: int = 0
    first: str | None = None
    last: str | None = None
    #: Each 429: the operation, its position among that operation's requests, its time, and the time of the
    #: request that opened the steady window it fell in (the ``steady``-th accepted request before it).
    throttled_detail: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(sum(s.values()) for s in self.by_operation.values())

    @property
    def throttled(self) -> int:
        return sum(s.get("429", 0) for s in self.by_operation.values())

    def accepted(self, operation: str) -> int:
        return sum(n for status, n in self.by_operation.get(operation, {}).items() if status != "429")


def code_digest(measured: Sequence[str]) -> str:
    """HEAD and a digest of the measured code (files or directories): a change during a run shows."""
    digest = hashlib.sha256()
    for root in measured:
        path = REPO / root
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(REPO).as_posix().encode())
            digest.update(file.read_bytes())
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return f"{revision.stdout.strip()}+{digest.hexdigest()[:12]}"


def tree_cpu_seconds(root: int, table: dict[int, tuple[int, int]], children: dict[int, list[int]]) -> float:
    """CPU of a live process and its live descendants, plus what their exited children used (cutime)."""
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total / CLOCK_TICKS


def _full_table() -> tuple[dict[int, tuple[int, int]], dict[int, list[int]]]:
    """pid -> (ppid, utime + stime + cutime + cstime) and the children of each pid."""
    table: dict[int, tuple[int, int]] = {}
    for pid in _process_table():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[pid] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    return table, children


class Sampler(threading.Thread):
    """Every SAMPLE_INTERVAL: CPU seconds of each component and the latest sync_runs row."""

    def __init__(self, database_url: str, store_id: int, components: dict[str, int]) -> None:
        super().__init__(daemon=True)
        import psycopg

        self.conn = psycopg.connect(psycopg_url(database_url), autocommit=True)
        self.store_id = store_id
        self.components = components
        self.samples: list[Sample] = []
        self.stopped = threading.Event()

    def watch(self, name: str, pid: int) -> None:
        self.components = {**self.components, name: pid}

    def sample(self) -> Sample:
        table, children = _full_table()
        cpu = {name: tree_cpu_seconds(pid, table, children) for name, pid in self.components.items() if pid in table}
        row = self.conn.execute(
            "SELECT id, processed, total, events_sent, requests, heartbeat_at, status FROM sync_runs "
            "WHERE store_id = %s ORDER BY id DESC LIMIT 1",
            (self.store_id,),
        ).fetchone()
        run = None
        if row is not None:
            keys = ("id", "processed", "total", "events_sent", "requests", "heartbeat_at", "status")
            run = dict(zip(keys, row, strict=True))
        sample = Sample(time.monotonic(), cpu, run)
        self.samples.append(sample)
        return sample

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_INTERVAL):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)
        self.sample()
        self.conn.close()


def run_sync(
    procs: Processes,
    env: dict[str, str],
    argv: list[str],
    timeout: float,
    name: str,
    on_start: Callable[[int], None] | None = None,
) -> tuple[Any, float]:
    """Run a process that prints JSON to its end (bounded by ``timeout``); returns the JSON and the wall time."""
    out, err = procs.workdir / f"{name}.out", procs.workdir / f"{name}.err"
    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        popen = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
        )
    proc = Proc(name=name, popen=popen, log=err)
    procs.started.append(proc)
    if on_start is not None:
        on_start(popen.pid)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        raise BenchError(f"{name} still running after {timeout:.0f} s\n{tail(err)}") from None
    wall = time.monotonic() - started
    procs.stop(proc)
    warnings = [line for line in err.read_text(errors="replace").splitlines() if " WARNING " in line or "Error" in line]
    if warnings:
        print(f"  {name} logged {len(warnings)} warning(s); the first: {warnings[0][:300]}", flush=True)
    WARNINGS[name] = warnings[:50]
    text = out.read_text()
    try:
        return json.loads(text), wall
    except ValueError:
        raise BenchError(f"{name} exited {popen.returncode} without JSON\n{text[-2000:]}\n{tail(err)}") from None


def sandbox_get(url: str, path: str, timeout: float = 300.0) -> Any:
    response = httpx.get(f"{url}{path}", timeout=timeout)
    response.raise_for_status()
    return response.json()


def cpu_between(samples: Sequence[Sample], t0: float, t1: float) -> dict[str, float]:
    """CPU seconds per component between the samples nearest t0 and t1 (for a process that exited before
    t1, its last sample: the sync's final fraction of a sample interval is not counted here)."""
    before = min(samples, key=lambda s: abs(s.t - t0))
    out = {}
    for name in {name for s in samples for name in s.cpu}:
        after = min((s for s in samples if name in s.cpu), key=lambda s: abs(s.t - t1))
        out[name] = after.cpu[name] - before.cpu.get(name, 0.0)  # a process started after t0 counts from 0
    return out


def profile_summary(path: Path, top: int = 30) -> list[str]:
    import io

    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return stream.getvalue().splitlines()


@dataclass(frozen=True)
class Line:
    what: str
    items: int
    requests: int
    seconds: float
    ceiling: float

    @property
    def share(self) -> float | None:
        return self.ceiling / self.seconds if self.seconds > 0 else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def line_table(lines: Sequence[Line], label: str) -> list[str]:
    out = [
        f"| {label:<10} | items | requests | seconds | ceiling s | req/s | ceiling req/s | items/s | "
        "ceiling items/s | % of ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for line in lines:
        rate = line.requests / line.seconds if line.seconds else 0.0
        ceiling_rate = line.requests / line.ceiling if line.ceiling else None
        items_rate = line.items / line.seconds if line.items and line.seconds else None
        ceiling_items = line.items / line.ceiling if line.items and line.ceiling else None
        out.append(
            f"| {line.what:<10} | {line.items:,} | {line.requests:,} | {line.seconds:.1f} | {line.ceiling:.1f} | "
            f"{rate:.2f} | {'-' if ceiling_rate is None else f'{ceiling_rate:.2f}'} | "
            f"{'-' if items_rate is None else f'{items_rate:,.0f}'} | "
            f"{'-' if ceiling_items is None else f'{ceiling_items:,.0f}'} | {_pct(line.share)} |"
        )
    return out


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
