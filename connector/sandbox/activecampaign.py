"""The ActiveCampaign part of the ESP sandbox: a WSGI app (werkzeug) emulating the AC v3 endpoints espbridge uses.

THIS IS A SANDBOX, NOT ACTIVECAMPAIGN. Every response carries ``X-Espbridge-Sandbox: activecampaign``. State lives
in memory behind one lock; every routed request is recorded (``Api-Token`` and trackcmp's ``key`` left out).

Gates, in this order (like the Klaviyo part): the route (404/405); the ``Api-Token`` header against the accepted
tokens (403 ``{"message": "Forbidden"}``, the mirror's documented answer; AC documents no 401); fault injection
(``/_sandbox/activecampaign/faults``); the rate limit; then the JSON body against the operation's request schema
from the mirror of AC's v3 reference (``activecampaign_spec.json``, scripts/extract_activecampaign_sandbox_spec.py,
with the documented corrections listed there). A schema violation is a 422 in AC's format
``{"errors": [{"title", "detail", "code", "source": {"pointer"}}]}``. Unlike the contract helper
(tests/contract/activecampaign.py), the sandbox accepts a numeric string where the spec says integer and a number
where it says string, because AC (PHP) does: the examples and clients mix ``"42"`` and ``42`` for ids.

Rate limit (https://developers.activecampaign.com/reference/rate-limits, ESP_NOTES.md §2.1): ONE budget of 5
requests per (fixed, 1 s) window for the whole account, shared by every token and every ``/api/3`` operation; the
bulk importer also 100/min for multi-contact and 20/min for single-contact requests. Throttled: 429 with
``Retry-After`` (integer seconds) and ``{"message": "Too Many Requests"}``. ``time_scale`` divides the windows.
trackcmp (``POST /event``) has no documented limit, so the sandbox applies none.

Emulated (routes in ``ROUTES``; the sandbox's operation names are the endpoint names there, used by the
``operations`` fault filter and the request log): contacts (sync/upsert by email, 201 created / 200 updated, which
is unverified; search by email; get; delete; a contact's lists, tags and field values), lists, list status
(``contactLists``: 1 subscribed, 2 unsubscribed; 2 → 1 allowed here), tags and contact tags, fields, fieldRels,
field values, the bulk importer (≤ 250 contacts, ≤ 400,000 bytes; a contact unsubscribed from a list is NOT
re-subscribed by an import: the refusal is listed in the batch info as ``refused_subscriptions``, a sandbox
extension), event names and the event-tracking switch, trackcmp events, Deep Data connections/customers/orders
(abandoned carts and their conversion) and webhook management plus delivery (activecampaign_webhooks.py).

Guesses (documented nowhere we could read; each says what the sandbox does):

- trackcmp answers HTTP 200 with ``{"success": 0, "message": …}`` for every refusal (bad actid/key, not a form
  body, missing or > 32-character event name, unreadable ``visit``, event tracking disabled, event name not
  registered with ``/eventTrackingEvents``, fault ``reject``); an event for an email with no contact is recorded
  without a contact id. Event tracking starts DISABLED, as on a new account.
- ``POST /ecomOrders`` with both ``externalid`` and an ``externalcheckoutid`` naming an existing cart of the same
  connection CONVERTS that cart into the order (same id, ``abandonedDate`` cleared): the sandbox's reading of the
  docs ("externalcheckoutid … only required if externalid is not included"; an order completing a cart keeps it).
  A duplicate ``externalid`` (or cart ``externalcheckoutid``) on the same connection is a 422, as AC answers.
- Response codes the mirror lists are used as given (e.g. 200 for POST /lists and /connections, 201 for
  /tags); 404 bodies ``{"errors": [{"status": 404, "title": "Not Found", "detail": …}]}``; an unknown batchId 400
  ``{"message": "Batch not found"}``; imports apply every contact at once when the batch completes (``job_delay``
  seconds after the POST, divided by ``time_scale``; 0: at once), status ``processing`` until then.

Admin endpoints (no auth), under ``/_sandbox/activecampaign/``: ``GET state``, ``GET requests[?operation=]``,
``GET|POST faults``, ``POST reset``, ``POST engagement`` and ``GET webhook-deliveries`` (activecampaign_webhooks.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .common import apply_faults, count_by_operation, json_or_text, request_entry, roll_faults
from .ratelimit import FixedWindowLimiter, retry_after_header
from .spec import RateLimit, _schema_error

__all__ = [
    "AC_SANDBOX_HEADER",
    "ADMIN_PREFIX",
    "DEFAULT_ACTID",
    "DEFAULT_API_TOKEN",
    "DEFAULT_EVENT_KEY",
    "OPERATIONS",
    "AcFaults",
    "AcReject",
    "ActiveCampaignSandbox",
]

AC_SANDBOX_HEADER = ("X-Espbridge-Sandbox", "activecampaign")
DEFAULT_API_TOKEN = "ac_sandbox_token"
DEFAULT_ACTID = "1000000"
DEFAULT_EVENT_KEY = "ac_sandbox_event_key"
ADMIN_PREFIX = "/_sandbox/activecampaign"
BASE = "https://sandbox.invalid/api/3"  # links point nowhere real: this is not <account>.api-us1.com
REQUEST_LOG_SIZE = 10_000
MAX_HOLD_SECONDS = 300.0
ACCOUNT_LIMIT = RateLimit("second", 5, 1.0)  # 5 req/s per account, every token and operation
BULK_MULTI_LIMIT = RateLimit("minute", 100, 60.0)
BULK_SINGLE_LIMIT = RateLimit("minute", 20, 60.0)
MAX_IMPORT_CONTACTS = 250
MAX_IMPORT_BYTES = 400_000
MAX_EVENT_NAME = 32
WEBHOOK_EVENTS = (
    "bounce",
    "click",
    "contact_tag_added",
    "contact_tag_removed",
    "deal_add",
    "deal_note_add",
    "deal_pipeline_add",
    "deal_stage_add",
    "deal_task_add",
    "deal_task_complete",
    "deal_tasktype_add",
    "deal_update",
    "forward",
    "list_add",
    "open",
    "reply",
    "sent",
    "share",
    "sms_reply",
    "sms_sent",
    "sms_unsub",
    "subscribe",
    "subscriber_note",
    "unsubscribe",
    "update",
)
WEBHOOK_SOURCES = ("public", "admin", "api", "system")

_API = "/api/3"
ROUTES = Map(
    [
        Rule(f"{_API}/contact/sync", methods=["POST"], endpoint="sync_contact"),
        Rule(f"{_API}/contacts", methods=["GET"], endpoint="search_contacts"),
        Rule(f"{_API}/contacts/<id>", methods=["GET"], endpoint="get_contact"),
        Rule(f"{_API}/contacts/<id>", methods=["DELETE"], endpoint="delete_contact"),
        Rule(f"{_API}/contacts/<id>/contactLists", methods=["GET"], endpoint="get_contact_lists"),
        Rule(f"{_API}/contacts/<id>/contactTags", methods=["GET"], endpoint="get_contact_tags"),
        Rule(f"{_API}/contacts/<id>/fieldValues", methods=["GET"], endpoint="get_contact_field_values"),
        Rule(f"{_API}/lists", methods=["POST"], endpoint="create_list"),
        Rule(f"{_API}/lists", methods=["GET"], endpoint="list_lists"),
        Rule(f"{_API}/contactLists", methods=["POST"], endpoint="update_list_status"),
        Rule(f"{_API}/tags", methods=["POST"], endpoint="create_tag"),
        Rule(f"{_API}/tags", methods=["GET"], endpoint="list_tags"),
        Rule(f"{_API}/contactTags", methods=["POST"], endpoint="add_contact_tag"),
        Rule(f"{_API}/contactTags/<id>", methods=["DELETE"], endpoint="remove_contact_tag"),
        Rule(f"{_API}/fields", methods=["POST"], endpoint="create_field"),
        Rule(f"{_API}/fields", methods=["GET"], endpoint="list_fields"),
        Rule(f"{_API}/fieldRels", methods=["POST"], endpoint="create_field_rel"),
        Rule(f"{_API}/fieldValues", methods=["POST"], endpoint="create_field_value"),
        Rule(f"{_API}/fieldValues/<id>", methods=["PUT"], endpoint="update_field_value"),
        Rule(f"{_API}/import/bulk_import", methods=["POST"], endpoint="bulk_import"),
        Rule(f"{_API}/import/bulk_import", methods=["GET"], endpoint="bulk_import_status"),
        Rule(f"{_API}/import/info", methods=["GET"], endpoint="bulk_import_info"),
        Rule(f"{_API}/eventTrackingEvents", methods=["POST"], endpoint="create_event_name"),
        Rule(f"{_API}/eventTrackingEvents", methods=["GET"], endpoint="list_event_names"),
        Rule(f"{_API}/eventTracking", methods=["GET"], endpoint="get_event_tracking"),
        Rule(f"{_API}/eventTracking", methods=["PUT"], endpoint="set_event_tracking"),
        Rule("/event", methods=["POST"], endpoint="track_event"),  # trackcmp.net/event on the real service
        Rule(f"{_API}/connections", methods=["POST"], endpoint="create_connection"),
        Rule(f"{_API}/connections", methods=["GET"], endpoint="list_connections"),
        Rule(f"{_API}/ecomCustomers", methods=["POST"], endpoint="create_ecom_customer"),
        Rule(f"{_API}/ecomCustomers", methods=["GET"], endpoint="list_ecom_customers"),
        Rule(f"{_API}/ecomOrders", methods=["POST"], endpoint="create_ecom_order"),
        Rule(f"{_API}/ecomOrders", methods=["GET"], endpoint="list_ecom_orders"),
        Rule(f"{_API}/ecomOrders/<id>", methods=["PUT"], endpoint="update_ecom_order"),
        Rule(f"{_API}/webhooks", methods=["POST"], endpoint="create_webhook"),
        Rule(f"{_API}/webhooks", methods=["GET"], endpoint="list_webhooks"),
        Rule(f"{_API}/webhook/events", methods=["GET"], endpoint="list_webhook_events"),
        Rule(f"{ADMIN_PREFIX}/", methods=["GET"], endpoint="admin_index"),
        Rule(f"{ADMIN_PREFIX}/state", methods=["GET"], endpoint="admin_state"),
        Rule(f"{ADMIN_PREFIX}/requests", methods=["GET"], endpoint="admin_requests"),
        Rule(f"{ADMIN_PREFIX}/faults", methods=["GET", "POST"], endpoint="admin_faults"),
        Rule(f"{ADMIN_PREFIX}/reset", methods=["POST"], endpoint="admin_reset"),
        Rule(f"{ADMIN_PREFIX}/engagement", methods=["POST"], endpoint="admin_engagement"),
        Rule(f"{ADMIN_PREFIX}/webhook-deliveries", methods=["GET"], endpoint="admin_webhook_deliveries"),
    ],
    strict_slashes=False,
)
#: Every emulated operation name (the ``operations`` fault filter and the request log use them).
OPERATIONS: tuple[str, ...] = tuple(
    sorted({str(rule.endpoint) for rule in ROUTES.iter_rules() if not str(rule.endpoint).startswith("admin_")})
)


class AcReject(BaseModel):
    """Which records to refuse (fault ``reject``): by email (any case) or a substring of the email."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    emails: list[str] = Field(default_factory=list, description="Records with one of these emails (any case).")
    contains: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Records whose email contains one of these (any case)."
    )
    detail: str = Field("Sandbox fault: this contact is rejected.", min_length=1)

    def matches(self, email: Any) -> bool:
        if not isinstance(email, str):
            return False
        text = email.strip().lower()
        return text in {e.strip().lower() for e in self.emails} or any(n.lower() in text for n in self.contains)


