"""What the ESP sandboxes share: the request log's entries and the fault dice.

Each sandbox keeps its own lock, log and fault settings; these functions only do the parts that are the same in
every sandbox, so the same seed rolls the same faults everywhere. The errors a fault raises are the ESP's own.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, Self, TypeVar

from werkzeug.wrappers import Request


def json_or_text(raw: bytes) -> Any:
    """A request body as logged: its JSON, or its text when it is not JSON (None when empty)."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


def request_entry(request: Request, operation: str, body: Any, *, secret_header: str) -> dict[str, Any]:
    """One request log entry (``status`` filled in once answered); ``secret_header`` (lower case) is left out."""
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "operation": operation,
        "method": request.method,
        "path": request.path,
        "query": request.query_string.decode(),
        "headers": {k: v for k, v in request.headers.items() if k.lower() != secret_header},
        "body": body,
        "status": None,
    }


def count_by_operation(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many logged requests each operation had (``unrouted``: none)."""
    by_operation: dict[str, int] = {}
    for entry in entries:
        key = entry["operation"] or "unrouted"
        by_operation[key] = by_operation.get(key, 0) + 1
    return by_operation


class FaultSettings(Protocol):
    """The fault fields every sandbox's settings model has (frozen pydantic models)."""

    @property
    def error_rate(self) -> float: ...
    @property
    def error_status(self) -> int: ...
    @property
    def timeout_rate(self) -> float: ...
    @property
    def timeout_seconds(self) -> float: ...
    @property
    def slow_seconds(self) -> float: ...
    @property
    def storm_429(self) -> int: ...
    @property
    def storm_retry_after(self) -> int: ...
    @property
    def operations(self) -> list[str] | None: ...

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self: ...


FaultsT = TypeVar("FaultsT", bound=FaultSettings)


@dataclass(frozen=True)
class Roll:
    """What the fault dice decided for one request."""

    storm: bool
    fail: bool
    hold: bool


def roll_faults(faults: FaultsT, operation: str, dice: random.Random) -> tuple[FaultsT, Roll] | None:
    """Call under the sandbox's lock. None when the faults do not apply to ``operation``; else the settings to
    keep (one storm request used up) and the roll."""
    if faults.operations is not None and operation not in faults.operations:
        return None
    storm = faults.storm_429 > 0
    if storm:
        faults = faults.model_copy(update={"storm_429": faults.storm_429 - 1})
    fail = dice.random() < faults.error_rate
    hold = dice.random() < faults.timeout_rate
    return faults, Roll(storm=storm, fail=fail, hold=hold)


def apply_faults(
    faults: FaultSettings,
    roll: Roll,
    *,
    throttled: Callable[[float], Exception],
    held: Callable[[], Exception],
    failed: Callable[[int], Exception],
) -> None:
    """Call outside the lock: the slow delay, then a storm's 429, a held request's timeout, an injected error."""
    if faults.slow_seconds:
        time.sleep(faults.slow_seconds)
    if roll.storm:
        raise throttled(float(faults.storm_retry_after))
    if roll.hold:
        time.sleep(faults.timeout_seconds)
        raise held()
    if roll.fail:
        raise failed(faults.error_status)
