"""A store connected to both sandboxes at once (Klaviyo and ActiveCampaign, in process), for the consent tests.

One httpx WSGI transport serves both: requests go to the sandbox their host names.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx

from connector.credentials import CredentialCipher
from connector.double_opt_in import DoubleOptIn
from connector.esp import connections
from connector.ingest.projection import project_pending
from connector.jobs.broker import EmbeddedBroker
from connector.jobs.relay import enqueue_due
from connector.jobs.tasks import Jobs
from connector.sandbox.activecampaign import DEFAULT_ACTID, DEFAULT_API_TOKEN, DEFAULT_EVENT_KEY, ActiveCampaignSandbox
from connector.sandbox.klaviyo import DEFAULT_API_KEY, KlaviyoSandbox
from connector.settings import Settings
from connector.store import Database
from connector.sync import queue
from connector.sync.adapters import AdapterOptions

KLAVIYO_URL = "http://klaviyo.sandbox"
AC_URL = "http://ac.sandbox"
SCALE = 100


@dataclasses.dataclass
class Esps:
    klaviyo: KlaviyoSandbox
    ac: ActiveCampaignSandbox
    email_list: str
    sms_list: str
    jobs: Jobs
    settings: Settings
    db: Database

    def drain(self, store_id: int) -> None:
        """Project (with the double opt-in settings, as the worker does), fan out, send every due item."""
        doi = DoubleOptIn.from_settings(self.settings)
        while project_pending(self.db, store_id, doi=doi):
            pass
        enqueue_due(self.db, self.jobs._deliver_outbox)
        queue.claim_due(self.db, self.jobs._sync_items)
        queue.claim_due(self.db, self.jobs._sync_items)  # items a first send made (e.g. after a profile)

    def klaviyo_consent(self, email: str) -> dict[str, str]:
        """The channels Klaviyo holds a consent for, for the profile with this email."""
        state = self.klaviyo.state()
        ids = [p["id"] for p in state["profiles"] if p["attributes"].get("email") == email]
        return dict(state["subscriptions"].get(ids[0], {})) if ids else {}

    def ac_status(self, email: str, list_id: str) -> str | None:
        """The contact's status on an ActiveCampaign list ("1" subscribed, "2" unsubscribed), None if not on it."""
        contact = self.ac.contact_by_email(email)
        if contact is None:
            return None
        membership = self.ac.memberships.get((contact["id"], list_id))
        return None if membership is None else str(membership["status"])


@contextlib.contextmanager
def connected(db: Database, settings: Settings, store_id: int) -> Iterator[Esps]:
    klaviyo, ac = KlaviyoSandbox(), ActiveCampaignSandbox(time_scale=SCALE)
    with ac._lock:  # the account's lists, made as the account's owner would
        email_list, sms_list = ac._next_id("list"), ac._next_id("list")
        ac.lists[email_list] = {"id": email_list, "name": "Newsletter", "stringid": "newsletter", "channel": "email"}
        ac.lists[sms_list] = {"id": sms_list, "name": "Texts", "stringid": "texts", "channel": "sms"}
    cipher = CredentialCipher(settings.credentials_key)
    with db.writer() as session:
        connections.connect(session, cipher, store_id, "klaviyo", api_key=DEFAULT_API_KEY, base_url=KLAVIYO_URL)
        connections.connect(
            session,
            cipher,
            store_id,
            "activecampaign",
            api_key=DEFAULT_API_TOKEN,
            base_url=AC_URL,
            settings={
                "list_id": int(email_list),
                "sms_list_id": int(sms_list),
                "actid": int(DEFAULT_ACTID),
                "track_url": f"{AC_URL}/event",
                "rate_limit_scale": SCALE,
            },
            secrets={"event_key": DEFAULT_EVENT_KEY},
        )

    def by_host(environ: dict[str, Any], start_response: Any) -> Any:
        app = klaviyo if environ.get("HTTP_HOST", "").startswith("klaviyo") else ac
        return app(environ, start_response)

    options = AdapterOptions(transport=httpx.WSGITransport(app=by_host), job_timeout=5)
    broker = EmbeddedBroker()
    try:
        yield Esps(klaviyo, ac, email_list, sms_list, Jobs(settings, db, broker, options), settings, db)
    finally:
        broker.close()
