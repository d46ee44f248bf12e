"""Full-sync benchmark for ActiveCampaign: ``espbridge sync full --esp activecampaign`` against the ESP sandbox,
as a share of the ceiling that ActiveCampaign's documented rate limits allow, by both full-sync methods.

Everything runs as real processes on 127.0.0.1: a throwaway PostgreSQL (the stores) and Redis (the shared rate
limiter), the ESP sandbox (``espbridge sandbox --time-scale S``, through bench/_sandbox_ac_log.py for a request
log long enough to count every request), and the sync itself through the CLI. Two stores are bulk-loaded
(bench/_sync_data.py: contacts with email consent, no events) and each connected with ``espbridge esp connect
activecampaign`` (``list_id`` of a list created in the sandbox, ``rate_limit_scale`` = S). Then, per path:

1. **bulk import** (the default method): 100,000 contacts, 250 per ``POST /import/bulk_import``, each batch
   polled with ``GET /import/info``; **contact/sync** (``full_sync_method=contact_sync``): 10,000 contacts, one
   ``POST /contact/sync`` each plus the list status of those with email consent. Measured: the run's time
   against the least time the documented limits allow the requests it needs (bench/_sync_ceiling.py), every
   request and 429 from the sandbox's log, CPU per process;
2. what landed in the sandbox (contacts, list statuses);
3. the same full sync again on the unchanged store: it must send no request;
4. the peer, against a freshly reset sandbox: bench/_sync_peer_activecampaign.py (a raw httpx loop at the
   documented limits for bulk import; the community ``activecampaign-python`` client, paced at 5/s by sleeping,
   for contact/sync, on a subset).

Each path runs at its own time scale (the sandbox is restarted between them): 5 for bulk import, 20 for
contact/sync (bench/README.md says why). Nothing is asserted; a table is printed and the figures are written to
``bench/results/sync-activecampaign-<run id>.json``.

    .venv/bin/python bench/sync_activecampaign.py [--quick] [--only bulk_import|contact_sync] [--bulk-contacts N]
        [--sync-contacts N] [--bulk-time-scale S] [--sync-time-scale S] [--peer-sync-contacts N] [--no-peer]
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from _cpu import CpuMeter, CpuUsage, wait_for_quiet
from _procs import (
    HOST,
    REPO,
    VENV_BIN,
    BenchError,
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
from _sync_ceiling import AC_ACCOUNT_PER_SECOND, AC_BULK_PER_MINUTE, account_seconds, bulk_import_seconds
from _sync_data import LoadStats, load, psycopg_url
from _sync_harness import (
    WARNINGS,
    Line,
    Sampler,
    _terminate,
    code_digest,
    cpu_between,
    line_table,
    run_sync,
    sandbox_get,
)

API_TOKEN = "ac_bench_sync"
ACTID = "1000001"
EVENT_KEY = "ac_bench_event_key"
ADMIN = "/_sandbox/activecampaign"
REQUEST_LOG = 200_000
METHODS = ("bulk_import", "contact_sync")
DEFAULT_SCALES = {"bulk_import": 5.0, "contact_sync": 20.0}
#: Requests that are status polls of a bulk import (the ceiling counts one per batch: the least the flow needs).
POLLS = ("bulk_import_info", "bulk_import_status")
#: Reads the contact/sync flow does not need for a full sync's state change (the ceiling leaves them out).
READS = ("get_contact_lists", "search_contacts", "get_contact")
MEASURED_CODE = (
    "connector/sync",
    "connector/esp/activecampaign.py",
    "connector/esp/activecampaign_adapter.py",
    "connector/sandbox",
)


@dataclass(frozen=True)
class Plan:
    methods: tuple[str, ...]
    contacts: dict[str, int]
    scales: dict[str, float]
    peer_contacts: dict[str, int]
    job_delay: float
    verify: bool
    quiet_wait: float
    run_id: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))


@dataclass
class AcRequests:
    """What the sandbox's request log says about one client's requests: statuses per operation, the 429s."""

    by_operation: dict[str, dict[str, int]] = field(default_factory=dict)
    throttled_after_first_window: int = 0
    throttled_at: list[float] = field(default_factory=list)  # seconds after the first request (1 s resolution)
    first: str | None = None
    last: str | None = None

    @property
    def total(self) -> int:
        return sum(sum(s.values()) for s in self.by_operation.values())

    @property
    def throttled(self) -> int:
        return sum(s.get("429", 0) for s in self.by_operation.values())

    def accepted(self, *operations: str) -> int:
        ops = operations or tuple(self.by_operation)
        return sum(n for op in ops for status, n in self.by_operation.get(op, {}).items() if status != "429")

    def sent(self, *operations: str) -> int:
        return sum(sum(self.by_operation.get(op, {}).values()) for op in operations)


@dataclass
class Ceiling:
    """The least time the documented limits allow the requests a path needs, and what they are."""

    needed: dict[str, int]  # operation -> requests counted
    seconds: float
    account_seconds: float  # the same requests at 5/s alone
    bulk_seconds: float | None  # the imports' 100/min windows alone (bulk path)
    sent_seconds: float  # every accepted request at 5/s: the bound on the request rate itself


@dataclass
class PathReport:
    method: str
    time_scale: float
    contacts: int
    store_id: int
    sync: dict[str, Any] | None = None
    sync_wall: float | None = None
    seconds: float | None = None  # the run's own clock
    cpu: dict[str, float] = field(default_factory=dict)
    sync_cpu: float | None = None
    cpu_other: CpuUsage | None = None
    requests: AcRequests | None = None
    ceiling: Ceiling | None = None
    landed: dict[str, int] | None = None
    repeat: dict[str, Any] | None = None
    repeat_requests: int | None = None
    peer: dict[str, Any] | None = None
    peer_requests: AcRequests | None = None
    peer_ceiling: Ceiling | None = None


@dataclass
class Report:
    plan: Plan
    code_start: str
    code_end: str | None = None
    loads: dict[str, LoadStats] = field(default_factory=dict)
    paths: dict[str, PathReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ the sandbox


def start_sandbox(procs: Processes, time_scale: float, job_delay: float) -> tuple[Proc, str]:
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "_sandbox_ac_log.py"), str(REQUEST_LOG), "sandbox"]
    argv += ["--host", HOST, "--port", str(port), "--time-scale", str(time_scale), "--job-delay", str(job_delay)]
    argv += ["--ac-api-token", API_TOKEN, "--ac-actid", ACTID, "--ac-event-key", EVENT_KEY]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPBRIDGE_")} | {"PYTHONUNBUFFERED": "1"}
    proc = procs.spawn(f"sandbox-{time_scale:g}", argv, env=env)
    url = f"http://{HOST}:{port}"
    wait_until(proc, http_ok(f"{url}{ADMIN}/"), "espbridge sandbox")
    return proc, url


def create_list(url: str) -> str:
    """The list email consent goes to (the sandbox starts with none)."""
    body = {"list": {"name": "Newsletter", "stringid": "newsletter", "sender_url": "https://shop.example"}}
    body["list"]["sender_reminder"] = "You signed up at our shop."
    response = httpx.post(f"{url}/api/3/lists", json=body, headers={"Api-Token": API_TOKEN}, timeout=30.0)
    response.raise_for_status()
    return str(response.json()["list"]["id"])


def log_entries(url: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = sandbox_get(url, f"{ADMIN}/requests")["requests"]
    return entries


def read_requests(entries: Sequence[dict[str, Any]], first_window: float) -> AcRequests:
    """Statuses per operation, and the 429s after the path's first window (``first_window`` seconds from the
    first request, plus 1 s: the log's times have one-second resolution)."""
    result = AcRequests()
    first_at: dt.datetime | None = None
    for entry in entries:
        op = str(entry["operation"])
        statuses = result.by_operation.setdefault(op, {})
        status = str(entry["status"])
        statuses[status] = statuses.get(status, 0) + 1
        at = dt.datetime.fromisoformat(entry["time"])
        first_at = first_at or at
        if status == "429":
            offset = (at - first_at).total_seconds()
            result.throttled_at.append(offset)
            if offset > first_window + 1.0:
                result.throttled_after_first_window += 1
        result.first = result.first or entry["time"]
        result.last = entry["time"]
    return result