class AcFaults(BaseModel):
    """Fault injection, switched with ``POST /_sandbox/activecampaign/faults`` (the body replaces the setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered with error_status.")
    error_status: int = Field(503, ge=500, le=599)
    timeout_rate: float = Field(0.0, ge=0, le=1, description="Share of requests held timeout_seconds, then 504.")
    timeout_seconds: float = Field(0.0, ge=0, le=MAX_HOLD_SECONDS)
    slow_seconds: float = Field(0.0, ge=0, le=MAX_HOLD_SECONDS, description="Delay before every request is served.")
    storm_429: int = Field(0, ge=0, description="The next N requests are answered 429 whatever the window says.")
    storm_retry_after: int = Field(1, ge=0)
    reject: AcReject | None = Field(None, description="contact/sync 422, bulk_import 400, trackcmp success 0.")
    operations: list[str] | None = Field(None, description="Limit the faults to these operations (None: all).")
    seed: int | None = Field(None, description="Seed of the fault dice, for reproducible runs.")


class AcError(Exception):
    """A refused request: ``status`` and the exact JSON document AC answers with."""

    def __init__(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {document}")
        self.status, self.document, self.headers = status, document, headers or {}

    def response(self) -> Response:
        return _json(self.document, self.status, self.headers)


def unprocessable(detail: str, pointer: str, *, code: str = "invalid", title: str = "Invalid input") -> AcError:
    return AcError(422, {"errors": [{"title": title, "detail": detail, "code": code, "source": {"pointer": pointer}}]})


def not_found(detail: str) -> AcError:
    return AcError(404, {"errors": [{"status": 404, "title": "Not Found", "detail": detail}]})


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document), status=status, headers=headers, content_type="application/json")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sid(value: Any) -> str:
    """An id as AC shows it: a string, even when it looks numeric."""
    return str(value).strip()


def _lenient(node: Any) -> Any:
    """Scalar leniency of AC's PHP backend: integers also as numeric strings, strings also as numbers."""
    if isinstance(node, list):
        return [_lenient(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_lenient(v) if k not in ("required", "enum") else v) for k, v in node.items()}
    if out.get("type") == "integer":
        out["type"] = ["integer", "string"]
        out["pattern"] = r"^-?[0-9]+$"
    elif out.get("type") == "string":
        out["type"] = ["string", "integer", "number"]
    if "properties" in node:
        out["properties"] = {k: _lenient(v) for k, v in node["properties"].items()}
    return out


