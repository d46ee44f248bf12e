"""Recording engagement reported by ESPs (webhooks or polling): once per ESP event, with the consent it implies.

Each ``EngagementReport`` (connector/esp/klaviyo_webhooks.py reads Klaviyo's, activecampaign_webhooks.py
ActiveCampaign's) becomes one ``engagement`` row, unique per (store, ESP, ESP event id): ESPs deliver at least once,
so a redelivery, a poll overlapping a webhook or two deliveries racing each other record nothing new. The same
transaction appends the consent ledger entry that three kinds of engagement imply for the report's channel (email;
sms for an SMS unsubscribe), and moves the consent state (connector.consent.record, which also writes the outbox row
that tells the other ESPs):

- unsubscribed → action ``withdraw``;
- a hard bounce → action ``bounce`` (a soft bounce or a bounce of unknown type records engagement only);
- marked as spam → action ``complaint``;

each with status after ``unsubscribed``, method ``esp_webhook`` or ``esp_poll``, actor = the ESP and evidence_ref =
the ESP's event id. Because the ledger entry is written only together with a new engagement row, each ESP event
yields at most one ledger entry however often it is delivered.

The person: first the contact the ESP's profile id is linked to (esp_links, filled when profiles are synced), then
the contact holding the reported email identity, in the same store. A report about someone espbridge does not know
is still recorded, with ``contact_id`` NULL and the ESP's profile id in ``details`` (no email is stored there); it
writes no ledger entry, since the ledger is per contact. When the same event is reported again with a person
espbridge can resolve (a poll's included profile email, an esp_links row made since), the row is attached to that
contact and its ledger entry written then: still at most one per event.

Segments filter on opens and clicks (``engagement.*_within_days``): a row of those kinds recorded for a contact, or
attached to one later, writes an ``engagement.recorded`` outbox row for the contact in the same transaction, so the
incremental segment path re-evaluates the contact after commit (a crash loses nothing). Pending rows coalesce per
contact; the topic is never sent back to an ESP (connector.sync.queue.fan_out has no sync kind for it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import consent, outbox
from .identity import normalise_email, survivor
from .store import Channel, ConsentStatus, Contact, Engagement, EngagementKind, EspLink, Identity, IdentityKind

#: The kinds segment criteria read (``engagement.<kind>_within_days``, connector/segments/criteria.py): only they
#: re-evaluate segments. Sends and deliveries, most of a campaign's reports, move no segment.
SEGMENT_KINDS = frozenset({EngagementKind.OPENED, EngagementKind.CLICKED})


@dataclass(frozen=True)
class EngagementReport:
    """One engagement event as an ESP reported it (connector/esp/klaviyo_webhooks.py reads Klaviyo's), for ``record``.

    ``remote_profile_id`` is the ESP's id of the person (matched through esp_links); ``email`` is used when that
    does not resolve. ``hard_bounce`` is True only for a bounce the ESP calls hard. ``channel``: where it happened
    (the engagement row's channel and the channel of the consent it implies).
    """

    esp: str
    esp_event_id: str
    kind: EngagementKind
    occurred_at: dt.datetime
    remote_profile_id: str | None = None
    email: str | None = None
    hard_bounce: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)
    channel: Channel = Channel.EMAIL


@dataclass
class Recorded:
    """What one ``record`` call did."""

    recorded: int = 0  # new engagement rows
    duplicates: int = 0  # reports of ESP events already recorded
    consent_entries: int = 0  # ledger entries appended
    unknown_people: int = 0  # new rows whose person espbridge does not know (contact_id NULL)
    linked: int = 0  # duplicates that attached an earlier row of an unknown person to a contact

    def as_dict(self) -> dict[str, int]:
        return {
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "consent_entries": self.consent_entries,
            "unknown_people": self.unknown_people,
            "linked": self.linked,
        }


def consent_action(report: EngagementReport) -> str | None:
    """The ledger action a report implies (``withdraw``, ``bounce``, ``complaint``), or None."""
    if report.kind is EngagementKind.UNSUBSCRIBED:
        return "withdraw"
    if report.kind is EngagementKind.MARKED_SPAM:
        return "complaint"
    if report.kind is EngagementKind.BOUNCED and report.hard_bounce:
        return "bounce"
    return None


def record(session: Session, store_id: int, reports: Iterable[EngagementReport], *, method: str) -> Recorded:
    """Record ``reports`` for ``store_id`` in the caller's transaction (a writer session).

    ``method`` is the ledger's method for the consent entries: ``esp_webhook`` or ``esp_poll``.
    """
    result = Recorded()
    for report in reports:
        action = consent_action(report)
        known = session.execute(
            sa.select(Engagement.id, Engagement.contact_id).where(
                Engagement.store_id == store_id,
                Engagement.esp == report.esp,
                Engagement.esp_event_id == report.esp_event_id,
            )
        ).first()
        if known is not None:
            result.duplicates += 1
            if known.contact_id is None and (contact := _contact(session, store_id, report)) is not None:
                linked, ledger = _link(session, store_id, known.id, contact, report, action, method)
                result.linked += linked
                result.consent_entries += ledger
            continue
        contact = _contact(session, store_id, report)
        try:
            # One savepoint per report: a concurrent delivery of the same event (PostgreSQL) fails this insert
            # on the unique constraint, and only this report is rolled back, ledger entry included.
            with session.begin_nested():
                session.add(
                    Engagement(
                        store_id=store_id,
                        esp=report.esp,
                        esp_event_id=report.esp_event_id,
                        kind=report.kind,
                        contact_id=contact.id if contact else None,
                        channel=report.channel,
                        occurred_at=report.occurred_at,
                        details=dict(report.details),
                    )
                )
                session.flush()
                if contact is not None:
                    _segments_changed(session, store_id, contact.id, report)
                if action is not None and contact is not None:
                    _ledger(session, store_id, contact, report, action, method)
        except IntegrityError:
            result.duplicates += 1
            continue
        result.recorded += 1
        result.consent_entries += action is not None and contact is not None
        result.unknown_people += contact is None
    return result


def _link(
    session: Session,
    store_id: int,
    engagement_id: int,
    contact: Contact,
    report: EngagementReport,
    action: str | None,
    method: str,
) -> tuple[bool, bool]:
    """A recorded event whose person was unknown, reported again with a person espbridge now knows (a poll's
    included profile, a link made since): attach it, and write the ledger entry it implies now.

    Returns (attached, ledger entry written)."""
    linked = session.scalar(
        sa.update(Engagement)
        .where(Engagement.id == engagement_id, Engagement.store_id == store_id, Engagement.contact_id.is_(None))
        .values(contact_id=contact.id)
        .returning(Engagement.id)
    )
    if linked is None:
        return False, False  # a concurrent report attached it first
    _segments_changed(session, store_id, contact.id, report)
    if action is not None:
        _ledger(session, store_id, contact, report, action, method)
    return True, action is not None


def _segments_changed(session: Session, store_id: int, contact_id: int, report: EngagementReport) -> None:
    if report.kind in SEGMENT_KINDS:
        outbox.add(session, store_id, outbox.Topic.ENGAGEMENT_RECORDED, contact_id)


def _ledger(
    session: Session, store_id: int, contact: Contact, report: EngagementReport, action: str, method: str
) -> None:
    consent.record(
        session,
        store_id,
        contact,
        consent.ConsentProperties(
            channel=report.channel, status=ConsentStatus.UNSUBSCRIBED, method=method, source=report.esp
        ),
        occurred_at=report.occurred_at,
        context={},
        evidence_ref=report.esp_event_id,
        actor=report.esp,
        action=action,
    )


def _contact(session: Session, store_id: int, report: EngagementReport) -> Contact | None:
    """The live contact the report is about, within ``store_id``: by the ESP's profile id, then by email."""
    contact_id: int | None = None
    if report.remote_profile_id:
        contact_id = session.scalar(
            sa.select(EspLink.contact_id)
            .where(
                EspLink.store_id == store_id,
                EspLink.esp == report.esp,
                EspLink.remote_id == report.remote_profile_id,
            )
            .order_by(EspLink.id.desc())
            .limit(1)
        )
    email = normalise_email(report.email)
    if contact_id is None and email is not None:
        contact_id = session.scalar(
            sa.select(Identity.contact_id).where(
                Identity.store_id == store_id, Identity.kind == IdentityKind.EMAIL, Identity.value == email
            )
        )
    contact = session.get(Contact, contact_id) if contact_id is not None else None
    contact = survivor(session, contact) if contact is not None else None
    return contact if contact is not None and contact.store_id == store_id else None
