"""The ActiveCampaign part of the ESP sandbox process, for the sync e2e tests: its admin endpoints
(``/_sandbox/activecampaign/…``), the account set-up a store owner does in AC's UI, ``espbridge esp connect
activecampaign`` on the command line, and what the exactly-once checks read from the sandbox's state.

Also the sync-item probes the AC and dual-ESP tests share (per ESP: statuses, retries, dead letters by the CLI).
Only 127.0.0.1: every URL here is the sandbox's or espbridge's, both bound there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import httpx
import sqlalchemy as sa

from connector.store import Database, Event, OutboxRow, OutboxStatus, SyncItem, SyncItemStatus, SyncKind
from connector.tenancy import NewStore
from tests.conftest import unprojected

from .processes import REPO_ROOT, ServiceProcess

AC_PREFIX = "/_sandbox/activecampaign"
CLI = [sys.executable, "-m", "web.cli"]
#: ActiveCampaign list status of a contact (contactLists.status): 1 subscribed, 2 unsubscribed.
AC_SUBSCRIBED, AC_UNSUBSCRIBED = "1", "2"


class AcAdmin:
    """The AC part's admin endpoints (no Api-Token): state, captured requests, faults."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def close(self) -> None:
        self.http.close()

    def state(self) -> dict[str, Any]:
        response = self.http.get(f"{AC_PREFIX}/state")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        """Every captured request (oldest first); ``status`` is None while the request is being served."""
        params = {"operation": operation} if operation else None
        response = self.http.get(f"{AC_PREFIX}/requests", params=params)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["requests"]
        return result

    def set_faults(self, **faults: Any) -> None:
        """Replace the fault setting (no arguments: no faults)."""
        response = self.http.post(f"{AC_PREFIX}/faults", content=json.dumps(faults))
        assert response.status_code == 200, response.text

    def faults(self) -> dict[str, Any]:
        response = self.http.get(f"{AC_PREFIX}/faults")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def statuses(requests: list[dict[str, Any]]) -> Counter[int | None]:
    return Counter(entry["status"] for entry in requests)


def create_list(url: str, api_token: str, stringid: str = "espbridge-e2e") -> str:
    """What the store owner does in AC's UI before connecting: the list subscriptions go to. Returns its id."""
    body = {
        "list": {
            "name": "espbridge e2e",
            "stringid": stringid,
            "sender_url": "https://shop.example.com",
            "sender_reminder": "You signed up at shop.example.com.",
        }
    }
    response = httpx.post(f"{url}/api/3/lists", json=body, headers={"Api-Token": api_token}, timeout=10)
    assert response.status_code in (200, 201), response.text
    list_id: str = response.json()["list"]["id"]
    return list_id


def esp_connect(env: dict[str, str], store: NewStore, esp: str, api_key: str, base_url: str, *extra: str) -> None:
    """``espbridge esp connect ESP --api-key … --base-url … [extra] --store ID`` (the CLI, as an operator does)."""
    argv = [*CLI, "esp", "connect", esp, "--api-key", api_key, "--base-url", base_url, *extra, "--store", str(store.id)]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def connect_activecampaign(
    env: dict[str, str],
    store: NewStore,
    sandbox_url: str,
    *,
    token: str,
    actid: str,
    event_key: str,
    list_id: str,
    **settings: object,
) -> None:
    """``espbridge esp connect activecampaign`` to the sandbox process: the list, trackcmp's account id, key and
    URL, and any further ``--setting name=value``."""
    pairs = {"list_id": list_id, "actid": actid, "track_url": f"{sandbox_url}/event", **settings}
    extra = [arg for name, value in pairs.items() for arg in ("--setting", f"{name}={value}")]
    esp_connect(env, store, "activecampaign", token, sandbox_url, "--event-key", event_key, *extra)


def dead_letters(env: dict[str, str], store: NewStore, esp: str | None = None) -> dict[str, Any]:
    """``espbridge dead-letters list --json`` (``total`` and the newest ``dead_letters``)."""
    argv = [*CLI, "dead-letters", "list", "--json", "--store", str(store.id)]
    if esp is not None:
        argv += ["--esp", esp]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def post_batch(server: ServiceProcess, write_key: str, messages: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": messages}, auth=(write_key, ""), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": len(messages), "duplicates": 0}


# ---- sync items, per ESP -------------------------------------------------------------------------------------