def spec_document() -> dict[str, Any]:
    """The vendored extract of the AC v3 mirror (parsed anew on each call)."""
    text = resources.files(__package__).joinpath("activecampaign_spec.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@cache
def _validators() -> dict[str, Draft202012Validator]:
    return {
        name: Draft202012Validator(_lenient(op["request_schema"])) for name, op in spec_document()["operations"].items()
    }


@dataclass
class Batch:
    """A bulk import: ``contacts`` are applied when the batch completes (``due`` on the sandbox's clock)."""

    id: str
    contacts: list[dict[str, Any]]
    due: float
    created: str = field(default_factory=_now)
    status: str = "processing"
    success: list[str] = field(default_factory=list)
    failure: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    completed: str | None = None

    def info(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "success": list(self.success),
            "failure": list(self.failure),
            "refused_subscriptions": list(self.refused),  # sandbox extension: imports never re-subscribe
        }


class ActiveCampaignSandbox:
    """The emulated ActiveCampaign account: a WSGI callable; ``api_tokens`` are the accepted ``Api-Token`` values,
    ``actid`` / ``event_key`` trackcmp's form credentials.

    ``job_delay``: seconds a bulk import batch stays ``processing`` (divided by ``time_scale``); 0: done at once.
    ``clock``: monotonic seconds for the rate-limit windows and batches (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        api_tokens: Iterable[str] = (DEFAULT_API_TOKEN,),
        actid: str = DEFAULT_ACTID,
        event_key: str = DEFAULT_EVENT_KEY,
        time_scale: float = 1.0,
        job_delay: float = 0.0,
        event_tracking_enabled: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_tokens = frozenset(api_tokens)
        if not self.api_tokens:
            raise ValueError("the sandbox needs at least one accepted API token")
        if job_delay < 0:
            raise ValueError("job_delay must not be negative")
        self.actid, self.event_key = actid, event_key
        self.limiter = FixedWindowLimiter(time_scale=time_scale, clock=clock)
        self.job_delay = job_delay / time_scale
        self._tracking_default = event_tracking_enabled
        self._clock = clock
        self._lock = threading.RLock()
        self._reset_state()
        self.faults = AcFaults()
        self._dice = random.Random()
        from .activecampaign_webhooks import WebhookEmitter  # imported here: it imports this module

        self.emitter = WebhookEmitter(self)

    # ---- state -------------------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._ids: dict[str, int] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self._by_email: dict[str, str] = {}
        self.lists: dict[str, dict[str, Any]] = {}
        self.memberships: dict[tuple[str, str], dict[str, Any]] = {}  # (contact, list) → contactList
        self.tags: dict[str, dict[str, Any]] = {}
        self.contact_tags: dict[str, dict[str, Any]] = {}
        self.fields: dict[str, dict[str, Any]] = {}
        self.field_rels: dict[str, dict[str, Any]] = {}
        self.field_values: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, Batch] = {}
        self.event_names: dict[str, dict[str, Any]] = {}
        self.event_tracking = self._tracking_default
        self.tracked_events: list[dict[str, Any]] = []
        self.connections: dict[str, dict[str, Any]] = {}
        self.ecom_customers: dict[str, dict[str, Any]] = {}
        self.ecom_orders: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.webhook_deliveries: list[dict[str, Any]] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)

    def reset(self) -> None:
        """Forget every contact, list, tag, field, batch, event, order, webhook, request, fault and window."""
        with self._lock:
            self._reset_state()
            self.faults = AcFaults()
            self.limiter.reset()

    def _next_id(self, kind: str) -> str:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return str(self._ids[kind])

    def state(self) -> dict[str, Any]:
        with self._lock:
            self._advance_batches()
            by_operation = count_by_operation(self.requests)
            return {
                "sandbox": "activecampaign",
                "contacts": [self._contact_doc(c) for c in self.contacts.values()],
                "lists": list(self.lists.values()),
                "contactLists": list(self.memberships.values()),
                "tags": list(self.tags.values()),
                "contactTags": list(self.contact_tags.values()),
                "fields": list(self.fields.values()),
                "fieldRels": list(self.field_rels.values()),
                "fieldValues": list(self.field_values.values()),
                "batches": {bid: {**b.info(), "contacts": len(b.contacts)} for bid, b in self.batches.items()},
                "eventTracking": {"enabled": self.event_tracking},
                "eventTrackingEvents": sorted(self.event_names),
                "trackedEvents": list(self.tracked_events),
                "connections": list(self.connections.values()),
                "ecomCustomers": list(self.ecom_customers.values()),
                "ecomOrders": list(self.ecom_orders.values()),
                "webhooks": list(self.webhooks.values()),
                "requests": {"total": len(self.requests), "by_operation": by_operation},
            }

    # ---- WSGI ---------------------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        response.headers[AC_SANDBOX_HEADER[0]] = AC_SANDBOX_HEADER[1]
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = ROUTES.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
        except MethodNotAllowed:
            return _json({"message": "Method Not Allowed"}, 405)
        except NotFound:
            return _json({"message": f"{request.path} is not an endpoint of this ActiveCampaign sandbox."}, 404)
        except HTTPException as exc:
            return exc.get_response(request.environ)
        if endpoint.startswith("admin_"):
            handler: Callable[[Request], Response] = getattr(self, f"_{endpoint}")
            return handler(request)
        entry = self._capture(request, endpoint)
        try:
            response = self._serve(request, endpoint, dict(args))
        except AcError as error:
            response = error.response()
        entry["status"] = response.status_code
        self.emitter.flush()  # API-caused webhooks, queued under the lock, go out on a thread
        return response

    def _capture(self, request: Request, operation: str) -> dict[str, Any]:
        raw = request.get_data(cache=True)
        body: Any
        if operation == "track_event":
            body = {k: ("<redacted>" if k == "key" else v) for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            body = {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in body.items()}
        else:
            body = json_or_text(raw)
        entry = request_entry(request, operation, body, secret_header="api-token")
        with self._lock:
            self.requests.append(entry)
        return entry

    def _serve(self, request: Request, operation: str, args: dict[str, str]) -> Response:
        if operation == "track_event":
            self._inject_faults(operation)  # trackcmp: no Api-Token, no documented rate limit
            with self._lock:
                return self._op_track_event(request)
        self._authenticate(request)
        self._inject_faults(operation)
        limit = self._throttle(request, operation)
        body = self._body(request, operation)
        with self._lock:
            self._advance_batches()
            response: Response = getattr(self, f"_op_{operation}")(request, body, **args)
        response.headers["RateLimit-Limit"] = str(ACCOUNT_LIMIT.limit)
        response.headers["RateLimit-Remaining"] = str(limit)
        return response

    def _authenticate(self, request: Request) -> None:
        if request.headers.get("Api-Token", "").strip() not in self.api_tokens:
            raise AcError(403, {"message": "Forbidden"})

    def _inject_faults(self, operation: str) -> None:
        with self._lock:
            faults = self.faults
            rolled = roll_faults(faults, operation, self._dice)
            if rolled is None:
                return
            self.faults, roll = rolled
        apply_faults(
            faults,
            roll,
            throttled=_throttled,
            held=lambda: AcError(504, {"message": "Sandbox fault: request held, then timed out."}),
            failed=lambda status: AcError(status, {"message": "Sandbox fault: injected server error."}),
        )

    def _rejecting(self, operation: str) -> AcReject | None:
        faults = self.faults
        if faults.reject is None or (faults.operations is not None and operation not in faults.operations):
            return None
        return faults.reject

    def _throttle(self, request: Request, operation: str) -> int:
        """Count the request against the account's 5/s (and the importer's per-minute windows); 429 when spent.
        Returns what is left of the account window."""
        decision = self.limiter.hit("account", "api3", (ACCOUNT_LIMIT,))
        if not decision.allowed:
            raise _throttled(decision.retry_after)
        if operation == "bulk_import":
            multi = _contact_count(request.get_data(cache=True)) != 1
            kind, rate = ("bulk_import_multi", BULK_MULTI_LIMIT) if multi else ("bulk_import_single", BULK_SINGLE_LIMIT)
            bulk = self.limiter.hit("account", kind, (rate,))
            if not bulk.allowed:
                raise _throttled(bulk.retry_after)
        return decision.remaining

    def _body(self, request: Request, operation: str) -> Any:
        validator = _validators().get(operation)
        if validator is None:
            return None
        raw = request.get_data(cache=True)
        bulk = operation == "bulk_import"
        if bulk and len(raw) > MAX_IMPORT_BYTES:
            raise _bulk_error(f"Request size of {len(raw)} bytes exceeds the maximum of {MAX_IMPORT_BYTES} bytes.")
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            if bulk:
                raise _bulk_error(f"Invalid JSON: {exc}") from None
            raise AcError(400, {}) from None  # AC answers many malformed requests with an empty 400
        error = best_match(validator.iter_errors(body))
        if error is not None:
            found = _schema_error(error)
            if bulk:
                parts = found.pointer.strip("/").split("/")
                index = int(parts[1]) if len(parts) > 1 and parts[0] == "contacts" and parts[1].isdigit() else None
                reasons = [] if index is None else [{"contact": index, "failureReason": found.detail}]
                raise _bulk_error(f"{found.pointer}: {found.detail}", reasons)
            raise unprocessable(found.detail, found.pointer)
        return body

    # ---- contacts -----------------------------------------------------------------------------------------------

    def _contact_doc(self, contact: dict[str, Any]) -> dict[str, Any]:
        cid = contact["id"]
        links = {name: f"{BASE}/contacts/{cid}/{name}" for name in ("contactLists", "contactTags", "fieldValues")}
        return {**contact, "links": links}

    def _contact(self, contact_id: Any) -> dict[str, Any]:
        contact = self.contacts.get(_sid(contact_id))
        if contact is None:
            raise not_found("Contact not found")
        return contact

    def contact_by_email(self, email: str) -> dict[str, Any] | None:
        """The contact with this email (any case), or None (call under the lock)."""
        cid = self._by_email.get(email.strip().lower())
        return None if cid is None else self.contacts[cid]

    def upsert_contact(self, email: str, values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The contact with ``email`` updated with ``values`` (firstName, lastName, phone), or a new one (True)."""
        contact = self.contact_by_email(email)
        now = _now()
        created = contact is None
        if contact is None:
            cid = self._next_id("contact")
            contact = {
                "id": cid,
                "email": email.strip(),
                "firstName": "",
                "lastName": "",
                "phone": "",
                "cdate": now,
                "udate": now,
                "deleted": "0",
            }
            self.contacts[cid] = contact
            self._by_email[email.strip().lower()] = cid
        for name in ("firstName", "lastName", "phone"):
            if values.get(name) is not None:
                contact[name] = str(values[name])
        contact["udate"] = now
        return contact, created

    def set_field_value(self, contact_id: str, field_id: Any, value: Any) -> dict[str, Any]:
        """Create or replace the contact's value of a custom field (the field must exist)."""
        fid = _sid(field_id)
        if fid not in self.fields:
            raise unprocessable(f"Field {fid} does not exist.", "/fieldValue/field", code="field_missing")
        now = _now()
        for fv in self.field_values.values():
            if fv["contact"] == contact_id and fv["field"] == fid:
                fv.update(value=str(value), udate=now)
                return fv
        fv_id = self._next_id("fieldValue")
        fv = {"id": fv_id, "contact": contact_id, "field": fid, "value": str(value), "cdate": now, "udate": now}
        fv["owner"] = contact_id
        self.field_values[fv_id] = fv
        return fv

    def _of_contact(self, table: Iterable[dict[str, Any]], contact_id: str) -> list[dict[str, Any]]:
        return [row for row in table if row["contact"] == contact_id]

    def _op_sync_contact(self, request: Request, body: Any) -> Response:
        data = body["contact"]
        reject = self._rejecting("sync_contact")
        if reject is not None and reject.matches(data["email"]):
            raise unprocessable(reject.detail, "/contact/email", code="email_rejected")
        email = str(data["email"]).strip()
        if "@" not in email:
            raise unprocessable("Email address is invalid.", "/contact/email", code="email_invalid")
        for i, item in enumerate(data.get("fieldValues") or []):
            if not isinstance(item, dict) or "field" not in item or _sid(item["field"]) not in self.fields:
                raise unprocessable("Field does not exist.", f"/contact/fieldValues/{i}/field", code="field_missing")
        contact, created = self.upsert_contact(email, data)
        values = (
            [self.set_field_value(contact["id"], i["field"], i.get("value", "")) for i in data["fieldValues"]]
            if (data.get("fieldValues"))
            else []
        )
        return _json({"fieldValues": values, "contact": self._contact_doc(contact)}, 201 if created else 200)

    def _op_search_contacts(self, request: Request, _body: Any) -> Response:
        email = request.args.get("email")
        found = [
            self._contact_doc(c)
            for c in self.contacts.values()
            if email is None or c["email"].lower() == email.strip().lower()
        ]
        return _json({"contacts": found, "meta": {"total": str(len(found))}})

    def _op_get_contact(self, request: Request, _body: Any, id: str) -> Response:
        contact = self._contact(id)
        cid = contact["id"]
        return _json(
            {
                "contact": self._contact_doc(contact),
                "contactLists": self._of_contact(self.memberships.values(), cid),
                "contactTags": self._of_contact(self.contact_tags.values(), cid),
                "fieldValues": self._of_contact(self.field_values.values(), cid),
            }
        )

    def _op_delete_contact(self, request: Request, _body: Any, id: str) -> Response:
        contact = self._contact(id)
        cid = contact["id"]
        del self.contacts[cid]
        self._by_email.pop(contact["email"].lower(), None)
        self.memberships = {k: v for k, v in self.memberships.items() if k[0] != cid}
        self.contact_tags = {k: v for k, v in self.contact_tags.items() if v["contact"] != cid}
        self.field_values = {k: v for k, v in self.field_values.items() if v["contact"] != cid}
        return _json({})

    def _op_get_contact_lists(self, request: Request, _body: Any, id: str) -> Response:
        cid = self._contact(id)["id"]
        return _json({"contactLists": self._of_contact(self.memberships.values(), cid)})

    def _op_get_contact_tags(self, request: Request, _body: Any, id: str) -> Response:
        cid = self._contact(id)["id"]
        return _json({"contactTags": self._of_contact(self.contact_tags.values(), cid)})

    def _op_get_contact_field_values(self, request: Request, _body: Any, id: str) -> Response:
        cid = self._contact(id)["id"]
        return _json({"fieldValues": self._of_contact(self.field_values.values(), cid)})

    # ---- lists and list status ----------------------------------------------------------------------------------

    def _op_create_list(self, request: Request, body: Any) -> Response:
        data = body["list"]
        if any(lst["stringid"] == data["stringid"] for lst in self.lists.values()):
            raise unprocessable("A list with this stringid already exists.", "/list/stringid", code="duplicate")
        lid = self._next_id("list")
        names = ("name", "stringid", "sender_url", "sender_reminder")
        lst = {"id": lid, **{n: str(data[n]) for n in names}, "channel": str(data.get("channel") or "email")}
        lst["cdate"] = _now()
        self.lists[lid] = lst
        return _json({"list": lst}, 200)

    def _op_list_lists(self, request: Request, _body: Any) -> Response:
        lists = list(self.lists.values())
        return _json({"lists": lists, "meta": {"total": str(len(lists))}})

    def set_list_status(
        self, contact_id: str, list_id: str, status: int, *, sourceid: int = 0, via_import: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """Set a contact's status on a list (1 subscribed, 2 unsubscribed, 3 bounced). An import never turns an
        unsubscribed membership back to 1: returns (membership, False) then. True when the status changed."""
        key = (contact_id, list_id)
        now = _now()
        membership = self.memberships.get(key)
        if membership is None:
            membership = {
                "id": self._next_id("contactList"),
                "contact": contact_id,
                "list": list_id,
                "status": "0",
                "sourceid": str(sourceid),
                "sdate": None,
                "udate": None,
                "unsubreason": None,
                "cdate": now,
            }
            self.memberships[key] = membership
        old = membership["status"]
        if via_import and status == 1 and old == "2":
            return membership, False
        if old == str(status):
            return membership, False
        membership["status"] = str(status)
        membership["sourceid"] = str(sourceid)
        if status == 1:
            membership["sdate"] = now
        else:
            membership["udate"] = now  # unsubscribe (or bounce) date
        return membership, True

    def _op_update_list_status(self, request: Request, body: Any) -> Response:
        data = body["contactList"]
        contact = self._contact(data["contact"])
        lid = _sid(data["list"])
        if lid not in self.lists:
            raise not_found("List not found")
        status = _sid(data["status"])
        if status not in ("1", "2"):
            raise unprocessable("status must be 1 (subscribe) or 2 (unsubscribe).", "/contactList/status")
        if status == "1" and self.lists[lid].get("channel") == "sms" and not contact.get("phone"):
            # AC sends SMS to the contact's phone: subscribing a contact without one to an SMS list is refused.
            raise unprocessable(
                "Contact must have a phone number to be subscribed to an SMS list.", "/contactList/contact"
            )
        membership, changed = self.set_list_status(
            contact["id"], lid, int(status), sourceid=int(_sid(data.get("sourceid") or 0) or 0)
        )
        if changed:  # API-caused changes fire webhooks with initiated_from=api
            self.emitter.queue("subscribe" if status == "1" else "unsubscribe", contact, source="api", list_id=lid)
        return _json({"contacts": [self._contact_doc(contact)], "contactList": membership}, 200)

    # ---- tags ---------------------------------------------------------------------------------------------------

    def tag_by_name(self, name: str, *, create: bool) -> dict[str, Any] | None:
        for tag in self.tags.values():
            if tag["tag"].lower() == name.strip().lower():
                return tag
        if not create:
            return None
        tid = self._next_id("tag")
        tag = {"id": tid, "tag": name.strip(), "tagType": "contact", "description": "", "cdate": _now()}
        self.tags[tid] = tag
        return tag

    def _op_create_tag(self, request: Request, body: Any) -> Response:
        data = body["tag"]
        name = str(data.get("tag") or "").strip()
        if not name:
            raise unprocessable("Tag name is required.", "/tag/tag", code="field_missing")
        if self.tag_by_name(name, create=False) is not None:
            raise unprocessable("Tag already exists.", "/tag/tag", code="duplicate")
        tag = self.tag_by_name(name, create=True)
        assert tag is not None
        tag.update(tagType=str(data.get("tagType") or "contact"), description=str(data.get("description") or ""))
        return _json({"tag": tag}, 201)

    def _op_list_tags(self, request: Request, _body: Any) -> Response:
        search = (request.args.get("search") or request.args.get("filters[search]") or "").lower()
        tags = [t for t in self.tags.values() if search in t["tag"].lower()]
        return _json({"tags": tags, "meta": {"total": str(len(tags))}})

    def add_tag(self, contact_id: str, tag_id: str) -> dict[str, Any]:
        for ct in self.contact_tags.values():
            if ct["contact"] == contact_id and ct["tag"] == tag_id:
                return ct
        ctid = self._next_id("contactTag")
        ct = {"id": ctid, "contact": contact_id, "tag": tag_id, "cdate": _now()}
        self.contact_tags[ctid] = ct
        return ct

    def _op_add_contact_tag(self, request: Request, body: Any) -> Response:
        data = body["contactTag"]
        if "contact" not in data or "tag" not in data:
            raise unprocessable("contact and tag are required.", "/contactTag", code="field_missing")
        contact = self._contact(data["contact"])
        tid = _sid(data["tag"])
        if tid not in self.tags:
            raise not_found("Tag not found")
        return _json({"contactTag": self.add_tag(contact["id"], tid)}, 201)

    def _op_remove_contact_tag(self, request: Request, _body: Any, id: str) -> Response:
        if self.contact_tags.pop(_sid(id), None) is None:
            raise not_found("ContactTag not found")
        return _json({})

    # ---- fields -------------------------------------------------------------------------------------------------

    def _op_create_field(self, request: Request, body: Any) -> Response:
        data = body["field"]
        fid = self._next_id("field")
        perstag = str(data.get("perstag") or "".join(c if c.isalnum() else "_" for c in str(data["title"])).upper())
        fld = {
            "id": fid,
            "title": str(data["title"]),
            "type": str(data["type"]),
            "perstag": perstag,
            "descript": str(data.get("descript") or ""),
            "defval": str(data.get("defval") or ""),
            "cdate": _now(),
        }
        self.fields[fid] = fld
        return _json({"field": fld}, 201)

    def _op_list_fields(self, request: Request, _body: Any) -> Response:
        fields = list(self.fields.values())
        return _json({"fields": fields, "meta": {"total": str(len(fields))}})

    def _op_create_field_rel(self, request: Request, body: Any) -> Response:
        data = body.get("fieldRel") or {}
        fid, relid = _sid(data.get("field", "")), _sid(data.get("relid", "0"))
        if fid not in self.fields:
            raise unprocessable("Field does not exist.", "/fieldRel/field", code="field_missing")
        if relid != "0" and relid not in self.lists:
            raise unprocessable("List does not exist.", "/fieldRel/relid", code="list_missing")
        rid = self._next_id("fieldRel")
        rel = {"id": rid, "field": fid, "relid": relid, "cdate": _now()}
        self.field_rels[rid] = rel
        return _json({"fieldRel": rel}, 201)

    def _op_create_field_value(self, request: Request, body: Any) -> Response:
        data = body["fieldValue"]
        contact = self._contact(data["contact"])
        fv = self.set_field_value(contact["id"], data["field"], data["value"])
        return _json({"contacts": [self._contact_doc(contact)], "fieldValue": fv}, 200)

    def _op_update_field_value(self, request: Request, body: Any, id: str) -> Response:
        fv = self.field_values.get(_sid(id))
        if fv is None:
            raise not_found("FieldValue not found")
        data = body["fieldValue"]
        contact = self._contact(data["contact"])
        if _sid(data["field"]) not in self.fields:
            raise unprocessable("Field does not exist.", "/fieldValue/field", code="field_missing")
        fv.update(contact=contact["id"], field=_sid(data["field"]), value=str(data["value"]), udate=_now())
        return _json({"contacts": [self._contact_doc(contact)], "fieldValue": fv}, 200)

    # ---- bulk import --------------------------------------------------------------------------------------------

    def _op_bulk_import(self, request: Request, body: Any) -> Response:
        contacts: list[dict[str, Any]] = body["contacts"]
        if not contacts:
            raise _bulk_error("No contacts given.")
        if len(contacts) > MAX_IMPORT_CONTACTS:
            reasons = [
                {"contact": i, "failureReason": f"Exceeds the maximum of {MAX_IMPORT_CONTACTS} contacts per request."}
                for i in range(MAX_IMPORT_CONTACTS, len(contacts))
            ]
            raise _bulk_error(f"A request may carry at most {MAX_IMPORT_CONTACTS} contacts.", reasons)
        reasons = [
            {"contact": i, "failureReason": "Invalid email address."}
            for i, c in enumerate(contacts)
            if "@" not in str(c.get("email", ""))
        ]
        reject = self._rejecting("bulk_import")
        if reject is not None:
            reasons += [
                {"contact": i, "failureReason": reject.detail}
                for i, c in enumerate(contacts)
                if reject.matches(c.get("email"))
            ]
        if reasons:  # nothing of the request is imported
            raise _bulk_error("Contact import failed validation.", sorted(reasons, key=lambda r: r["contact"]))
        batch = Batch(str(uuid.uuid4()), [dict(c) for c in contacts], self._clock() + self.job_delay)
        self.batches[batch.id] = batch
        self._advance_batches()
        return _json(
            {"success": 1, "queued_contacts": len(contacts), "batchId": batch.id, "message": "Contact import queued"}
        )

    def _advance_batches(self) -> None:
        now = self._clock()
        for batch in self.batches.values():
            if batch.status == "processing" and now >= batch.due:
                for item in batch.contacts:
                    self._import_one(batch, item)
                batch.status, batch.completed = "completed", _now()

    def _import_one(self, batch: Batch, item: dict[str, Any]) -> None:
        """Apply one imported contact. No webhooks: AC's imports fire none."""
        email = str(item["email"])
        if any(_sid(f.get("id")) not in self.fields for f in item.get("fields") or []) or any(
            _sid(s.get("listid")) not in self.lists
            for s in [*(item.get("subscribe") or []), *(item.get("unsubscribe") or [])]
        ):
            batch.failure.append(email)
            return
        existing = self.contact_by_email(email)
        if not (item.get("phone") or (existing or {}).get("phone")) and any(
            self.lists[_sid(s.get("listid"))].get("channel") == "sms" for s in item.get("subscribe") or []
        ):  # an SMS list member needs a phone, as contactLists answers 422 (the import fails that contact)
            batch.failure.append(email)
            return
        values = {"firstName": item.get("first_name"), "lastName": item.get("last_name"), "phone": item.get("phone")}
        contact, _ = self.upsert_contact(email, values)
        cid = contact["id"]
        for name in item.get("tags") or []:
            tag = self.tag_by_name(str(name), create=True)
            assert tag is not None
            self.add_tag(cid, tag["id"])
        for f in item.get("fields") or []:
            self.set_field_value(cid, f["id"], f.get("value", ""))
        for sub in item.get("subscribe") or []:
            lid = _sid(sub["listid"])
            membership, _ = self.set_list_status(cid, lid, 1, sourceid=0, via_import=True)
            if membership["status"] == "2":
                batch.refused.append({"contact": cid, "email": email, "listid": lid, "reason": "unsubscribed"})
        for unsub in item.get("unsubscribe") or []:
            self.set_list_status(cid, _sid(unsub["listid"]), 2, via_import=True)
        batch.success.append(cid)

    def _op_bulk_import_status(self, request: Request, _body: Any) -> Response:
        groups: dict[str, dict[str, dict[str, int]]] = {"outstanding": {}, "recentlyCompleted": {}}
        for batch in self.batches.values():
            kind = "recentlyCompleted" if batch.status == "completed" else "outstanding"
            day = groups[kind].setdefault(batch.created[:10], {"batches": 0, "contacts": 0})
            day["batches"] += 1
            day["contacts"] += len(batch.contacts)
        return _json({kind: [{"forDate": d, **counts} for d, counts in days.items()] for kind, days in groups.items()})

    def _op_bulk_import_info(self, request: Request, _body: Any) -> Response:
        batch = self.batches.get(request.args.get("batchId", ""))
        if batch is None:
            raise AcError(400, {"message": "Batch not found"})
        return _json(batch.info())

    # ---- event tracking -----------------------------------------------------------------------------------------

    def _op_create_event_name(self, request: Request, body: Any) -> Response:
        name = str(body["eventTrackingEvent"]["name"])
        if not name or len(name) > MAX_EVENT_NAME:
            raise unprocessable(
                f"Event name must be 1 to {MAX_EVENT_NAME} characters.", "/eventTrackingEvent/name", code="invalid"
            )
        if name in self.event_names:
            raise unprocessable("Event name already exists.", "/eventTrackingEvent/name", code="duplicate")
        self.event_names[name] = {"name": name}
        return _json({"eventTrackingEvent": {"name": name}}, 201)

    def _op_list_event_names(self, request: Request, _body: Any) -> Response:
        names = list(self.event_names.values())
        return _json({"eventTrackingEvents": names, "meta": {"total": str(len(names))}})

    def _op_get_event_tracking(self, request: Request, _body: Any) -> Response:
        return _json({"eventTracking": {"enabled": self.event_tracking}})

    def _op_set_event_tracking(self, request: Request, body: Any) -> Response:
        enabled = body["eventTracking"]["enabled"]
        if not isinstance(enabled, bool):
            raise unprocessable("enabled must be a boolean.", "/eventTracking/enabled")
        self.event_tracking = enabled
        return _json({"eventTracking": {"enabled": enabled}})

    def _op_track_event(self, request: Request) -> Response:
        def refused(message: str) -> Response:
            return _json({"success": 0, "message": message})

        if request.mimetype != "application/x-www-form-urlencoded":
            return refused("Content-Type must be application/x-www-form-urlencoded.")
        form = request.form
        if form.get("actid") != self.actid or form.get("key") != self.event_key:
            return refused("Invalid actid or key.")
        name = form.get("event", "")
        if not name:
            return refused("event is required.")
        if len(name) > MAX_EVENT_NAME:
            return refused(f"event must be at most {MAX_EVENT_NAME} characters.")
        try:
            visit = json.loads(form.get("visit", ""))
        except ValueError:
            return refused("visit must be a JSON object with an email.")
        email = visit.get("email") if isinstance(visit, dict) else None
        if not isinstance(email, str) or "@" not in email:
            return refused("visit must be a JSON object with an email.")
        reject = self._rejecting("track_event")
        if reject is not None and reject.matches(email):
            return refused(reject.detail)
        if not self.event_tracking:
            return refused("Event tracking is not enabled for this account.")
        if name not in self.event_names:
            return refused(f"Event {name!r} is not registered (POST /api/3/eventTrackingEvents).")
        contact = self.contact_by_email(email)
        self.tracked_events.append(
            {
                "event": name,
                "eventdata": form.get("eventdata"),
                "email": email,
                "contact": None if contact is None else contact["id"],
                "time": _now(),
            }
        )
        return _json({"success": 1, "message": "Event spawned"})

    # ---- Deep Data ----------------------------------------------------------------------------------------------

    def _op_create_connection(self, request: Request, body: Any) -> Response:
        data = body["connection"]
        for c in self.connections.values():
            if c["service"] == str(data["service"]) and c["externalid"] == str(data["externalid"]):
                raise unprocessable(
                    "A connection with this service and externalid already exists.",
                    "/connection/externalid",
                    code="duplicate",
                )
        cid = self._next_id("connection")
        names = ("service", "externalid", "name", "logoUrl", "linkUrl")
        connection = {"id": cid, **{n: str(data[n]) for n in names}, "status": "1", "syncStatus": "0"}
        connection |= {"isInternal": "0", "cdate": _now(), "udate": _now()}
        self.connections[cid] = connection
        return _json({"connection": connection}, 200)

    def _op_list_connections(self, request: Request, _body: Any) -> Response:
        connections = list(self.connections.values())
        return _json({"connections": connections, "meta": {"total": str(len(connections))}})

    def _op_create_ecom_customer(self, request: Request, body: Any) -> Response:
        data = body["ecomCustomer"]
        conn = _sid(data["connectionid"])
        if conn not in self.connections:
            raise unprocessable("Connection does not exist.", "/ecomCustomer/connectionid", code="invalid")
        for c in self.ecom_customers.values():
            if c["connectionid"] == conn and c["externalid"] == str(data["externalid"]):
                raise unprocessable(
                    "A customer with this externalid already exists for this connection.",
                    "/ecomCustomer/externalid",
                    code="duplicate",
                )
        cid = self._next_id("ecomCustomer")
        customer = {
            "id": cid,
            "connectionid": conn,
            "externalid": str(data["externalid"]),
            "email": str(data["email"]),
            "acceptsMarketing": _sid(data.get("acceptsMarketing", "0")),
            "cdate": _now(),
        }
        self.ecom_customers[cid] = customer
        return _json({"ecomCustomer": customer}, 201)

    def _op_list_ecom_customers(self, request: Request, _body: Any) -> Response:
        found = _filtered(self.ecom_customers.values(), request, ("email", "connectionid", "externalid"))
        return _json({"ecomCustomers": found, "meta": {"total": str(len(found))}})

    def _order_doc(self, data: dict[str, Any], order: dict[str, Any]) -> None:
        copied = {k: v for k, v in data.items() if k not in ("connectionid", "customerid", "source")}
        order.update(copied)
        for key in ("externalid", "externalcheckoutid"):
            if order.get(key) is not None:
                order[key] = str(order[key])
        order["udate"] = _now()

    def _op_create_ecom_order(self, request: Request, body: Any) -> Response:
        data = body["ecomOrder"]
        conn, customer = _sid(data["connectionid"]), _sid(data["customerid"])
        if conn not in self.connections:
            raise unprocessable("Connection does not exist.", "/ecomOrder/connectionid")
        if customer not in self.ecom_customers:
            raise unprocessable("Customer does not exist.", "/ecomOrder/customerid")
        source = _sid(data["source"])
        if source not in ("0", "1"):
            raise unprocessable("source must be 1 (real-time) or 0 (historical).", "/ecomOrder/source")
        externalid = None if data.get("externalid") is None else str(data["externalid"])
        checkout = None if data.get("externalcheckoutid") is None else str(data["externalcheckoutid"])
        same = [o for o in self.ecom_orders.values() if o["connectionid"] == conn]
        if externalid is not None and any(o.get("externalid") == externalid for o in same):
            raise unprocessable(
                "An order with this externalid already exists for this connection.",
                "/ecomOrder/externalid",
                code="duplicate",
            )
        cart = next((o for o in same if checkout is not None and o.get("externalcheckoutid") == checkout), None)
        if cart is not None and externalid is None:
            raise unprocessable(
                "A cart with this externalcheckoutid already exists for this connection.",
                "/ecomOrder/externalcheckoutid",
                code="duplicate",
            )
        if cart is not None:  # an order completing that cart: the cart becomes the order
            self._order_doc(data, cart)
            cart.update(source=source, abandonedDate=None, abandoned_cart_converted=True)
            return _json({"ecomOrder": cart, "ecomOrderProducts": cart.get("orderProducts") or []}, 201)
        oid = self._next_id("ecomOrder")
        order: dict[str, Any] = {"id": oid, "connectionid": conn, "customerid": customer, "source": source}
        order |= {"externalid": None, "externalcheckoutid": None, "abandonedDate": None, "cdate": _now()}
        self._order_doc(data, order)
        self.ecom_orders[oid] = order
        return _json({"ecomOrder": order, "ecomOrderProducts": order.get("orderProducts") or []}, 201)

    def _op_update_ecom_order(self, request: Request, body: Any, id: str) -> Response:
        order = self.ecom_orders.get(_sid(id))
        if order is None:
            raise not_found("Order not found")
        data = body["ecomOrder"]
        externalid = data.get("externalid")
        if externalid is not None and any(
            o is not order and o["connectionid"] == order["connectionid"] and o.get("externalid") == str(externalid)
            for o in self.ecom_orders.values()
        ):
            raise unprocessable(
                "An order with this externalid already exists.", "/ecomOrder/externalid", code="duplicate"
            )
        was_cart = order.get("externalid") is None
        self._order_doc(data, order)
        if was_cart and order.get("externalid") is not None and "abandonedDate" not in data:
            order.update(abandonedDate=None, abandoned_cart_converted=True)
        return _json({"ecomOrder": order, "ecomOrderProducts": order.get("orderProducts") or []}, 200)

    def _op_list_ecom_orders(self, request: Request, _body: Any) -> Response:
        names = ("email", "connectionid", "customerid", "externalid", "externalcheckoutid")
        found = _filtered(self.ecom_orders.values(), request, names)
        return _json({"ecomOrders": found, "meta": {"total": str(len(found))}})

    # ---- webhooks -----------------------------------------------------------------------------------------------

    def _op_create_webhook(self, request: Request, body: Any) -> Response:
        data = body["webhook"]
        for key, allowed in (("events", WEBHOOK_EVENTS), ("sources", WEBHOOK_SOURCES)):
            for i, value in enumerate(data[key]):
                if value not in allowed:
                    raise unprocessable(f"Unknown {key[:-1]} {value!r}.", f"/webhook/{key}/{i}")
        url = str(data["url"])
        if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            # AC takes http(s); the sandbox refuses non-local http so that nothing leaves the machine by accident
            raise unprocessable("url must be https (or a local http URL in the sandbox).", "/webhook/url")
        wid = self._next_id("webhook")
        webhook = {
            "id": wid,
            "name": str(data["name"]),
            "url": url,
            "events": list(data["events"]),
            "sources": list(data["sources"]),
            "listid": _sid(data.get("listid") or "0"),
            "state": "active",
            "cdate": _now(),
        }
        self.webhooks[wid] = webhook
        return _json({"webhook": webhook}, 201)

    def _op_list_webhooks(self, request: Request, _body: Any) -> Response:
        hooks = list(self.webhooks.values())
        return _json({"webhooks": hooks, "meta": {"total": str(len(hooks))}})

    def _op_list_webhook_events(self, request: Request, _body: Any) -> Response:
        return _json({"webhookEvents": list(WEBHOOK_EVENTS), "meta": {"total": len(WEBHOOK_EVENTS)}})

    # ---- admin (no AC auth) -------------------------------------------------------------------------------------

    def index(self) -> dict[str, Any]:
        return {
            "sandbox": "activecampaign",
            "notice": "This is the espbridge ESP sandbox, NOT ActiveCampaign. Nothing sent here reaches a real account",
            "api": "/api/3/",
            "trackcmp": "/event",
            "admin": f"{ADMIN_PREFIX}/",
            "operations": list(OPERATIONS),
        }

    def _admin_index(self, request: Request) -> Response:
        return _json(self.index())

    def _admin_state(self, request: Request) -> Response:
        return Response(json.dumps(self.state(), default=str), content_type="application/json")

    def _admin_requests(self, request: Request) -> Response:
        operation = request.args.get("operation")
        with self._lock:
            entries = [e for e in self.requests if operation is None or e["operation"] == operation]
        return _json({"requests": entries})

    def _admin_faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                faults = AcFaults.model_validate_json(request.get_data() or b"{}")
            except ValidationError as exc:
                return Response(exc.json(), status=400, content_type="application/json")
            unknown = set(faults.operations or ()) - set(OPERATIONS)
            if unknown:
                return _json({"error": f"unknown operations: {sorted(unknown)}"}, 400)
            with self._lock:
                self.faults = faults
                self._dice = random.Random(faults.seed)
        return Response(self.faults.model_dump_json(), content_type="application/json")

    def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return _json({"reset": True})

    def _admin_engagement(self, request: Request) -> Response:
        return self.emitter.record(request)

    def _admin_webhook_deliveries(self, request: Request) -> Response:
        return self.emitter.deliveries(request)


def _filtered(rows: Iterable[dict[str, Any]], request: Request, names: Iterable[str]) -> list[dict[str, Any]]:
    """Rows matching every ``filters[name]=value`` given (emails compared in any case)."""
    wanted = {n: request.args[f"filters[{n}]"] for n in names if f"filters[{n}]" in request.args}
    return [
        row
        for row in rows
        if all(
            str(row.get(n) or "").lower() == v.lower() if n == "email" else str(row.get(n)) == v
            for n, v in wanted.items()
        )
    ]


def _contact_count(raw: bytes) -> int:
    """How many contacts a bulk_import body carries (for its rate limit, before validation); -1 if unreadable."""
    try:
        contacts = json.loads(raw).get("contacts")
    except (ValueError, AttributeError):
        return -1
    return len(contacts) if isinstance(contacts, list) else -1


def _bulk_error(message: str, reasons: list[dict[str, Any]] | None = None) -> AcError:
    return AcError(400, {"success": 0, "message": message, "failureReasons": reasons or []})


def _throttled(retry_after: float) -> AcError:
    return AcError(429, {"message": "Too Many Requests"}, {"Retry-After": retry_after_header(retry_after)})
