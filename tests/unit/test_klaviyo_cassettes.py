"""KlaviyoClient replayed from vcrpy cassettes recorded against the ESP sandbox: one cassette per client operation
(tests/cassettes/klaviyo/<name>.yaml), the parsed results asserted, every recorded request body checked against
Klaviyo's request schemas (tests/contract), and no cassette holding the API key.

Replay is the default: ``record_mode="none"``, no network; a request the cassette does not hold (method, URL or
body changed) fails the test. To re-record every cassette after changing the client or the sandbox:

    KLAVIYO_CASSETTES=record .venv/bin/pytest -q tests/unit/test_klaviyo_cassettes.py

This serves the sandbox from a werkzeug server thread on 127.0.0.1 (job delay 0.6 s). To record against a running
``espbridge sandbox --job-delay 0.6 --api-key pk_cassette_0123456789abcdef`` process instead, also set
``KLAVIYO_SANDBOX_URL=http://127.0.0.1:8100``; it is reset before each cassette. Review the diff before committing.
URLs are recorded against one fixed base (``REPLAY_URL``), the Authorization header is left out, and so are the
headers that only change between recordings (Host with its port, User-Agent, Date, Server).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import vcr
from vcr.persisters.filesystem import FilesystemPersister
from vcr.request import Request as VcrRequest
from vcr.serializers import yamlserializer

from connector.esp.errors import Accepted, RateLimited, Rejected
from connector.esp.klaviyo import ConsentUpdate, KlaviyoClient, KlaviyoEvent, KlaviyoProfile
from connector.sandbox import KlaviyoSandbox, SandboxServer
from tests.contract.klaviyo import request_errors, spec

CASSETTES = Path(__file__).resolve().parents[1] / "cassettes" / "klaviyo"
RECORDING = os.environ.get("KLAVIYO_CASSETTES") == "record"
KEY = "pk_cassette_0123456789abcdef"
REPLAY_URL = "http://klaviyo-sandbox.test"
JOB_DELAY = 0.6
T0 = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)

NAMES = (
    "import_profile",
    "bulk_import_profiles",
    "create_event",
    "bulk_create_events",
    "subscribe",
    "unsubscribe",
    "suppress",
    "unsuppress",
    "create_list",
    "add_to_list",
    "remove_from_list",
    "request_deletion",
    "error_429_retry_after",
    "error_400_rejection",
)


def _canonical(request: VcrRequest) -> VcrRequest:
    """Every request as if sent to ``REPLAY_URL``: recorded and replayed cassettes match whatever the port was."""
    parts = urlsplit(request.uri)
    request.uri = REPLAY_URL + parts.path + (f"?{parts.query}" if parts.query else "")
    return request


def _quiet(response: dict[str, Any]) -> dict[str, Any]:
    response["headers"] = {k: v for k, v in response["headers"].items() if k.lower() not in ("date", "server")}
    return response


VCR = vcr.VCR(
    filter_headers=["authorization", "host", "user-agent"],
    before_record_request=_canonical,
    before_record_response=_quiet,
    match_on=["method", "scheme", "host", "port", "path", "query", "body"],
    decode_compressed_response=True,
)


class Sandbox:
    """Where a test's cassette comes from: recorded against ``url`` (record mode) or replayed (``url`` None)."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    def admin(self, path: str, body: Any = None) -> None:
        """An admin call (reset, faults) before recording; outside any cassette, and skipped on replay."""
        if self.url is None:
            return
        with httpx.Client(base_url=self.url, timeout=10.0) as http:
            response = http.post(path, json=body)
            assert response.status_code == 200, response.text

    @contextmanager
    def cassette(self, name: str, **faults: Any) -> Iterator[KlaviyoClient]:
        """A KlaviyoClient (default transport: vcrpy patches it) inside cassette ``name``; in record mode on a
        freshly reset sandbox with ``faults`` switched on."""
        path = CASSETTES / f"{name}.yaml"
        if self.url is not None:
            self.admin("/_sandbox/reset")
            if faults:
                self.admin("/_sandbox/faults", faults)
            path.unlink(missing_ok=True)
        mode = "all" if self.url is not None else "none"
        with VCR.use_cassette(str(path), record_mode=mode), KlaviyoClient(KEY, base_url=self.url or REPLAY_URL) as c:
            yield c

    def sleep(self, seconds: float) -> None:
        if self.url is not None:
            time.sleep(seconds)


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str | None]:
    if not RECORDING:
        yield None
        return
    external = os.environ.get("KLAVIYO_SANDBOX_URL")
    if external:
        yield external.rstrip("/")
        return
    CASSETTES.mkdir(parents=True, exist_ok=True)
    server = SandboxServer(KlaviyoSandbox(api_keys=[KEY], job_delay=JOB_DELAY), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def sandbox(sandbox_url: str | None) -> Sandbox:
    return Sandbox(sandbox_url)


def ranges(accepted: list[Accepted] | tuple[Accepted, ...]) -> list[tuple[int, int]]:
    return [(a.offset, a.count) for a in accepted]


def updates(*emails: str, **kw: Any) -> list[ConsentUpdate]:
    return [ConsentUpdate(email=email, email_marketing=True, **kw) for email in emails]


def event(unique_id: str, email: str = "ann@example.com") -> KlaviyoEvent:
    return KlaviyoEvent("Placed Order", KlaviyoProfile(email=email), {"sku": "SKU-1"}, time=T0, unique_id=unique_id)


# --- one cassette per operation --------------------------------------------------------------------------------


def test_import_profile(sandbox: Sandbox) -> None:
    with sandbox.cassette("import_profile") as client:
        created = client.import_profile(KlaviyoProfile(email="ann@example.com", first_name="Ann"))
        updated = client.import_profile(KlaviyoProfile(email="ann@example.com", last_name="Lee"))
    assert created.created is True and updated.created is False
    assert created.id == updated.id and re.fullmatch(r"01[0-9A-Z]{24}", created.id)


def test_bulk_import_profiles_job_and_errors(sandbox: Sandbox) -> None:
    profiles = [KlaviyoProfile(email=f"p{i}@example.com") for i in range(3)]
    with sandbox.cassette("bulk_import_profiles", reject={"emails": ["p1@example.com"]}) as client:
        [accepted] = client.bulk_import_profiles(profiles)
        assert accepted.job_id is not None
        statuses = []
        for _ in range(40):
            status = client.bulk_import_job(accepted.job_id)
            statuses.append((status.status, status.finished))
            if status.finished:
                break
            sandbox.sleep(0.15)
        failures = client.bulk_import_errors(accepted.job_id)
    assert ranges([accepted]) == [(0, 3)]
    assert statuses[0] == ("queued", False) and ("processing", False) in statuses
    assert statuses[-1] == ("complete", True) and all(not finished for _, finished in statuses[:-1])
    assert (status.id, status.total_count, status.completed_count, status.failed_count) == (accepted.job_id, 3, 2, 1)
    assert [(f.code, f.original_payload) for f in failures] == [("invalid", {"email": "p1@example.com"})]


def test_create_event(sandbox: Sandbox) -> None:
    with sandbox.cassette("create_event") as client:
        assert client.create_event(event("order-1")) is None


def test_bulk_create_events(sandbox: Sandbox) -> None:
    events = [event("v1"), event("v2", "ben@example.com"), event("v1"), event("v3")]
    with sandbox.cassette("bulk_create_events") as client:
        result = client.bulk_create_events(events)
    assert ranges(result.accepted) == [(0, 4)]
    assert result.duplicates == (2,)


def test_subscribe(sandbox: Sandbox) -> None:
    consented = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    with sandbox.cassette("subscribe") as client:
        accepted = client.subscribe(
            updates("ann@example.com", "ben@example.com", consented_at=consented),
            historical_import=True,
            custom_source="espbridge",
        )
    assert ranges(accepted) == [(0, 2)] and accepted[0].job_id is None


def test_unsubscribe(sandbox: Sandbox) -> None:
    with sandbox.cassette("unsubscribe") as client:
        assert ranges(client.unsubscribe(updates("ann@example.com"))) == [(0, 1)]


@pytest.mark.parametrize("operation", ["suppress", "unsuppress"])
def test_suppression(sandbox: Sandbox, operation: str) -> None:
    with sandbox.cassette(operation) as client:
        accepted = getattr(client, operation)(["ann@example.com", "ben@example.com"])
    assert ranges(accepted) == [(0, 2)]
    assert re.fullmatch(r"[0-9a-f-]{36}", accepted[0].job_id or "")


def test_create_list(sandbox: Sandbox) -> None:
    with sandbox.cassette("create_list") as client:
        list_id = client.create_list("Synced: VIP", opt_in_process="single_opt_in")
    assert re.fullmatch(r"[\w-]{6}", list_id)


@pytest.mark.parametrize("operation", ["add_to_list", "remove_from_list"])
def test_list_membership(sandbox: Sandbox, operation: str) -> None:
    with sandbox.cassette(operation) as client:
        ids = [client.import_profile(KlaviyoProfile(email=e)).id for e in ("ann@example.com", "ben@example.com")]
        list_id = client.create_list("Synced: VIP")
        if operation == "remove_from_list":
            client.add_to_list(list_id, ids)
        accepted = getattr(client, operation)(list_id, ids)
    assert ranges(accepted) == [(0, 2)]


def test_request_deletion(sandbox: Sandbox) -> None:
    with sandbox.cassette("request_deletion") as client:
        client.import_profile(KlaviyoProfile(email="ann@example.com"))
        assert client.request_deletion(email="ann@example.com") is None


def test_429_with_retry_after(sandbox: Sandbox) -> None:
    cassette = sandbox.cassette("error_429_retry_after", storm_429=1, storm_retry_after=7)
    with cassette as client, pytest.raises(RateLimited) as info:
        client.import_profile(KlaviyoProfile(email="ann@example.com"))
    assert info.value.retry_after == 7.0 and info.value.status == 429


def test_400_rejection_names_the_record(sandbox: Sandbox) -> None:
    rule = {"emails": ["ben@example.com"], "detail": "Invalid email."}
    with sandbox.cassette("error_400_rejection", reject=rule) as client, pytest.raises(Rejected) as info:
        client.subscribe(updates("ann@example.com", "ben@example.com", "cyd@example.com"))
    assert [(r.index, r.code, r.pointer) for r in info.value.records] == [
        (1, "invalid", "/data/attributes/profiles/data/1/attributes/email")
    ]
    assert info.value.status == 400 and info.value.accepted == () and "Invalid email." in str(info.value)


# --- the cassettes themselves ------------------------------------------------------------------------------------


def _operation_of(method: str, path: str) -> str:
    for name, operation in spec()["operations"].items():
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", operation["path"]) + "/?"
        if operation["method"] == method and re.fullmatch(pattern, path):
            return str(name)
    raise AssertionError(f"{method} {path} is no operation of the spec")


def _cassettes() -> list[Path]:
    return sorted(CASSETTES.glob("*.yaml"))


def test_there_is_a_cassette_per_operation_and_no_other() -> None:
    assert sorted(p.stem for p in _cassettes()) == sorted(NAMES)


@pytest.mark.parametrize("path", _cassettes(), ids=lambda p: p.stem)
def test_recorded_requests_follow_klaviyos_request_schemas(path: Path) -> None:
    requests = FilesystemPersister.load_cassette(str(path), yamlserializer)[0]
    assert requests
    for request in requests:
        operation = _operation_of(request.method, urlsplit(request.uri).path)
        body = request.body
        if spec()["operations"][operation]["request_schema"] is None:
            assert not body, f"{path.name}: {operation} carries a body"
            continue
        assert request_errors(operation, json.loads(body)) == [], f"{path.name}: {operation}"


@pytest.mark.parametrize("path", _cassettes(), ids=lambda p: p.stem)
def test_no_cassette_holds_the_api_key(path: Path) -> None:
    text = path.read_text()
    assert KEY not in text and KEY[3:] not in text
    assert "Klaviyo-API-Key" not in text and "authorization" not in text.lower()
    assert REPLAY_URL in text and "127.0.0.1" not in text
