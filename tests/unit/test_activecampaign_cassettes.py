"""ActiveCampaignClient replayed from vcrpy cassettes recorded against the AC sandbox (tests/cassettes/activecampaign/),
the parsed results asserted, every recorded request body checked against the request contract, and no cassette
holding the API token, the event key or the actid.

Replay is the default (``record_mode="none"``: no network; a request the cassette does not hold fails the test).
To re-record after changing the client or the sandbox (served from a werkzeug thread on 127.0.0.1):

    AC_CASSETTES=record .venv/bin/pytest -q tests/unit/test_activecampaign_cassettes.py

URLs are recorded against one fixed base (``REPLAY_URL``); the ``Api-Token`` header is left out, and trackcmp's
``actid`` and ``key`` are replaced in the form body, on recording and on matching alike.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
import vcr
import yaml
from vcr.request import Request as VcrRequest

from connector.esp.activecampaign import AcContact, ActiveCampaignClient
from connector.esp.errors import RateLimited, Rejected
from connector.sandbox.activecampaign import ActiveCampaignSandbox
from connector.sandbox.server import SandboxServer
from tests.contract.activecampaign import operation_name, validate_request

CASSETTES = Path(__file__).resolve().parents[1] / "cassettes" / "activecampaign"
RECORDING = os.environ.get("AC_CASSETTES") == "record"
TOKEN = "ac_cassette_token_0123456789"
ACTID = "7654321"
EVENT_KEY = "ac_cassette_event_key_abcdef"
REPLAY_URL = "http://activecampaign-sandbox.test"
SCRUBBED = "SCRUBBED"


def _scrub(request: VcrRequest) -> VcrRequest:
    parts = urlsplit(request.uri)
    request.uri = REPLAY_URL + parts.path + (f"?{parts.query}" if parts.query else "")
    if parts.path == "/event" and request.body:
        raw = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        form = [(k, SCRUBBED if k in ("actid", "key") else v) for k, v in parse_qsl(raw, keep_blank_values=True)]
        request.body = urlencode(form).encode()
    return request


def _quiet(response: dict[str, Any]) -> dict[str, Any]:
    response["headers"] = {k: v for k, v in response["headers"].items() if k.lower() not in ("date", "server")}
    return response


VCR = vcr.VCR(
    filter_headers=["api-token", "host", "user-agent"],
    before_record_request=_scrub,
    before_record_response=_quiet,
    match_on=["method", "scheme", "host", "port", "path", "query", "body"],
    decode_compressed_response=True,
)


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str | None]:
    if not RECORDING:
        yield None
        return
    CASSETTES.mkdir(parents=True, exist_ok=True)
    app = ActiveCampaignSandbox(api_tokens=[TOKEN], actid=ACTID, event_key=EVENT_KEY, time_scale=100)
    server = SandboxServer(app, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextmanager
def cassette(url: str | None, name: str, **faults: Any) -> Iterator[ActiveCampaignClient]:
    path = CASSETTES / f"{name}.yaml"
    if url is not None:
        with httpx.Client(base_url=url, timeout=10.0) as admin:
            assert admin.post("/_sandbox/activecampaign/reset").status_code == 200
            if faults:
                assert admin.post("/_sandbox/activecampaign/faults", json=faults).status_code == 200
        path.unlink(missing_ok=True)
    base = url or REPLAY_URL
    mode = "all" if url is not None else "none"
    client = ActiveCampaignClient(TOKEN, base_url=base, track_url=f"{base}/event", actid=ACTID, event_key=EVENT_KEY)
    with VCR.use_cassette(str(path), record_mode=mode), client:
        yield client
    _check(path)


def _check(path: Path) -> None:
    """No secret in the cassette, and every request body it holds keeps the contract."""
    text = path.read_text()
    assert TOKEN not in text and EVENT_KEY not in text and ACTID not in text
    for interaction in yaml.safe_load(text)["interactions"]:
        request = interaction["request"]
        body = request["body"]
        if not body or request["method"] not in ("POST", "PUT"):
            continue
        path_ = urlsplit(request["uri"]).path
        name = operation_name(f"{request['method']} {path_}")
        document = dict(parse_qsl(body)) if name == "track_event" else json.loads(body)
        if name == "track_event":
            document = {k: ("x" if v == SCRUBBED else v) for k, v in document.items()}
        assert validate_request(name, document) == []


def test_contact_sync_and_search(sandbox_url: str | None) -> None:
    with cassette(sandbox_url, "sync_contact") as client:
        created = client.sync_contact(AcContact(email="ann@example.com", first_name="Ann"))
        updated = client.sync_contact(AcContact(email="ann@example.com", last_name="Lee"))
        found = client.find_contact("ann@example.com")
        missing = client.find_contact("nobody@example.com")
    assert created == updated == found and missing is None


def test_bulk_import_and_batch_info(sandbox_url: str | None) -> None:
    contacts = [AcContact(email=f"p{i}@example.com") for i in range(3)]
    with cassette(sandbox_url, "bulk_import") as client:
        [accepted] = client.bulk_import(contacts)
        assert accepted.job_id is not None
        info = client.import_info(accepted.job_id)
    assert (accepted.offset, accepted.count) == (0, 3)
    assert info.finished and len(info.success) == 3 and not info.failure


def test_track_event(sandbox_url: str | None) -> None:
    with cassette(sandbox_url, "track_event") as client:
        client.sync_contact(AcContact(email="ann@example.com"))
        assert client.event_tracking_enabled() is False
        client.enable_event_tracking()
        assert client.create_event_name("Product Viewed") is True
        assert client.create_event_name("Product Viewed") is False
        assert "Product Viewed" in client.event_names()
        client.track_event("Product Viewed", "ann@example.com", '{"sku":"S-1"}')


def test_deep_data_order(sandbox_url: str | None) -> None:
    with cassette(sandbox_url, "ecom_order") as client:
        connection = client.create_connection(
            service="espbridge",
            externalid="store-1",
            name="Shop",
            logo_url="https://x.test/l.png",
            link_url="https://x.test",
        )
        customer = client.create_customer(connection, externalid="ann@example.com", email="ann@example.com")
        order = client.create_order(
            {
                "externalid": "o-1",
                "source": 1,
                "email": "ann@example.com",
                "orderProducts": [{"externalid": "p1", "name": "Shirt", "price": 2100, "quantity": 2}],
                "totalPrice": 4200,
                "currency": "USD",
                "connectionid": int(connection),
                "customerid": int(customer),
                "externalCreatedDate": "2026-11-20T10:00:00+00:00",
            }
        )
        assert client.find_order(connection, externalid="o-1") == order
        assert client.find_connection("espbridge", "store-1") == connection
        assert client.find_customer(connection, "ann@example.com") == customer


def test_error_429_retry_after(sandbox_url: str | None) -> None:
    with (
        cassette(sandbox_url, "error_429_retry_after", storm_429=1, storm_retry_after=3) as client,
        pytest.raises(RateLimited) as caught,
    ):
        client.find_contact("ann@example.com")
    assert caught.value.retry_after == 3 and caught.value.operation == "search_contacts"


def test_error_422_rejection(sandbox_url: str | None) -> None:
    with (
        cassette(sandbox_url, "error_422_rejection", reject={"emails": ["bad@example.com"]}) as client,
        pytest.raises(Rejected) as caught,
    ):
        client.sync_contact(AcContact(email="bad@example.com"))
    assert [r.pointer for r in caught.value.records] == ["/contact/email"]
