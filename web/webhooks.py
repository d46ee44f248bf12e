"""Inbound ESP webhooks: ``POST /webhooks/klaviyo/<store id>``, one URL per store.

The URL names the store by its id (as the CLI's ``--store`` does); what authenticates a delivery is its signature,
made with the secret stored (encrypted) on the store's Klaviyo connection, never the URL. Verification and reading
are in connector/esp/klaviyo_webhooks.py, recording in connector/engagement.py.

Answers: 200 ``{"success": true, "received", "recorded", "duplicates", "ignored", "skipped", "consent_entries",
"unknown_people"}`` once the engagement is committed (a redelivery answers 200 with ``duplicates``); 401 unsigned or
wrongly signed; 403 stale or for another webhook; 400 a signed body that is not a delivery; 404 a store without a
Klaviyo connection with a webhook secret; 413 a body over ``MAX_WEBHOOK_BYTES``; 503 when the credentials key is
missing (Klaviyo retries later).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from connector import engagement
from connector.credentials import CredentialCipher, CredentialsUnavailable
from connector.errors import NotFound
from connector.esp import connections
from connector.esp.klaviyo_webhooks import ESP, WebhookRejected, verify
from connector.store import utcnow

from . import get_runtime
from .errors import error_response

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

#: A Klaviyo delivery batches events; bodies up to this size are read (the app's default limit is for ingestion).
MAX_WEBHOOK_BYTES = 10 * 1024 * 1024


@bp.post("/klaviyo/<int:store_id>")
def klaviyo(store_id: int) -> Response:
    """Receive a Klaviyo system webhook delivery for store ``store_id``."""
    request.max_content_length = MAX_WEBHOOK_BYTES
    runtime = get_runtime()
    try:
        cipher = CredentialCipher(runtime.settings.credentials_key)
        with runtime.db.reader() as session:
            secret = connections.load(session, cipher, store_id, ESP).webhook_secret
    except NotFound:
        secret = None
    except CredentialsUnavailable as exc:
        log.error("store %s: Klaviyo webhook secret unreadable: %s", store_id, exc)
        response = error_response(503, "the webhook secret cannot be read right now; retry later")
        response.headers["Retry-After"] = "60"
        return response
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
