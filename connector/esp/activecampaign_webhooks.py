"""ActiveCampaign webhooks: reading a form-encoded delivery, and mapping it to engagement reports.

What this follows, and where it comes from (../shared/specs/ESP_NOTES.md section 2.5;
specs/activecampaign/asyncapi/activecampaign-webhooks-asyncapi.yml, a third-party curation of
https://developers.activecampaign.com/page/webhooks):

- One event per HTTP POST, ``application/x-www-form-urlencoded``, with PHP-style bracketed keys (``contact[email]``,
  ``campaign[message][id]``, ``list[][id]``). Envelope: ``type``, ``date_time`` (ISO 8601), ``initiated_from``
  (public, admin, api, system), ``initiated_by``, ``list``.
- No signature: the endpoint URL carries an unguessable per-store token instead (web/webhooks.py checks it).
- At-least-once delivery, no event id: ``delivery_key`` derives a stable one from the fields that identify the
  occurrence, so a redelivery is recognised by connector/engagement.py's unique (store, ESP, event id).
- ``initiated_from=api``: the change was made through the API, by us (the sync engine) as far as espbridge can tell;
  it is acknowledged and recorded as nothing, so our own writes are not echoed back into the ledger.

Mapping (``read_delivery``): ``open`` → opened, ``click`` → clicked (``link[url]`` kept), ``bounce`` → bounced (a
ledger ``bounce`` entry only when ``bounce[type]`` names a hard bounce), ``unsubscribe`` → unsubscribed on email
(ledger ``withdraw``; the list ids kept in the engagement details), ``sms_unsub`` → unsubscribed on sms (ledger
``withdraw`` on channel sms). Every other type is accepted and ignored.

Registering (``register_webhook``): ``POST <base_url>/api/3/webhooks`` with ``EVENTS`` and ``SOURCES`` (a small
direct call; the API client may take it over).

Assumption (not in the spec, which gives ``bounce[type]`` as a bare string): AC writes ``hard`` or ``soft`` there,
as its bounce logs do. Only a value naming a hard/permanent bounce counts as hard; anything else, or no value,
records engagement only (a wrongly assumed hard bounce would unsubscribe someone).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import httpx

from ..engagement import EngagementReport
from ..errors import EspbridgeError
from ..store import Channel, EngagementKind
from .errors import AuthFailed, Permanent, Transient

ESP = "activecampaign"

#: The webhook events espbridge registers for and records.
EVENTS: tuple[str, ...] = ("open", "click", "bounce", "unsubscribe", "sms_unsub")
#: Sources to register: every one but ``api`` (our own calls), as ActiveCampaign advises against sync loops.
SOURCES: tuple[str, ...] = ("public", "admin", "system")

KINDS: dict[str, tuple[EngagementKind, Channel]] = {
    "open": (EngagementKind.OPENED, Channel.EMAIL),
    "click": (EngagementKind.CLICKED, Channel.EMAIL),
    "bounce": (EngagementKind.BOUNCED, Channel.EMAIL),
    "unsubscribe": (EngagementKind.UNSUBSCRIBED, Channel.EMAIL),
    "sms_unsub": (EngagementKind.UNSUBSCRIBED, Channel.SMS),
}

# Bounds on what a delivery may hold. One event with a contact's custom fields stays far below them; anything past
# them is not a delivery, and reading it must stay cheap.
MAX_FIELDS = 1000
MAX_DEPTH = 8  # bracket segments in one key (``campaign[message][id]`` has 2)
MAX_KEY_LENGTH = 512
MAX_VALUE_LENGTH = 64 * 1024

#: Values kept in ``engagement.details``: references to the message and list, never the person's data.
_KEPT = {
    "campaign[id]": "campaign_id",
    "campaign[message][id]": "message_id",
    "link[id]": "link_id",
    "link[url]": "url",
    "bounce[type]": "bounce_type_raw",
    "bounce[code]": "bounce_code",
    "form[id]": "form_id",
    "sms[id]": "sms_id",
    "initiated_from": "initiated_from",
}
#: The fields that identify an occurrence (the delivery key's input); custom fields, tags, names may change between
#: two deliveries of one event and are left out.
_IDENTIFYING = (
    "type",
    "date_time",
    "contact[id]",
    "list",
    "campaign[id]",
    "campaign[message][id]",
    "link[id]",
    "link[url]",
    "bounce[type]",
    "bounce[code]",
    "sms[id]",
    "form[id]",
)

Node = str | list["Node"] | dict[str, "Node"]

_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class FormError(EspbridgeError):
    """A body that is not a well-formed ActiveCampaign delivery; ``field`` names the offending key (or ``body``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Form:
    """A parsed form body: ``fields`` by exact key as sent, and ``tree`` nested by brackets.

    A name sent both as a value and as a container keeps both: the spec's unsubscribe has ``list=<id>`` next to
    ``list[][id]=<id>``; ``fields["list"]`` is the value, ``tree["list"]`` the container.
    """

    fields: dict[str, str]
    tree: dict[str, Node]

    def get(self, key: str) -> str | None:
        """The stripped, non-empty value of ``key`` (exact, e.g. ``contact[email]``), or None."""
        value = (self.fields.get(key) or "").strip()
        return value or None


def parse_form(body: bytes) -> Form:
    """Parse a form-encoded body with PHP-style bracketed keys, strictly and within the bounds above.

    ``a[b][c]=1`` nests dicts, ``a[]=1&a[]=2`` appends to a list (``a[][id]=1`` appends a dict, as PHP does).

    Raises:
        FormError: not UTF-8, an empty or ``=``-less pair, a bad percent escape, a malformed key, too many
            fields, too deep, a key given twice, or a key used both as a list and as a map.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("body", "not UTF-8 text") from None
    fields: dict[str, str] = {}
    tree: dict[str, Node] = {}
    if not text.strip():
        return Form(fields, tree)
    pairs = text.split("&")
    if len(pairs) > MAX_FIELDS:
        raise FormError("body", f"more than {MAX_FIELDS} fields")
    for index, pair in enumerate(pairs):
        raw_key, sep, raw_value = pair.partition("=")
        if not sep:
            raise FormError("body", f"field {index + 1} is not key=value: {pair[:60]!r}")
        if _BAD_ESCAPE.search(pair):
            raise FormError(_shown(raw_key), "bad percent escape")
        try:
            key = unquote_plus(raw_key, errors="strict")
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise FormError(_shown(raw_key), "percent escapes are not UTF-8") from None
        if len(key) > MAX_KEY_LENGTH:
            raise FormError(_shown(key), f"key longer than {MAX_KEY_LENGTH} characters")
        if len(value) > MAX_VALUE_LENGTH:
            raise FormError(key, f"value longer than {MAX_VALUE_LENGTH} characters")
        name, segments = _split_key(key)
        if "" not in segments:
            if key in fields:
                raise FormError(key, "given twice")
            fields[key] = value
        if segments:
            _insert(tree, key, name, segments, value)
        elif name not in tree:
            tree[name] = value
    return Form(fields, tree)


def _split_key(key: str) -> tuple[str, list[str]]:
    match = _KEY.fullmatch(key)
    if match is None:
        raise FormError(key or "body", "malformed key (unbalanced or misplaced brackets, or no name)")
    segments = _SEGMENT.findall(match.group(2))
    if len(segments) > MAX_DEPTH:
        raise FormError(key, f"nested deeper than {MAX_DEPTH} levels")
    return match.group(1), segments


def _insert(tree: dict[str, Node], key: str, name: str, segments: list[str], value: str) -> None:
    """Put ``value`` at ``name[segments…]`` of ``tree``. Where a plain value and a container share a place, the
    container stays in the tree (the value stays in ``Form.fields``)."""
    container: dict[str, Node] | list[Node] = tree
    slot: str | None = name
    for segment in segments:
        wanted: dict[str, Node] | list[Node] = [] if segment == "" else {}
        child = container.get(slot) if isinstance(container, dict) and slot is not None else None
        if child is None or isinstance(child, str):
            child = wanted
            _put(container, slot, child)
        elif type(child) is not type(wanted):
            raise FormError(key, "used both as a list (``[]``) and as a map")
        container, slot = child, (None if segment == "" else segment)
    if isinstance(container, list) or slot not in container:
        _put(container, slot, value)


def _put(container: dict[str, Node] | list[Node], slot: str | None, value: Node) -> None:
    if isinstance(container, dict):
        assert slot is not None
        container[slot] = value
    else:
        container.append(value)


def _shown(key: str) -> str:
    return key[:80]


@dataclass(frozen=True)
class Delivery:
    """What one delivery reports: at most one engagement report, or why there is none."""

    type: str
    report: EngagementReport | None
    echo: bool  # ``initiated_from=api``: our own change, recorded as nothing
    ignored: bool  # a type espbridge does not record


def read_delivery(form: Form) -> Delivery:
    """Map a parsed delivery to an engagement report (None for echoes and for types espbridge does not record).

    Raises:
        FormError: no ``type``; for a recorded type, no usable ``date_time`` or no ``contact[id]``/``contact[email]``.
    """
    event_type = form.get("type")
    if event_type is None:
        raise FormError("type", "required")
    if (form.get("initiated_from") or "").lower() == "api":
        return Delivery(event_type, None, echo=True, ignored=False)
    mapped = KINDS.get(event_type)
    if mapped is None:
        return Delivery(event_type, None, echo=False, ignored=True)
    kind, channel = mapped
    occurred_at = parse_time(form.get("date_time"))
    if occurred_at is None:
        raise FormError("date_time", f"required, an ISO 8601 time (got {(form.get('date_time') or '')[:60]!r})")
    contact_id, email = form.get("contact[id]"), form.get("contact[email]")
    if contact_id is None and email is None:
        raise FormError("contact[email]", "required (or contact[id]) for a recorded event")
    details: dict[str, Any] = {"source": "webhook", "type": event_type}
    if contact_id is not None:
        details["contact_id"] = contact_id[:200]
    for key, name in _KEPT.items():
        value = form.get(key)
        if value is not None:
            details[name] = value[:2000]
    lists = list_ids(form)
    if lists:
        details["lists"] = lists
    bounce_type = bounce_kind(form.get("bounce[type]")) if kind is EngagementKind.BOUNCED else None
    if bounce_type is not None:
        details["bounce_type"] = bounce_type
    return Delivery(
        event_type,
        EngagementReport(
            esp=ESP,
            esp_event_id=delivery_key(form),
            kind=kind,
            occurred_at=occurred_at,
            remote_profile_id=contact_id,
            email=email,
            hard_bounce=bounce_type == "hard",
            details=details,
            channel=channel,
        ),
        echo=False,
        ignored=False,
    )


def delivery_key(form: Form) -> str:
    """A stable id for the occurrence a delivery reports: ``<type>:<sha256 of its identifying fields>``.

    ActiveCampaign sends no event id. The key covers what tells two occurrences apart (type, time, contact, list,
    campaign, message, link, bounce, SMS, form), not the whole body: a redelivery may carry changed custom fields or
    tags. The contact is its id, or else its email in lower case. Two events of one type for one contact and
    campaign in the same second (``date_time`` has whole seconds) count as one.
    """
    canonical: dict[str, Any] = {key: form.get(key) or "" for key in _IDENTIFYING}
    if not canonical["contact[id]"]:
        canonical["contact[email]"] = (form.get("contact[email]") or "").lower()
    canonical["lists"] = sorted(list_ids(form))
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
    return f"{(form.get('type') or '')[:32]}:{digest}"


def list_ids(form: Form) -> list[str]:
    """The list ids a delivery names: ``list`` (0 means account-level, no list) and each ``list[][id]``."""
    found: list[str] = []
    scoped = form.get("list")
    if scoped is not None and scoped != "0":
        found.append(scoped[:64])
    lists = form.tree.get("list")
    for item in lists if isinstance(lists, list) else ():
        value = item.get("id") if isinstance(item, dict) else None
        if isinstance(value, str) and value.strip() and value.strip()[:64] not in found:
            found.append(value.strip()[:64])
    return found[:50]


def bounce_kind(value: str | None) -> str | None:
    """``bounce[type]`` as "hard", "soft" or None (unknown, never treated as hard)."""
    lowered = (value or "").lower()
    if "hard" in lowered or "permanent" in lowered:
        return "hard"
    if "soft" in lowered or "transient" in lowered or "temporary" in lowered:
        return "soft"
    return None


def parse_time(value: str | None) -> dt.datetime | None:
    """``date_time``: ISO 8601 (``2026-04-13T22:16:46-05:00``; also with a space). Without an offset: UTC (an
    assumption: AC documents the field as ISO 8601 and shows offsets)."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


#: Characters a token may have: it is a URL path segment (``secrets.token_urlsafe`` makes these).
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")
REGISTER_TIMEOUT = 10.0


def webhook_url(endpoint: str, token: str) -> str:
    """The URL to register: the store's endpoint (``https://<host>/webhooks/activecampaign/<store id>``) + token."""
    if not TOKEN.fullmatch(token):
        raise ValueError("the webhook secret is no URL-safe token (16 to 256 of A-Z a-z 0-9 _ -)")
    return f"{endpoint.rstrip('/')}/{token}"


def masked(url: str, token: str) -> str:
    """``url`` with ``token`` shown as its first 4 characters and an ellipsis (for printing)."""
    return url.replace(token, token[:4] + "…")


def register_webhook(
    base_url: str,
    api_key: str,
    url: str,
    *,
    name: str,
    timeout: float = REGISTER_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> str:
    """Create the webhook at ActiveCampaign; returns its id.

    Raises:
        AuthFailed: 401/403. Transient: 5xx, 429, timeouts, network errors. Permanent: any other refusal, or an
            answer without a webhook id. Messages never carry the URL (it holds the token) or the API key.
    """
    document = {"webhook": {"name": name, "url": url, "events": list(EVENTS), "sources": list(SOURCES)}}
    where = "POST /api/3/webhooks"
    try:
        with httpx.Client(base_url=base_url, timeout=timeout, transport=transport) as client:
            response = client.post("/api/3/webhooks", json=document, headers={"Api-Token": api_key})
    except httpx.HTTPError as exc:
        raise Transient(f"{where}: {type(exc).__name__}") from None
    status = response.status_code
    detail = response.text[:300].replace(url, "<url>")
    if status in (401, 403):
        raise AuthFailed(f"{where}: {status} {detail}", status=status)
    if status >= 500 or status == 429:
        raise Transient(f"{where}: {status} {detail}", status=status)
    if status >= 300:
        raise Permanent(f"{where}: {status} {detail}", status=status)
    try:
        webhook_id = response.json()["webhook"]["id"]
    except (ValueError, KeyError, TypeError):
        raise Permanent(f"{where}: {status} without a webhook id", status=status) from None
    if not isinstance(webhook_id, str | int) or isinstance(webhook_id, bool):
        raise Permanent(f"{where}: {status} without a webhook id", status=status)
    return str(webhook_id)
