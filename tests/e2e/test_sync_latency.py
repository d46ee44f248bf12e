"""How long a change takes to reach the ESP with the default settings: ``espbridge serve`` alone (embedded broker,
relay every 1 s), connected with ``espbridge esp connect`` to the ESP sandbox running as its own process.

Latency is measured from the 200 of the ingestion POST to the moment the sandbox's state shows the change
(polled every 0.1 s), and printed. An identify must arrive within 5 s, a track event within 30 s.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.credentials import new_key
from connector.tenancy import NewStore

from .conftest import Launcher
from .processes import REPO_ROOT, ServiceProcess
from .sandbox_support import SandboxAdmin, running_sandbox

pytestmark = pytest.mark.slow

API_KEY = "pk_e2e_latency"
IDENTIFY_BOUND = 5.0
TRACK_BOUND = 30.0
SAMPLES = 3
POLL = 0.1
CLI = [sys.executable, "-m", "web.cli"]


def test_identify_and_track_reach_the_esp_promptly_with_default_settings(
    launcher: Launcher,
    service_env: dict[str, str],
    store: NewStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    backend: str,
) -> None:
    # Default settings: only the database (service_env) and the credentials key for the sandbox connection
    env = {k: v for k, v in service_env.items() if k != "ESPBRIDGE_RELAY_INTERVAL"}
    env["ESPBRIDGE_CREDENTIALS_KEY"] = new_key()
    with running_sandbox(tmp_path, api_key=API_KEY) as sandbox:
        connect = subprocess.run(
            [
                *CLI,
                "esp",
                "connect",
                "klaviyo",
                "--api-key",
                API_KEY,
                "--base-url",
                sandbox.url,
                "--store",
                str(store.id),
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert connect.returncode == 0, connect.stderr
        server = launcher.serve(env, workers=2, threads=16)  # ESPBRIDGE_WEB_WORKERS / _THREADS defaults
        admin = SandboxAdmin(sandbox.url)
        try:
            identify, track = _measure(server, store.write_key, admin)
        finally:
            admin.close()
    with capsys.disabled():
        print(
            f"\nsync latency ({backend}), ingestion 200 -> visible at the sandbox: "
            f"identify {_fmt(identify)}; track {_fmt(track)}"
        )
    assert max(identify) < IDENTIFY_BOUND, identify
    assert max(track) < TRACK_BOUND, track


def _measure(server: ServiceProcess, write_key: str, admin: SandboxAdmin) -> tuple[list[float], list[float]]:
    identifies: list[float] = []
    tracks: list[float] = []
    with httpx.Client(base_url=server.url, auth=(write_key, ""), timeout=30) as http:
        for n in range(SAMPLES):
            user, email = f"latency-{n}", f"latency-{n}@example.com"
            message = {"type": "identify", "userId": user, "messageId": f"id-{n}", "traits": {"email": email}}
            identifies.append(_latency(http, message, functools.partial(_has_profile, email=email), admin))
            message = {"type": "track", "userId": user, "messageId": f"ev-{n}", "event": "Product Viewed"}
            tracks.append(_latency(http, message, functools.partial(_has_event, message_id=f"ev-{n}"), admin))
    return identifies, tracks


def _latency(
    http: httpx.Client, message: dict[str, Any], arrived: Callable[[dict[str, Any]], bool], admin: SandboxAdmin
) -> float:
    response = http.post("/v1/batch", json={"batch": [message]})
    assert response.status_code == 200, response.text
    acknowledged = time.monotonic()
    deadline = acknowledged + TRACK_BOUND + 5  # bounded; the assertions above compare with the real bounds
    while not arrived(admin.state()):
        if time.monotonic() > deadline:
            pytest.fail(
                f"{message['type']} {message['messageId']} not at the sandbox after {deadline - acknowledged:.0f} s"
            )
        time.sleep(POLL)
    return time.monotonic() - acknowledged


def _has_profile(state: dict[str, Any], email: str) -> bool:
    return any(p["attributes"]["email"] == email for p in state["profiles"])


def _has_event(state: dict[str, Any], message_id: str) -> bool:
    return any(e["unique_id"] == message_id for e in state["events"])


def _fmt(latencies: list[float]) -> str:
    return ", ".join(f"{s:.2f} s" for s in latencies)
