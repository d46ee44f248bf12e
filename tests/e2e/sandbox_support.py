"""The ESP sandbox as a real process (``espbridge sandbox``) for the sync e2e tests, and a small admin client.

Only 127.0.0.1: the sandbox binds there, and every URL here points there.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import free_port

from .processes import HOST, ServiceProcess

READY_TIMEOUT = 20.0


@contextlib.contextmanager
def running_sandbox(
    log_dir: Path,
    *,
    api_key: str,
    time_scale: float = 1.0,
    ac_api_token: str | None = None,
    ac_actid: str | None = None,
    ac_event_key: str | None = None,
    job_delay: float = 0.0,
) -> Iterator[ServiceProcess]:
    """``espbridge sandbox --host 127.0.0.1 --port <free> --time-scale S --api-key K`` (plus ``--ac-api-token``,
    ``--ac-actid``, ``--ac-event-key`` when given: the ActiveCampaign part's credentials), ready; stopped on exit."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "web.cli",
        "sandbox",
        "--host",
        HOST,
        "--port",
        str(port),
        "--time-scale",
        str(time_scale),
        "--api-key",
        api_key,
    ]
    if job_delay:
        argv += ["--job-delay", str(job_delay)]  # bulk jobs and imports stay processing this long (both parts)
    for option, value in (("--ac-api-token", ac_api_token), ("--ac-actid", ac_actid), ("--ac-event-key", ac_event_key)):
        if value is not None:
            argv += [option, value]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPBRIDGE_")} | {"PYTHONUNBUFFERED": "1"}
    process = ServiceProcess("sandbox", argv, env, log_dir / "sandbox.log", port=port).start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(base_url=process.url, timeout=2.0) as http:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/_sandbox/").status_code == 200:
                        break
                if not process.alive() or time.monotonic() > deadline:
                    pytest.fail(process.failure(f"the sandbox did not answer /_sandbox/ within {READY_TIMEOUT:.0f} s"))
                time.sleep(0.1)
        yield process
    finally:
        process.stop()


class SandboxAdmin:
    """The sandbox's admin endpoints (no Klaviyo auth): state, captured requests, faults."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def close(self) -> None:
        self.http.close()

    def state(self) -> dict[str, Any]:
        response = self.http.get("/_sandbox/state")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def requests(self) -> list[dict[str, Any]]:
        """Every captured /api request (oldest first); ``status`` is None while the request is being served."""
        response = self.http.get("/_sandbox/requests")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["requests"]
        return result

    def set_faults(self, **faults: Any) -> None:
        """Replace the fault setting (no arguments: no faults)."""
        response = self.http.post("/_sandbox/faults", content=json.dumps(faults))
        assert response.status_code == 200, response.text

    def faults(self) -> dict[str, Any]:
        response = self.http.get("/_sandbox/faults")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def event_unique_ids(entry: dict[str, Any]) -> list[str]:
    """The ``unique_id`` of every event a captured create_event / bulk_create_events request carried."""
    body = entry.get("body") or {}
    if entry["operation"] == "create_event":
        return [body["data"]["attributes"]["unique_id"]]
    if entry["operation"] == "bulk_create_events":
        return [
            event["attributes"]["unique_id"]
            for group in body["data"]["attributes"]["events-bulk-create"]["data"]
            for event in group["attributes"]["events"]["data"]
        ]
    return []
