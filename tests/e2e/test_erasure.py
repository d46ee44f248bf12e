"""The issue's must-hold erasure, with real processes: PostgreSQL, Redis, ``espbridge serve``, ``espbridge worker``
and the ESP sandbox (Klaviyo and ActiveCampaign parts in one process), both connections made with ``espbridge esp
connect`` and the erasure asked for with ``espbridge erase``.

A person with orders, events, a cart, a waitlist entry and consent at both ESPs (subscribed at both sandboxes
first) is erased: afterwards no table holds their email, phone or name in clear, both sandboxes received the
deletion (Klaviyo's data-privacy deletion request recorded, the ActiveCampaign contact gone), the consent ledger
still verifies, and a new "Identify" and "Consent Updated" (subscribed) for the same email neither recreates them
at either sandbox nor subscribes them.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from connector import audit
from connector.credentials import new_key
from connector.store import Contact, Database, OutboxRow, OutboxStatus, SyncItem, SyncItemStatus, SyncKind
from connector.tenancy import NewStore
from tests.conftest import unprojected
from tests.erasure_support import personal_data_left
from tests.services import RedisServer

from .activecampaign_support import (
    AC_SUBSCRIBED,
    CLI,
    AcAdmin,
    connect_activecampaign,
    create_list,
    esp_connect,
    post_batch,
)
from .conftest import Launcher
from .processes import REPO_ROOT, wait_until
from .sandbox_support import SandboxAdmin, running_sandbox

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KLAVIYO_KEY = "pk_e2e_erasure"
AC_TOKEN = "ac_e2e_erasure_token"
AC_ACTID = "7171"
AC_EVENT_KEY = "ac_e2e_erasure_event_key"
EMAIL = "ottilie.brackwater@example.net"
PHONE = "+447700900123"
NEEDLES = [EMAIL, "ottilie", "brackwater", PHONE, "7700900123", "198.51.100.23", "OttiBrowser", "cus-ob"]
TIMEOUT = 60.0


def _messages(prefix: str, *, with_history: bool) -> list[dict[str, Any]]:
    common = {"userId": "cus-ob", "context": {"ip": "198.51.100.23", "userAgent": "OttiBrowser/2"}}
    identify = {
        "type": "identify",
        "messageId": f"{prefix}-identify",
        "traits": {"email": EMAIL, "phone": PHONE, "firstName": "Ottilie", "lastName": "Brackwater"},
    }
    consent = {
        "type": "track",
        "event": "Consent Updated",
        "messageId": f"{prefix}-consent",
        "properties": {"channel": "email", "status": "subscribed"},
    }
    history: list[dict[str, Any]] = [
        {"event": "Product Viewed", "properties": {"product_id": "p-1", "note": "Ottilie's pick"}},
        {"event": "Product Added", "properties": {"cart_id": "cart-ob", "product_id": "p-2", "price": 12}},
        {
            "event": "Order Completed",
            "properties": {"order_id": "order-ob", "total": 30, "currency": "EUR", "products": [{"product_id": "p-1"}]},
        },
        {"event": "Waitlist Joined", "properties": {"product_id": "p-3"}},
    ]
    tracks = [{"type": "track", "messageId": f"{prefix}-t{n}", **h} for n, h in enumerate(history)]
    return [m | common for m in [identify, consent, *(tracks if with_history else [])]]


def _settled(db: Database, store_id: int) -> bool:
    """Everything projected, fanned out and sent: no outbox row and no sync item still open."""
    with db.reader() as session:
        outbox = session.scalar(
            sa.select(sa.func.count(OutboxRow.id)).where(
                OutboxRow.store_id == store_id, OutboxRow.status != OutboxStatus.DONE
            )
        )
        open_items = session.scalar(
            sa.select(sa.func.count(SyncItem.id)).where(
                SyncItem.store_id == store_id,
                SyncItem.status.in_((SyncItemStatus.PENDING, SyncItemStatus.ENQUEUED)),
            )
        )
    return not outbox and not open_items and not unprojected(db, store_id)


def _at_klaviyo(klaviyo: SandboxAdmin) -> dict[str, Any]:
    state = klaviyo.state()
    profile = next((p for p in state["profiles"] if p["attributes"].get("email") == EMAIL), None)
    return {
        "profile": profile,
        "subscribed": profile is not None
        and state["subscriptions"].get(profile["id"], {}).get("email") == "SUBSCRIBED",
        "deletions": state["deletions"],
    }


def _at_ac(ac: AcAdmin, list_id: str) -> dict[str, Any]:
    state = ac.state()
    contact = next((c for c in state["contacts"] if c["email"] == EMAIL), None)
    on_list = {m["contact"]: m["status"] for m in state["contactLists"] if str(m["list"]) == str(list_id)}
    return {"contact": contact, "subscribed": contact is not None and on_list.get(contact["id"]) == AC_SUBSCRIBED}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_erased_person_is_gone_everywhere_and_stays_gone(
    launcher: Launcher,
    service_env: dict[str, str],
    redis_server: RedisServer,
    store: NewStore,
    db: Database,
    tmp_path: Path,
) -> None:
    queue = redis.Redis.from_url(redis_server.url)
    queue.flushdb()  # the Redis server is shared by the session: no job or limiter key of another test
    queue.close()
    env = {**service_env, "ESPBRIDGE_REDIS_URL": redis_server.url, "ESPBRIDGE_CREDENTIALS_KEY": new_key()}
    with running_sandbox(
        tmp_path, api_key=KLAVIYO_KEY, ac_api_token=AC_TOKEN, ac_actid=AC_ACTID, ac_event_key=AC_EVENT_KEY
    ) as sandbox:
        klaviyo, ac = SandboxAdmin(sandbox.url), AcAdmin(sandbox.url)
        try:
            list_id = create_list(sandbox.url, AC_TOKEN)
            esp_connect(env, store, "klaviyo", KLAVIYO_KEY, sandbox.url)
            connect_activecampaign(
                env, store, sandbox.url, token=AC_TOKEN, actid=AC_ACTID, event_key=AC_EVENT_KEY, list_id=list_id
            )
            server = launcher.serve(env)
            launcher.worker(env)

            # Given the person, subscribed at both sandboxes, with an order, events, a cart and a waitlist entry
            post_batch(server, store.write_key, _messages("first", with_history=True))
            wait_until(
                lambda: _at_klaviyo(klaviyo)["subscribed"] and _at_ac(ac, list_id)["subscribed"],
                timeout=TIMEOUT,
                what="the person subscribed at both sandboxes",
            )
            wait_until(lambda: _settled(db, store.id), timeout=TIMEOUT, what="every sync item settled")

            # When a compliance officer erases them (the CLI waits for both ESPs' outcomes)
            done = subprocess.run(
                [*CLI, "erase", "--email", EMAIL, "--store", str(store.id), "--wait", "60", "--json"],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)

            # Then both ESPs report done, and both sandboxes show the deletion
            assert report["status"] == "done", report
            assert {esp: r["status"] for esp, r in report["report"]["esps"].items()} == {
                "klaviyo": "done",
                "activecampaign": "done",
            }
            local = report["report"]["local"]
            assert local["orders"] == 1 and local["carts"] == 1 and local["waitlist_entries"] == 1
            assert local["events"] == 6 and local["suppressions"] == 2
            after = _at_klaviyo(klaviyo)
            assert after["profile"] is None and after["deletions"] and after["deletions"][-1]["profile_ids"]
            assert _at_ac(ac, list_id)["contact"] is None
            assert EMAIL not in done.stdout and "Ottilie" not in done.stdout

            # No table holds their email, phone or name in clear; the ledger still verifies
            assert personal_data_left(db, store.id, NEEDLES) == []
            assert audit.verify(db, store.id).ok

            # When they come back: a new Identify and a subscribed Consent Updated for the same email
            deletions = len(after["deletions"])
            post_batch(server, store.write_key, _messages("again", with_history=False))
            wait_until(lambda: _settled(db, store.id), timeout=TIMEOUT, what="the return to settle")
            time.sleep(2)  # a margin for anything (wrongly) still on its way to a sandbox

            # Then neither sandbox has them again, nor are they subscribed; locally they are suppressed
            again = _at_klaviyo(klaviyo)
            assert again["profile"] is None and len(again["deletions"]) == deletions
            assert _at_ac(ac, list_id)["contact"] is None
            with db.reader() as session:
                back = session.scalars(
                    sa.select(Contact).where(Contact.store_id == store.id, Contact.erased_at.is_(None))
                ).one()
                assert back.suppressed_at is not None
                theirs = session.scalars(
                    sa.select(SyncItem).where(
                        SyncItem.store_id == store.id,
                        SyncItem.kind.in_((SyncKind.PROFILE, SyncKind.CONSENT)),
                        sa.or_(SyncItem.subject_id == str(back.id), SyncItem.subject_id.like(f"{back.id}:%")),
                    )
                ).all()
            assert theirs and {(i.status, i.last_error) for i in theirs} == {(SyncItemStatus.SKIPPED, "suppressed")}
            assert audit.verify(db, store.id).ok
        finally:
            klaviyo.close()
            ac.close()
