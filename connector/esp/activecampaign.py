"""ActiveCampaign API v3: a thin typed client over httpx, with every failure mapped at the edge.

``ActiveCampaignClient`` sends; ``connector.esp.activecampaign_adapter`` decides what to send. The client never
retries or sleeps: the sync engine owns retries, and the shared rate limiter (``limiter``, called with the
operation name before every request, see ``OPERATIONS``) owns pacing. ActiveCampaign's limit is ONE budget of
5 requests/s for the whole account (ESP_NOTES.md §2.1), so every ``/api/3`` operation counts in one window.

Two hosts: ``/api/3/…`` on the account's URL with the ``Api-Token`` header, and trackcmp (``track_url``, by
default https://trackcmp.net/event), a form post authenticated by ``actid`` and the event key in the body. The
``Api-Token`` header is set per request on ``/api/3`` calls only, so the key never travels to trackcmp; neither
the token nor the event key is ever logged or shown in ``repr``.

Error mapping (``map_error``): 429 → ``RateLimited`` (Retry-After, the operation); 408, 5xx (503 included: older
reports say AC answered 503 at the limit), timeouts and network errors → ``Transient``; 401/403 → ``AuthFailed``;
a 422 whose ``errors[].source.pointer`` names the record of a one-record request, or a bulk-import 400 with
``failureReasons[{contact: index}]`` → ``Rejected`` with those indexes; any other 4xx → ``Permanent`` with AC's text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import httpx

from ..errors import InvalidInput
from .errors import (
    Accepted,
    AuthFailed,
    EspError,
    Permanent,
    RateLimited,
    RecordError,
    Rejected,
    Transient,
    parse_retry_after,
    with_accepted,
)
from .http import http_client, send_request

log = logging.getLogger(__name__)

TRACK_URL = "https://trackcmp.net/event"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
API = "/api/3"

#: Documented limits (ESP_NOTES.md §2.2, §3).
MAX_IMPORT_CONTACTS = 250
MAX_IMPORT_BYTES = 400_000
MAX_EVENT_NAME = 32
PAGE_SIZE = 100
#: ecomOrder fields only a create takes (the reference's PUT schema has none of them).
ORDER_CREATE_ONLY = frozenset({"connectionid", "customerid", "source", "externalCreatedDate"})

#: Limiter operations. Every /api/3 call counts in the account's one 5/s window; the bulk importer also in its
#: own per-minute windows (multi-contact and single-contact requests are limited apart); trackcmp on its own.
API_OPERATIONS = (
    "sync_contact",
    "search_contacts",
    "delete_contact",
    "get_contact_lists",
    "get_contact_tags",
    "update_list_status",
    "list_lists",
    "create_list",
    "list_tags",
    "create_tag",
    "add_contact_tag",
    "remove_contact_tag",
    "list_fields",
    "create_field",
    "create_field_rel",
    "create_field_value",
    "bulk_import_status",
    "bulk_import_info",
    "get_event_tracking",
    "set_event_tracking",
    "list_event_names",
    "create_event_name",
    "list_connections",
    "create_connection",
    "list_ecom_customers",
    "create_ecom_customer",
    "list_ecom_orders",
    "create_ecom_order",
    "update_ecom_order",
)
BULK_IMPORT_MULTI = "bulk_import_multi"
BULK_IMPORT_SINGLE = "bulk_import_single"
TRACK_EVENT = "track_event"
OPERATIONS = (*API_OPERATIONS, BULK_IMPORT_MULTI, BULK_IMPORT_SINGLE, TRACK_EVENT)


# --- values --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcContact:
    """A contact as ``contact/sync`` and the bulk importer take it. ``fields``: custom field id → value.
    ``None`` leaves a value unchanged (the key is omitted)."""

    email: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    #: Bulk import only: list ids to subscribe to / unsubscribe from in the same import.
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.email:
            raise InvalidInput("email", "ActiveCampaign identifies contacts by email")

    def sync_body(self) -> dict[str, Any]:
        contact: dict[str, Any] = {"email": self.email}
        for key, value in (("firstName", self.first_name), ("lastName", self.last_name), ("phone", self.phone)):
            if value is not None:
                contact[key] = value
        if self.fields:
            contact["fieldValues"] = [{"field": fid, "value": value} for fid, value in sorted(self.fields.items())]
        return {"contact": contact}

    def import_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {"email": self.email}
        for key, value in (("first_name", self.first_name), ("last_name", self.last_name), ("phone", self.phone)):
            if value is not None:
                item[key] = value
        if self.fields:
            item["fields"] = [{"id": int(fid), "value": value} for fid, value in sorted(self.fields.items())]
        if self.subscribe:
            item["subscribe"] = [{"listid": list_id} for list_id in self.subscribe]
        if self.unsubscribe:
            item["unsubscribe"] = [{"listid": list_id} for list_id in self.unsubscribe]
        return item


@dataclass(frozen=True)
class ListStatus:
    """A contact's membership of one list: status 0 unconfirmed, 1 active, 2 unsubscribed, 3 bounced."""

    id: str
    list_id: str
    status: str
    subscribed_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None


