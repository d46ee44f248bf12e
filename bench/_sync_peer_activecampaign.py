"""The ActiveCampaign sync benchmark's peers, run in their own process by bench/sync_activecampaign.py.

Each reads the store's first ``--contacts`` contacts and their email consent from PostgreSQL before its clock
starts, then sends what espbridge's default mapping sends (email, first and last name; the email consent as list
status: subscribed → 1, withdrawn or bounced → 2, on ``--list-id``), timed, and prints one JSON object.

``--method contact_sync``: the community package ``activecampaign-python`` (1.0.10; requests without a Session,
no timeout, no retry; a 429 comes back as the dict ``{"message": "Too Many Requests"}`` with the status and
``Retry-After`` lost, ESP_NOTES.md §4.2) in a plain loop: per contact ``contacts.create_or_update_contact``
(``POST /contact/sync``), then, when it has an email consent, ``contacts.update_list_status_for_a_contact``
(``POST /contactLists``) with the id the first call returned. Paced by sleeping: each call starts at least
1 s / (5·S) after the previous one started (5/s at the time scale S). A call answered "Too Many Requests" is
sent again after sleeping one account window (1 s / S), at most ``MAX_ATTEMPTS`` times in all; then the contact
counts as lost.

``--method bulk_import``: ActiveCampaign has no Python client with the bulk importer, so a minimal loop on
httpx (one ``httpx.Client``, keep-alive): ``POST /import/bulk_import`` with 250 contacts (their consent as
``subscribe`` / ``unsubscribe`` list ids), each started at least 60 s / (100·S) after the previous one (the
documented 100 multi-contact imports per minute, evenly spread), each followed by ``GET /import/info?batchId=``
until the batch is ``completed`` (one poll per 1 s / S). A 429 is waited out for its ``Retry-After`` seconds
as sent, then the request is sent again (at most ``MAX_ATTEMPTS`` times in all).

    python bench/_sync_peer_activecampaign.py --method contact_sync --database-url postgresql://… --store-id 2 \\
        --base-url http://127.0.0.1:P --api-token T --list-id 1 --contacts 2000 --time-scale 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

IMPORT_CONTACTS = 250
MAX_ATTEMPTS = 5
MAX_POLLS = 1_000  # per batch; bounded
THROTTLED = {"message": "Too Many Requests"}


def read_store(database_url: str, store_id: int, contacts: int) -> list[tuple[Any, ...]]:
    """(email, first name, last name, phone, email consent status, its ledger action) of the first contacts."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT c.email, c.first_name, c.last_name, c.phone, s.status, l.action FROM contacts c "
            "LEFT JOIN consent_state s ON s.contact_id = c.id AND s.channel = 'email' "
            "LEFT JOIN consent_ledger l ON l.id = s.ledger_entry_id "
            "WHERE c.store_id = %s AND c.merged_into_id IS NULL AND c.email IS NOT NULL ORDER BY c.id LIMIT %s",
            (store_id, contacts),
        ).fetchall()


def list_status(row: tuple[Any, ...]) -> int | None:
    """1 subscribe, 2 unsubscribe (withdrawn, bounced: AC v3 has no suppression), None: nothing to send."""
    status, action = row[4], row[5]
    if action in ("bounce", "complaint") or status == "unsubscribed":
        return 2
    return 1 if status == "subscribed" else None


