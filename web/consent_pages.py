"""Pages a person reaches from a message: double opt-in confirmation and the signed unsubscribe link.

``GET /consent/confirm/<token>`` and ``GET /consent/unsubscribe/<store>/<contact>/<channel>/<signature>`` only show
a page with a button; the ``POST`` of that button records the consent event. A GET never changes anything:
mail scanners and link previewers fetch every link in a message, and must neither confirm nor unsubscribe anyone.

Confirm answers: 200 confirmed (or already confirmed, with no second ledger row); 404 an unknown token; 410 an
expired one; 409 a grant withdrawn since it was requested. Unsubscribe answers 200, or 404 for a signature that
does not match (the same for an unknown store, contact or channel: which one is not told).
"""

from __future__ import annotations

from flask import Blueprint, Response, request
from markupsafe import escape
from sqlalchemy.orm import Session

from connector import confirmations, consent, preferences
from connector.credentials import CredentialCipher
from connector.store import Channel, ConsentStatus, Contact, utcnow

from . import get_runtime

bp = Blueprint("consent_pages", __name__, url_prefix="/consent")

_CONFIRM_STATUS = {
    confirmations.Outcome.CONFIRMED: (200, "Thank you: your subscription is confirmed."),
    confirmations.Outcome.ALREADY: (200, "Your subscription was already confirmed."),
    confirmations.Outcome.UNKNOWN: (404, "This confirmation link is not valid."),
    confirmations.Outcome.EXPIRED: (410, "This confirmation link has expired; please sign up again."),
    confirmations.Outcome.SUPERSEDED: (409, "You unsubscribed after this request, so it can no longer be confirmed."),
}


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> Response:
    with get_runtime().db.reader() as session:
        found = confirmations.find(session, token)
        outcome = confirmations.state_of(found)
        if outcome is not None:  # nothing left to confirm: say why now rather than after the click
            return _page(*_CONFIRM_STATUS[outcome])
        assert found is not None
        channel = found.channel
    return _page(200, f"Please confirm your {channel} subscription.", button="Confirm")


@bp.post("/confirm/<token>")
def confirm(token: str) -> Response:
    with get_runtime().db.writer() as session:
        result = confirmations.confirm(
            session, token, ip=request.remote_addr, user_agent=request.headers.get("User-Agent")
        )
    status, message = _CONFIRM_STATUS[result.outcome]
    return _page(status, message)


@bp.get("/unsubscribe/<int:store_id>/<int:contact_id>/<channel>/<signature>")
def unsubscribe_page(store_id: int, contact_id: int, channel: str, signature: str) -> Response:
    with get_runtime().db.reader() as session:
        if _contact(session, store_id, contact_id, channel, signature) is None:
            return _page(404, "This link is not valid.")
    return _page(200, f"Unsubscribe from {channel} messages?", button="Unsubscribe")


@bp.post("/unsubscribe/<int:store_id>/<int:contact_id>/<channel>/<signature>")
def unsubscribe(store_id: int, contact_id: int, channel: str, signature: str) -> Response:
    with get_runtime().db.writer() as session:
        contact = _contact(session, store_id, contact_id, channel, signature)
        if contact is None:
            return _page(404, "This link is not valid.")
        consent.record(
            session,
            store_id,
            contact,
            consent.ConsentProperties(
                channel=Channel(channel), status=ConsentStatus.UNSUBSCRIBED, method="preference_center"
            ),
            occurred_at=utcnow(),
            context={"ip": request.remote_addr, "userAgent": request.headers.get("User-Agent")},
            evidence_ref=f"preference_link:{contact_id}:{channel}",
            actor="contact",
        )
    return _page(200, f"You are unsubscribed from {channel} messages.")


def _contact(session: Session, store_id: int, contact_id: int, channel: str, signature: str) -> Contact | None:
    if channel not in set(Channel):
        return None
    contact = session.get(Contact, contact_id)
    if contact is None or contact.store_id != store_id:
        return None
    cipher = CredentialCipher(get_runtime().settings.credentials_key)
    return contact if preferences.verify(session, cipher, store_id, contact_id, channel, signature) else None


def _page(status: int, message: str, *, button: str | None = None) -> Response:
    form = f'<form method="post"><button type="submit">{escape(button)}</button></form>' if button else ""
    body = (
        '<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">'
        f"<title>Subscription</title></head><body><p>{escape(message)}</p>{form}</body></html>"
    )
    return Response(body, status=status, mimetype="text/html")
