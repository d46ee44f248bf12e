"""Polling Klaviyo for engagement: the fallback for accounts that cannot register system webhooks.

Klaviyo lets only some accounts manage system webhooks (ESP_NOTES 1.3: "Only CDP customers … app partners"), but
every private key with ``metrics:read`` and ``events:read`` can read events (ESP_NOTES 1.4, "Pull"):

1. ``GET /api/metrics?filter=equals(integration.name,"Klaviyo")`` → the ids of the metrics espbridge records
   (klaviyo_webhooks.METRIC_KINDS: "Received Email", "Opened Email", …);
2. per metric, ``GET /api/events?filter=equals(metric_id,"<id>"),greater-or-equal(datetime,<since>)&sort=datetime
   &include=profile&fields[profile]=email``, following ``page[cursor]`` (200 per page);
3. each page is recorded through the webhooks' path (connector.engagement.record, method ``esp_poll``), so an event
   both delivered by a webhook and polled is recorded once.

The cursor is the connection's ``engagement_cursor`` column (migration 0004). After a complete poll it moves to the
newest event time seen minus ``OVERLAP``: Klaviyo times events to the second and may list an event a little after
its time, so each poll reads the last minutes again and the events already recorded count as duplicates. An event
listed more than ``OVERLAP`` after its own time is missed by polling (a webhook would carry it). The first poll, or
``since=``, starts ``DEFAULT_LOOKBACK`` back. A poll cut short by ``max_pages`` resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa

from .. import engagement
from ..credentials import CredentialCipher
from ..engagement import EngagementReport
from ..store import Database, EspConnection
from ..store.base import utcnow
from . import connections
from .klaviyo import KlaviyoClient
from .klaviyo_webhooks import ESP, METRIC_KINDS, read_event

DEFAULT_LOOKBACK = dt.timedelta(days=1)
OVERLAP = dt.timedelta(minutes=10)
MAX_PAGES = 500  # per metric and poll (100,000 events at 200 a page); the next poll resumes


@dataclass
class PollResult:
    store_id: int
    since: dt.datetime  # where this poll started
    next_since: dt.datetime  # where the next one will
    complete: bool  # False when a metric had more pages than max_pages
    metrics: list[str] = field(default_factory=list)
    pages: int = 0
    fetched: int = 0  # events read from Klaviyo
    skipped: int = 0  # events that could not be read (no id or time)
    recorded: int = 0
    duplicates: int = 0
    consent_entries: int = 0
    unknown_people: int = 0
    linked: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"], data["next_since"] = self.since.isoformat(), self.next_since.isoformat()
        return data


def poll(
    db: Database,
    cipher: CredentialCipher,
    store_id: int,
    *,
    since: dt.datetime | None = None,
    overlap: dt.timedelta = OVERLAP,
    max_pages: int = MAX_PAGES,
    transport: httpx.BaseTransport | None = None,
) -> PollResult:
    """Fetch and record the store's Klaviyo engagement since its cursor (or ``since``); move the cursor.

    Raises:
        NotFound: the store is not connected to Klaviyo.
        CredentialsUnavailable: the connection's credentials cannot be decrypted.
        EspError: Klaviyo refused or failed (RateLimited, AuthFailed, Transient, Permanent); what was recorded
            before stays recorded, and the cursor is not moved.
    """
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    with db.reader() as session:
        connection = connections.load(session, cipher, store_id, ESP)
        stored = session.scalar(
            sa.select(EspConnection.engagement_cursor).where(
                EspConnection.store_id == store_id, EspConnection.esp == ESP
            )
        )
    start = since or stored or utcnow() - DEFAULT_LOOKBACK
    result = PollResult(store_id=store_id, since=start, next_since=start, complete=True)
    newest: dt.datetime | None = None
    resume: list[dt.datetime] = []  # where each metric cut short by max_pages stopped
    client = KlaviyoClient(connection.api_key.get_secret_value(), base_url=connection.base_url, transport=transport)
    with client:
        metrics = [m for m in client.get_metrics(integration_name="Klaviyo") if m.name in METRIC_KINDS]
        for metric in metrics:
            result.metrics.append(metric.name)
            cursor: str | None = None
            last: dt.datetime | None = None
            for _ in range(max_pages):
                page = client.get_events(metric.id, since=start, cursor=cursor)
                result.pages += 1
                result.fetched += len(page.events)
                reports: list[EngagementReport] = []
                for resource in page.events:
                    try:
                        report = read_event(resource, metric.name, profiles=page.profiles, source="poll")
                    except ValueError:
                        result.skipped += 1
                        continue
                    if report is not None:
                        reports.append(report)
                        last = max(last, report.occurred_at) if last else report.occurred_at
                with db.writer() as session:
                    _add(result, engagement.record(session, store_id, reports, method="esp_poll"))
                cursor = page.next_cursor
                if cursor is None:
                    break
            else:
                result.complete = False
                resume.append(last or start)
            if last is not None:
                newest = max(newest, last) if newest else last
    if resume:
        result.next_since = min(resume)
    elif newest is not None:
        result.next_since = max(start, newest - overlap)
    _save_cursor(db, store_id, result.next_since)
    return result


def _add(result: PollResult, recorded: engagement.Recorded) -> None:
    result.recorded += recorded.recorded
    result.duplicates += recorded.duplicates
    result.consent_entries += recorded.consent_entries
    result.unknown_people += recorded.unknown_people
    result.linked += recorded.linked


def _save_cursor(db: Database, store_id: int, next_since: dt.datetime) -> None:
    with db.writer() as session:  # nothing to update if it was disconnected while polling
        session.execute(
            sa.update(EspConnection)
            .where(EspConnection.store_id == store_id, EspConnection.esp == ESP)
            .values(engagement_cursor=next_since)
        )
