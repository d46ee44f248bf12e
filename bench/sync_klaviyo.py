"""Full-sync benchmark: ``espbridge sync full --esp klaviyo`` against the ESP sandbox, as a share of the ceiling
that Klaviyo's documented rate limits allow.

Everything runs as real processes on 127.0.0.1: a throwaway PostgreSQL (the store) and Redis (the shared rate
limiter), ``espbridge sandbox --time-scale S`` (Klaviyo's limits with every window S times shorter), and the
sync itself through the CLI, with the store connected to the sandbox with settings ``{"rate_limit_scale": S}``
so our limiter shortens the same windows (connector/sync/adapters.py). The store is bulk-loaded first
(bench/_sync_data.py: contacts, consent, track events), then:

1. the full sync, measured: its time per phase (contacts with their consent, then events) against the least
   time the limits allow the same requests (bench/_sync_ceiling.py), the 429s the sandbox answered (from
   its request log), and the CPU each process used;
2. what landed in the sandbox (profiles, events, subscriptions, suppressions);
3. the same full sync again, immediately, on the unchanged store: it must send no request;
4. the peer: Klaviyo's official SDK (``klaviyo-api``) sending a labelled subset of the same profiles and events
   in a straightforward loop with its own retries (bench/_sync_peer.py), measured the same way.

The default time scale is 0.5 (every window twice as long as Klaviyo's): measured on this 2-core machine, one
1,000-event bulk request costs ~0.35 s of the sandbox's CPU and ~0.14 s of the sync's, one after the other,
so at S = 1 the events phase is bound by that CPU (~2 requests/s against a ceiling of 2.7), not by the
limits; at 0.5 the limits bind it (bench/README.md has both runs). ``--profile-sync`` runs the sync under
cProfile and prints where its time goes.

Nothing is asserted; a table is printed and the figures are written to ``bench/results/sync-<run id>.json``.

    .venv/bin/python bench/sync_klaviyo.py [--quick] [--contacts N] [--events N] [--time-scale S]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _cpu import CpuMeter, CpuUsage, wait_for_quiet
from _procs import (
    HOST,
    REPO,
    VENV_BIN,
    Proc,
    Processes,
    _run,
    free_port,
    guarded,
    http_ok,
    service_env,
    start_postgres,
    start_redis,
    wait_until,
    write_results,
)
from _sync_ceiling import OperationCeiling, operation_ceilings, phase_seconds
from _sync_data import LoadStats, load, psycopg_url
from _sync_harness import (
    WARNINGS,
    Line,
    Requests,
    Sample,
    Sampler,
    _terminate,
    cpu_between,
    line_table,
    profile_summary,
    run_sync,
    sandbox_get,
)
from _sync_harness import code_digest as _code_digest

API_KEY = "pk_bench_sync"
DEFAULT_TIME_SCALE = 0.5
#: Operations of each phase of a full sync (connector/sync/full.py: contacts pages, then events pages).
PHASES = {
    "contacts": (
        "bulk_import_profiles",
        "get_bulk_import_profiles_job",
        "get_errors_for_bulk_import_profiles_job",
        "bulk_subscribe_profiles",
        "bulk_unsubscribe_profiles",
        "bulk_suppress_profiles",
    ),
    "events": ("bulk_create_events",),
}
#: Code whose change during a run makes the run's figures meaningless (the working tree is shared).
MEASURED_CODE = ("connector/sync", "connector/esp/klaviyo.py", "connector/esp/klaviyo_adapter.py", "connector/sandbox")


@dataclass(frozen=True)
class Plan:
    contacts: int
    events: int
    time_scale: float
    peer_contacts: int
    peer_events: int
    job_delay: float
    profile_sync: bool
    verify: bool
    quiet_wait: float
    run_id: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))


@dataclass
class Report:
    plan: Plan
    code_start: str
    code_end: str | None = None
    load: LoadStats | None = None
    sync: dict[str, Any] | None = None  # the CLI's JSON
    sync_wall: float | None = None  # process start to exit
    phases: dict[str, float] = field(default_factory=dict)  # measured seconds per phase
    phase_cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> component -> CPU seconds
    sync_cpu: float | None = None
    requests: Requests | None = None
    landed: dict[str, int] | None = None
    repeat: dict[str, Any] | None = None
    repeat_requests: int | None = None
    peer: dict[str, Any] | None = None
    peer_requests: Requests | None = None
    cpu_other: CpuUsage | None = None
    profile_top: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ processes


def code_digest() -> str:
    return _code_digest(MEASURED_CODE)


def start_sandbox(procs: Processes, plan: Plan) -> tuple[Proc, str]:
    port = free_port()
    argv = [str(VENV_BIN / "espbridge"), "sandbox", "--host", HOST, "--port", str(port)]
    argv += ["--time-scale", str(plan.time_scale), "--api-key", API_KEY, "--job-delay", str(plan.job_delay)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPBRIDGE_")} | {"PYTHONUNBUFFERED": "1"}
    proc = procs.spawn("sandbox", argv, env=env)
    url = f"http://{HOST}:{port}"
    wait_until(proc, http_ok(f"{url}/_sandbox/"), "espbridge sandbox")
    return proc, url


# ------------------------------------------------------------------------------------------ the sync


def sync_argv(plan: Plan, profile_path: Path | None) -> list[str]:
    cli = ["sync", "full", "--esp", "klaviyo", "--json"]
    if profile_path is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile_path), "-m", "web.cli", *cli]
    return [str(VENV_BIN / "espbridge"), *cli]


def sandbox_reset(url: str) -> None:
    httpx.post(f"{url}/_sandbox/reset", timeout=60.0).raise_for_status()


def read_requests(url: str, operations: Sequence[str], time_scale: float) -> Requests:
    """Statuses per operation from the sandbox's request log (fetched one operation at a time: the log keeps
    every body, so the bulk operations' pages are large), and the 429s after each operation's first steady
    window (the log's times have one-second resolution, so that window is taken one second longer)."""
    from connector.esp.klaviyo import RATE_LIMITS

    result = Requests()
    window = dt.timedelta(seconds=60.0 / time_scale + 1.0)
    for operation in operations:
        entries = sandbox_get(url, f"/_sandbox/requests?operation={operation}")["requests"]
        statuses: dict[str, int] = {}
        first_at: dt.datetime | None = None
        accepted_at: list[str] = []
        steady = RATE_LIMITS.get(operation, (0, 0))[1]
        for index, entry in enumerate(entries):
            status = str(entry["status"])
            statuses[status] = statuses.get(status, 0) + 1
            at = dt.datetime.fromisoformat(entry["time"])
            first_at = first_at or at
            if status == "429":
                if at > first_at + window:
                    result.throttled_after_first_window += 1
                opened = accepted_at[-steady] if steady and len(accepted_at) >= steady else None
                gap = None if opened is None else (at - dt.datetime.fromisoformat(opened)).total_seconds()
                result.throttled_detail.append(
                    {"operation": operation, "index": index, "time": entry["time"], "window_opened": opened, "gap": gap}
                )
            else:
                accepted_at.append(entry["time"])
            result.first = min(result.first or entry["time"], entry["time"])
            result.last = max(result.last or entry["time"], entry["time"])
        del entries
        if statuses:
            result.by_operation[operation] = statuses
    return result


def logged_operations(url: str) -> list[str]:
    """Every operation the sandbox emulates, from its index (a cheap call; /_sandbox/state would serialise
    every profile and event to say which ones it saw)."""
    operations: list[str] = sandbox_get(url, "/_sandbox/")["operations"]
    return operations


def landed(url: str) -> dict[str, int]:
    state = sandbox_get(url, "/_sandbox/state", timeout=900.0)
    return {
        "profiles": len(state["profiles"]),
        "events": len(state["events"]),
        "events_deduplicated": int(state["events_deduplicated"]),
        "subscriptions": sum(1 for s in state["subscriptions"].values() if s.get("email") == "SUBSCRIBED"),
        "unsubscribed": sum(1 for s in state["subscriptions"].values() if s.get("email") == "UNSUBSCRIBED"),
        "suppressions": len(state["suppressions"]),
        "requests": int(state["requests"]["total"]),
    }


def phase_times(samples: Sequence[Sample], result: dict[str, Any]) -> tuple[dict[str, float], float | None]:
    """Seconds per phase, from the run's own timestamps: contacts end at the heartbeat of the last contacts
    page (seen by the sampler while no event was sent yet); returns also the monotonic time of that boundary."""
    started = dt.datetime.fromisoformat(str(result["started_at"]))
    finished = dt.datetime.fromisoformat(str(result["finished_at"]))
    boundary_at, boundary_t = None, None
    for sample in samples:
        run = sample.run
        if run and run["id"] == result["id"] and run["processed"] >= run["total"] and run["events_sent"] == 0:
            boundary_at, boundary_t = run["heartbeat_at"], sample.t
            break
    if boundary_at is None:  # the first events page landed between two samples: take the sample's time
        for sample in samples:
            run = sample.run
            if run and run["id"] == result["id"] and run["processed"] >= run["total"]:
                boundary_t = sample.t
                boundary_at = finished - dt.timedelta(seconds=samples[-1].t - sample.t)
                break
    if boundary_at is None:
        return {"total": (finished - started).total_seconds()}, None
    return {
        "contacts": (boundary_at - started).total_seconds(),
        "events": (finished - boundary_at).total_seconds(),
        "total": (finished - started).total_seconds(),
    }, boundary_t


def measured_sync(procs: Processes, plan: Plan, report: Report, env: dict[str, str], ctx: dict[str, Any]) -> None:
    components = {"sandbox": ctx["sandbox"].popen.pid, "postgres": ctx["postgres"], "redis": ctx["redis"]}
    sampler = Sampler(env["ESPBRIDGE_DATABASE_URL"], ctx["store_id"], components)
    ceiling = ceiling_for(
        {"bulk_create_events": -(-plan.events // 1000), "bulk_import_profiles": -(-plan.contacts // 10_000)},
        plan.time_scale,
    )
    timeout = max(900.0, 4 * ceiling + 600.0)
    profile_path = procs.workdir / "sync.prof" if plan.profile_sync else None
    usage = wait_for_quiet(plan.quiet_wait)
    if usage.foreign >= 0.2:
        print(f"  (other processes are using {usage.foreign:.0%} of the cores; measuring anyway)", flush=True)
    meter = CpuMeter()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.sample()
    sampler.start()
    t0 = time.monotonic()
    try:
        argv = sync_argv(plan, profile_path)
        result, wall = run_sync(procs, env, argv, timeout, "sync", on_start=lambda pid: sampler.watch("sync", pid))
    finally:
        sampler.stop()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report.cpu_other = meter.read()
    report.sync_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    report.sync, report.sync_wall = result, wall
    report.phases, boundary = phase_times(sampler.samples, result)
    t1 = sampler.samples[-1].t
    report.phase_cpu["total"] = cpu_between(sampler.samples, t0, t1)
    if boundary is not None:
        report.phase_cpu["contacts"] = cpu_between(sampler.samples, t0, boundary)
        report.phase_cpu["events"] = cpu_between(sampler.samples, boundary, t1)
    if profile_path is not None and profile_path.exists():
        report.profile_top = profile_summary(profile_path)


def ceiling_for(requests: dict[str, int], time_scale: float) -> float:
    from connector.esp.klaviyo import RATE_LIMITS

    return sum(
        phase_seconds(operation_ceilings({op: requests.get(op, 0) for op in ops}, RATE_LIMITS, time_scale))
        for ops in PHASES.values()
    )


def run_peer(procs: Processes, plan: Plan, report: Report, ctx: dict[str, Any]) -> None:
    if plan.peer_contacts <= 0 and plan.peer_events <= 0:
        return
    url = ctx["sandbox_url"]
    sandbox_reset(url)  # fresh windows, state and request log for the peer
    argv = [sys.executable, str(REPO / "bench" / "_sync_peer.py"), "--database-url", psycopg_url(ctx["database_url"])]
    argv += ["--store-id", str(ctx["store_id"]), "--base-url", url, "--api-key", API_KEY]
    argv += ["--contacts", str(plan.peer_contacts), "--events", str(plan.peer_events)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPBRIDGE_")}
    ceiling = ceiling_for(
        {
            "bulk_create_events": -(-plan.peer_events // 1000),
            "bulk_import_profiles": -(-plan.peer_contacts // 10_000),
        },
        plan.time_scale,
    )
    usage = wait_for_quiet(plan.quiet_wait)
    if usage.foreign >= 0.2:
        print(f"  (other processes are using {usage.foreign:.0%} of the cores; measuring anyway)", flush=True)
    result, _ = run_sync(procs, env, argv, max(600.0, 6 * ceiling + 600.0), "peer")
    report.peer = result
    report.peer_requests = read_requests(url, logged_operations(url), plan.time_scale)


def run(plan: Plan, report: Report) -> None:
    with Processes() as procs:
        print("starting PostgreSQL, Redis and the sandbox", flush=True)
        database_url, redis_url = start_postgres(procs), start_redis(procs)
        sandbox, sandbox_url = start_sandbox(procs, plan)
        postgres_pid = next(p.popen.pid for p in procs.started if p.name == "postgres")
        redis_pid = next(p.popen.pid for p in procs.started if p.name == "redis")
        env = service_env(database_url, redis_url)
        from connector.credentials import CredentialCipher, new_key

        env["ESPBRIDGE_CREDENTIALS_KEY"] = new_key()
        env["ESPBRIDGE_LOG_LEVEL"] = "WARNING"
        cli = str(VENV_BIN / "espbridge")
        _run([cli, "migrate"], what="espbridge migrate", env=env)
        store = json.loads(_run([cli, "stores", "create", "bench-sync", "--json"], what="stores create", env=env))
        store_id = int(store["id"])
        print(f"loading {plan.contacts:,} contacts and {plan.events:,} events", flush=True)
        report.load = load(database_url, store_id, plan.contacts, plan.events, say=lambda s: print(s, flush=True))
        connect_store(database_url, env["ESPBRIDGE_CREDENTIALS_KEY"], store_id, sandbox_url, plan, CredentialCipher)
        ctx = {
            "sandbox": sandbox,
            "sandbox_url": sandbox_url,
            "postgres": postgres_pid,
            "redis": redis_pid,
            "store_id": store_id,
            "database_url": database_url,
        }

        print(f"full sync (time scale {plan.time_scale:g})", flush=True)
        measured_sync(procs, plan, report, env, ctx)
        print(f"  done in {report.phases.get('total', 0):.1f} s; reading the sandbox's request log", flush=True)
        report.requests = read_requests(sandbox_url, logged_operations(sandbox_url), plan.time_scale)
        if plan.verify:
            report.landed = landed(sandbox_url)

        print("repeated full sync of the unchanged store", flush=True)
        sandbox_reset(sandbox_url)  # empties the request log: whatever is in it afterwards, the repeat sent
        report.repeat, _ = run_sync(procs, env, sync_argv(plan, None), 900.0, "repeat")
        report.repeat_requests = int(sandbox_get(sandbox_url, "/_sandbox/state")["requests"]["total"])

        if plan.peer_contacts or plan.peer_events:
            print(f"peer: klaviyo-api SDK, {plan.peer_contacts:,} profiles and {plan.peer_events:,} events", flush=True)
            run_peer(procs, plan, report, ctx)
        report.code_end = code_digest()


def connect_store(
    database_url: str, key: str, store_id: int, sandbox_url: str, plan: Plan, cipher_type: Callable[..., Any]
) -> None:
    from pydantic import SecretStr

    from connector.esp import connections
    from connector.store import connect

    db = connect(database_url)
    try:
        with db.writer() as session:
            connections.connect(
                session,
                cipher_type(SecretStr(key)),
                store_id,
                "klaviyo",
                api_key=API_KEY,
                base_url=sandbox_url,
                settings={"rate_limit_scale": plan.time_scale},
            )
    finally:
        db.dispose()


# ------------------------------------------------------------------------------------------ reporting


def sync_lines(report: Report) -> tuple[list[Line], list[OperationCeiling]]:
    from connector.esp.klaviyo import RATE_LIMITS

    if report.requests is None or report.sync is None:
        return [], []
    requests = report.requests
    scale = report.plan.time_scale
    lines, ceilings = [], []
    for phase, ops in PHASES.items():
        per_op = operation_ceilings({op: requests.accepted(op) for op in ops}, RATE_LIMITS, scale)
        ceilings += per_op
        items = report.sync["processed"] if phase == "contacts" else report.sync["events_sent"]
        sent = sum(sum(requests.by_operation.get(op, {}).values()) for op in ops)
        seconds = report.phases.get(phase)
        if seconds is not None:
            lines.append(Line(phase, items, sent, seconds, phase_seconds(per_op)))
    total_ceiling = sum(line.ceiling for line in lines)
    lines.append(Line("whole sync", 0, requests.total, report.phases.get("total", 0.0), total_ceiling))
    return lines, ceilings


def peer_lines(report: Report) -> tuple[list[Line], list[OperationCeiling]]:
    from connector.esp.klaviyo import RATE_LIMITS

    if report.peer is None or report.peer_requests is None:
        return [], []
    requests, peer, scale = report.peer_requests, report.peer, report.plan.time_scale
    lines, ceilings = [], []
    for phase, ops, items, seconds in (
        ("contacts", PHASES["contacts"], peer["profiles"], peer["seconds_profiles"]),
        ("events", PHASES["events"], peer["events"], peer["seconds_events"]),
    ):
        per_op = operation_ceilings({op: requests.accepted(op) for op in ops}, RATE_LIMITS, scale)
        ceilings += per_op
        sent = sum(sum(requests.by_operation.get(op, {}).values()) for op in ops)
        lines.append(Line(phase, items, sent, seconds, phase_seconds(per_op)))
    lines.append(Line("whole run", 0, requests.total, peer["seconds"], sum(line.ceiling for line in lines)))
    return lines, ceilings


def operations_table(ceilings: Sequence[OperationCeiling], requests: Requests) -> list[str]:
    out = [
        "| operation | burst/s | steady/min | accepted | 429 | T(n) s (scaled) | ceiling req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in ceilings:
        throttled = requests.by_operation.get(c.operation, {}).get("429", 0)
        out.append(
            f"| {c.operation} | {c.burst} | {c.steady} | {c.requests:,} | {throttled} | {c.seconds:.2f} | "
            f"{c.rate:.2f} |"
        )
    return out


def cpu_table(report: Report) -> list[str]:
    names = ("sync", "sandbox", "postgres", "redis")
    out = ["| phase | wall s | sync process | sandbox | postgres | redis |", "|---|---:|---:|---:|---:|---:|"]
    for phase in ("contacts", "events", "total"):
        cpu = dict(report.phase_cpu.get(phase) or {})
        seconds = report.phases.get(phase)
        if not cpu or not seconds:
            continue
        if phase == "total" and report.sync_cpu is not None:
            cpu["sync"] = report.sync_cpu  # its rusage at exit: includes the last sample interval
        cells = [f"{cpu.get(name, 0.0):.1f} s ({cpu.get(name, 0.0) / seconds:.0%})" for name in names]
        out.append(f"| {phase} | {seconds:.1f} | " + " | ".join(cells) + " |")
    return out


def throttle_lines(requests: Requests, time_scale: float) -> list[str]:
    """Each 429 with the steady window it fell in, as the sandbox's clock saw it (one-second resolution)."""
    window = 60.0 / time_scale
    return [
        f"  429 on {d['operation']} request #{d['index'] + 1} at {d['time']}: the window it fell in was opened by "
        f"the request at {d['window_opened']}, {d['gap']:.0f} s earlier on the sandbox's clock (window {window:g} s; "
        f"our limiter spaces them >= {window * 1.02:g} s apart when it grants them)"
        if d["gap"] is not None
        else f"  429 on {d['operation']} request #{d['index'] + 1} at {d['time']}"
        for d in requests.throttled_detail
    ]


def per_request(report: Report) -> list[str]:
    """Where the time of one bulk_create_events request goes (the sync sends them one at a time)."""
    cpu, seconds = report.phase_cpu.get("events"), report.phases.get("events")
    n = report.requests.accepted("bulk_create_events") if report.requests else 0
    if not cpu or not seconds or not n:
        return []
    parts = {name: cpu.get(name, 0.0) / n for name in ("sandbox", "sync", "postgres", "redis")}
    rest = seconds / n - sum(parts.values())
    return [
        "",
        f"events phase, per bulk_create_events request: {seconds / n:.3f} s of wall time = "
        + " + ".join(f"{name} CPU {value:.3f} s" for name, value in parts.items())
        + f" + {rest:.3f} s neither (waits on the limiter, I/O, other processes)",
    ]


LEGEND = """\
ceiling s: the least time Klaviyo's documented limits allow the same accepted requests, per operation
  T(n) = (60 s * floor((n-1)/M) + 1 s * ceil(r/B)) / S, with B = burst per second, M = steady per minute,
  r = n - M*floor((n-1)/M) the requests of the last minute, S = the time scale; a phase's ceiling is its
  slowest operation's (their budgets are separate), the whole sync's the sum of its phases (they run one
  after the other). % of ceiling = ceiling s / measured s (= achieved rate / ceiling rate).
seconds: the sync run's own clock (sync_runs started_at to finished_at; contacts end at the heartbeat of the
  last contacts page). Phases of the peer: its own monotonic clock around its loops.
CPU: seconds of CPU per process over the phase (sampled every 0.25 s) and its share of one core; a process
  near 100% is what bounds the phase (the sandbox is one process: its GIL caps it at one core). postgres
  includes its exited backends; the sync's total is its rusage at exit (process start-up included)."""


def render(report: Report) -> str:
    plan = report.plan
    out = [
        f"### sync_klaviyo {plan.run_id}: {plan.contacts:,} contacts, {plan.events:,} events, time scale "
        f"{plan.time_scale:g} (every window / {plan.time_scale:g}), PostgreSQL + Redis limiter",
        f"code {report.code_start} (HEAD + digest of {', '.join(MEASURED_CODE)})"
        + (
            ""
            if report.code_end is None or report.code_end.split("+")[1] == report.code_start.split("+")[1]
            else f" (CHANGED during the run: {report.code_end}; rerun)"
        ),
    ]
    if report.load is not None:
        ls = report.load
        out.append(
            f"load: {ls.contacts:,} contacts in {ls.seconds_contacts:.1f} s, consent (subscribed {ls.subscribed:,}, "
            f"unsubscribed {ls.unsubscribed:,}, bounced {ls.bounced:,}) in {ls.seconds_consent:.1f} s, "
            f"{ls.events:,} events in {ls.seconds_events:.1f} s ({ls.events / max(ls.seconds_events, 1e-9):,.0f}/s), "
            f"ANALYZE {ls.seconds_analyze:.1f} s"
        )
    lines, ceilings = sync_lines(report)
    if lines and report.requests is not None and report.sync is not None:
        s = report.sync
        out += [
            "",
            f"espbridge sync full --esp klaviyo: {s['status']}, run {s['id']}: {s['processed']:,} contacts "
            f"(created {s['created']:,}, updated {s['updated']:,}, unchanged {s['unchanged']:,}, rejected "
            f"{s['rejected']}, failed {s['failed']}, skipped {s['skipped']}), events sent {s['events_sent']:,}, "
            f"requests {s['requests']:,}; process wall {report.sync_wall:.1f} s",
            "",
            *line_table(lines, "espbridge"),
            "",
            *operations_table(ceilings, report.requests),
            "",
            f"429s: {report.requests.throttled} in all, {report.requests.throttled_after_first_window} after each "
            "operation's first steady window",
            *throttle_lines(report.requests, report.plan.time_scale),
        ]
        if report.cpu_other is not None:
            out.append(
                f"machine during the sync: {report.cpu_other.busy:.0%} of both cores busy, "
                f"{report.cpu_other.foreign:.0%} by processes the bench did not start"
            )
        out += ["", *cpu_table(report), *per_request(report)]
    if report.landed is not None:
        ld = report.landed
        out.append(
            f"\nlanded in the sandbox: {ld['profiles']:,} profiles, {ld['events']:,} events "
            f"({ld['events_deduplicated']:,} deduplicated), email subscribed {ld['subscriptions']:,}, "
            f"unsubscribed {ld['unsubscribed']:,}, suppressed {ld['suppressions']:,}"
        )
    if report.repeat is not None:
        r = report.repeat
        out.append(
            f"repeated full sync: {r['status']} in {r['duration_seconds']:.1f} s, unchanged {r['unchanged']:,}, "
            f"events sent {r['events_sent']}, requests counted by the run {r['requests']}, requests the sandbox "
            f"received {report.repeat_requests}"
        )
    peer, peer_ceilings = peer_lines(report)
    if peer and report.peer is not None and report.peer_requests is not None:
        p = report.peer
        out += [
            "",
            f"peer: klaviyo-api SDK (max_retries={p['max_retries']}, max_delay={p['max_delay']}), a subset: the first "
            f"{p['profiles']:,} profiles and the first {p['events']:,} events; failed requests {p['failed_requests']}",
            "",
            *line_table(peer, "peer (SDK)"),
            "",
            *operations_table(peer_ceilings, report.peer_requests),
            "",
            f"peer 429s: {report.peer_requests.throttled} in all, "
            f"{report.peer_requests.throttled_after_first_window} after each operation's first steady window",
        ]
    out += ["", LEGEND]
    for name, lines in WARNINGS.items():
        out += ["", f"{name} logged {len(lines)} warning line(s):", *(f"  {line[:300]}" for line in lines[:10])]
    if report.profile_top:
        out += ["", "cProfile of the sync process (--profile-sync):", *report.profile_top]
    if report.notes:
        out += ["", *report.notes]
    return "\n".join(out)


def to_json(report: Report, command: Sequence[str], outcome: str) -> dict[str, Any]:
    lines, ceilings = sync_lines(report)
    peer, peer_ceilings = peer_lines(report)
    return {
        "run_id": report.plan.run_id,
        "command": " ".join(command),
        "outcome": outcome,
        "code": {"start": report.code_start, "end": report.code_end},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "plan": asdict(report.plan),
        "load": None if report.load is None else {**asdict(report.load), "seconds": report.load.seconds},
        "sync": report.sync,
        "sync_wall_seconds": report.sync_wall,
        "phases_seconds": report.phases,
        "lines": [{**asdict(line), "share_of_ceiling": line.share} for line in lines],
        "operations": [asdict(c) for c in ceilings],
        "requests": None if report.requests is None else asdict(report.requests),
        "throttled": None if report.requests is None else report.requests.throttled,
        "cpu_seconds": report.phase_cpu,
        "sync_process_cpu_seconds": report.sync_cpu,
        "cpu_machine": None if report.cpu_other is None else asdict(report.cpu_other),
        "landed": report.landed,
        "repeat": report.repeat,
        "repeat_requests_received": report.repeat_requests,
        "peer": report.peer,
        "peer_lines": [{**asdict(line), "share_of_ceiling": line.share} for line in peer],
        "peer_operations": [asdict(c) for c in peer_ceilings],
        "peer_requests": None if report.peer_requests is None else asdict(report.peer_requests),
        "warnings": WARNINGS,
        "profile": report.profile_top,
        "notes": report.notes,
    }


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help="divides every rate-limit window (default 0.5: see bench/README.md)",
    )
    parser.add_argument("--peer-contacts", type=int, help="profiles the SDK peer sends (default min(contacts, 10,000))")
    parser.add_argument("--peer-events", type=int, help="events the SDK peer sends (default min(events, 300,000))")
    parser.add_argument("--no-peer", action="store_true", help="skip the SDK peer")
    parser.add_argument("--job-delay", type=float, default=0.0, help="the sandbox's --job-delay (default 0)")
    parser.add_argument("--profile-sync", action="store_true", help="run the sync under cProfile (slower)")
    parser.add_argument("--no-verify", action="store_true", help="skip counting what landed in the sandbox")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="max seconds to wait for an idle machine")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 contacts, 100,000 events")
    args = parser.parse_args(argv)
    if args.quick:
        args.contacts, args.events = 10_000, 100_000
        args.quiet_wait = min(args.quiet_wait, 5.0)
    if not (1 <= args.contacts <= 10_000_000 and 0 <= args.events <= 20_000_000 and 0.01 <= args.time_scale <= 1000):
        raise SystemExit("--contacts 1..10M, --events 0..20M, --time-scale 0.01..1000")
    peer_contacts = 0 if args.no_peer else min(args.contacts, args.peer_contacts or 10_000)
    peer_events = 0 if args.no_peer else min(args.events, args.peer_events or 300_000)
    return Plan(
        args.contacts,
        args.events,
        args.time_scale,
        peer_contacts,
        peer_events,
        args.job_delay,
        args.profile_sync,
        not args.no_verify,
        max(0.0, args.quiet_wait),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, str(REPO))
    report = Report(plan, code_digest())
    print(f"sync benchmark {plan.run_id}: {os.cpu_count()} cores, code {report.code_start}", flush=True)
    outcome, status = guarded(lambda: run(plan, report))
    print()
    print(render(report))
    write_results("sync", to_json(report, ["python", "bench/sync_klaviyo.py", *argv], outcome))
    return status


if __name__ == "__main__":
    sys.exit(main())
