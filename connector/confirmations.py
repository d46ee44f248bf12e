"""Confirming a double opt-in: the person's click on the link turns the pending grant into a subscription."""

from __future__ import annotations

import dataclasses
import enum

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import consent
from .store import ConsentConfirmation, ConsentLedgerEntry, ConsentState, ConsentStatus, Contact, utcnow
from .tenancy import digest


class Outcome(enum.StrEnum):
    CONFIRMED = "confirmed"
    ALREADY = "already confirmed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


@dataclasses.dataclass(frozen=True)
class Result:
    outcome: Outcome
    confirmation: ConsentConfirmation | None = None


def find(session: Session, token: str) -> ConsentConfirmation | None:
    return session.scalar(sa.select(ConsentConfirmation).where(ConsentConfirmation.token_hash == digest(token)))


def confirm(session: Session, token: str, *, ip: str | None, user_agent: str | None) -> Result:
    """Record the confirmation of ``token`` (in ``session``'s write transaction) unless it cannot count."""
    confirmation = session.scalar(
        sa.select(ConsentConfirmation).where(ConsentConfirmation.token_hash == digest(token)).with_for_update()
    )
    ended = state_of(confirmation)
    if ended is not None or confirmation is None:
        return Result(ended or Outcome.UNKNOWN, confirmation)
    now = utcnow()
    contact = session.get(Contact, confirmation.contact_id)
    if contact is None or contact.store_id != confirmation.store_id or _superseded(session, confirmation):
        return Result(Outcome.SUPERSEDED, confirmation)
    entry = consent.record(
        session,
        confirmation.store_id,
        contact,
        consent.ConsentProperties(
            channel=confirmation.channel,
            status=ConsentStatus.SUBSCRIBED,
            list_id=confirmation.purpose,
            method="double_opt_in",
        ),
        occurred_at=now,
        context={"ip": ip, "userAgent": user_agent},
        evidence_ref=f"confirmation:{confirmation.id}",
        actor="contact",
        action="confirm",
    )
    confirmation.confirmed_at = entry.recorded_at
    return Result(Outcome.CONFIRMED, confirmation)


def state_of(confirmation: ConsentConfirmation | None) -> Outcome | None:
    """Why ``confirmation`` can no longer be confirmed (unknown, already confirmed, expired), or None."""
    if confirmation is None:
        return Outcome.UNKNOWN
    if confirmation.confirmed_at is not None:
        return Outcome.ALREADY
    if confirmation.expires_at <= utcnow():  # UTC-aware: the column type (store/base.py) makes it so
        return Outcome.EXPIRED
    return None


def _superseded(session: Session, confirmation: ConsentConfirmation) -> bool:
    """True when the channel's state moved on from this pending grant to a withdrawal (the person said no since)."""
    state = session.scalar(
        sa.select(ConsentState).where(
            ConsentState.store_id == confirmation.store_id,
            ConsentState.contact_id == confirmation.contact_id,
            ConsentState.channel == confirmation.channel,
        )
    )
    if state is None or state.ledger_entry_id == confirmation.pending_entry_id:
        return False
    latest = session.get(ConsentLedgerEntry, state.ledger_entry_id)
    return latest is not None and latest.status_after == ConsentStatus.UNSUBSCRIBED