def item_statuses(db: Database, store_id: int, esp: str | None = None) -> Counter[str]:
    query = sa.select(SyncItem.status, sa.func.count(SyncItem.id)).where(SyncItem.store_id == store_id)
    if esp is not None:
        query = query.where(SyncItem.esp == esp)
    with db.reader() as session:
        rows = session.execute(query.group_by(SyncItem.status)).all()
    return Counter({status: count for status, count in rows})


def ingested(db: Database, store_id: int, stored: int) -> bool:
    """Every acknowledged message is stored and projected and every outbox row fanned out into sync items."""
    with db.reader() as session:
        events = session.scalar(sa.select(sa.func.count(Event.id)).where(Event.store_id == store_id))
        outbox = session.scalar(
            sa.select(sa.func.count(OutboxRow.id)).where(
                OutboxRow.store_id == store_id, OutboxRow.status != OutboxStatus.DONE
            )
        )
    return events == stored and not outbox and not unprojected(db, store_id)


def settled(db: Database, store_id: int, stored: int, esp: str | None = None) -> Counter[str] | None:
    """The sync item counts (of ``esp``, or every ESP) once everything is ingested and every item is done.
    A dead item fails at once (with its last error): it would never settle."""
    counts = item_statuses(db, store_id, esp)
    if counts[SyncItemStatus.DEAD]:
        query = sa.select(SyncItem.esp, SyncItem.kind, SyncItem.last_error).where(
            SyncItem.store_id == store_id, SyncItem.status == SyncItemStatus.DEAD
        )
        with db.reader() as session:
            dead = session.execute(query).all()
        raise AssertionError(f"dead sync items: {[tuple(row) for row in dead]}")
    if not ingested(db, store_id, stored):
        return None
    return counts if counts and set(counts) == {SyncItemStatus.DONE} else None


def retried(db: Database, store_id: int, esp: str) -> int:
    """Sync items of ``esp`` that needed more than one attempt."""
    query = sa.select(sa.func.count(SyncItem.id)).where(
        SyncItem.store_id == store_id, SyncItem.esp == esp, SyncItem.attempts > 1
    )
    with db.reader() as session:
        return session.scalar(query) or 0


def pending_errors(db: Database, store_id: int, esp: str) -> list[tuple[str, int, str | None]]:
    """(kind, attempts, last_error) of every pending item of ``esp`` that has been tried."""
    query = sa.select(SyncItem.kind, SyncItem.attempts, SyncItem.last_error).where(
        SyncItem.store_id == store_id,
        SyncItem.esp == esp,
        SyncItem.status == SyncItemStatus.PENDING,
        SyncItem.attempts > 0,
    )
    with db.reader() as session:
        return [(kind, attempts, error) for kind, attempts, error in session.execute(query)]


def enqueued_events(db: Database, store_id: int, esp: str) -> set[str]:
    """messageIds of the event items of ``esp`` enqueued (handed to a worker, outcome not recorded)."""
    query = (
        sa.select(Event.message_id)
        .join(SyncItem, sa.cast(SyncItem.subject_id, sa.BigInteger) == Event.id)
        .where(
            SyncItem.store_id == store_id,
            SyncItem.esp == esp,
            SyncItem.kind == SyncKind.EVENT,
            SyncItem.status == SyncItemStatus.ENQUEUED,
        )
    )
    with db.reader() as session:
        return set(session.scalars(query))


# ---- what the AC sandbox holds -------------------------------------------------------------------------------


def contacts_by_email(state: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Contacts per email (lower case): more than one for an email would be a duplicate contact."""
    found: dict[str, list[dict[str, Any]]] = {}
    for contact in state["contacts"]:
        found.setdefault(contact["email"].lower(), []).append(contact)
    return found


def list_status(state: dict[str, Any], list_id: str) -> dict[str, str]:
    """contact id → status on ``list_id`` ("1" subscribed, "2" unsubscribed, "0" none)."""
    return {m["contact"]: m["status"] for m in state["contactLists"] if str(m["list"]) == str(list_id)}


def orders_by_externalid(state: dict[str, Any]) -> Counter[str]:
    """How many Deep Data orders the sandbox holds per ``externalid`` (our order_id)."""
    return Counter(o["externalid"] for o in state["ecomOrders"] if o.get("externalid") is not None)


def tracked_per_person(state: dict[str, Any]) -> Counter[tuple[str, str]]:
    """trackcmp events recorded per (email, event name)."""
    return Counter((e["email"].lower(), e["event"]) for e in state["trackedEvents"])
