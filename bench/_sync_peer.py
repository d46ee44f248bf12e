"""The sync benchmark's peer: Klaviyo's official Python SDK (``klaviyo-api``) in a straightforward loop.

Run in its own process by bench/sync_klaviyo.py. It reads the first ``--contacts`` contacts and the first
``--events`` track events of the store from PostgreSQL (before its clock starts), then, timed:

* profiles: one ``Profiles.bulk_import_profiles`` job per 10,000 profiles, each followed by
  ``get_bulk_import_profiles_job`` polls until the job is complete (as our sync does, to learn rejections);
* events: one ``Events.bulk_create_events`` request per 1,000 events, grouped per profile as the API wants.

The bodies carry what espbridge's default mapping sends (email, external_id, names, locale, timezone,
properties; events with metric name, time, value, currency, unique_id = messageId, backfill). No rate limiter:
the SDK's own retry (``KlaviyoAPI(max_retries=3, max_delay=60)``, its defaults: exponential backoff with jitter,
429/503/504/524 retried, ``Retry-After`` waited out) handles the 429s. A request that still fails is counted and
the loop goes on. Prints one JSON object on stdout.

    python bench/_sync_peer.py --database-url postgresql://… --store-id 1 --base-url http://127.0.0.1:P \
        --api-key pk_… --contacts 10000 --events 300000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg

PROFILES_PER_JOB = 10_000
EVENTS_PER_REQUEST = 1_000
MAX_POLLS = 10_000  # per job; bounded
POLL_INTERVAL = 0.1


def profile_resource(row: tuple[Any, ...]) -> dict[str, Any]:
    email, external_id, first, last, timezone, locale, properties = row
    attrs: dict[str, Any] = {"email": email, "external_id": external_id}
    if first:
        attrs["first_name"] = first
    if last:
        attrs["last_name"] = last
    if locale:
        attrs["locale"] = locale
    if timezone:
        attrs["location"] = {"timezone": timezone}
    if properties:
        attrs["properties"] = properties
    return {"type": "profile", "attributes": attrs}


def event_attributes(row: tuple[Any, ...]) -> dict[str, Any]:
    _, _, name, message_id, timestamp, payload = row
    props = dict(payload.get("properties") or {})
    attrs: dict[str, Any] = {
        "properties": props,
        "metric": {"data": {"type": "metric", "attributes": {"name": name}}},
        "time": timestamp.isoformat(),
        "unique_id": message_id,
        "backfill": True,
    }
    value = props.get("revenue")
    if isinstance(value, int | float) and not isinstance(value, bool):
        attrs["value"] = float(value)
        if isinstance(props.get("currency"), str):
            attrs["value_currency"] = props["currency"]
    return attrs


def events_body(rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        email, external_id = row[0], row[1]
        groups.setdefault((email, external_id), []).append({"type": "event", "attributes": event_attributes(row)})
    entries = [
        {
            "type": "event-bulk-create",
            "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": e, "external_id": x}}},
                "events": {"data": events},
            },
        }
        for (e, x), events in groups.items()
    ]
    return {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": entries}}}}


def read_store(database_url: str, store_id: int, contacts: int, events: int) -> tuple[list[Any], list[Any]]:
    with psycopg.connect(database_url) as conn:
        profiles = conn.execute(
            "SELECT email, external_id, first_name, last_name, timezone, locale, properties FROM contacts "
            "WHERE store_id = %s AND merged_into_id IS NULL ORDER BY id LIMIT %s",
            (store_id, contacts),
        ).fetchall()
        tracked = conn.execute(
            "SELECT c.email, c.external_id, e.name, e.message_id, e.timestamp, e.payload FROM events e "
            "JOIN contacts c ON c.id = e.contact_id WHERE e.store_id = %s AND e.type = 'track' ORDER BY e.id LIMIT %s",
            (store_id, events),
        ).fetchall()
    return profiles, tracked


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--store-id", type=int, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--contacts", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args(argv)
    if not args.base_url.startswith("http://127.0.0.1:"):
        raise SystemExit("the peer only talks to a sandbox on 127.0.0.1")

    from klaviyo_api import KlaviyoAPI
    from openapi_client.exceptions import ApiException

    profiles, tracked = read_store(args.database_url, args.store_id, args.contacts, args.events)
    klaviyo = KlaviyoAPI(args.api_key, test_host=args.base_url)  # the SDK's default retry settings
    failures: list[str] = []
    result: dict[str, Any] = {
        "sdk": "klaviyo-api",
        "max_retries": klaviyo.max_retries,
        "max_delay": klaviyo.max_delay,
        "profiles": len(profiles),
        "events": len(tracked),
    }

    started = time.monotonic()
    jobs = polls = 0
    for offset in range(0, len(profiles), PROFILES_PER_JOB):
        chunk = [profile_resource(row) for row in profiles[offset : offset + PROFILES_PER_JOB]]
        body = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": chunk}}}}
        try:
            job = klaviyo.Profiles.bulk_import_profiles(body)
            jobs += 1
            for _ in range(MAX_POLLS):
                status = klaviyo.Profiles.get_bulk_import_profiles_job(job.data.id)
                polls += 1
                if status.data.attributes.status in ("complete", "cancelled"):
                    break
                time.sleep(POLL_INTERVAL)
        except ApiException as exc:
            failures.append(f"bulk_import_profiles at {offset}: {exc.status} {exc.reason}")
    profiles_done = time.monotonic()

    event_requests = 0
    for offset in range(0, len(tracked), EVENTS_PER_REQUEST):
        try:
            klaviyo.Events.bulk_create_events(events_body(tracked[offset : offset + EVENTS_PER_REQUEST]))
            event_requests += 1
        except ApiException as exc:
            failures.append(f"bulk_create_events at {offset}: {exc.status} {exc.reason}")
    finished = time.monotonic()

    result.update(
        {
            "profile_jobs": jobs,
            "job_polls": polls,
            "event_requests": event_requests,
            "seconds_profiles": profiles_done - started,
            "seconds_events": finished - profiles_done,
            "seconds": finished - started,
            "failed_requests": len(failures),
            "failures": failures[:20],
        }
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
