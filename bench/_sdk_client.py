"""One SDK benchmark run: one client library, one scenario, in a fresh process started by ``bench/sdk.py``.

Imports only the client under test (so no other library's import or threads weigh on it), creates it with
its defaults pointed at the sink, runs the scenario in the main thread and writes one JSON object to
``--result``. Figures taken here: per-call latency of ``track()`` in the caller's thread
(``time.perf_counter_ns`` around each call; the properties dict is built before the clock starts), the
``time.monotonic()`` of the first call (the sink stamps arrivals with the same clock), how long the bounded
flush took and whether it returned, this process's peak RSS (``ru_maxrss``) and CPU time. What reached the
sink is counted by the sink.

    .venv/bin/python bench/_sdk_client.py tight segment --host http://127.0.0.1:PORT --result out.json
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import json
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WRITE_KEY = "bench-key"
EVENT = "Product Viewed"
CATEGORIES = ("shoes", "shirts", "bags", "hats", "socks", "jackets", "belts", "scarves")
USERS = tuple(f"user-{i:05d}" for i in range(1000))
FORK_CHILD_FLUSH_TIMEOUT = 15.0  # bench/sdk.py kills the child if it is still alive a few seconds later


def properties(i: int) -> dict[str, Any]:
    """A small, realistic properties dict (a product view), different for every call."""
    n = i % 2000
    return {
        "product_id": f"prod-{n:05d}",
        "sku": f"SKU-{n:05d}-M",
        "name": f"Product {n}",
        "category": CATEGORIES[i % len(CATEGORIES)],
        "price": 9.99 + n % 90,
        "currency": "EUR",
        "quantity": 1 + i % 3,
    }


# ------------------------------------------------------------------------------------------ clients


def make_client(name: str, host: str, *, sync_mode: bool = False, spool_dir: str | None = None) -> Any:
    """The client under test with its library's defaults, except the sink's URL (and sync mode if asked)."""
    if name == "segment":
        from segment.analytics import Client as SegmentClient

        return SegmentClient(WRITE_KEY, host=host, sync_mode=sync_mode)
    if name == "rudder":
        from rudderstack.analytics import Client as RudderClient

        return RudderClient(WRITE_KEY, host=host, sync_mode=sync_mode)
    if name == "espbridge":
        from espbridge import Client as EspbridgeClient

        options: dict[str, Any] = {"sync_mode": sync_mode}
        if spool_dir is not None:
            options["spool_dir"] = spool_dir  # a fresh directory per run: no leftovers of earlier runs
        return EspbridgeClient(WRITE_KEY, host=host, **options)
    raise SystemExit(f"unknown client {name!r}")


def client_version(name: str) -> str:
    if name == "segment":
        from segment.analytics.version import VERSION as SEGMENT_VERSION

        return str(SEGMENT_VERSION)
    if name == "rudder":
        from rudderstack.analytics.version import VERSION as RUDDER_VERSION

        return str(RUDDER_VERSION)
    import espbridge

    return str(getattr(espbridge, "__version__", "?"))


def bounded_flush(client: Any, timeout: float) -> dict[str, Any]:
    """Flush, waiting at most ``timeout`` seconds. Segment's and Rudder's flush() take no timeout (it is a
    ``queue.join()``), so theirs runs in a daemon thread that is abandoned if it does not return."""
    started = time.monotonic()
    if hasattr(client, "stats"):  # espbridge: flush(timeout) -> bool
        ok = bool(client.flush(timeout=timeout))
        return {"returned": True, "ok": ok, "seconds": time.monotonic() - started}
    thread = threading.Thread(target=client.flush, daemon=True)
    thread.start()
    thread.join(timeout)
    returned = not thread.is_alive()
    return {"returned": returned, "ok": returned, "seconds": time.monotonic() - started}


def client_stats(client: Any) -> dict[str, Any] | None:
    if not hasattr(client, "stats"):
        return None
    stats = client.stats()
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    names = ("queued", "spooled_bytes", "sent", "rejected", "dropped", "retries")
    return {name: getattr(stats, name, None) for name in names}


# ------------------------------------------------------------------------------------------ measuring


def latency_summary(lat_ns: array.array[int]) -> dict[str, float]:
    ordered = sorted(lat_ns)
    n = len(ordered)
    if not n:
        return {}

    def pick(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000

    return {
        "calls": n,
        "median_us": pick(0.5),
        "p99_us": pick(0.99),
        "p999_us": pick(0.999),
        "max_us": ordered[-1] / 1000,
        "mean_us": sum(ordered) / n / 1000,
    }


def process_figures() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


def timed_calls(client: Any, first: int, count: int, pace: float | None = None) -> tuple[float, array.array[int]]:
    """``count`` track() calls in the main thread; (monotonic time of the first call, per-call ns).

    With ``pace`` (events/s) call i starts at t0 + i/pace (open loop); otherwise back to back.
    """
    lat = array.array("q", bytes(8 * count))
    track = client.track
    clock = time.perf_counter_ns
    t0 = time.monotonic()
    for i in range(count):
        if pace is not None:
            delay = t0 + i / pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        props = properties(first + i)
        user = USERS[i % len(USERS)]
        start = clock()
        track(user, EVENT, props)
        lat[i] = clock() - start
    return t0, lat


def write_atomically(path: Path, payload: dict[str, Any]) -> None:
    """bench/sdk.py polls for the file: it must never see it half written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