@dataclass(frozen=True)
class ImportInfo:
    status: str
    success: tuple[str, ...]
    failure: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return self.status.lower() in ("completed", "complete", "finished", "failed")


# --- client --------------------------------------------------------------------------------------------------------


class ActiveCampaignClient:
    """ActiveCampaign's v3 REST API and trackcmp, the operations espbridge needs.

    Parameters:
        api_token: the account's API key (sent only as the ``Api-Token`` header of /api/3 requests).
        base_url: ``https://<account>.api-us1.com`` (``/api/3`` is added), or the sandbox's URL.
        track_url: trackcmp's event URL; actid / event_key: its form credentials (None: events cannot be sent).
        timeout: seconds or an ``httpx.Timeout``; always set, never None.
        transport: an httpx transport (tests route to the in-process sandbox).
        limiter: called with the operation name (``OPERATIONS``) before every request.

    Raises (every method): ``RateLimited``, ``AuthFailed``, ``Rejected``, ``Transient``, ``Permanent``.
    """

    name = "activecampaign"

    def __init__(
        self,
        api_token: str,
        *,
        base_url: str,
        track_url: str = TRACK_URL,
        actid: str | None = None,
        event_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        limiter: Callable[[str], None] | None = None,
    ) -> None:
        if not api_token:
            raise InvalidInput("api_token", "empty")
        if not base_url:
            raise InvalidInput("base_url", "required: the account's own API URL")
        root = base_url.rstrip("/")
        if root.endswith(API):
            root = root[: -len(API)]
        self.base_url = root
        self.track_url = track_url
        self.actid = actid
        self._token = api_token
        self._event_key = event_key
        self._limiter = limiter
        #: Requests sent so far (adapters report per-call counts from it).
        self.requests = 0
        self._http = http_client(
            base_url=root, timeout=timeout, transport=transport, headers={"Accept": "application/json"}
        )

    def __repr__(self) -> str:
        return f"ActiveCampaignClient(base_url={self.base_url!r}, track_url={self.track_url!r})"

    @property
    def can_track(self) -> bool:
        return bool(self.actid and self._event_key)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ActiveCampaignClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # contacts

    def sync_contact(self, contact: AcContact) -> str:
        """Create or update by email (``POST /contact/sync``); returns the contact id."""
        response = self._send("sync_contact", "POST", "/contact/sync", contact.sync_body(), records=1)
        return _id(_json(response).get("contact"), response)

    def find_contact(self, email: str) -> str | None:
        """The id of the contact with this email, or None."""
        response = self._send("search_contacts", "GET", _query("/contacts", {"email": email}), None)
        for contact in _items(_json(response), "contacts"):
            if str(contact.get("email", "")).lower() == email.lower() and contact.get("id") is not None:
                return str(contact["id"])
        return None

    def delete_contact(self, contact_id: str) -> bool:
        """Delete a contact and its data; False when it did not exist (already gone)."""
        try:
            self._send("delete_contact", "DELETE", f"/contacts/{_segment(contact_id)}", None)
        except Permanent as error:
            if error.status == 404:
                return False
            raise
        return True

    # lists and list status

    def contact_lists(self, contact_id: str) -> list[ListStatus]:
        response = self._send("get_contact_lists", "GET", f"/contacts/{_segment(contact_id)}/contactLists", None)
        return [
            ListStatus(
                id=str(row.get("id", "")),
                list_id=str(row.get("list", "")),
                status=str(row.get("status", "")),
                subscribed_at=parse_date(row.get("sdate")),
                unsubscribed_at=parse_date(row.get("udate")),
            )
            for row in _items(_json(response), "contactLists")
        ]

    def set_list_status(self, contact_id: str, list_id: str, status: int, *, sourceid: int | None = None) -> None:
        """``POST /contactLists``: 1 subscribe, 2 unsubscribe; ``sourceid`` 4 when re-subscribing someone who
        unsubscribed (AC's documented flag for that)."""
        if status not in (1, 2):
            raise InvalidInput("status", "1 (subscribe) or 2 (unsubscribe)")
        body: dict[str, Any] = {"list": str(list_id), "contact": str(contact_id), "status": str(status)}
        if sourceid is not None:
            body["sourceid"] = sourceid
        self._send("update_list_status", "POST", "/contactLists", {"contactList": body}, records=1)

    def lists(self) -> list[dict[str, Any]]:
        return self._pages("list_lists", "/lists", "lists", {})

    def create_list(self, name: str, *, stringid: str, sender_url: str, sender_reminder: str) -> str:
        body = {
            "list": {"name": name, "stringid": stringid, "sender_url": sender_url, "sender_reminder": sender_reminder}
        }
        response = self._send("create_list", "POST", "/lists", body)
        return _id(_json(response).get("list"), response)

    # tags

    def find_tag(self, name: str) -> str | None:
        response = self._send("list_tags", "GET", _query("/tags", {"search": name, "limit": str(PAGE_SIZE)}), None)
        for tag in _items(_json(response), "tags"):
            if str(tag.get("tag", "")).strip().lower() == name.strip().lower():
                return str(tag["id"])
        return None

    def create_tag(self, name: str, *, description: str = "") -> str:
        body = {"tag": {"tag": name, "tagType": "contact", "description": description}}
        response = self._send("create_tag", "POST", "/tags", body)
        return _id(_json(response).get("tag"), response)

    def add_contact_tag(self, contact_id: str, tag_id: str) -> str:
        body = {"contactTag": {"contact": _num(contact_id), "tag": _num(tag_id)}}
        response = self._send("add_contact_tag", "POST", "/contactTags", body, records=1)
        return _id(_json(response).get("contactTag"), response)

    def contact_tags(self, contact_id: str) -> list[tuple[str, str]]:
        """A contact's tags as (contactTag id, tag id)."""
        response = self._send("get_contact_tags", "GET", f"/contacts/{_segment(contact_id)}/contactTags", None)
        return [(str(row.get("id")), str(row.get("tag"))) for row in _items(_json(response), "contactTags")]

    def remove_contact_tag(self, contact_tag_id: str) -> bool:
        try:
            self._send("remove_contact_tag", "DELETE", f"/contactTags/{_segment(contact_tag_id)}", None)
        except Permanent as error:
            if error.status == 404:
                return False
            raise
        return True

    # custom fields

    def fields(self) -> dict[str, str]:
        """Every custom field: title → id."""
        return {
            str(row.get("title")): str(row.get("id"))
            for row in self._pages("list_fields", "/fields", "fields", {})
            if row.get("id") is not None
        }

    def create_field(self, title: str, *, type: str = "text") -> str:
        response = self._send("create_field", "POST", "/fields", {"field": {"title": title, "type": type}})
        return _id(_json(response).get("field"), response)

    def create_field_rel(self, field_id: str, relid: int = 0) -> None:
        """Tie a field to a list (``relid`` 0: every list)."""
        self._send("create_field_rel", "POST", "/fieldRels", {"fieldRel": {"field": int(field_id), "relid": relid}})

    def set_field_value(self, contact_id: str, field_id: str, value: str) -> None:
        body = {"fieldValue": {"contact": contact_id, "field": field_id, "value": value}, "useDefaults": False}
        self._send("create_field_value", "POST", "/fieldValues", body, records=1)

    # bulk import

    def bulk_import(self, contacts: Sequence[AcContact]) -> list[Accepted]:
        """``POST /import/bulk_import`` in chunks of ≤ 250 contacts and ≤ 400,000 bytes; each ``Accepted`` carries
        the batchId as ``job_id``. A 400 naming contacts (``failureReasons``) raises ``Rejected`` with indexes
        into ``contacts`` and the chunks accepted before it."""
        items = [contact.import_item() for contact in contacts]
        accepted: list[Accepted] = []
        for offset, chunk in byte_chunks(items, MAX_IMPORT_CONTACTS, MAX_IMPORT_BYTES):
            operation = BULK_IMPORT_SINGLE if len(chunk) == 1 else BULK_IMPORT_MULTI
            try:
                response = self._send(operation, "POST", "/import/bulk_import", {"contacts": list(chunk)}, bulk=True)
            except EspError as error:
                raise with_accepted(error, accepted, offset) from None
            body = _json(response)
            batch = body.get("batchId")
            if not body.get("success") or not isinstance(batch, str | int):
                raise with_accepted(
                    Permanent(f"POST {API}/import/bulk_import: not queued: {body.get('message') or body}"),
                    accepted,
                    offset,
                )
            accepted.append(Accepted(offset=offset, count=len(chunk), job_id=str(batch)))
        return accepted

    def import_info(self, batch_id: str) -> ImportInfo:
        response = self._send("bulk_import_info", "GET", _query("/import/info", {"batchId": batch_id}), None)
        body = _json(response)
        return ImportInfo(
            status=str(body.get("status", "")),
            success=tuple(str(v) for v in body.get("success") or ()),
            failure=tuple(str(v) for v in body.get("failure") or ()),
        )

    def bulk_import_status(self) -> dict[str, Any]:
        return _json(self._send("bulk_import_status", "GET", "/import/bulk_import", None))

    # event tracking

    def event_tracking_enabled(self) -> bool:
        body = _json(self._send("get_event_tracking", "GET", "/eventTracking", None))
        tracking = body.get("eventTracking")
        enabled = tracking.get("enabled") if isinstance(tracking, dict) else None
        return enabled is True or str(enabled).lower() in ("1", "true")

    def enable_event_tracking(self) -> None:
        self._send("set_event_tracking", "PUT", "/eventTracking", {"eventTracking": {"enabled": True}})

    def event_names(self) -> set[str]:
        rows = self._pages("list_event_names", "/eventTrackingEvents", "eventTrackingEvents", {})
        return {str(row.get("name")) for row in rows}

    def create_event_name(self, name: str) -> bool:
        """Register an event name; False when it already existed."""
        try:
            self._send("create_event_name", "POST", "/eventTrackingEvents", {"eventTrackingEvent": {"name": name}})
        except (Rejected, Permanent) as error:
            if is_duplicate(error):
                return False
            raise
        return True

    def track_event(self, name: str, email: str, eventdata: str | None = None) -> None:
        """One event through trackcmp (form-encoded, no ``Api-Token``). trackcmp answers HTTP 200 with
        ``success: 0`` when it refuses an event: that is a ``Rejected`` of the record."""
        if not self.actid or not self._event_key:
            raise InvalidInput("event_key", "event tracking needs actid and the event key")
        if not name or len(name) > MAX_EVENT_NAME:
            raise InvalidInput("event", f"1 to {MAX_EVENT_NAME} characters")
        form = {"actid": self.actid, "key": self._event_key, "event": name, "visit": json.dumps({"email": email})}
        if eventdata is not None:
            form["eventdata"] = eventdata
        content = urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        response = self._request(TRACK_EVENT, "POST", self.track_url, content, headers)
        if not response.is_success:
            raise map_error(response, method="POST", operation=TRACK_EVENT)
        body = _json(response)
        if str(body.get("success")) != "1":
            detail = str(body.get("message") or "trackcmp refused the event")
            raise Rejected(f"POST trackcmp: {detail}", records=[RecordError(0, detail)], status=response.status_code)

    # Deep Data (e-commerce)

    def find_connection(self, service: str, externalid: str) -> str | None:
        query = {"filters[service]": service, "filters[externalid]": externalid}
        for row in self._pages("list_connections", "/connections", "connections", query):
            if str(row.get("service")) == service and str(row.get("externalid")) == externalid:
                return str(row["id"])
        return None

    def create_connection(self, *, service: str, externalid: str, name: str, logo_url: str, link_url: str) -> str:
        body = {
            "connection": {
                "service": service,
                "externalid": externalid,
                "name": name,
                "logoUrl": logo_url,
                "linkUrl": link_url,
            }
        }
        response = self._send("create_connection", "POST", "/connections", body)
        return _id(_json(response).get("connection"), response)

    def find_customer(self, connection_id: str, email: str) -> str | None:
        query = {"filters[connectionid]": connection_id, "filters[email]": email}
        response = self._send("list_ecom_customers", "GET", _query("/ecomCustomers", query), None)
        for row in _items(_json(response), "ecomCustomers"):
            if str(row.get("connectionid")) == connection_id and str(row.get("email", "")).lower() == email.lower():
                return str(row["id"])
        return None

    def create_customer(self, connection_id: str, *, externalid: str, email: str) -> str:
        body = {"ecomCustomer": {"connectionid": connection_id, "externalid": externalid, "email": email}}
        response = self._send("create_ecom_customer", "POST", "/ecomCustomers", body, records=1)
        return _id(_json(response).get("ecomCustomer"), response)

    def find_order(
        self, connection_id: str, *, externalid: str | None = None, externalcheckoutid: str | None = None
    ) -> str | None:
        query = {"filters[connectionid]": connection_id}
        if externalid is not None:
            query["filters[externalid]"] = externalid
        if externalcheckoutid is not None:
            query["filters[externalcheckoutid]"] = externalcheckoutid
        response = self._send("list_ecom_orders", "GET", _query("/ecomOrders", query), None)
        for row in _items(_json(response), "ecomOrders"):
            if str(row.get("connectionid")) != connection_id:
                continue
            if externalid is not None and str(row.get("externalid")) != externalid:
                continue
            if externalcheckoutid is not None and str(row.get("externalcheckoutid")) != externalcheckoutid:
                continue
            return str(row["id"])
        return None

    def create_order(self, order: Mapping[str, Any]) -> str:
        """``POST /ecomOrders`` (an order, or an abandoned cart: ``externalcheckoutid`` + ``abandonedDate``)."""
        response = self._send("create_ecom_order", "POST", "/ecomOrders", {"ecomOrder": dict(order)}, records=1)
        return _id(_json(response).get("ecomOrder"), response)

    def update_order(self, order_id: str, order: Mapping[str, Any]) -> None:
        """``PUT /ecomOrders/{id}``: the fields an update takes (connection, customer, source and creation date are
        fixed at creation and left out)."""
        body = {k: v for k, v in order.items() if k not in ORDER_CREATE_ONLY}
        self._send("update_ecom_order", "PUT", f"/ecomOrders/{_segment(order_id)}", {"ecomOrder": body}, records=1)

    # plumbing

    def _pages(self, operation: str, path: str, key: str, query: Mapping[str, str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = {**query, "limit": str(PAGE_SIZE), "offset": str(offset)}
            found = _items(_json(self._send(operation, "GET", _query(path, page), None)), key)
            rows += found
            if len(found) < PAGE_SIZE:
                return rows
            offset += len(found)

    def _send(
        self,
        operation: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        records: int | None = None,
        bulk: bool = False,
    ) -> httpx.Response:
        headers = {"Api-Token": self._token}
        content: bytes | None = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        response = self._request(operation, method, API + path, content, headers)
        if response.is_success:
            return response
        raise map_error(response, method=method, records=records, bulk=bulk, operation=operation)

    def _request(
        self, operation: str, method: str, url: str, content: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown ActiveCampaign operation {operation!r} (the limiter would not count it)")
        if self._limiter is not None:
            self._limiter(operation)
        self.requests += 1
        where = f"{method} {_path(url)}"
        return send_request(
            self._http,
            method,
            url,
            content=content,
            headers=headers,
            where=where,
            log=log,
            esp="activecampaign",
            error_detail=False,
        )


# --- error mapping: the one place HTTP failures become our errors ---------------------------------------------------


def map_error(
    response: httpx.Response,
    *,
    method: str = "",
    records: int | None = None,
    bulk: bool = False,
    operation: str | None = None,
    now: dt.datetime | None = None,
) -> EspError:
    """The error for a non-2xx ActiveCampaign response.

    ``records``: how many records the request carried (1: a 422 pointing into the body refuses that record).
    ``bulk``: a bulk import, whose 400 lists refused contacts as ``failureReasons[{contact: index}]``.
    """
    status = response.status_code
    where = f"{method} {_path(str(response.request.url))}".strip()
    body = _body(response)
    errors = (
        [e for e in body.get("errors") or () if isinstance(e, dict)] if isinstance(body.get("errors"), list) else []
    )
    text = "; ".join(_describe(e) for e in errors) or _str(body.get("message")) or response.reason_phrase or "no detail"
    message = f"{where}: HTTP {status}: {text}"
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=now)
        return RateLimited(message, retry_after=retry_after, operation=operation)
    if status in (401, 403):
        return AuthFailed(message, status=status)
    if status == 408 or status >= 500:
        return Transient(message, status=status)
    if bulk and status == 400:
        reasons = body.get("failureReasons")
        found = [
            RecordError(int(r["contact"]), str(r.get("failureReason") or "refused"))
            for r in reasons or ()
            if isinstance(r, dict) and _is_index(r.get("contact"))
        ]
        if found:
            return Rejected(message, records=found, status=status)
        return Permanent(message, status=status)
    if status in (400, 422) and records == 1 and errors:
        found = [RecordError(0, _describe(e), code=_str(e.get("code")), pointer=_pointer(e)) for e in errors]
        return Rejected(message, records=found, status=status)
    return Permanent(message, status=status)


def is_duplicate(error: EspError) -> bool:
    """AC's 422 for an object that already exists (a retried create)."""
    if isinstance(error, Rejected) and any(
        r.code == "duplicate" or "already exist" in r.detail.lower() for r in error.records
    ):
        return True
    return error.status == 422 and "already exist" in error.message.lower()


def parse_date(value: Any) -> dt.datetime | None:
    """AC's dates: ISO 8601 with an offset, or ``YYYY-MM-DD HH:MM:SS`` (taken as UTC: a guess, AC documents no
    zone for those). None for empty, zero or unreadable values."""
    if not isinstance(value, str) or not value.strip() or value.startswith("0000"):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def byte_chunks(
    items: Sequence[dict[str, Any]], limit: int, max_bytes: int
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Chunks of at most ``limit`` items whose JSON body stays under ``max_bytes`` (with room for the envelope)."""
    budget = max_bytes - 256
    offset, size = 0, 0
    for index, item in enumerate(items):
        item_size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()) + 1
        if index > offset and (index - offset >= limit or size + item_size > budget):
            yield offset, list(items[offset:index])
            offset, size = index, 0
        size += item_size
    if offset < len(items):
        yield offset, list(items[offset:])


def _is_index(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _describe(error: Mapping[str, Any]) -> str:
    detail = _str(error.get("detail")) or _str(error.get("title")) or "error"
    code = _str(error.get("code"))
    pointer = _pointer(error)
    return detail + (f" [{code}]" if code else "") + (f" at {pointer}" if pointer else "")


def _pointer(error: Mapping[str, Any]) -> str | None:
    source = error.get("source")
    return _str(source.get("pointer")) if isinstance(source, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise Permanent(
            f"{_path(str(response.request.url))}: response is not JSON", status=response.status_code
        ) from None
    if not isinstance(body, dict):
        raise Permanent(f"{_path(str(response.request.url))}: unexpected response", status=response.status_code)
    return body


def _items(body: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    rows = body.get(key)
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def _id(obj: Any, response: httpx.Response) -> str:
    if isinstance(obj, dict) and obj.get("id") is not None:
        return str(obj["id"])
    raise Permanent(f"{_path(str(response.request.url))}: response has no id", status=response.status_code)


def _query(path: str, query: Mapping[str, str]) -> str:
    return f"{path}?{urlencode(query)}" if query else path


def _num(value: str) -> int | str:
    """An id where the reference types it as an integer (AC's ids are numeric strings)."""
    return int(value) if value.isdigit() else value


def _segment(value: str) -> str:
    """An id placed in a path segment: refuse anything that could change the path."""
    if not value or "/" in value or "?" in value or "#" in value or ".." in value:
        raise InvalidInput("id", f"not a usable id: {value!r}")
    return value


def _path(url: str) -> str:
    """A URL for messages and logs: the path only (queries may hold emails)."""
    return httpx.URL(url).path
