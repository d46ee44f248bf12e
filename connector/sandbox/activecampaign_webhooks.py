"""The ActiveCampaign sandbox's webhook deliveries: AC-style form-encoded POSTs to the registered webhooks.

THIS IS A SANDBOX, NOT ACTIVECAMPAIGN. ``ActiveCampaignSandbox`` (activecampaign.py) owns one ``WebhookEmitter``.

A delivery is what https://developers.activecampaign.com/page/webhooks and the AsyncAPI file of the mirror
(``activecampaign-webhooks-asyncapi.yml``) describe: ``POST <url>`` with ``Content-Type:
application/x-www-form-urlencoded`` and PHP-style bracketed keys: ``type``, ``date_time`` (ISO 8601),
``initiated_from`` (public|admin|api|system), ``initiated_by``, ``list`` (list id, ``0`` when none), the contact
block (``contact[id]``, ``contact[email]``, ``contact[first_name]``, ``contact[last_name]``, ``contact[phone]``,
``contact[tags]`` comma-separated, ``contact[fields][<perstag, lower case>]``), then per type: ``campaign[id]``,
``campaign[name]``, ``campaign[message][id]``, ``campaign[message][subject]`` when a campaign is named;
``link[id]``/``link[url]`` (click); ``bounce[type]``/``bounce[code]``/``bounce[description]`` (bounce);
``unsubscribe[reason]`` and ``list[][id]`` (unsubscribe). No signature: AC signs nothing.

Who receives it: every ACTIVE webhook whose ``events`` include the type, whose ``sources`` include
``initiated_from``, and whose ``listid`` is 0 or the event's list. Never retried (AC never retries); an answer 410
deactivates the webhook (``state`` "inactive"). Imports fire none.

Sources of events:
- ``POST /_sandbox/activecampaign/engagement`` (admin, no auth) ``{"type", "email", "initiated_from"?: "public",
  "initiated_by"?, "list"?, "campaign_id"?, "campaign_name"?, "message_id"?, "message_subject"?, "link_url"?,
  "bounce_type"?: "hard"|"soft", "reason"?, "background"?: false}``; applies what AC applies (``unsubscribe``: the
  list's membership, or every subscribed one when no list is given, becomes status 2; a hard ``bounce``: status 3
  on every subscribed list) and delivers; answers 201 after the deliveries, or 202 at once with ``background``.
  An unknown email is a 404 (engagement needs a contact).
- API-caused changes: ``POST /api/3/contactLists`` status 2 → ``unsubscribe``, 1 → ``subscribe``, both
  ``initiated_from=api``, delivered on a thread after the API request is answered (as AC delivers asynchronously).
- ``GET /_sandbox/activecampaign/webhook-deliveries[?type=…&webhook_id=…]``: every delivery (exact body and the
  answer's status, or the transport error).
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.wrappers import Request, Response

from .activecampaign import _json, _now

if TYPE_CHECKING:
    from .activecampaign import ActiveCampaignSandbox

__all__ = ["EngagementRequest", "WebhookEmitter", "form_fields"]

Source = Literal["public", "admin", "api", "system"]
EngagementType = Literal[
    "open",
    "click",
    "bounce",
    "unsubscribe",
    "subscribe",
    "sms_unsub",
    "sms_reply",
    "sms_sent",
    "forward",
    "reply",
    "share",
    "sent",
    "update",
]


class EngagementRequest(BaseModel):
    """The body of ``POST /_sandbox/activecampaign/engagement``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EngagementType
    email: str = Field(min_length=3, max_length=320)
    initiated_from: Source = "public"
    initiated_by: str | None = None
    list: str | None = Field(None, description="The list id the event concerns (unsubscribe: that list only).")
    campaign_id: str | None = None
    campaign_name: str | None = None
    message_id: str | None = None
    message_subject: str | None = None
    link_url: str | None = Field(None, description="click: the clicked URL.")
    bounce_type: Literal["hard", "soft"] | None = None
    reason: str | None = Field(None, description="unsubscribe: the reason given.")
    background: bool = Field(False, description="Deliver on a thread and answer 202 at once.")