# ------------------------------------------------------------------------------------------ scenarios


def scenario_tight(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    rss_start = process_figures()["peak_rss_mib"]
    t0, lat = timed_calls(client, 0, args.calls)
    calls_done = time.monotonic()
    flush = bounded_flush(client, args.flush_timeout)
    figures = process_figures()  # before sorting the latencies: the peak is the client's, not ours
    return {
        "sent": args.calls,
        "t0": t0,
        "calls_done_at": calls_done,
        "calls_per_s": args.calls / max(1e-9, calls_done - t0),
        "flush": flush,
        "rss_after_create_mib": rss_start,
        **figures,
        "latency": latency_summary(lat),
        "client_stats": client_stats(client),
    }


def scenario_sync(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    t0, lat = timed_calls(client, 0, args.calls)
    done = time.monotonic()
    return {
        "sent": args.calls,
        "t0": t0,
        "calls_done_at": done,
        "events_per_s": args.calls / max(1e-9, done - t0),
        **process_figures(),
        "latency": latency_summary(lat),
    }


def scenario_exit(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """Send and return without flush(): the interpreter exits normally (atexit handlers run)."""
    t0, lat = timed_calls(client, 0, args.calls)
    return {"sent": args.calls, "t0": t0, "calls_done_at": time.monotonic(), "latency": latency_summary(lat)}


def scenario_recover(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """A later process on the same spool directory: create the client, flush, exit."""
    return {"sent": 0, "t0": time.monotonic(), "flush": bounded_flush(client, args.flush_timeout)}


def scenario_fork(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """Client created here; a forked child sends and flushes (bounded); this parent only waits for it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, never return into the parent's code
        code = 0
        try:
            os.close(read_end)
            t0, lat = timed_calls(client, 0, args.calls)
            flush = bounded_flush(client, FORK_CHILD_FLUSH_TIMEOUT)
            report = {"t0": t0, "calls_done_at": time.monotonic(), "flush": flush, "latency": latency_summary(lat)}
            os.write(write_end, json.dumps(report).encode())
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)  # as multiprocessing / prefork workers do: no atexit of the parent's code
    os.close(write_end)
    deadline = time.monotonic() + args.child_timeout
    status: int | None = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    killed = status is None
    raw = os.read(read_end, 1 << 20) if not killed else b""
    os.close(read_end)
    child = json.loads(raw) if raw else {}
    return {"sent": args.calls, "child_killed": killed, "child_exit_status": status, "child": child}


def scenario_outage(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """A steady stream of ``rate`` events/s for ``seconds``; bench/sdk.py takes the sink down meanwhile."""
    count = int(args.rate * args.seconds)
    t0 = time.monotonic()
    write_atomically(Path(args.result + ".started"), {"t0": t0})
    _, lat = timed_calls(client, 0, count, pace=args.rate)
    calls_done = time.monotonic()
    flush = bounded_flush(client, args.flush_timeout)
    return {
        "sent": count,
        "t0": t0,
        "calls_done_at": calls_done,
        "flush": flush,
        **process_figures(),
        "latency": latency_summary(lat),
        "client_stats": client_stats(client),
    }


SCENARIOS: dict[str, Callable[[argparse.Namespace, Any], dict[str, Any]]] = {
    "tight": scenario_tight,
    "sync": scenario_sync,
    "exit": scenario_exit,
    "recover": scenario_recover,
    "fork": scenario_fork,
    "outage": scenario_outage,
}


def main() -> None:
    parser = argparse.ArgumentParser(description="one SDK benchmark run")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("client", choices=("segment", "rudder", "espbridge"))
    parser.add_argument("--host", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--calls", type=int, default=0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--flush-timeout", type=float, default=120.0)
    parser.add_argument("--child-timeout", type=float, default=20.0)
    parser.add_argument("--spool-dir", default=None)
    args = parser.parse_args()
    started = time.monotonic()
    client = make_client(args.client, args.host, sync_mode=args.scenario == "sync", spool_dir=args.spool_dir)
    result = {
        "scenario": args.scenario,
        "client": args.client,
        "version": client_version(args.client),
        "python": platform.python_version(),
        "create_s": time.monotonic() - started,
        **SCENARIOS[args.scenario](args, client),
        "result_at": time.monotonic(),
    }
    write_atomically(Path(args.result), result)
    # Then a normal interpreter exit: the library's atexit handlers run, as in any application.


if __name__ == "__main__":
    main()