def first_window(method: str, time_scale: float) -> float:
    """Bulk import: the importer's first minute; contact/sync: the account's first second (both scaled)."""
    return (60.0 if method == "bulk_import" else 1.0) / time_scale


def ceiling_of(method: str, requests: AcRequests, time_scale: float) -> Ceiling:
    """The requests the path needs, counted from what the sandbox accepted:

    * bulk import: every accepted import (100/min and 5/s), status polls only up to one per batch (the least
      the documented flow needs to learn each batch's failures), any other request (set-up) at 5/s;
    * contact/sync: every accepted request except the reads in ``READS`` (a full sync's state change needs one
      contact/sync per contact and one contactLists per email consent), all at 5/s.
    """
    accepted = {op: requests.accepted(op) for op in requests.by_operation}
    sent_seconds = account_seconds(requests.accepted(), AC_ACCOUNT_PER_SECOND, time_scale)
    if method == "bulk_import":
        imports = accepted.get("bulk_import", 0)
        polls = min(imports, sum(accepted.get(op, 0) for op in POLLS))
        other = sum(n for op, n in accepted.items() if op != "bulk_import" and op not in POLLS)
        needed = {op: n for op, n in accepted.items() if op not in POLLS} | {"one poll per batch": polls}
        bulk = bulk_import_seconds(imports, 0, time_scale)
        account = account_seconds(imports + polls + other, AC_ACCOUNT_PER_SECOND, time_scale)
        return Ceiling(needed, max(bulk, account), account, bulk, sent_seconds)
    needed = {op: n for op, n in accepted.items() if op not in READS and n}
    account = account_seconds(sum(needed.values()), AC_ACCOUNT_PER_SECOND, time_scale)
    return Ceiling(needed, account, account, None, sent_seconds)


