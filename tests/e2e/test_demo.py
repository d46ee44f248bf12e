"""``espbridge demo --exit`` runs shoppers through the example storefront, which sends with the SDK to a real
``espbridge serve``, and reports what landed.

SQLite only: the demo always builds its own fresh SQLite file (the one-machine default of DESIGN §12).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from examples.storefront import CATALOG

from .processes import REPO_ROOT

pytestmark = pytest.mark.slow

DEMO_TIMEOUT = 180.0
CUSTOMERS = 60


def test_demo_runs_shoppers_through_the_storefront_and_everything_lands(tmp_path: Path) -> None:
    # Given a fresh SQLite path and no ESPBRIDGE_* configuration
    db_path = tmp_path / "demo.db"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ESPBRIDGE_")}
    argv = [sys.executable, "-m", "web.cli", "demo", "--exit", "--port", "0", "--customers", str(CUSTOMERS)]
    argv += ["--json", "--db", str(db_path)]

    # When the demo runs to the end
    returncode, stdout, stderr = _run(argv, env)

    # Then it exits cleanly and prints its summary as JSON on stdout
    assert returncode == 0, f"demo exited with {returncode}\n--- stderr ---\n{stderr[-4000:]}"
    summary = json.loads(stdout)
    assert summary["url"].startswith("http://127.0.0.1:")
    assert db_path.exists()
    # And every message the SDK sent was stored, and projected without an error
    assert summary["messages_sent"] > 0
    assert summary["events"] == summary["messages_sent"]
    assert summary["events_unprojected"] == 0
    assert summary["events_not_applied"] == 0
    # into contacts, orders, abandoned carts, consent, waitlists and the catalog
    assert summary["contacts"] > 0
    assert summary["orders"] > 0
    assert summary["carts_open"] > 0
    assert summary["consent_ledger_entries"] > 0
    assert summary["consent_state"].get("email:subscribed", 0) > 0
    assert summary["waitlist_entries"] > 0
    assert summary["products"] == len(CATALOG)
    # And every outbox row was delivered before the summary
    outbox = summary["outbox"]
    assert (outbox["pending"], outbox["enqueued"], outbox["dead"]) == (0, 0, 0), outbox
    assert outbox["done"] > 0
    # And every change reached the ESP sandbox the demo connected the store to (none failed or waiting)
    sync = summary["sync"]["klaviyo"]
    assert (sync["pending"], sync["enqueued"], sync["dead"]) == (0, 0, 0), sync
    sandbox = summary["sandbox"]
    assert 0 < sandbox["profiles"] <= summary["contacts"]  # anonymous visitors have nothing Klaviyo takes
    assert sandbox["events"] > 0 and "Order Completed" in sandbox["metrics"]
    assert sandbox["email_subscribed"] == summary["consent_state"]["email:subscribed"]
    assert sandbox["lists"] == {"Newsletter (espbridge demo)": sandbox["email_subscribed"]}


def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the demo with a deadline. On timeout, SIGINT lets it stop the ``serve`` child it started (which lives
    in a session of its own) before the test fails."""
    with subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=DEMO_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
            pytest.fail(f"demo did not finish within {DEMO_TIMEOUT:.0f}s\n--- stderr ---\n{stderr[-4000:]}")
        return proc.returncode, stdout, stderr
