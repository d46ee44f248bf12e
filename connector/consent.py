"""Recording consent: a ledger row for every consent event (hash-chained, connector/ledger.py) and the state
it leads to."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session

from . import double_opt_in, ledger, outbox
from .double_opt_in import DoubleOptIn
from .errors import InvalidInput
from .store import Channel, ConsentLedgerEntry, ConsentState, ConsentStatus, Contact, Store

ACTION_FOR_STATUS = {
    ConsentStatus.SUBSCRIBED: "grant",
    ConsentStatus.UNSUBSCRIBED: "withdraw",
    ConsentStatus.PENDING: "pending",
}

Short = Annotated[str, StringConstraints(max_length=200)]


class ConsentProperties(BaseModel):
    """The properties of a "Consent Updated" event (DESIGN.md section 3)."""

    model_config = ConfigDict(extra="ignore")

    channel: Channel
    status: ConsentStatus
    purpose: Short | None = Field(None, validation_alias="list_id")
    source: Annotated[str, StringConstraints(max_length=2000)] | None = None
    method: Annotated[str, StringConstraints(max_length=32)] | None = None
    form_id: Short | None = None
    form_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    consent_text: Annotated[str, StringConstraints(max_length=20_000)] | None = None
    consent_text_version: Annotated[str, StringConstraints(max_length=64)] | None = None


def record(
    session: Session,
    store_id: int,
    contact: Contact,
    props: ConsentProperties,
    *,
    occurred_at: dt.datetime,
    context: dict[str, Any],
    evidence_ref: str,
    actor: str = "storefront",
    action: str | None = None,
    doi: DoubleOptIn | None = None,
) -> ConsentLedgerEntry:
    """Append the ledger row and move the state forward (never backward: an older event does not win).

    ``action`` names the consent event when the status alone does not (``bounce``, ``complaint``: an ESP webhook
    moving a person to unsubscribed); by default it follows the status (grant, withdraw, pending).

    A grant on a channel the store runs double opt-in for is recorded as ``pending`` and a confirmation is
    requested (``doi`` says how to make its link); only the confirmation itself (action ``confirm``) subscribes.
    """
    confirming = False
    if (
        props.status == ConsentStatus.SUBSCRIBED
        and action != "confirm"
        and _requires_confirmation(session, store_id, contact, props)
    ):
        if doi is None:
            # The caller cannot make the confirmation link: refuse rather than subscribe without a confirmation.
            raise InvalidInput(
                "status", f"store {store_id} requires double opt-in on {props.channel}: a grant must be confirmed"
            )
        props = props.model_copy(update={"status": ConsentStatus.PENDING})
        action, confirming = "pending", True
    entry = ConsentLedgerEntry(
        store_id=store_id,
        contact_id=contact.id,
        channel=props.channel,
        purpose=props.purpose,
        action=action or ACTION_FOR_STATUS[props.status],
        status_after=props.status,
        occurred_at=occurred_at,
        method=props.method or "api",
        source=props.source,
        form_id=props.form_id,
        form_version=props.form_version,
        consent_text_hash=hashlib.sha256(props.consent_text.encode()).hexdigest() if props.consent_text else None,
        consent_text_version=props.consent_text_version,
        actor=actor,
        evidence_ref=evidence_ref[:200],
    )
    ledger.append(session, entry, ip=_text(context.get("ip"), 64), user_agent=_text(context.get("userAgent"), 1000))
    if confirming and doi is not None:
        double_opt_in.request(session, doi, store_id, contact, entry)
    # Read here, not once at the top: ledger.append holds the store's ledger head lock from now on, so concurrent
    # records of one contact see each other's state row (read before the lock, both would insert it).
    state = session.scalar(
        sa.select(ConsentState).where(
            ConsentState.store_id == store_id,
            ConsentState.contact_id == contact.id,
            ConsentState.channel == props.channel,
        )
    )
    if state is None:
        session.add(
            ConsentState(
                store_id=store_id,
                contact_id=contact.id,
                channel=props.channel,
                status=props.status,
                occurred_at=occurred_at,
                ledger_entry_id=entry.id,
            )
        )
    elif occurred_at >= state.occurred_at:
        state.status, state.occurred_at, state.ledger_entry_id = props.status, occurred_at, entry.id
    else:
        return entry  # a late-arriving older event is evidence, but not the current state
    outbox.add(session, store_id, outbox.Topic.CONSENT_CHANGED, contact.id, {"channel": props.channel})
    return entry


def _requires_confirmation(session: Session, store_id: int, contact: Contact, props: ConsentProperties) -> bool:
    """True for a grant on a double opt-in channel from someone not subscribed on it already (a checkout box
    ticked again by a confirmed subscriber neither sends another confirmation nor sets them back to pending)."""
    channels = session.scalar(sa.select(Store.double_opt_in).where(Store.id == store_id)) or []
    if str(props.channel) not in channels:
        return False
    current = session.scalar(
        sa.select(ConsentState.status).where(
            ConsentState.store_id == store_id,
            ConsentState.contact_id == contact.id,
            ConsentState.channel == props.channel,
        )
    )
    return current != ConsentStatus.SUBSCRIBED


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None