def landed(url: str, list_id: str) -> dict[str, int]:
    state = sandbox_get(url, f"{ADMIN}/state", timeout=900.0)
    on_list = [m for m in state["contactLists"] if str(m.get("list")) == list_id]
    batches = state["batches"].values()
    return {
        "contacts": len(state["contacts"]),
        "subscribed": sum(1 for m in on_list if str(m.get("status")) == "1"),
        "unsubscribed": sum(1 for m in on_list if str(m.get("status")) == "2"),
        "batches": len(batches),
        "batch_failures": sum(len(b["failure"]) for b in batches),
        "refused_subscriptions": sum(len(b["refused_subscriptions"]) for b in batches),
    }


# ------------------------------------------------------------------------------------------ one path


def connect(env: dict[str, str], store_id: int, url: str, list_id: str, method: str, scale: float) -> None:
    cli = str(VENV_BIN / "espbridge")
    argv = [cli, "esp", "connect", "activecampaign", "--store", str(store_id), "--base-url", url]
    for key, value in (
        ("list_id", list_id),
        ("actid", ACTID),
        ("track_url", f"{url}/event"),
        ("rate_limit_scale", scale),
        ("full_sync_method", method),
    ):
        argv += ["--setting", f"{key}={value}"]
    # The token and event key by environment, not argv: the CLI's documented alternative.
    _run(
        argv,
        what="espbridge esp connect",
        env=env | {"ESPBRIDGE_ESP_API_KEY": API_TOKEN, "ESPBRIDGE_ESP_EVENT_KEY": EVENT_KEY},
    )


def sync_argv(store_id: int) -> list[str]:
    return [str(VENV_BIN / "espbridge"), "sync", "full", "--esp", "activecampaign", "--store", str(store_id), "--json"]


