"""SDK benchmark: the espbridge storefront SDK side by side with Segment's and RudderStack's Python clients.

Every client is run with its library's defaults against the same local sink (``bench/_sink.py``: a
single-threaded asyncio HTTP/1.1 keep-alive server on 127.0.0.1 that answers ``200 {"success": true}`` at
once, gunzips, parses the JSON and records every messageId), each run in a fresh process
(``bench/_sdk_client.py``), one at a time, never concurrently. Scenarios:

* ``tight`` - N ``track()`` calls (default 200,000) back to back in the main thread, each timed with
  ``perf_counter_ns``; then ``flush()`` (bounded). Per-call median/p99/max in the caller's thread, events/s
  delivered end to end (unique messageIds at the sink / (sink's last arrival - first call), both on
  CLOCK_MONOTONIC), delivered/duplicates/lost, the process's peak RSS.
* ``sync`` - ``sync_mode=True``, N calls (default 5,000): events/s.
* ``exit`` - 5,000 calls, then the program ends without ``flush()`` (normal interpreter exit): how many
  reach the sink, and how long the exit took. For espbridge, a second process on the same spool directory
  then flushes: what it recovers is shown separately.
* ``fork`` - the client is created, then ``os.fork()``; the child sends 2,000 events and calls ``flush()``
  (bounded at 15 s; the child is killed if still alive after 20 s); the parent waits. Delivered.
* ``outage`` - a steady 200 events/s for before + outage + after seconds; the sink is stopped (listening
  socket closed: connection refused) for ``--outage-seconds`` (default 60), then started again on the same
  port with the messageIds it had seen; then ``flush()`` (bounded, 120 s). Lost, duplicates.

Every figure is printed next to its ratio against Segment's, and the SDK issue's goals are printed as met /
NOT met for espbridge. Nothing is asserted. Results: ``bench/results/sdk-<UTC timestamp>.json``.

    .venv/bin/python bench/sdk.py [--quick] [--calls N] [--outage-seconds S] [--only tight,sync,...]
                                  [--clients segment,rudder,espbridge]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from _cpu import CpuMeter, wait_for_quiet
from _procs import HOST, REPO, VENV_BIN, BenchError, Proc, Processes, free_port, guarded, tail, write_results

BENCH = Path(__file__).resolve().parent
PYTHON = str(VENV_BIN / "python")
CLIENTS = ("segment", "rudder", "espbridge")
SCENARIOS = ("tight", "sync", "exit", "fork", "outage")
IMPORTS = {"segment": "segment.analytics", "rudder": "rudderstack.analytics", "espbridge": "espbridge"}
BASELINE = "segment"

EXIT_CALLS = 5_000
FORK_CALLS = 2_000
FORK_CHILD_TIMEOUT = 20.0
OUTAGE_RATE = 200.0
AFTER_RESULT_GRACE = 30.0  # seconds a runner may take to exit once its result is written (not in `exit`)
EXIT_TIMEOUT = 60.0  # the `exit` scenario: seconds the interpreter may take to exit before it is killed


@dataclass(frozen=True)
class Plan:
    scenarios: tuple[str, ...]
    clients: tuple[str, ...]
    tight_calls: int
    sync_calls: int
    outage_before: float
    outage_seconds: float
    outage_after: float
    flush_timeout: float
    quiet_wait: float
    quick: bool
    sink_delay_ms: float
    run_id: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))


@dataclass
class Run:
    """One client in one scenario: what the runner process reported and what the sink received."""

    scenario: str
    client: str
    result: dict[str, Any] = field(default_factory=dict)
    sink: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # driver-side figures (exit time, outage window, ...)
    notes: list[str] = field(default_factory=list)
    other_cpu: float = 0.0

    @property
    def sent(self) -> int:
        return int(self.result.get("sent", self.extra.get("sent", 0)))

    @property
    def unique(self) -> int:
        return int(self.sink.get("unique", 0))

    @property
    def lost(self) -> int:
        return max(0, self.sent - self.unique)

    @property
    def duplicates(self) -> int:
        return int(self.sink.get("duplicates", 0))

    def latency(self, key: str) -> float | None:
        value = self.result.get("latency", {}).get(key)
        return None if value is None else float(value)

    def delivered_per_s(self) -> float | None:
        """Unique messages at the sink / (sink's last arrival - the first call)."""
        t0, last = self.result.get("t0"), self.sink.get("last_at")
        if t0 is None or last is None or last <= t0:
            return None
        return self.unique / (float(last) - float(t0))


# ------------------------------------------------------------------------------------------ the sink


class Sink:
    """The sink process; ``stop`` is a real outage (connection refused), ``start`` resumes its counts."""

    def __init__(self, procs: Processes, delay_ms: float) -> None:
        self.procs = procs
        self.delay_ms = delay_ms
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.state = procs.workdir / "sink-state.json"
        self.proc: Proc | None = None
        self.http = httpx.Client(timeout=10.0)
        self.incarnation = 0

    def start(self) -> float:
        """Start and wait until it answers; return the monotonic time it did."""
        self.incarnation += 1
        argv = [PYTHON, str(BENCH / "_sink.py"), "--port", str(self.port), "--state", str(self.state)]
        argv += ["--delay-ms", str(self.delay_ms)]
        self.proc = self.procs.spawn(f"sink-{self.incarnation}", argv)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise BenchError(f"sink exited with {self.proc.popen.returncode}\n{tail(self.proc.log)}")
            try:
                if self.http.get(self.url + "/_stats", timeout=1.0).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise BenchError(f"sink not ready within 30s\n{tail(self.proc.log)}")

    def stop(self) -> float:
        """SIGTERM: it closes the listening socket and every connection, writes its state, exits."""
        assert self.proc is not None
        self.http.close()  # our own keep-alive connection would be reset anyway
        self.http = httpx.Client(timeout=10.0)
        stopped_at = time.monotonic()
        self.procs.stop(self.proc)
        self.proc = None
        return stopped_at

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.http.get(self.url + "/_stats").json()
        return stats

    def reset(self) -> None:
        self.http.post(self.url + "/_reset").raise_for_status()
        self.state.unlink(missing_ok=True)

    def settle(self, quiet: float = 1.0, limit: float = 15.0) -> dict[str, Any]:
        """Stats once nothing new has arrived for ``quiet`` seconds (at most ``limit`` seconds of waiting)."""
        deadline = time.monotonic() + limit
        last = self.stats()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.stats()
            if (now["messages"], now["requests"]) != (last["messages"], last["requests"]):
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


# ------------------------------------------------------------------------------------------ running


def runner_argv(plan: Plan, scenario: str, client: str, sink: Sink, result: Path, **options: Any) -> list[str]:
    argv = [PYTHON, str(BENCH / "_sdk_client.py"), scenario, client, "--host", sink.url, "--result", str(result)]
    argv += ["--flush-timeout", str(plan.flush_timeout)]
    for name, value in options.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def wait_for(proc: Proc, timeout: float) -> bool:
    """Wait for the process to exit; False if it did not within ``timeout`` seconds."""
    try:
        proc.popen.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def run_process(
    procs: Processes,
    run: Run,
    argv: Sequence[str],
    timeout: float,
    *,
    name: str,
    during: Callable[[Path], None] | None = None,
    grace: float = AFTER_RESULT_GRACE,
) -> dict[str, Any]:
    """Run one runner process to its end (bounded); return its result (empty if it wrote none)."""
    result_path = Path(argv[argv.index("--result") + 1])
    proc = procs.spawn(name, argv)
    started = time.monotonic()
    if during is not None:
        during(result_path)
    deadline = started + timeout
    while proc.alive() and time.monotonic() < deadline and not result_path.exists():
        time.sleep(0.02)
    exited = wait_for(proc, grace if result_path.exists() else max(0.0, deadline - time.monotonic()))
    ended = time.monotonic()
    procs.stop(proc)  # the whole group: whatever it left behind goes too
    if not exited:
        run.notes.append(f"{name}: killed, still running {ended - started:.0f} s after start")
    elif proc.popen.returncode != 0:
        run.notes.append(f"{name}: exit status {proc.popen.returncode}")
    run.extra[f"{name}_ended_at"] = ended
    run.extra[f"{name}_exited"] = exited
    if not result_path.exists():
        run.notes.append(f"{name}: no result; log tail:\n{tail(proc.log, 15)}")
        return {}
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def measure(procs: Processes, sink: Sink, plan: Plan, scenario: str, client: str) -> Run:
    run = Run(scenario, client)
    usage = wait_for_quiet(plan.quiet_wait)
    if usage.foreign >= 0.2:
        print(f"  (other processes are using {usage.foreign:.0%} of the cores; measuring anyway)", flush=True)
    sink.reset()
    meter = CpuMeter()
    spool = str(procs.subdir(f"spool-{scenario}-{client}")) if client == "espbridge" else None
    result_file = procs.workdir / f"{scenario}-{client}.json"
    if scenario == "tight":
        argv = runner_argv(plan, scenario, client, sink, result_file, calls=plan.tight_calls, spool_dir=spool)
        run.result = run_process(procs, run, argv, plan.tight_calls / 1000 + plan.flush_timeout + 60, name=scenario)
    elif scenario == "sync":
        argv = runner_argv(plan, scenario, client, sink, result_file, calls=plan.sync_calls, spool_dir=spool)
        run.result = run_process(procs, run, argv, plan.sync_calls / 50 + 60, name=scenario)
    elif scenario == "exit":
        argv = runner_argv(plan, scenario, client, sink, result_file, calls=EXIT_CALLS, spool_dir=spool)
        run.result = run_process(procs, run, argv, EXIT_TIMEOUT + 60, name=scenario, grace=EXIT_TIMEOUT)
        if run.result:
            run.extra["exit_s"] = run.extra["exit_ended_at"] - run.result["calls_done_at"]
        before = sink.settle()
        run.extra["delivered_by_exit"] = before["unique"]
        if client == "espbridge":  # the spool survives the process: does the next one deliver it?
            argv = runner_argv(plan, "recover", client, sink, procs.workdir / "recover.json", spool_dir=spool)
            recover = run_process(procs, run, argv, plan.flush_timeout + 60, name="recover")
            run.extra["recover_flush"] = recover.get("flush")
            run.extra["recovered"] = sink.settle()["unique"] - before["unique"]
    elif scenario == "fork":
        argv = runner_argv(
            plan,
            scenario,
            client,
            sink,
            result_file,
            calls=FORK_CALLS,
            child_timeout=FORK_CHILD_TIMEOUT,
            spool_dir=spool,
        )
        run.result = run_process(procs, run, argv, FORK_CHILD_TIMEOUT + 60, name=scenario)
    elif scenario == "outage":
        seconds = plan.outage_before + plan.outage_seconds + plan.outage_after
        argv = runner_argv(
            plan, scenario, client, sink, result_file, rate=OUTAGE_RATE, seconds=seconds, spool_dir=spool
        )
        timeout = seconds + plan.flush_timeout + 60
        run.result = run_process(procs, run, argv, timeout, name=scenario, during=outage(sink, plan, run))
    run.sink = sink.settle()
    run.other_cpu = meter.read().foreign
    return run


def outage(sink: Sink, plan: Plan, run: Run) -> Callable[[Path], None]:
    """While the runner streams: stop the sink ``before`` s after its first call, start it ``outage`` s later."""

    def during(result_path: Path) -> None:
        started_file = Path(str(result_path) + ".started")
        deadline = time.monotonic() + 60.0
        while not started_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not started_file.exists():
            raise BenchError("outage runner did not start streaming within 60 s")
        t0 = float(json.loads(started_file.read_text())["t0"])
        time.sleep(max(0.0, t0 + plan.outage_before - time.monotonic()))
        down = sink.stop()
        time.sleep(max(0.0, t0 + plan.outage_before + plan.outage_seconds - time.monotonic()))
        up = sink.start()
        run.extra["outage_s"] = up - down
        run.extra["outage_down_at_s"] = down - t0

    return during


def available_clients(plan: Plan) -> tuple[tuple[str, ...], dict[str, str]]:
    """The requested clients that import in the venv, and why the others were skipped."""
    ok, skipped = [], {}
    for client in plan.clients:
        done = subprocess.run(
            [
                PYTHON,
                "-c",
                f"import {IMPORTS[client]}" + ("; from espbridge import Client" if client == "espbridge" else ""),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        if done.returncode == 0:
            ok.append(client)
        else:
            lines = done.stderr.strip().splitlines()
            skipped[client] = lines[-1] if lines else f"exit {done.returncode}"
    return tuple(ok), skipped


def run_all(plan: Plan, clients: Sequence[str], runs: list[Run]) -> None:
    with Processes() as procs:
        sink = Sink(procs, plan.sink_delay_ms)
        sink.start()
        for scenario in plan.scenarios:
            print(f"{scenario}:", flush=True)
            for client in clients:
                run = measure(procs, sink, plan, scenario, client)
                runs.append(run)
                print(f"  {client:<10} {progress(run)}", flush=True)
                for note in run.notes:
                    print(f"    note: {note}", flush=True)


def progress(run: Run) -> str:
    text = f"sent {run.sent}, delivered {run.unique}, duplicates {run.duplicates}, lost {run.lost}"
    if run.latency("median_us") is not None:
        text += f", median {run.latency('median_us'):.1f} µs"
    rate = run.delivered_per_s()
    if rate is not None and run.scenario in ("tight", "sync"):
        text += f", {rate:,.0f} ev/s"
    return text


# ------------------------------------------------------------------------------------------ reporting


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "-"
    return format(value, spec) + suffix


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def flush_text(flush: dict[str, Any] | None) -> str:
    if not flush:
        return "-"
    if not flush.get("returned"):
        return f"hung >{flush['seconds']:.0f} s"
    return f"{'ok' if flush.get('ok') else 'False'} {flush['seconds']:.1f} s"


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Run], str]
    ratio: Callable[[Run], float | None] | None = None  # a value to divide by Segment's, printed as "÷seg"


def events_per_s(run: Run) -> float | None:
    if run.scenario == "sync":
        value = run.result.get("events_per_s")
        return None if value is None else float(value)
    return run.delivered_per_s()


def lost_text(run: Run) -> str:
    if not run.sent:
        return "-"
    return f"{run.lost:,} ({run.lost / run.sent:.0%})"


def rss(run: Run) -> float | None:
    value = run.result.get("peak_rss_mib")
    return None if value is None else float(value)


def max_ms(run: Run) -> float | None:
    value = run.latency("max_us")
    return None if value is None else value / 1000


COLUMNS: dict[str, tuple[Column, ...]] = {
    "tight": (
        Column("median µs", lambda r: _fmt(r.latency("median_us"), ".1f"), lambda r: r.latency("median_us")),
        Column("p99 µs", lambda r: _fmt(r.latency("p99_us"), ".1f"), lambda r: r.latency("p99_us")),
        Column("max ms", lambda r: _fmt(max_ms(r), ".1f")),
        Column("calls/s", lambda r: _fmt(r.result.get("calls_per_s"), ",.0f")),
        Column("delivered ev/s", lambda r: _fmt(events_per_s(r), ",.0f"), events_per_s),
        Column("delivered", lambda r: f"{r.unique:,}"),
        Column("dup", lambda r: f"{r.duplicates:,}"),
        Column("lost", lost_text),
        Column("peak RSS MiB", lambda r: _fmt(rss(r), ".1f"), rss),
        Column("flush", lambda r: flush_text(r.result.get("flush"))),
        Column("cpu s", lambda r: _fmt(r.result.get("cpu_s"), ".1f")),
    ),
    "sync": (
        Column("events/s", lambda r: _fmt(events_per_s(r), ",.0f"), events_per_s),
        Column("median µs", lambda r: _fmt(r.latency("median_us"), ".0f"), lambda r: r.latency("median_us")),
        Column("p99 µs", lambda r: _fmt(r.latency("p99_us"), ".0f")),
        Column("delivered", lambda r: f"{r.unique:,}"),
        Column("dup", lambda r: f"{r.duplicates:,}"),
        Column("lost", lost_text),
    ),
    "exit": (
        Column("sent", lambda r: f"{r.sent:,}"),
        Column("delivered", lambda r: f"{r.extra.get('delivered_by_exit', r.unique):,}"),
        Column("lost at exit", lambda r: lost_at_exit(r)),
        Column("exit s", lambda r: _fmt(r.extra.get("exit_s"), ".2f")),
        Column("next process recovers", lambda r: recovered_text(r)),
        Column("lost in the end", lost_text),
    ),
    "fork": (
        Column("sent by child", lambda r: f"{r.sent:,}"),
        Column("delivered", lambda r: f"{r.unique:,}"),
        Column("dup", lambda r: f"{r.duplicates:,}"),
        Column("lost", lost_text),
        Column("child flush()", lambda r: fork_flush_text(r)),
    ),
    "outage": (
        Column("sent", lambda r: f"{r.sent:,}"),
        Column("down s", lambda r: _fmt(r.extra.get("outage_s"), ".1f")),
        Column("delivered", lambda r: f"{r.unique:,}"),
        Column("dup", lambda r: f"{r.duplicates:,}"),
        Column("lost", lost_text),
        Column("max call ms", lambda r: _fmt(max_ms(r), ".1f")),
        Column("peak RSS MiB", lambda r: _fmt(rss(r), ".1f")),
        Column("flush after", lambda r: flush_text(r.result.get("flush"))),
    ),
}


def lost_at_exit(run: Run) -> str:
    delivered = int(run.extra.get("delivered_by_exit", run.unique))
    if not run.sent:
        return "-"
    lost = max(0, run.sent - delivered)
    return f"{lost:,} ({lost / run.sent:.0%})"


def recovered_text(run: Run) -> str:
    if "recovered" not in run.extra:
        return "- (no spool)"
    return f"{run.extra['recovered']:,} ({flush_text(run.extra.get('recover_flush'))})"


def fork_flush_text(run: Run) -> str:
    if run.result.get("child_killed"):
        return f"child killed after {FORK_CHILD_TIMEOUT:.0f} s"
    child = run.result.get("child", {})
    if "error" in child:
        return f"child error {child['error']}"
    return flush_text(child.get("flush"))


def table(scenario: str, runs: Sequence[Run]) -> str:
    columns = COLUMNS[scenario]
    base = next((r for r in runs if r.client == BASELINE), None)
    headers = ["client"]
    for column in columns:
        headers.append(column.header)
        if column.ratio is not None:
            headers.append("÷seg")
    headers.append("other cpu")
    rows = []
    for run in runs:
        cells = [run.client]
        for column in columns:
            cells.append(column.cell(run))
            if column.ratio is not None:
                cells.append(_fmt(ratio(column.ratio(run), column.ratio(base) if base else None), ".2f"))
        cells.append(f"{run.other_cpu:.0%}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        padded = [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join(["-" * (widths[0] + 2), *("-" * (w + 1) + ":" for w in widths[1:])]) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])


def scenario_title(scenario: str, plan: Plan) -> str:
    return {
        "tight": f"tight: {plan.tight_calls:,} track() calls back to back, then flush()",
        "sync": f"sync: sync_mode=True, {plan.sync_calls:,} track() calls",
        "exit": f"exit: {EXIT_CALLS:,} track() calls, then the program ends without flush()",
        "fork": f"fork: client created, os.fork(), the child sends {FORK_CALLS:,} and calls flush()",
        "outage": (
            f"outage: {OUTAGE_RATE:.0f} events/s for {plan.outage_before:g}+{plan.outage_seconds:g}"
            f"+{plan.outage_after:g} s, sink down (connection refused) for the middle {plan.outage_seconds:g} s"
        ),
    }[scenario]


@dataclass(frozen=True)
class Goal:
    text: str
    measured: str
    met: bool | None  # None: not measured


def goals(runs: Sequence[Run]) -> list[Goal]:
    """The SDK issue's goals, for espbridge, against Segment measured in the same run."""

    def get(scenario: str, client: str) -> Run | None:
        return next((r for r in runs if r.scenario == scenario and r.client == client), None)

    out: list[Goal] = []
    ours, seg = get("tight", "espbridge"), get("tight", BASELINE)
    if ours and seg:
        for key, label in (("median_us", "median"), ("p99_us", "p99")):
            r = ratio(ours.latency(key), seg.latency(key))
            measured = f"{_fmt(ours.latency(key), '.1f')} µs vs {_fmt(seg.latency(key), '.1f')} µs = {_fmt(r, '.2f')}x"
            out.append(Goal(f"per-call {label} ≤ 1/3 of Segment's", measured, r is not None and r <= 1 / 3))
        r = ratio(events_per_s(ours), events_per_s(seg))
        measured = f"{_fmt(events_per_s(ours), ',.0f')} vs {_fmt(events_per_s(seg), ',.0f')} ev/s = {_fmt(r, '.2f')}x"
        out.append(Goal("end-to-end delivery ≥ 3x Segment's events/s", measured, r is not None and r >= 3))
    if ours:
        n = ours.sent
        out.append(
            Goal(
                f"{n:,} tight calls: zero lost, all exactly once",
                f"lost {ours.lost:,}, duplicates {ours.duplicates:,}",
                ours.lost == 0 and ours.duplicates == 0 and ours.unique == n,
            )
        )
        peak = rss(ours)
        out.append(Goal("peak RSS ≤ 80 MiB", f"{_fmt(peak, '.1f')} MiB", peak is not None and peak <= 80))
        worst = max_ms(ours)
        out.append(Goal("max per-call latency ≤ 20 ms", f"{_fmt(worst, '.1f')} ms", worst is not None and worst <= 20))
    ours, seg = get("sync", "espbridge"), get("sync", BASELINE)
    if ours and seg:
        r = ratio(events_per_s(ours), events_per_s(seg))
        measured = f"{_fmt(events_per_s(ours), ',.0f')} vs {_fmt(events_per_s(seg), ',.0f')} ev/s = {_fmt(r, '.2f')}x"
        out.append(Goal("sync mode ≥ 2x Segment's sync mode", measured, r is not None and r >= 2))
    for scenario, text in (
        ("exit", "exit without flush(): zero lost"),
        ("fork", "fork after creating the client: zero lost"),
        ("outage", "ingestion outage: zero lost"),
    ):
        ours = get(scenario, "espbridge")
        if ours:
            delivered = int(ours.extra.get("delivered_by_exit", ours.unique)) if scenario == "exit" else ours.unique
            lost = max(0, ours.sent - delivered)
            measured = f"lost {lost:,} of {ours.sent:,}, duplicates {ours.duplicates:,}"
            if scenario == "exit" and "recovered" in ours.extra:
                measured += f" (the next process delivered {ours.extra['recovered']:,} more)"
            out.append(Goal(text, measured, lost == 0))
    return out


def goals_table(items: Sequence[Goal]) -> str:
    lines = ["| goal (espbridge) | measured | |", "|---|---|---|"]
    for goal in items:
        verdict = "-" if goal.met is None else ("met" if goal.met else "**NOT met**")
        lines.append(f"| {goal.text} | {goal.measured} | {verdict} |")
    return "\n".join(lines)


LEGEND = """\
÷seg: the figure divided by Segment's in the same run (per-call latency: lower is better; events/s:
  higher is better). delivered = unique messageIds received by the sink; dup = messages received again;
  lost = sent - delivered. delivered ev/s = delivered / (sink's last arrival - first call). calls/s =
  calls / time spent in the calling loop (what the caller's thread sees). other cpu = share of both cores
  used during the run by processes the benchmark did not start (above ~10%: rerun on a quiet machine)."""


def versions(clients: Sequence[str], runs: Sequence[Run]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for client in clients:
        version = next((r.result.get("version") for r in runs if r.client == client and r.result.get("version")), None)
        out[client] = str(version) if version else "?"
    return out


def git_revision() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO)
    return done.stdout.strip() or "?"


def sdk_fingerprint() -> str:
    """A digest of the espbridge SDK's sources as they are on disk (each runner imports them afresh)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "sdk" / "espbridge").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@dataclass
class Provenance:
    """Which code was measured: the repo revision and the SDK sources, at the start and at the end of the run."""

    revision: str = field(default_factory=git_revision)
    sdk: str = field(default_factory=sdk_fingerprint)
    revision_end: str | None = None
    sdk_end: str | None = None

    def finish(self) -> None:
        self.revision_end, self.sdk_end = git_revision(), sdk_fingerprint()

    def changed(self) -> bool:
        return self.sdk_end is not None and self.sdk_end != self.sdk

    def describe(self) -> str:
        text = f"repo {self.revision}, sdk sources {self.sdk}"
        if self.changed():
            text += f" (CHANGED during the run: {self.revision_end}, {self.sdk_end}; rerun)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "sdk_sources": self.sdk,
            "revision_end": self.revision_end,
            "sdk_sources_end": self.sdk_end,
            "sdk_changed_during_run": self.changed(),
        }


def report(
    plan: Plan, runs: Sequence[Run], clients: Sequence[str], skipped: dict[str, str], provenance: Provenance
) -> str:
    parts = [
        f"SDK benchmark {plan.run_id}: {os.cpu_count()} cores, python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions(clients, runs).items() if k != "python")
        + f", {provenance.describe()}"
        + (
            f"; the sink answers after {plan.sink_delay_ms:g} ms"
            if plan.sink_delay_ms
            else "; the sink answers at once"
        )
    ]
    for client, why in skipped.items():
        parts.append(f"skipped {client}: {why}")
    for scenario in plan.scenarios:
        scenario_runs = [r for r in runs if r.scenario == scenario]
        if scenario_runs:
            parts += ["", f"### {scenario_title(scenario, plan)}", "", table(scenario, scenario_runs)]
    parts += ["", LEGEND]
    items = goals(runs)
    if items:
        parts += ["", "### Goals of the SDK issue (not asserted)", "", goals_table(items)]
    return "\n".join(parts)


def to_json(
    plan: Plan,
    runs: Sequence[Run],
    clients: Sequence[str],
    skipped: dict[str, str],
    provenance: Provenance,
    command: Sequence[str],
    outcome: str,
) -> dict[str, Any]:
    return {
        "run_id": plan.run_id,
        "command": " ".join(command),
        "outcome": outcome,
        "code": provenance.as_dict(),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "versions": versions(clients, runs),
        "skipped": skipped,
        "plan": {
            "scenarios": list(plan.scenarios),
            "clients": list(plan.clients),
            "tight_calls": plan.tight_calls,
            "sync_calls": plan.sync_calls,
            "exit_calls": EXIT_CALLS,
            "fork_calls": FORK_CALLS,
            "outage_rate": OUTAGE_RATE,
            "outage_before_s": plan.outage_before,
            "outage_s": plan.outage_seconds,
            "outage_after_s": plan.outage_after,
            "flush_timeout_s": plan.flush_timeout,
            "sink_delay_ms": plan.sink_delay_ms,
        },
        "runs": [
            {
                "scenario": r.scenario,
                "client": r.client,
                "sent": r.sent,
                "delivered": r.unique,
                "duplicates": r.duplicates,
                "lost": r.lost,
                "delivered_per_s": events_per_s(r),
                "other_cpu": r.other_cpu,
                "runner": r.result,
                "sink": r.sink,
                "driver": r.extra,
                "notes": r.notes,
            }
            for r in runs
        ],
        "goals": [{"goal": g.text, "measured": g.measured, "met": g.met} for g in goals(runs)],
    }


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 tight calls, 5 s outage")
    parser.add_argument("--calls", type=int, default=None, help="tight-loop calls (default 200,000)")
    parser.add_argument("--sync-calls", type=int, default=None, help="sync-mode calls (default 5,000)")
    parser.add_argument("--outage-seconds", type=float, default=None, help="sink down for S seconds (default 60)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="clients, comma-separated")
    parser.add_argument("--flush-timeout", type=float, default=120.0, help="bound of every flush() (default 120)")
    parser.add_argument(
        "--sink-delay-ms", type=float, default=0.0, help="sink answers after D ms (network stand-in; default 0)"
    )
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="max s to wait for other processes to idle")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    scenarios = tuple(s.strip() for s in args.only.split(",") if s.strip())
    clients = tuple(c.strip() for c in args.clients.split(",") if c.strip())
    if unknown := [s for s in scenarios if s not in SCENARIOS] + [c for c in clients if c not in CLIENTS]:
        raise SystemExit(f"unknown scenario or client: {', '.join(unknown)}")
    tight = args.calls if args.calls is not None else (20_000 if args.quick else 200_000)
    sync = args.sync_calls if args.sync_calls is not None else (1_000 if args.quick else 5_000)
    outage_s = args.outage_seconds if args.outage_seconds is not None else (5.0 if args.quick else 60.0)
    margin = 2.0 if args.quick else 5.0
    if not 1 <= tight <= 2_000_000 or not 1 <= sync <= 100_000 or not 0 < outage_s <= 600:
        raise SystemExit("--calls must be 1..2,000,000, --sync-calls 1..100,000, --outage-seconds 0..600")
    return Plan(
        scenarios=tuple(s for s in SCENARIOS if s in scenarios),
        clients=tuple(c for c in CLIENTS if c in clients),
        tight_calls=tight,
        sync_calls=sync,
        outage_before=margin,
        outage_seconds=outage_s,
        outage_after=margin,
        flush_timeout=max(1.0, min(args.flush_timeout, 600.0)),
        quiet_wait=min(args.quiet_wait, 3.0) if args.quick else max(0.0, args.quiet_wait),
        quick=args.quick,
        sink_delay_ms=max(0.0, min(args.sink_delay_ms, 10_000.0)),
    )


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = make_plan(parse_args(argv))
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    provenance = Provenance()
    clients, skipped = available_clients(plan)
    for client, why in skipped.items():
        print(f"skipping {client}: not importable ({why})", file=sys.stderr)
    runs: list[Run] = []
    print(f"SDK benchmark {plan.run_id}: {', '.join(plan.scenarios)} for {', '.join(clients)}", flush=True)
    outcome, status = guarded(lambda: run_all(plan, clients, runs))
    provenance.finish()
    print()
    print(report(plan, runs, clients, skipped, provenance))
    command = ["python", "bench/sdk.py", *argv]
    write_results("sdk", to_json(plan, runs, clients, skipped, provenance, command, outcome))
    return status


if __name__ == "__main__":
    sys.exit(main())