def form_fields(
    sandbox: ActiveCampaignSandbox,
    event_type: str,
    contact: dict[str, Any],
    *,
    source: str,
    initiated_by: str | None = None,
    list_id: str | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """The ordered form pairs of one delivery (call under the sandbox's lock: it reads tags and field values)."""
    cid = contact["id"]
    tag_names = [
        sandbox.tags[ct["tag"]]["tag"]
        for ct in sandbox.contact_tags.values()
        if ct["contact"] == cid and ct["tag"] in sandbox.tags
    ]
    pairs = [
        ("type", event_type),
        ("date_time", datetime.now(UTC).isoformat(timespec="seconds")),
        ("initiated_from", source),
        ("initiated_by", initiated_by or source),
        ("list", list_id or "0"),
        ("contact[id]", cid),
        ("contact[email]", contact["email"]),
        ("contact[first_name]", contact.get("firstName") or ""),
        ("contact[last_name]", contact.get("lastName") or ""),
        ("contact[phone]", contact.get("phone") or ""),
        ("contact[tags]", ", ".join(tag_names)),
    ]
    for fv in sandbox.field_values.values():
        fld = sandbox.fields.get(fv["field"])
        if fv["contact"] == cid and fld is not None:
            pairs.append((f"contact[fields][{fld['perstag'].lower()}]", fv["value"]))
    return pairs + list(extra or [])


class WebhookEmitter:
    """Deliveries of one ``ActiveCampaignSandbox`` (its webhooks and delivery log, under its lock).

    ``transport``: an httpx transport for the deliveries (tests may pass one); ``timeout`` per delivery.
    """

    def __init__(
        self, sandbox: ActiveCampaignSandbox, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.sandbox = sandbox
        self.timeout = timeout
        self.transport = transport
        self._queued: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []

    # ---- building deliveries (under the sandbox's lock) ---------------------------------------------------------

    def _deliveries(
        self, event_type: str, source: str, list_id: str | None, pairs: list[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        out = []
        for hook in self.sandbox.webhooks.values():
            if hook["state"] != "active" or event_type not in hook["events"] or source not in hook["sources"]:
                continue
            if hook["listid"] not in ("0", "", None) and hook["listid"] != (list_id or "0"):
                continue
            delivery = {
                "id": str(uuid.uuid4()),
                "webhook_id": hook["id"],
                "url": hook["url"],
                "type": event_type,
                "initiated_from": source,
                "list": list_id or "0",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                "body": urlencode(pairs),
                "fields": _fields(pairs),
                "time": _now(),
                "status": None,
                "error": None,
            }
            self.sandbox.webhook_deliveries.append(delivery)
            out.append(delivery)
        return out

    def queue(self, event_type: str, contact: dict[str, Any], *, source: str, list_id: str | None = None) -> None:
        """Queue the deliveries of an API-caused event (under the lock); ``flush`` sends them on a thread."""
        pairs = form_fields(self.sandbox, event_type, contact, source=source, list_id=list_id)
        self._queued.extend(self._deliveries(event_type, source, list_id, pairs))

    def flush(self) -> None:
        """Send the queued deliveries on a thread (called once the API request is answered, outside the lock)."""
        with self.sandbox._lock:
            queued, self._queued = self._queued, []
        if queued:
            self._spawn(queued)

    def _spawn(self, deliveries: list[dict[str, Any]]) -> None:
        thread = threading.Thread(target=self._deliver_all, args=(deliveries,), daemon=True)
        with self.sandbox._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the background deliveries (tests)."""
        with self.sandbox._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    # ---- sending (outside the lock) -----------------------------------------------------------------------------

    def _deliver_all(self, deliveries: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=self.timeout, transport=self.transport) as http:
            for delivery in deliveries:
                self._deliver(http, delivery)

    def _deliver(self, http: httpx.Client, delivery: dict[str, Any]) -> None:
        """One attempt, never retried; 410 deactivates the webhook."""
        try:
            answer = http.post(delivery["url"], content=delivery["body"], headers=delivery["headers"])
        except httpx.HTTPError as exc:
            with self.sandbox._lock:
                delivery["error"] = f"{type(exc).__name__}: {exc}"
            return
        with self.sandbox._lock:
            delivery["status"] = answer.status_code
            if answer.status_code == 410:
                hook = self.sandbox.webhooks.get(delivery["webhook_id"])
                if hook is not None:
                    hook["state"] = "inactive"

    # ---- admin endpoints ----------------------------------------------------------------------------------------

    def record(self, request: Request) -> Response:
        """``POST /_sandbox/activecampaign/engagement``: apply the event and deliver it."""
        try:
            asked = EngagementRequest.model_validate_json(request.get_data() or b"{}")
        except ValidationError as exc:
            return Response(exc.json(), status=400, content_type="application/json")
        sandbox = self.sandbox
        with sandbox._lock:
            contact = sandbox.contact_by_email(asked.email)
            if contact is None:
                return _json({"error": f"no contact with email {asked.email!r}"}, 404)
            if asked.list is not None and asked.list not in sandbox.lists:
                return _json({"error": f"no list {asked.list!r}"}, 404)
            changed = self._apply(contact["id"], asked)
            pairs = form_fields(
                sandbox,
                asked.type,
                contact,
                source=asked.initiated_from,
                initiated_by=asked.initiated_by,
                list_id=asked.list,
                extra=_extra(asked, changed),
            )
            deliveries = self._deliveries(asked.type, asked.initiated_from, asked.list, pairs)
        if asked.background:
            self._spawn(deliveries)
            status = 202
        else:
            self._deliver_all(deliveries)
            status = 201
        with sandbox._lock:
            summary = [_summary(d) for d in deliveries]
        return _json({"type": asked.type, "contact": contact["id"], "lists": changed, "deliveries": summary}, status)

    def _apply(self, contact_id: str, asked: EngagementRequest) -> list[str]:
        """What AC applies for the event; the list ids whose membership changed."""
        sandbox = self.sandbox
        subscribed = [lid for (cid, lid), m in sandbox.memberships.items() if cid == contact_id and m["status"] == "1"]
        if asked.type == "unsubscribe":
            lists = [asked.list] if asked.list is not None else subscribed
            for lid in lists:
                membership, _ = sandbox.set_list_status(contact_id, lid, 2)
                if asked.reason:
                    membership["unsubreason"] = asked.reason
            return lists
        if asked.type == "subscribe" and asked.list is not None:
            sandbox.set_list_status(contact_id, asked.list, 1)
            return [asked.list]
        if asked.type == "bounce" and asked.bounce_type == "hard":
            for lid in subscribed:
                sandbox.set_list_status(contact_id, lid, 3)
            return subscribed
        return []

    def deliveries(self, request: Request) -> Response:
        """``GET /_sandbox/activecampaign/webhook-deliveries``."""
        kind, hook = request.args.get("type"), request.args.get("webhook_id")
        with self.sandbox._lock:
            found = [
                dict(d)
                for d in self.sandbox.webhook_deliveries
                if (kind is None or d["type"] == kind) and (hook is None or d["webhook_id"] == hook)
            ]
        return Response(json.dumps({"deliveries": found}), content_type="application/json")


def _extra(asked: EngagementRequest, lists: list[str]) -> list[tuple[str, str]]:
    extra: list[tuple[str, str]] = []
    if asked.campaign_id is not None:
        extra += [("campaign[id]", asked.campaign_id), ("campaign[name]", asked.campaign_name or "")]
        extra += [
            ("campaign[message][id]", asked.message_id or ""),
            ("campaign[message][subject]", asked.message_subject or ""),
        ]
    if asked.type == "click":
        extra += [("link[id]", "1"), ("link[url]", asked.link_url or "")]
    if asked.type == "bounce":
        code = "5.1.1" if asked.bounce_type != "soft" else "4.2.2"
        extra += [("bounce[type]", asked.bounce_type or "hard"), ("bounce[code]", code)]
        extra += [("bounce[description]", "Sandbox bounce")]
    if asked.type == "unsubscribe":
        extra += [("unsubscribe[reason]", asked.reason or "")]
        extra += [("list[][id]", lid) for lid in lists]
    return extra


def _fields(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The pairs as a mapping (a repeated key, e.g. ``list[][id]``, maps to a list)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            out[key] = [*out[key], value] if isinstance(out[key], list) else [out[key], value]
        else:
            out[key] = value
    return out


def _summary(delivery: dict[str, Any]) -> dict[str, Any]:
    return {k: delivery[k] for k in ("id", "webhook_id", "url", "status", "error")}
