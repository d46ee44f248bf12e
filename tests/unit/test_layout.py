"""The shape of the code base: import direction, no app or broker built at import time, typed SDK stub."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(output.split())


@pytest.mark.parametrize(
    "module",
    [
        "connector.store",
        "connector.runtime",
        "connector.ingest.projection",
        "connector.jobs.relay",
        "connector.tenancy",
        "connector.sandbox",
    ],
)
def test_connector_never_imports_flask_or_web(module: str) -> None:
    loaded = _modules_after_import(module)
    assert "flask" not in loaded
    assert not any(name == "web" or name.startswith("web.") for name in loaded)


def test_sdk_imports_nothing_of_the_repo() -> None:
    loaded = _modules_after_import("espbridge")
    assert not {"connector", "web", "flask", "sqlalchemy"} & loaded


def test_importing_web_builds_no_app_and_no_broker() -> None:
    code = (
        "import dramatiq, web, web.cli, web.ingest, web.admin; import dramatiq.broker as b; "
        "print(b.global_broker is None)"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "True"
