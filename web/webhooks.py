"""Inbound ESP webhooks: ``POST /webhooks/klaviyo/<store id>`` and ``POST /webhooks/activecampaign/<store id>/<token>``,
one URL per store.

The URL names the store by its id (as the CLI's ``--store`` does); what authenticates a delivery is its signature,
made with the secret stored (encrypted) on the store's Klaviyo connection, never the URL. Verification and reading
are in connector/esp/klaviyo_webhooks.py, recording in connector/engagement.py.

Answers: 200 ``{"success": true, "received", "recorded", "duplicates", "ignored", "skipped", "consent_entries",
"unknown_people"}`` once the engagement is committed (a redelivery answers 200 with ``duplicates``); 401 unsigned or
wrongly signed; 403 stale or for another webhook; 400 a signed body that is not a delivery; 404 a store without a
Klaviyo connection with a webhook secret; 413 a body over ``MAX_WEBHOOK_BYTES``; 503 when the credentials key is
missing (Klaviyo retries later).

ActiveCampaign signs nothing, so its URL carries the secret: ``<token>`` is the webhook secret stored (encrypted)
on the store's ActiveCampaign connection, compared in constant time. Reading is in
connector/esp/activecampaign_webhooks.py. Answers: 200 ``{"success": true, "received": 1, "ignored", "echo",
"recorded", "duplicates", "consent_entries", "unknown_people", "linked"}`` (``echo``: ``initiated_from=api``, our own
change, recorded as nothing); 404 for an unknown store, a store without an ActiveCampaign webhook secret and a wrong
token alike (which one is not told); 400 a malformed body (``field`` names the key); 415 a body that is not
form-encoded; 413 over ``MAX_AC_WEBHOOK_BYTES``; 503 when the credentials key is missing. Never 410: ActiveCampaign
deactivates a webhook answered with 410. ActiveCampaign never retries, so nothing here asks for a retry but 503.

The token is a credential in a URL path, so it must not reach a log line: ``TokenRedaction`` rewrites it in every
record of the loggers that may print a request's path (werkzeug's dev server, gunicorn's error and access logs, the
app's own), installed when this blueprint is registered; gunicorn's access log is off in ``espbridge serve`` anyway.
"""

from __future__ import annotations

import hmac
import logging
import re

from flask import Blueprint, Response, jsonify, request
from flask.blueprints import BlueprintSetupState
from pydantic import SecretStr
from werkzeug.exceptions import NotFound as HttpNotFound

from connector import engagement
from connector.credentials import CredentialCipher, CredentialsUnavailable
from connector.errors import NotFound
from connector.esp import activecampaign_webhooks as ac
from connector.esp import connections
from connector.esp.klaviyo_webhooks import ESP, WebhookRejected, verify
from connector.store import utcnow

from . import get_runtime
from .errors import error_response

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

#: A Klaviyo delivery batches events; bodies up to this size are read (the app's default limit is for ingestion).
MAX_WEBHOOK_BYTES = 10 * 1024 * 1024
#: An ActiveCampaign delivery is one event (with the contact's custom fields): far below this.
MAX_AC_WEBHOOK_BYTES = 256 * 1024

#: A token in an ActiveCampaign webhook path, as any log line would show it (a path, a URL, a request line).
TOKEN_IN_PATH = re.compile(r"(/webhooks/activecampaign/[^/\s]*/)[^\s/?#\"']+")
REDACTED = "[redacted]"
#: The loggers that may print a request's path: werkzeug's dev server (request lines), gunicorn ("Error handling
#: request <uri>", the access log if someone turns it on), httpx (the sandbox delivering webhooks logs each URL),
#: Flask's app logger ("Exception on <path>"), and ours (an error's traceback could quote a URL).
REDACTED_LOGGERS = ("werkzeug", "gunicorn.error", "gunicorn.access", "httpx", "web", "web.errors", __name__)
_MARK = "/webhooks/activecampaign/"


