"""Where the machine's CPU went during a run: ours (the bench's process tree) or somebody else's.

The benchmark shares its cores with whatever else runs on the machine (test suites, editors, builds).
A run during which other processes used a noticeable share of the cores measured less than the machine
can do; :class:`CpuMeter` reports that share so such runs can be spotted (and rerun), and
:func:`wait_for_quiet` holds the next scenario back, for a bounded time, until the others are idle.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime jiffies) of every process still readable."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ... utime stime
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def our_jiffies() -> dict[int, int]:
    """CPU jiffies of this process and all its live descendants (servers, workers, backends)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    ours, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in ours:
            ours[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
    return ours


def _reaped_children_jiffies() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk: it has exited and was waited for
    return (usage.ru_utime + usage.ru_stime) * CLOCK_TICKS


@dataclass(frozen=True)
class CpuUsage:
    busy: float  # fraction of all cores busy
    foreign: float  # fraction of all cores used by processes the benchmark did not start


class CpuMeter:
    """Snapshot at construction; :meth:`read` gives the usage since then."""

    def __init__(self) -> None:
        self._machine = machine_jiffies()
        self._ours = our_jiffies()
        self._reaped = _reaped_children_jiffies()

    def read(self) -> CpuUsage:
        busy0, total0 = self._machine
        busy1, total1 = machine_jiffies()
        now = our_jiffies()
        ours: float = sum(j - self._ours.get(pid, 0) for pid, j in now.items())
        ours += _reaped_children_jiffies() - self._reaped
        total = max(1, total1 - total0)
        busy = busy1 - busy0
        return CpuUsage(busy=busy / total, foreign=max(0.0, busy - ours) / total)


def wait_for_quiet(max_seconds: float, threshold: float = 0.2, window: float = 1.0) -> CpuUsage:
    """Wait until other processes use less than ``threshold`` of the cores over ``window`` seconds.

    Gives up after ``max_seconds`` and returns the last window's usage either way.
    """
    deadline = time.monotonic() + max_seconds
    while True:
        meter = CpuMeter()
        time.sleep(window)
        usage = meter.read()
        if usage.foreign < threshold or time.monotonic() >= deadline:
            return usage