def run_path(
    procs: Processes, plan: Plan, report: Report, path: PathReport, env: dict[str, str], ctx: dict[str, Any]
) -> None:
    method, scale = path.method, path.time_scale
    sandbox, url = start_sandbox(procs, scale, plan.job_delay)
    list_id = create_list(url)
    connect(env, path.store_id, url, list_id, method, scale)
    expected = ceiling_estimate(method, path.contacts, scale)
    print(f"{method}: {path.contacts:,} contacts at time scale {scale:g} (ceiling ~{expected:.0f} s)", flush=True)

    before = len(log_entries(url))
    components = {"sandbox": sandbox.popen.pid, "postgres": ctx["postgres"], "redis": ctx["redis"]}
    sampler = Sampler(env["ESPBRIDGE_DATABASE_URL"], path.store_id, components)
    usage = wait_for_quiet(plan.quiet_wait)
    if usage.foreign >= 0.2:
        print(f"  (other processes are using {usage.foreign:.0%} of the cores; measuring anyway)", flush=True)
    meter = CpuMeter()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.sample()
    sampler.start()
    t0 = time.monotonic()
    try:
        name = f"sync-{method}"
        timeout = max(600.0, 4 * expected + 300.0)
        result, wall = run_sync(
            procs, env, sync_argv(path.store_id), timeout, name, lambda pid: sampler.watch("sync", pid)
        )
    finally:
        sampler.stop()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    path.cpu_other = meter.read()
    path.sync_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    path.sync, path.sync_wall = result, wall
    started = dt.datetime.fromisoformat(str(result["started_at"]))
    finished = dt.datetime.fromisoformat(str(result["finished_at"]))
    path.seconds = (finished - started).total_seconds()
    path.cpu = cpu_between(sampler.samples, t0, sampler.samples[-1].t)
    entries = log_entries(url)
    path.requests = read_requests(entries[before:], first_window(method, scale))
    path.ceiling = ceiling_of(method, path.requests, scale)
    print(
        f"  done in {path.seconds:.1f} s: {path.requests.total:,} requests, {path.requests.throttled} 429s, "
        f"{path.ceiling.seconds / path.seconds:.0%} of the ceiling",
        flush=True,
    )
    if plan.verify:
        path.landed = landed(url, list_id)

    print("  repeated full sync of the unchanged store", flush=True)
    before = len(log_entries(url))
    path.repeat, _ = run_sync(procs, env, sync_argv(path.store_id), 900.0, f"repeat-{method}")
    path.repeat_requests = len(log_entries(url)) - before

    peer_contacts = plan.peer_contacts.get(method, 0)
    if peer_contacts > 0:
        httpx.post(f"{url}{ADMIN}/reset", timeout=60.0).raise_for_status()  # fresh windows, state and log
        list_id = create_list(url)
        before = len(log_entries(url))
        print(f"  peer: {peer_contacts:,} contacts", flush=True)
        argv = [sys.executable, str(REPO / "bench" / "_sync_peer_activecampaign.py"), "--method", method]
        argv += ["--database-url", psycopg_url(ctx["database_url"]), "--store-id", str(path.store_id)]
        argv += ["--base-url", url, "--api-token", API_TOKEN, "--list-id", list_id]
        argv += ["--contacts", str(peer_contacts), "--time-scale", str(scale)]
        peer_env = {k: v for k, v in os.environ.items() if not k.startswith("ESPBRIDGE_")}
        usage = wait_for_quiet(plan.quiet_wait)
        if usage.foreign >= 0.2:
            print(f"  (other processes are using {usage.foreign:.0%} of the cores; measuring anyway)", flush=True)
        timeout = max(600.0, 6 * ceiling_estimate(method, peer_contacts, scale) + 300.0)
        path.peer, _ = run_sync(procs, peer_env, argv, timeout, f"peer-{method}")
        path.peer_requests = read_requests(log_entries(url)[before:], first_window(method, scale))
        path.peer_ceiling = ceiling_of(method, path.peer_requests, scale)
    procs.stop(sandbox)


