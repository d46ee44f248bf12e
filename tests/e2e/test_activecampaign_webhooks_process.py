"""ActiveCampaign engagement end to end with real processes: ``espbridge sandbox`` (its ActiveCampaign part) POSTs
form-encoded webhooks over HTTP to ``espbridge serve`` (gunicorn, two workers) at the URL ``espbridge esp
register-webhook activecampaign`` registered (token included). Engagement and consent ledger rows appear for the
contact, a redelivery changes nothing, a wrong token is a 404, and the token is in no line of serve's log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pydantic import SecretStr

from connector import identity
from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.sandbox import DEFAULT_API_KEY
from connector.sandbox.activecampaign import ADMIN_PREFIX, DEFAULT_API_TOKEN
from connector.store import ConsentLedgerEntry, Database, Engagement
from connector.tenancy import NewStore
from web.cli import main

from .conftest import Launcher
from .processes import ServiceProcess
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
    with running_sandbox(tmp_path, api_key=DEFAULT_API_KEY, ac_api_token=DEFAULT_API_TOKEN) as process:
        yield process
        assert process.stop() == 0, process.failure("did not exit cleanly on SIGTERM")


def rows(db: Database, model: Any, store_id: int) -> list[Any]:
    with db.reader() as session:
        return list(session.scalars(sa.select(model).where(model.store_id == store_id).order_by(model.id)))


def test_the_sandbox_delivers_activecampaign_webhooks_to_a_running_espbridge(
    launcher: Launcher,
    env: dict[str, str],
    credentials_key: str,
    store: NewStore,
    db: Database,
    sandbox_process: ServiceProcess,
) -> None:
    serve = launcher.serve(env)
    # Connected in the database: ``esp connect activecampaign`` needs the ActiveCampaign adapter in the sync
    # registry, which this test does not depend on.
    with db.writer() as session:
        connections.connect(
            session,
            CredentialCipher(SecretStr(credentials_key)),
            store.id,
            "activecampaign",
            api_key=DEFAULT_API_TOKEN,
            base_url=sandbox_process.url,
        )
        ann = identity.resolve(session, store.id, user_id="u-ann", email=ANN)
        assert ann is not None
        ann_id = ann.id
    endpoint = f"{serve.url}/webhooks/activecampaign/{store.id}"
    result = CliRunner(env=env).invoke(
        main,
        ["esp", "register-webhook", "activecampaign", "--url", endpoint, "--store", str(store.id), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    registered = json.loads(result.output)
    with db.reader() as session:
        secret = connections.load(session, CredentialCipher(SecretStr(credentials_key)), store.id, "activecampaign")
    assert secret.webhook_secret is not None
    token = secret.webhook_secret.get_secret_value()
    assert token not in result.output

    with httpx.Client(base_url=sandbox_process.url, timeout=30) as ac:
        synced = ac.post(
            "/api/3/contact/sync", json={"contact": {"email": ANN}}, headers={"Api-Token": DEFAULT_API_TOKEN}
        )
        assert synced.status_code in (200, 201), synced.text
        (hook,) = ac.get(f"{ADMIN_PREFIX}/state").json()["webhooks"]
        assert hook["url"] == f"{endpoint}/{token}" and "api" not in hook["sources"]

        def engage(type_: str, **extra: Any) -> dict[str, Any]:
            response = ac.post(f"{ADMIN_PREFIX}/engagement", json={"type": type_, "email": ANN, **extra})
            assert response.status_code == 201, response.text
            document: dict[str, Any] = response.json()
            (delivery,) = document["deliveries"]
            assert (delivery["status"], delivery["webhook_id"]) == (200, registered["webhook_id"]), delivery
            return document

        engage("open", campaign_id="5", message_id="9")
        engage("click", campaign_id="5", link_url="https://shop.example/p/1")
        engage("bounce", bounce_type="soft")
        engage("bounce", bounce_type="hard")
        engage("unsubscribe", campaign_id="5")
        engage("sms_unsub")
        # an event the webhook is not registered for, and our own API change (its sources leave out "api"):
        # neither is delivered
        for asked in ({"type": "subscribe"}, {"type": "open", "initiated_from": "api"}):
            answer = ac.post(f"{ADMIN_PREFIX}/engagement", json={"email": ANN, **asked})
            assert answer.status_code == 201 and answer.json()["deliveries"] == [], answer.text
        (unsubscribe,) = ac.get(f"{ADMIN_PREFIX}/webhook-deliveries", params={"type": "unsubscribe"}).json()[
            "deliveries"
        ]

    engagement = rows(db, Engagement, store.id)
    assert [(r.kind, r.channel) for r in engagement] == [
        ("opened", "email"),
        ("clicked", "email"),
        ("bounced", "email"),
        ("bounced", "email"),
        ("unsubscribed", "email"),
        ("unsubscribed", "sms"),
    ]
    assert all(r.contact_id == ann_id and r.esp == "activecampaign" for r in engagement)
    assert engagement[1].details["url"] == "https://shop.example/p/1"
    ledger = rows(db, ConsentLedgerEntry, store.id)
    assert [(e.action, e.channel, e.method, e.evidence_ref) for e in ledger] == [
        ("bounce", "email", "esp_webhook", engagement[3].esp_event_id),
        ("withdraw", "email", "esp_webhook", engagement[4].esp_event_id),
        ("withdraw", "sms", "esp_webhook", engagement[5].esp_event_id),
    ]

    # at least once: the same body again changes nothing; a wrong token is a 404
    with httpx.Client(timeout=10) as http:
        again = http.post(unsubscribe["url"], content=unsubscribe["body"].encode(), headers=unsubscribe["headers"])
        wrong = http.post(
            f"{endpoint}/{token[:-2]}xx", content=unsubscribe["body"].encode(), headers=unsubscribe["headers"]
        )
    assert again.status_code == 200 and (again.json()["recorded"], again.json()["duplicates"]) == (0, 1)
    assert wrong.status_code == 404
    assert len(rows(db, Engagement, store.id)) == 6 and len(rows(db, ConsentLedgerEntry, store.id)) == 3
    assert serve.alive()
    assert token not in serve.log_path.read_text(errors="replace")
