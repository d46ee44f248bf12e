"""A storefront process for the SDK's end-to-end tests: ``python -m tests.e2e.sdk_driver SCENARIO CONFIG_JSON``.

It creates an ``espbridge.Client`` from the config and runs one scenario:

- ``stream``: track ``count`` messages with messageIds ``{prefix}{n}`` (at ``rate`` per second when given, until
  ``stop_file`` appears when given), appending each returned messageId to ``ids_log`` once the call returned; then
  ``flush`` and/or ``shutdown`` as configured, or simply return (the interpreter's exit runs the SDK's atexit hook).
- ``fork``: the client is created in the parent, which tracks, then forks a child with ``os.fork()`` (tracks,
  flushes, ``sys.exit(0)``) and one with multiprocessing's fork context (tracks and returns: no flush, no
  shutdown); then tracks again and shuts down. messageIds are the SDK's own.

The outcome (stats, what ``on_error`` received, timings) is written to ``result`` as JSON before the process
ends. The tests read the ids logs and the result; what was stored they read from the database.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from espbridge import Client, Dropped, Rejected

Json = dict[str, Any]


class Recorder:
    """``on_error``: what the client reported from its background thread."""

    def __init__(self) -> None:
        self.errors: list[Json] = []

    def __call__(self, error: Exception, messages: list[Json]) -> None:
        entry: Json = {"type": type(error).__name__, "error": str(error), "ids": [m.get("messageId") for m in messages]}
        if isinstance(error, Dropped):
            entry["count"] = error.count
        if isinstance(error, Rejected):
            entry.update(status=error.status, field=error.field, reason=error.reason)
        self.errors.append(entry)


class IdsLog:
    """One messageId per line, written with one ``os.write`` each: in the kernel as soon as the call returned, so
    a line is there even when the process is killed right after."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def add(self, message_id: str | None) -> None:
        assert message_id is not None
        os.write(self._fd, f"{message_id}\n".encode())


def make_client(config: Json, recorder: Recorder) -> Client:
    return Client(
        config["write_key"], host=config["host"], spool_dir=config["spool_dir"], on_error=recorder, **config["client"]
    )


def write_result(path: str, result: Json) -> None:
    temporary = f"{path}.tmp"
    Path(temporary).write_text(json.dumps(result))
    os.replace(temporary, path)


def stream(config: Json) -> None:
    recorder = Recorder()
    client = make_client(config, recorder)
    log = IdsLog(config["ids_log"])
    count: int = config["count"]
    rate: float | None = config.get("rate")
    stop_file = Path(config["stop_file"]) if config.get("stop_file") else None
    prefix: str = config.get("prefix", "m-")
    started = time.monotonic()
    slowest = 0.0
    tracked = 0
    for n in range(count):
        if stop_file is not None and n % 10 == 0 and stop_file.exists():
            break
        if rate:
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        before = time.monotonic()
        message_id = client.track(
            f"user-{n % 50}",
            "Product Viewed",
            {"product_id": f"sku-{n % 17}", "price": 9.5 + n % 5, "n": n},
            message_id=f"{prefix}{n}",
        )
        slowest = max(slowest, time.monotonic() - before)
        log.add(message_id)
        tracked += 1
    result: Json = {"tracked": tracked, "slowest_call": slowest}
    if config.get("flush"):
        before = time.monotonic()
        result["flushed"] = client.flush(timeout=config["flush"])
        result["flush_seconds"] = time.monotonic() - before
    if config.get("shutdown"):
        result["shut_down"] = client.shutdown(timeout=config["shutdown"])
    result["stats"] = dataclasses.asdict(client.stats())
    result["errors"] = recorder.errors
    write_result(config["result"], result)
    # Without flush/shutdown the process just ends here: the SDK's atexit hook is all that delivers.


def _child_result(path: str, ids: list[str | None], recorder: Recorder, **extra: Any) -> None:
    write_result(path, {"pid": os.getpid(), "ids": ids, "errors": recorder.errors, **extra})


def _multiprocessing_child(client: Client, recorder: Recorder, count: int, path: str) -> None:
    """Tracks and returns: multiprocessing ends the child with os._exit(), so only its finalizers run."""
    recorder.errors.clear()  # the parent's, inherited
    ids = [client.track("mp-child", "Child Event", {"n": n}) for n in range(count)]
    _child_result(path, ids, recorder)


def fork(config: Json) -> None:
    recorder = Recorder()
    client = make_client(config, recorder)
    count: int = config["count"]
    out = Path(config["out_dir"])
    parent_ids = [client.track("parent", "Parent Event", {"n": n}) for n in range(count)]

    pid = os.fork()
    if pid == 0:
        try:
            recorder.errors.clear()
            ids = [client.track("fork-child", "Child Event", {"n": n}) for n in range(count)]
            before = time.monotonic()
            flushed = client.flush(timeout=20)
            flush_seconds = time.monotonic() - before
            _child_result(str(out / "fork-child.json"), ids, recorder, flushed=flushed, flush_seconds=flush_seconds)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        sys.exit(0)  # a normal exit: SystemExit unwinds, the interpreter finalizes and runs atexit

    context = multiprocessing.get_context("fork")
    child = context.Process(
        target=_multiprocessing_child, args=(client, recorder, count, str(out / "mp-child.json")), daemon=False
    )
    before = time.monotonic()
    child.start()
    child.join(60)
    mp_seconds = time.monotonic() - before
    mp_exitcode = child.exitcode
    if mp_exitcode is None:
        child.kill()
        child.join(5)

    parent_ids += [client.track("parent", "Parent Event", {"n": n}) for n in range(count, 2 * count)]
    deadline = time.monotonic() + 60
    fork_status: int | None = None
    while fork_status is None and time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            fork_status = os.waitstatus_to_exitcode(status)
        else:
            time.sleep(0.05)
    shut_down = client.shutdown(timeout=30)
    write_result(
        config["result"],
        {
            "ids": parent_ids,
            "shut_down": shut_down,
            "fork_exitcode": fork_status,
            "mp_exitcode": mp_exitcode,
            "mp_seconds": mp_seconds,
            "stats": dataclasses.asdict(client.stats()),
            "errors": recorder.errors,
        },
    )


SCENARIOS = {"stream": stream, "fork": fork}


def main() -> None:
    scenario, config = sys.argv[1], json.loads(sys.argv[2])
    SCENARIOS[scenario](config)


if __name__ == "__main__":
    main()
