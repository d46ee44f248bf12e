"""Klaviyo engagement end to end with real processes: ``espbridge sandbox`` delivers signed webhooks over HTTP to
``espbridge serve`` (gunicorn, two workers); the store was connected and the webhook registered with the CLI, the
contact came in through the ingestion API and was synced to the sandbox by the sync engine (which links her Klaviyo
profile id). Engagement and consent ledger rows appear for her, the withdrawal is synced back out, a redelivery
changes nothing, and ``espbridge esp poll`` then finds every event already recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from connector.credentials import new_key
from connector.sandbox import DEFAULT_API_KEY
from connector.store import ConsentLedgerEntry, Contact, Database, Engagement, EspLink
from connector.tenancy import NewStore
from tests.conftest import basic_auth
from web.cli import main

from .conftest import Launcher
from .processes import ServiceProcess, wait_until
from .sandbox_support import running_sandbox

pytestmark = pytest.mark.slow

ANN = "ann@example.com"


@pytest.fixture
def credentials_key() -> str:
    return new_key()


@pytest.fixture
def env(service_env: dict[str, str], credentials_key: str) -> dict[str, str]:
    return {**service_env, "ESPBRIDGE_CREDENTIALS_KEY": credentials_key}


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[ServiceProcess]:
    with running_sandbox(tmp_path, api_key=DEFAULT_API_KEY) as process:
        yield process
        assert process.stop() == 0, process.failure("did not exit cleanly on SIGTERM")


def cli(env: dict[str, str], *args: str) -> Any:
    result = CliRunner(env=env).invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def rows(db: Database, model: Any, store_id: int) -> list[Any]:
    with db.reader() as session:
        return list(session.scalars(sa.select(model).where(model.store_id == store_id).order_by(model.id)))


def test_the_sandbox_delivers_signed_webhooks_to_a_running_espbridge(
    launcher: Launcher,
    env: dict[str, str],
    store: NewStore,
    db: Database,
    sandbox_process: ServiceProcess,
) -> None:
    serve = launcher.serve(env)
    store_id = str(store.id)
    cli(env, "esp", "connect", "klaviyo", "--api-key", DEFAULT_API_KEY, "--base-url", sandbox_process.url)
    hook_url = f"{serve.url}/webhooks/klaviyo/{store.id}"
    registered = cli(env, "esp", "register-webhook", "klaviyo", "--url", hook_url, "--store", store_id)

    with httpx.Client(base_url=serve.url, timeout=10) as shop:
        identify = {"userId": "u-ann", "traits": {"email": ANN}, "messageId": "m-identify-ann"}
        assert shop.post("/v1/identify", json=identify, headers=basic_auth(store.write_key)).status_code == 200

    def ann() -> Contact | None:
        with db.reader() as session:
            return session.scalar(sa.select(Contact).where(Contact.store_id == store.id, Contact.email == ANN))

    contact = wait_until(ann, timeout=30, what="Ann projected into a contact")

    def linked() -> str | None:  # the sync engine pushed Ann to the sandbox and kept her Klaviyo profile id
        with db.reader() as session:
            return session.scalar(
                sa.select(EspLink.remote_id).where(EspLink.store_id == store.id, EspLink.contact_id == contact.id)
            )

    profile_id = wait_until(linked, timeout=30, what="Ann's profile synced to the sandbox (esp_links.remote_id)")

    with httpx.Client(base_url=sandbox_process.url, timeout=30) as klaviyo:

        def engage(metric: str, **extra: Any) -> dict[str, Any]:
            response = klaviyo.post("/_sandbox/engagement", json={"email": ANN, "metric": metric, **extra})
            assert response.status_code == 201, response.text
            document: dict[str, Any] = response.json()
            assert document["data"]["relationships"]["profile"]["data"]["id"] == profile_id
            (delivery,) = document["deliveries"]
            assert (delivery["status"], delivery["delivered"]) == (200, True), delivery
            assert delivery["webhook_id"] == registered["webhook_id"]
            return document

        sent = [
            engage("Received Email"),
            engage("Opened Email"),
            engage("Clicked Email", properties={"URL": "https://shop.example/p/1"}),
            engage("Bounced Email", bounce_type="soft"),
            engage("Bounced Email", bounce_type="hard"),
            engage("Marked Email as Spam"),
            engage("Unsubscribed from Email Marketing"),
        ]
        (last,) = klaviyo.get("/_sandbox/webhook-deliveries", params={"event_id": sent[-1]["data"]["id"]}).json()[
            "deliveries"
        ]

        # the withdrawal goes out again to the connected ESPs through the outbox (here: back to the sandbox)
        def consent_synced() -> bool:
            requests = klaviyo.get("/_sandbox/state").json()["requests"]["by_operation"]
            return bool({"bulk_unsubscribe_profiles", "bulk_suppress_profiles"} & set(requests))

        wait_until(consent_synced, timeout=30, what="the consent change synced back to Klaviyo")

    engagement = rows(db, Engagement, store.id)
    assert [(r.esp_event_id, r.kind) for r in engagement] == [
        (s["data"]["id"], kind)
        for s, kind in zip(
            sent, ["delivered", "opened", "clicked", "bounced", "bounced", "marked_spam", "unsubscribed"], strict=True
        )
    ]
    assert [r.contact_id for r in engagement] == [contact.id] * 7
    ledger = rows(db, ConsentLedgerEntry, store.id)
    assert [(e.action, e.evidence_ref, e.method) for e in ledger] == [
        ("bounce", sent[4]["data"]["id"], "esp_webhook"),
        ("complaint", sent[5]["data"]["id"], "esp_webhook"),
        ("withdraw", sent[6]["data"]["id"], "esp_webhook"),
    ]

    # Klaviyo delivers at least once: the same bytes again change nothing
    with httpx.Client(timeout=10) as http:
        again = http.post(last["endpoint_url"], content=last["body"].encode(), headers=last["headers"])
        forged = http.post(
            last["endpoint_url"],
            content=last["body"].encode(),
            headers={**last["headers"], "Klaviyo-Signature": "0" * 64},
        )
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert forged.status_code == 401

    # the polling fallback finds all of it already recorded
    polled = cli(env, "esp", "poll", "klaviyo", "--store", store_id)
    assert (polled["fetched"], polled["recorded"], polled["duplicates"], polled["linked"]) == (7, 0, 7, 0)
    assert len(rows(db, Engagement, store.id)) == 7 and len(rows(db, ConsentLedgerEntry, store.id)) == 3
    assert serve.alive()