class Pacer:
    """Start-to-start spacing of at least ``interval`` seconds, by sleeping."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = time.monotonic()

    def wait(self) -> None:
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + self.interval


def contact_sync(args: argparse.Namespace, rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    from activecampaign.client import Client

    ac = Client(args.base_url, args.api_token)
    pacer = Pacer(1.0 / (5 * args.time_scale))
    counts = {"requests": 0, "throttled": 0, "lost": 0, "contacts": 0, "list_statuses": 0}

    def call(send: Callable[[], Any]) -> Any:
        for _ in range(MAX_ATTEMPTS):
            pacer.wait()
            counts["requests"] += 1
            result = send()
            if result != THROTTLED:
                return result
            counts["throttled"] += 1
            time.sleep(1.0 / args.time_scale)
        return None

    started = time.monotonic()
    for row in rows:
        body = {"contact": {"email": row[0], "firstName": row[1], "lastName": row[2]}}
        if row[3]:
            body["contact"]["phone"] = row[3]
        synced = call(lambda body=body: ac.contacts.create_or_update_contact(body))
        contact_id = synced.get("contact", {}).get("id") if isinstance(synced, dict) else None
        if contact_id is None:
            counts["lost"] += 1
            continue
        counts["contacts"] += 1
        status = list_status(row)
        if status is None:
            continue
        membership = {"contactList": {"list": args.list_id, "contact": contact_id, "status": status}}
        done = call(lambda membership=membership: ac.contacts.update_list_status_for_a_contact(membership))
        if isinstance(done, dict) and "contactList" in done:
            counts["list_statuses"] += 1
        else:
            counts["lost"] += 1
    return {**counts, "seconds": time.monotonic() - started}


def bulk_import(args: argparse.Namespace, rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    import httpx

    items = []
    for row in rows:
        item: dict[str, Any] = {"email": row[0], "first_name": row[1], "last_name": row[2]}
        if row[3]:
            item["phone"] = row[3]
        status = list_status(row)
        if status is not None:
            item["subscribe" if status == 1 else "unsubscribe"] = [{"listid": args.list_id}]
        items.append(item)
    counts = {"requests": 0, "throttled": 0, "imports": 0, "polls": 0, "failed": 0, "imported": 0, "refused": 0}
    pacer = Pacer(60.0 / (100 * args.time_scale))
    headers = {"Api-Token": args.api_token, "Accept": "application/json"}

    with httpx.Client(base_url=f"{args.base_url}/api/3", headers=headers, timeout=30.0) as client:

        def send(method: str, path: str, **kwargs: Any) -> httpx.Response | None:
            for _ in range(MAX_ATTEMPTS):
                counts["requests"] += 1
                response = client.request(method, path, **kwargs)
                if response.status_code != 429:
                    return response
                counts["throttled"] += 1
                time.sleep(float(response.headers.get("Retry-After", "1")))
            return None

        started = time.monotonic()
        for offset in range(0, len(items), IMPORT_CONTACTS):
            pacer.wait()
            response = send("POST", "/import/bulk_import", json={"contacts": items[offset : offset + IMPORT_CONTACTS]})
            if response is None or response.status_code != 200:
                counts["failed"] += 1
                continue
            counts["imports"] += 1
            batch = response.json()["batchId"]
            for _ in range(MAX_POLLS):
                info = send("GET", "/import/info", params={"batchId": batch})
                counts["polls"] += 1
                if info is not None and info.status_code == 200 and info.json().get("status") == "completed":
                    body = info.json()
                    counts["imported"] += len(body.get("success") or [])
                    counts["refused"] += len(body.get("failure") or [])
                    break
                time.sleep(1.0 / args.time_scale)
    return {**counts, "seconds": time.monotonic() - started}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=("contact_sync", "bulk_import"), required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--store-id", type=int, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-token", required=True)
    parser.add_argument("--list-id", required=True)
    parser.add_argument("--contacts", type=int, required=True)
    parser.add_argument("--time-scale", type=float, required=True)
    args = parser.parse_args(argv)
    if not args.base_url.startswith("http://127.0.0.1:"):
        raise SystemExit("the peer only talks to a sandbox on 127.0.0.1")
    rows = read_store(args.database_url, args.store_id, args.contacts)
    run = contact_sync if args.method == "contact_sync" else bulk_import
    result = {"method": args.method, "contacts_read": len(rows), "time_scale": args.time_scale, **run(args, rows)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