class TokenRedaction(logging.Filter):
    """Replaces the token of an ActiveCampaign webhook path in a log record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: the handler reports that, not us
            return True
        if _MARK in message:
            record.msg, record.args = _redact(message), None
        if record.exc_info and not record.exc_text:
            # formatted here, once (formatters reuse ``exc_text``), so that it can be redacted
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and _MARK in record.exc_text:
            record.exc_text = _redact(record.exc_text)
        return True


def _redact(text: str) -> str:
    return TOKEN_IN_PATH.sub(rf"\1{REDACTED}", text)


def install_token_redaction(app_logger: logging.Logger | None = None) -> None:
    """Add ``TokenRedaction`` to the loggers that may print a path (once each), and to the app's logger."""
    loggers = [logging.getLogger(name) for name in REDACTED_LOGGERS]
    if app_logger is not None:
        loggers.append(app_logger)
    for logger in loggers:
        if not any(isinstance(f, TokenRedaction) for f in logger.filters):
            logger.addFilter(TokenRedaction())


@bp.record_once
def _on_register(state: BlueprintSetupState) -> None:
    install_token_redaction(state.app.logger)


def _webhook_secret(store_id: int, esp: str) -> SecretStr | None:
    """The secret of the store's connection to ``esp``; None without a connection or a secret."""
    runtime = get_runtime()
    try:
        with runtime.db.reader() as session:
            cipher = CredentialCipher(runtime.settings.credentials_key)
            return connections.load(session, cipher, store_id, esp).webhook_secret
    except NotFound:
        return None


def _secret_unreadable(store_id: int, name: str, exc: CredentialsUnavailable, hint: str = "") -> Response:
    log.error("store %s: %s webhook secret unreadable: %s", store_id, name, exc)
    response = error_response(503, f"the webhook secret cannot be read right now{hint}")
    response.headers["Retry-After"] = "60"
    return response


@bp.post("/klaviyo/<int:store_id>")
def klaviyo(store_id: int) -> Response:
    """Receive a Klaviyo system webhook delivery for store ``store_id``."""
    request.max_content_length = MAX_WEBHOOK_BYTES
    runtime = get_runtime()
    try:
        secret = _webhook_secret(store_id, ESP)
    except CredentialsUnavailable as exc:
        return _secret_unreadable(store_id, "Klaviyo", exc, "; retry later")
    if secret is None:
        return error_response(404, f"store {store_id} has no Klaviyo webhook endpoint (no webhook secret is set)")
    body = request.get_data(cache=False)
    try:
        delivery = verify(dict(request.headers.items()), body, secret.get_secret_value(), now=utcnow())
    except WebhookRejected as exc:
        log.warning("store %s: Klaviyo webhook refused (%s): %s", store_id, exc.status, exc.message)
        response = error_response(exc.status, exc.message)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Klaviyo-Signature realm="espbridge-webhooks"'
        return response
    for reason in delivery.skipped:
        log.warning("store %s: Klaviyo webhook %s: event skipped: %s", store_id, delivery.webhook_id, reason)
    with runtime.db.writer() as session:
        recorded = engagement.record(session, store_id, delivery.reports, method="esp_webhook")
    return jsonify(
        {
            "success": True,
            "received": delivery.received,
            "ignored": delivery.ignored,
            "skipped": len(delivery.skipped),
            **recorded.as_dict(),
        }
    )


@bp.post("/activecampaign/<int:store_id>/<token>")
def activecampaign(store_id: int, token: str) -> Response:
    """Receive an ActiveCampaign webhook delivery (one event, form-encoded) for store ``store_id``."""
    request.max_content_length = MAX_AC_WEBHOOK_BYTES
    runtime = get_runtime()
    try:
        secret = _webhook_secret(store_id, ac.ESP)
    except CredentialsUnavailable as exc:
        return _secret_unreadable(store_id, "ActiveCampaign", exc)
    # One answer for every way of not matching, so the URL space tells nothing about stores or connections.
    if secret is None or not hmac.compare_digest(token.encode(), secret.get_secret_value().encode()):
        return error_response(404, HttpNotFound.description)
    if request.mimetype not in ("", "application/x-www-form-urlencoded"):
        return error_response(415, "an ActiveCampaign delivery is application/x-www-form-urlencoded")
    try:
        delivery = ac.read_delivery(ac.parse_form(request.get_data(cache=False)))
    except ac.FormError as exc:
        log.warning("store %s: ActiveCampaign webhook refused: %s", store_id, exc)
        return error_response(400, str(exc), field=exc.field)
    recorded = engagement.Recorded()
    if delivery.report is not None:
        with runtime.db.writer() as session:
            recorded = engagement.record(session, store_id, [delivery.report], method="esp_webhook")
    return jsonify(
        {
            "success": True,
            "received": 1,
            "ignored": int(delivery.ignored),
            "echo": int(delivery.echo),
            **recorded.as_dict(),
        }
    )