def ceiling_estimate(method: str, contacts: int, scale: float) -> float:
    """Before the run (for timeouts): the ceiling of the requests the path should need."""
    if method == "bulk_import":
        imports = -(-contacts // 250)
        return bulk_import_seconds(imports, imports, scale)
    return account_seconds(int(contacts * 1.36), AC_ACCOUNT_PER_SECOND, scale)


def run(plan: Plan, report: Report) -> None:
    with Processes() as procs:
        print("starting PostgreSQL and Redis", flush=True)
        database_url, redis_url = start_postgres(procs), start_redis(procs)
        postgres_pid = next(p.popen.pid for p in procs.started if p.name == "postgres")
        redis_pid = next(p.popen.pid for p in procs.started if p.name == "redis")
        env = service_env(database_url, redis_url)
        from connector.credentials import new_key

        env["ESPBRIDGE_CREDENTIALS_KEY"] = new_key()
        env["ESPBRIDGE_LOG_LEVEL"] = "WARNING"
        cli = str(VENV_BIN / "espbridge")
        _run([cli, "migrate"], what="espbridge migrate", env=env)
        ctx = {"postgres": postgres_pid, "redis": redis_pid, "database_url": database_url}
        for method in plan.methods:
            name = f"bench-ac-{method.replace('_', '-')}"
            store = json.loads(_run([cli, "stores", "create", name, "--json"], what="stores create", env=env))
            contacts = plan.contacts[method]
            print(f"loading {contacts:,} contacts into store {store['id']} ({method})", flush=True)
            report.loads[method] = load(database_url, int(store["id"]), contacts, 0, say=lambda s: print(s, flush=True))
            report.paths[method] = PathReport(method, plan.scales[method], contacts, int(store["id"]))
        for method in plan.methods:
            run_path(procs, plan, report, report.paths[method], env, ctx)
        report.code_end = code_digest(MEASURED_CODE)


# ------------------------------------------------------------------------------------------ reporting


def lines_of(path: PathReport) -> list[Line]:
    out = []
    if path.sync is not None and path.requests is not None and path.ceiling is not None and path.seconds:
        out.append(Line("espbridge", path.sync["processed"], path.requests.total, path.seconds, path.ceiling.seconds))
    if path.peer is not None and path.peer_requests is not None and path.peer_ceiling is not None:
        items = path.peer.get("contacts", path.peer.get("imported", 0))
        out.append(Line("peer", items, path.peer_requests.total, path.peer["seconds"], path.peer_ceiling.seconds))
    return out


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def render_path(path: PathReport) -> list[str]:
    out = ["", f"#### {path.method}: {path.contacts:,} contacts, time scale {path.time_scale:g}"]
    if path.sync is None or path.requests is None or path.ceiling is None or not path.seconds:
        return [*out, "(not measured)"]
    s, r, c = path.sync, path.requests, path.ceiling
    out += [
        f"espbridge sync full --esp activecampaign: {s['status']}, run {s['id']}: {s['processed']:,} contacts "
        f"(created {s['created']:,}, updated {s['updated']:,}, unchanged {s['unchanged']:,}, rejected {s['rejected']}, "
        f"failed {s['failed']}, skipped {s['skipped']}), requests counted by the run {s['requests']:,}; process wall "
        f"{path.sync_wall:.1f} s",
        "",
        *line_table(lines_of(path), "who"),
        "",
        "requests at the sandbox (operation: status → count): "
        + "; ".join(f"{op} {dict(sorted(st.items()))}" for op, st in sorted(r.by_operation.items())),
        "ceiling counts: "
        + ", ".join(f"{op} {n:,}" for op, n in sorted(c.needed.items()))
        + f"; ceiling {c.seconds:.1f} s = max(imports' 100/min windows "
        + ("-" if c.bulk_seconds is None else f"{c.bulk_seconds:.1f} s")
        + f", those requests at 5/s {c.account_seconds:.1f} s)",
        f"request rate: {r.accepted() / path.seconds:.1f} accepted requests/s = "
        f"{c.sent_seconds / path.seconds:.0%} of the account's {AC_ACCOUNT_PER_SECOND * path.time_scale:g}/s "
        "(every accepted request counted)",
        f"429s: {r.throttled} in all, {r.throttled_after_first_window} after the first window "
        f"({first_window(path.method, path.time_scale):g} s + 1 s log resolution); at "
        + (", ".join(f"{t:.0f}" for t in r.throttled_at[:20]) or "-")
        + " s after the first request",
    ]
    if path.cpu_other is not None:
        out.append(
            f"machine during the sync: {path.cpu_other.busy:.0%} of both cores busy, "
            f"{path.cpu_other.foreign:.0%} by processes the bench did not start"
        )
    cpu = dict(path.cpu)
    if path.sync_cpu is not None:
        cpu["sync"] = path.sync_cpu
    out.append(
        "CPU over the sync: "
        + ", ".join(
            f"{n} {cpu.get(n, 0.0):.1f} s ({cpu.get(n, 0.0) / path.seconds:.0%})"
            for n in ("sync", "sandbox", "postgres", "redis")
        )
    )
    if path.landed is not None:
        ld = path.landed
        out.append(
            f"landed in the sandbox: {ld['contacts']:,} contacts, list subscribed {ld['subscribed']:,}, unsubscribed "
            f"{ld['unsubscribed']:,}; import batches {ld['batches']:,} (failures {ld['batch_failures']}, refused "
            f"subscriptions {ld['refused_subscriptions']})"
        )
    if path.repeat is not None:
        rp = path.repeat
        out.append(
            f"repeated full sync: {rp['status']} in {rp['duration_seconds']:.1f} s, unchanged {rp['unchanged']:,}, "
            f"requests counted by the run {rp['requests']}, requests the sandbox received {path.repeat_requests}"
        )
    if path.peer is not None and path.peer_requests is not None and path.peer_ceiling is not None:
        p, pr = path.peer, path.peer_requests
        out += [
            f"peer ({'raw httpx loop' if path.method == 'bulk_import' else 'activecampaign-python loop'}): "
            + ", ".join(f"{k} {v}" for k, v in p.items() if k not in ("method", "time_scale")),
            f"peer 429s: {pr.throttled} in all, {pr.throttled_after_first_window} after the first window",
            f"espbridge ÷ ceiling {ratio(path.ceiling.seconds, path.seconds)} (rate), espbridge ÷ peer "
            f"{ratio(s['processed'] / path.seconds, (p.get('contacts') or p.get('imported') or 0) / p['seconds'])} "
            "(contacts/s)",
        ]
    return out


LEGEND = """\
ceiling s: the least time ActiveCampaign's documented limits allow the requests the path needs (counted from
  what the sandbox accepted): 5 requests per 1 s window for the account, A(n) = ceil(n/5) s / S; bulk imports
  also 100 per 60 s window, T(k) = (60 s * floor((k-1)/100) + 1 s * ceil(r/5)) / S with r the last minute's;
  bulk path max(T(imports), A(imports + one poll per batch + set-up)), contact/sync path A(contact/sync +
  contactLists + set-up), the reads of contactLists left out. % of ceiling = ceiling s / measured s.
seconds: the sync run's own clock (sync_runs started_at to finished_at); the peer's: its monotonic clock around
  its loop. CPU: seconds per process over the sync (sampled every 0.25 s) and the share of one core."""


def render(report: Report) -> str:
    plan = report.plan
    changed = report.code_end is not None and report.code_end.split("+")[1] != report.code_start.split("+")[1]
    out = [
        f"### sync_activecampaign {plan.run_id}: "
        + ", ".join(f"{m} {plan.contacts[m]:,} contacts at time scale {plan.scales[m]:g}" for m in plan.methods),
        f"code {report.code_start} (HEAD + digest of {', '.join(MEASURED_CODE)})"
        + (f" (CHANGED during the run: {report.code_end}; rerun)" if changed else ""),
    ]
    for method, ls in report.loads.items():
        out.append(
            f"load ({method}): {ls.contacts:,} contacts in {ls.seconds_contacts:.1f} s, consent subscribed "
            f"{ls.subscribed:,}, unsubscribed {ls.unsubscribed:,}, bounced {ls.bounced:,}"
        )
    for path in report.paths.values():
        out += render_path(path)
    out += ["", LEGEND]
    for name, lines in WARNINGS.items():
        if lines:
            out += ["", f"{name} logged {len(lines)} warning line(s):", *(f"  {line[:300]}" for line in lines[:10])]
    if report.notes:
        out += ["", *report.notes]
    return "\n".join(out)


def to_json(report: Report, command: Sequence[str], outcome: str) -> dict[str, Any]:
    paths = {}
    for method, path in report.paths.items():
        data = asdict(path)
        data["lines"] = [{**asdict(line), "share_of_ceiling": line.share} for line in lines_of(path)]
        for key in ("requests", "peer_requests"):
            value = getattr(path, key)
            if value is not None:
                data[key] |= {"total": value.total, "throttled": value.throttled, "accepted": value.accepted()}
        paths[method] = data
    return {
        "run_id": report.plan.run_id,
        "benchmark": "sync_activecampaign",
        "command": " ".join(command),
        "outcome": outcome,
        "code": {"start": report.code_start, "end": report.code_end},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "plan": asdict(report.plan),
        "limits": {"account_per_second": AC_ACCOUNT_PER_SECOND, "bulk_per_minute": AC_BULK_PER_MINUTE},
        "loads": {m: {**asdict(ls), "seconds": ls.seconds} for m, ls in report.loads.items()},
        "paths": paths,
        "warnings": WARNINGS,
        "notes": report.notes,
    }


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", choices=METHODS, help="run one full-sync method only")
    parser.add_argument("--bulk-contacts", type=int, default=100_000)
    parser.add_argument("--sync-contacts", type=int, default=10_000)
    parser.add_argument("--bulk-time-scale", type=float, default=DEFAULT_SCALES["bulk_import"])
    parser.add_argument("--sync-time-scale", type=float, default=DEFAULT_SCALES["contact_sync"])
    parser.add_argument("--peer-bulk-contacts", type=int, help="contacts the bulk peer imports (default: all)")
    parser.add_argument("--peer-sync-contacts", type=int, help="contacts the contact/sync peer sends (default 2,000)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--job-delay", type=float, default=0.0, help="the sandbox's --job-delay (default 0)")
    parser.add_argument("--no-verify", action="store_true", help="skip counting what landed in the sandbox")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="max seconds to wait for an idle machine")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 bulk, 1,000 contact/sync")
    args = parser.parse_args(argv)
    if args.quick:
        args.bulk_contacts, args.sync_contacts = 10_000, 1_000
        args.quiet_wait = min(args.quiet_wait, 5.0)
    contacts = {"bulk_import": args.bulk_contacts, "contact_sync": args.sync_contacts}
    scales = {"bulk_import": args.bulk_time_scale, "contact_sync": args.sync_time_scale}
    if not all(1 <= n <= 10_000_000 for n in contacts.values()) or not all(0.01 <= s <= 1000 for s in scales.values()):
        raise SystemExit("contacts 1..10M, time scales 0.01..1000")
    peer = {
        "bulk_import": 0 if args.no_peer else min(args.bulk_contacts, args.peer_bulk_contacts or args.bulk_contacts),
        "contact_sync": 0 if args.no_peer else min(args.sync_contacts, args.peer_sync_contacts or 2_000),
    }
    methods = (args.only,) if args.only else METHODS
    return Plan(methods, contacts, scales, peer, args.job_delay, not args.no_verify, max(0.0, args.quiet_wait))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, str(REPO))
    report = Report(plan, code_digest(MEASURED_CODE))
    print(f"ActiveCampaign sync benchmark {plan.run_id}: {os.cpu_count()} cores, code {report.code_start}", flush=True)
    try:
        from connector.sync.adapters import ESPS

        if "activecampaign" not in ESPS:
            raise BenchError("no ActiveCampaign adapter registered in connector/sync/adapters.py ESPS")
    except ImportError as exc:
        raise SystemExit(f"cannot import the sync engine: {exc}") from None
    outcome, status = guarded(lambda: run(plan, report))
    print()
    print(render(report))
    write_results("sync-activecampaign", to_json(report, ["python", "bench/sync_activecampaign.py", *argv], outcome))
    return status


if __name__ == "__main__":
    sys.exit(main())
