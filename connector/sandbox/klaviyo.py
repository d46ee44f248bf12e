"""The Klaviyo part of the ESP sandbox: a WSGI app (werkzeug) emulating the Klaviyo endpoints espbridge uses.

THIS IS A SANDBOX, NOT KLAVIYO. Every response carries ``X-Espbridge-Sandbox: klaviyo``.

Each request to ``/api/…`` goes through the same gates as on Klaviyo, in this order: the route (404/405), the
``Authorization: Klaviyo-API-Key <key>`` header against the accepted keys (401), the ``revision`` header (400),
fault injection (``/_sandbox/faults``), the operation's burst/steady/daily windows per API key (429 with
``Retry-After``), then the JSON body against the operation's request schema from Klaviyo's OpenAPI spec (400 naming
``source.pointer``; the documented payload limits, checked on the raw body first: 5 MB for bulk profile import
and bulk create events, 100 KB for the single-profile writes, counted as 5,000,000 / 100,000 bytes, the stricter
reading of "MB"/"KB"; the spec documents no 413, so this is a 400 pointing at ``/data``). Errors use Klaviyo's
format ``{"errors": [{"id", "status", "code", "title", "detail", "source"}]}``. State lives in memory, behind one
lock. Every request is recorded (Authorization left out) for contract tests.

Jobs. The operations whose 202 carries a job with a ``status`` (bulk profile import, bulk suppress/unsuppress) go
``queued`` → ``processing`` → ``complete`` over ``job_delay`` seconds (constructor / ``--job-delay``, divided by
``time_scale`` like the rate-limit windows): queued for the first half, then processing with their records
applied in order, in proportion to the time elapsed, so ``completed_count`` and ``failed_count`` grow as they do
at Klaviyo; ``complete`` (``completed_at``, ``expires_at`` = 7 days later) at the end. ``completed_count`` counts
the records applied, ``failed_count`` those refused: at completion they add up to ``total_count``. With
``job_delay`` 0 (the default) a job is complete when its POST returns. Jobs advance whenever a request (or the
admin state) looks at the sandbox, under the lock, so there is no background thread. The other bulk operations
(events, subscribe, unsubscribe, deletion) answer 202 without a job document in the spec, and take effect at once.

Per-record rejections (fault ``reject``: records whose email is in ``emails`` or whose email, phone_number or
external_id contains one of ``contains``) answer as Klaviyo does for each kind of operation:

- single-record writes (profile import, create/update profile, create event, deletion request): 400 in Klaviyo's
  error format, ``source.pointer`` at the offending identifier (``/data/attributes/email``);
- bulk profile import: the only operation with a per-record error report. The job is accepted (202), the rejected
  records are counted in ``failed_count`` and listed at ``…/import-errors`` (code, title, detail, pointer into the
  request, ``original_payload``) while the others are imported. A profile over the documented 100 KB per-profile
  limit fails the same way;
- every other batch (bulk subscribe/unsubscribe, suppress/unsuppress, bulk events, list membership): these have
  no per-record report (202 without a body, or a job without ``failed_count``), so the one way Klaviyo can refuse
  a record is its synchronous validation: a 400 for the whole request whose pointer names the record
  (``/data/attributes/profiles/data/<i>/attributes/email``, ``/data/attributes/events-bulk-create/data/<i>/…``,
  ``/data/<i>/id``), nothing in it taking effect, as the spec says of a repeated ``unique_id`` in a bulk event
  request. How Klaviyo words each case is not documented; the sandbox lists every rejected record, one error
  each (the error format is a list), so a client can tell the refused records from the rest and resend those.

Admin endpoints (no Klaviyo auth): ``GET /_sandbox/state``, ``GET /_sandbox/requests``, ``POST /_sandbox/faults``,
``POST /_sandbox/reset``; ``POST /_sandbox/engagement`` and ``GET /_sandbox/webhook-deliveries`` (engagement events
delivered as signed webhooks, with ``GET /api/metrics`` and ``GET /api/events``: klaviyo_webhooks.py).
"""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .common import apply_faults, count_by_operation, json_or_text, request_entry, roll_faults
from .ratelimit import FixedWindowLimiter, retry_after_header
from .spec import Operation, load_operations, spec_revision

__all__ = ["DEFAULT_API_KEY", "SANDBOX_HEADER", "Faults", "KlaviyoSandbox", "Reject"]

SANDBOX_HEADER = ("X-Espbridge-Sandbox", "klaviyo")
DEFAULT_API_KEY = "pk_sandbox_klaviyo"
MEDIA_TYPE = "application/vnd.api+json"
BASE = "https://sandbox.invalid"  # links point nowhere real: this is not a.klaviyo.com
REQUEST_LOG_SIZE = 10_000
MAX_HOLD_SECONDS = 300.0
_REVISION_FORMAT = r"^\d{4}-\d{2}-\d{2}(\.pre)?$"
_IDENTIFIERS = ("email", "phone_number", "external_id")
_PROFILE_FIELDS = (
    *_IDENTIFIERS,
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
    "location",
)
_BATCH_LIMITS = {  # operationId → (pointer of the list, most items per request), from the spec's descriptions
    "bulk_import_profiles": ("/data/attributes/profiles/data", 10_000),
    "bulk_subscribe_profiles": ("/data/attributes/profiles/data", 1_000),
    "bulk_unsubscribe_profiles": ("/data/attributes/profiles/data", 100),
    "bulk_suppress_profiles": ("/data/attributes/profiles/data", 100),
    "bulk_unsuppress_profiles": ("/data/attributes/profiles/data", 100),
    "add_profiles_to_list": ("/data", 1_000),
    "remove_profiles_from_list": ("/data", 1_000),
}
MAX_EVENTS_PER_BULK_JOB = 1_000
#: Documented payload limits per operation ("The maximum allowed payload size is 5MB/100KB"), in bytes.
PAYLOAD_LIMITS = {
    "bulk_import_profiles": 5_000_000,
    "bulk_create_events": 5_000_000,
    "create_or_update_profile": 100_000,
    "create_profile": 100_000,
    "update_profile": 100_000,
}
MAX_BULK_PROFILE_BYTES = 100_000  # "The maximum allowed payload size per-profile is 100KB" (bulk import)
JOB_EXPIRY = timedelta(days=7)
CLEARED_BY_SUBSCRIBE = {"UNSUBSCRIBE", "SPAM_REPORT", "USER_SUPPRESSED"}

ROUTES = Map(
    [
        Rule("/api/profile-import", methods=["POST"], endpoint="create_or_update_profile"),
        Rule("/api/profiles", methods=["POST"], endpoint="create_profile"),
        Rule("/api/profiles/<id>", methods=["PATCH"], endpoint="update_profile"),
        Rule("/api/profiles/<id>", methods=["GET"], endpoint="get_profile"),
        Rule("/api/profile-bulk-import-jobs", methods=["POST"], endpoint="bulk_import_profiles"),
        Rule("/api/profile-bulk-import-jobs/<id>", methods=["GET"], endpoint="get_bulk_import_profiles_job"),
        Rule(
            "/api/profile-bulk-import-jobs/<id>/import-errors",
            methods=["GET"],
            endpoint="get_errors_for_bulk_import_profiles_job",
        ),
        Rule("/api/events", methods=["POST"], endpoint="create_event"),
        Rule("/api/event-bulk-create-jobs", methods=["POST"], endpoint="bulk_create_events"),
        Rule("/api/profile-subscription-bulk-create-jobs", methods=["POST"], endpoint="bulk_subscribe_profiles"),
        Rule("/api/profile-subscription-bulk-delete-jobs", methods=["POST"], endpoint="bulk_unsubscribe_profiles"),
        Rule("/api/profile-suppression-bulk-create-jobs", methods=["POST"], endpoint="bulk_suppress_profiles"),
        Rule("/api/profile-suppression-bulk-delete-jobs", methods=["POST"], endpoint="bulk_unsuppress_profiles"),
        Rule("/api/lists", methods=["POST"], endpoint="create_list"),
        Rule("/api/lists/<id>/relationships/profiles", methods=["POST"], endpoint="add_profiles_to_list"),
        Rule("/api/lists/<id>/relationships/profiles", methods=["DELETE"], endpoint="remove_profiles_from_list"),
        Rule("/api/data-privacy-deletion-jobs", methods=["POST"], endpoint="request_profile_deletion"),
        Rule("/api/webhooks", methods=["POST"], endpoint="create_webhook"),
        Rule("/api/webhooks", methods=["GET"], endpoint="get_webhooks"),
        Rule("/api/metrics", methods=["GET"], endpoint="get_metrics"),
        Rule("/api/events", methods=["GET"], endpoint="get_events"),
        Rule("/_sandbox/", methods=["GET"], endpoint="admin_index"),
        Rule("/_sandbox/state", methods=["GET"], endpoint="admin_state"),
        Rule("/_sandbox/requests", methods=["GET"], endpoint="admin_requests"),
        Rule("/_sandbox/faults", methods=["GET", "POST"], endpoint="admin_faults"),
        Rule("/_sandbox/reset", methods=["POST"], endpoint="admin_reset"),
        Rule("/_sandbox/engagement", methods=["POST"], endpoint="admin_engagement"),
        Rule("/_sandbox/webhook-deliveries", methods=["GET"], endpoint="admin_webhook_deliveries"),
    ],
    strict_slashes=False,
)


class Reject(BaseModel):
    """Which records to refuse (fault ``reject``), and what Klaviyo's error says about them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    emails: list[str] = Field(default_factory=list, description="Records with one of these emails (any case).")
    contains: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Records whose email, phone_number or external_id contains one of these (any case).",
    )
    detail: str = Field("Sandbox fault: this record is rejected.", min_length=1)
    code: str = Field("invalid", min_length=1)

    def matches(self, attributes: Mapping[str, Any]) -> str | None:
        """The identifier (``email``, ``phone_number``, ``external_id``) that makes a record rejected, or None."""
        emails = {email.strip().lower() for email in self.emails}
        needles = [needle.lower() for needle in self.contains]
        for name in _IDENTIFIERS:
            value = attributes.get(name)
            if value is None:
                continue
            text = str(value).strip().lower()
            if (name == "email" and text in emails) or any(needle in text for needle in needles):
                return name
        return None

    def error(self, pointer: str) -> ApiError:
        return ApiError(400, self.code, "Invalid input.", self.detail, pointer=pointer)


class Faults(BaseModel):
    """Fault injection, switched with ``POST /_sandbox/faults`` (the body replaces the whole setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered with error_status.")
    error_status: int = Field(503, ge=500, le=599)
    timeout_rate: float = Field(0.0, ge=0, le=1, description="Share of requests held timeout_seconds, then 504.")
    timeout_seconds: float = Field(0.0, ge=0, le=MAX_HOLD_SECONDS)
    slow_seconds: float = Field(0.0, ge=0, le=MAX_HOLD_SECONDS, description="Delay before every request is served.")
    storm_429: int = Field(0, ge=0, description="The next N requests are answered 429 whatever the windows say.")
    storm_retry_after: int = Field(1, ge=0)
    reject: Reject | None = Field(None, description="Refuse chosen records, the way Klaviyo refuses each operation.")
    operations: list[str] | None = Field(None, description="Limit the faults to these operationIds (None: all).")
    seed: int | None = Field(None, description="Seed of the fault dice, for reproducible runs.")


@dataclass
class Profile:
    id: str
    attributes: dict[str, Any]
    properties: dict[str, Any]
    created: str
    updated: str
    consent: dict[str, str] = field(default_factory=dict)  # channel (email, sms, …) → SUBSCRIBED | UNSUBSCRIBED
    suppressions: set[str] = field(default_factory=set)  # email suppression reasons

    def resource(self, with_subscriptions: bool = False) -> dict[str, Any]:
        attributes: dict[str, Any] = {name: self.attributes.get(name) for name in _PROFILE_FIELDS}
        attributes.update(created=self.created, updated=self.updated, properties=self.properties)
        if with_subscriptions:
            attributes["subscriptions"] = self.subscriptions()
        return {
            "type": "profile",
            "id": self.id,
            "attributes": attributes,
            "links": {"self": f"{BASE}/api/profiles/{self.id}/"},
        }

    def subscriptions(self) -> dict[str, Any]:
        email = self.consent.get("email", "NEVER_SUBSCRIBED")
        return {
            "email": {
                "marketing": {
                    "can_receive_email_marketing": email == "SUBSCRIBED" and not self.suppressions,
                    "consent": email,
                    "suppression": [{"reason": reason} for reason in sorted(self.suppressions)],
                }
            },
            "sms": {"marketing": {"consent": self.consent.get("sms", "NEVER_SUBSCRIBED")}},
        }


@dataclass
class Job:
    """An asynchronous job: ``items`` are applied one by one by ``apply`` (which returns an import error or None)
    while the job is processing, between ``start + delay / 2`` and ``start + delay`` on the sandbox's clock."""

    id: str
    kind: str  # the JSON:API type: profile-bulk-import-job, profile-suppression-bulk-create-job, …
    start: float  # sandbox clock when created
    delay: float  # seconds from created to complete (already divided by time_scale)
    items: list[Any]
    apply: Callable[[int, Any], dict[str, Any] | None] = field(repr=False)
    lists: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: _now())
    status: str = "queued"
    started_at: str | None = None
    completed_at: str | None = None
    expires_at: str | None = None
    done: int = 0  # items applied, failed ones included
    errors: list[dict[str, Any]] = field(default_factory=list)

    def advance(self, now: float) -> None:
        """Apply the items due by ``now``; move through queued → processing → complete."""
        if self.status == "complete":
            return
        elapsed = now - self.start
        half = self.delay / 2
        if self.delay > 0 and elapsed < half:
            return
        if self.status == "queued":
            self.status, self.started_at = "processing", _now()
        total = len(self.items)
        finished = self.delay <= 0 or elapsed >= self.delay
        target = total if finished else min(total, int(total * (elapsed - half) / half))
        while self.done < target:
            error = self.apply(self.done, self.items[self.done])
            if error is not None:
                self.errors.append(error)
            self.done += 1
        if finished:
            completed = datetime.now(UTC)
            self.status = "complete"
            self.completed_at = completed.isoformat(timespec="seconds")
            self.expires_at = (completed + JOB_EXPIRY).isoformat(timespec="seconds")

    def attributes(self) -> dict[str, Any]:
        """The job's attributes as the spec's job resources carry them (import jobs also have failed/started/expiry)."""
        attributes: dict[str, Any] = {
            "status": self.status,
            "created_at": self.created_at,
            "total_count": len(self.items),
            "completed_count": self.done - len(self.errors),
            "completed_at": self.completed_at,
        }
        if self.kind == "profile-bulk-import-job":
            attributes |= {
                "failed_count": len(self.errors),
                "started_at": self.started_at,
                "expires_at": self.expires_at,
            }
        return attributes

    def resource(self) -> dict[str, Any]:
        link = {"self": f"{BASE}/api/{self.kind}s/{self.id}/"}
        resource: dict[str, Any] = {"type": self.kind, "id": self.id, "attributes": self.attributes(), "links": link}
        if self.kind == "profile-bulk-import-job":
            resource["relationships"] = {"lists": {"data": [{"type": "list", "id": lid} for lid in self.lists]}}
        return resource


class ApiError(Exception):
    """A request refused in Klaviyo's error format (``others``: more errors listed in the same response)."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        pointer: str | None = None,
        parameter: str | None = None,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        others: Sequence[ApiError] = (),
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.source = {"pointer": pointer} if pointer is not None else {"parameter": parameter} if parameter else {}
        self.meta, self.headers = meta, headers or {}
        self.others = tuple(others)

    def document(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": self.status,
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
            "source": self.source,
        }
        if self.meta is not None:
            error["meta"] = self.meta
        return error

    def response(self) -> Response:
        errors = [self.document(), *(other.document() for other in self.others)]
        return _json({"errors": errors}, self.status, headers=self.headers)


def refuse(errors: Sequence[ApiError]) -> None:
    """Raise the first of ``errors`` carrying the rest (one response listing them all); nothing when empty."""
    if errors:
        first = errors[0]
        first.others = tuple(errors[1:])
        raise first


def invalid(detail: str, pointer: str) -> ApiError:
    return ApiError(400, "invalid", "Invalid input.", detail, pointer=pointer)


def not_found(detail: str) -> ApiError:
    return ApiError(404, "not_found", "Not found.", detail)


def _json(document: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document), status=status, headers=headers, content_type=MEDIA_TYPE)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _profile_id() -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # ULID-like, as Klaviyo's profile ids look
    return "01" + "".join(secrets.choice(alphabet) for _ in range(24))


def _short_id() -> str:
    return secrets.token_urlsafe(6)[:6]


def _norm(name: str, value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text.lower() if name == "email" else text


class KlaviyoSandbox:
    """The emulated Klaviyo account(s): a WSGI callable; ``api_keys`` are the accepted private keys.

    ``job_delay``: seconds a bulk job takes from queued to complete (divided by ``time_scale``); 0: at once.
    ``clock``: monotonic seconds, for the rate-limit windows and the jobs (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        time_scale: float = 1.0,
        job_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_keys = frozenset(api_keys)
        if not self.api_keys:
            raise ValueError("the sandbox needs at least one accepted API key")
        if job_delay < 0:
            raise ValueError("job_delay must not be negative")
        self.operations: dict[str, Operation] = load_operations()
        self.revision = spec_revision()
        self.limiter = FixedWindowLimiter(time_scale=time_scale, clock=clock)
        self.job_delay = job_delay / time_scale
        self._clock = clock
        self._lock = threading.RLock()
        self._reset_state()
        self.faults = Faults()
        self._dice = random.Random()
        from .klaviyo_webhooks import EngagementEmulator  # imported here: it imports this module

        self.engagement = EngagementEmulator(self)

    # ---- state -------------------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self.profiles: dict[str, Profile] = {}
        self._index: dict[tuple[str, str], str] = {}  # (identifier kind, normalised value) → profile id
        self.metrics: dict[str, str] = {}  # name → id
        self.events: list[dict[str, Any]] = []
        self._event_keys: set[tuple[str, str, str]] = set()
        self.events_deduplicated = 0
        self.lists: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self._running: list[Job] = []  # jobs not complete yet, oldest first
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.webhook_deliveries: list[dict[str, Any]] = []  # signed webhooks sent (klaviyo_webhooks.py)
        self.deletions: list[dict[str, Any]] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)

    def reset(self) -> None:
        """Forget every profile, event, list, job, webhook, captured request, fault and rate-limit window."""
        with self._lock:
            self._reset_state()
            self.faults = Faults()
            self.limiter.reset()

    def state(self) -> dict[str, Any]:
        with self._lock:
            self._advance_jobs()
            subscriptions = {p.id: dict(p.consent) for p in self.profiles.values() if p.consent}
            suppressions = {p.id: sorted(p.suppressions) for p in self.profiles.values() if p.suppressions}
            lists = {lid: {**lst, "members": sorted(lst["members"])} for lid, lst in self.lists.items()}
            by_operation = count_by_operation(self.requests)
            return {
                "sandbox": "klaviyo",
                "profiles": [p.resource(with_subscriptions=True) for p in self.profiles.values()],
                "events": list(self.events),
                "events_deduplicated": self.events_deduplicated,
                "metrics": dict(self.metrics),
                "subscriptions": subscriptions,
                "suppressions": suppressions,
                "lists": lists,
                "jobs": {
                    jid: {"kind": job.kind, **job.attributes(), "lists": job.lists} for jid, job in self.jobs.items()
                },
                "webhooks": [self._webhook_resource(w, secret=True) for w in self.webhooks.values()],
                "deletions": list(self.deletions),
                "requests": {"total": len(self.requests), "by_operation": by_operation},
            }

    def webhook_subscribers(self, topic: str) -> list[dict[str, Any]]:
        """The enabled webhooks subscribed to ``topic`` (``self.engagement`` delivers engagement events to them)."""
        with self._lock:
            return [dict(w) for w in self.webhooks.values() if w["enabled"] and topic in w["topics"]]

    # ---- WSGI ---------------------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        response.headers[SANDBOX_HEADER[0]] = SANDBOX_HEADER[1]
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = ROUTES.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
        except MethodNotAllowed:
            return ApiError(
                405, "method_not_allowed", "Method not allowed.", f"{request.method} not allowed."
            ).response()
        except NotFound:
            return not_found(f"{request.path} is not an endpoint of this Klaviyo sandbox.").response()
        except HTTPException as exc:  # e.g. a redirect for a trailing slash
            return exc.get_response(request.environ)
        if endpoint.startswith("admin_"):
            handler: Callable[..., Response] = getattr(self, f"_{endpoint}")
            return handler(request)
        entry = self._capture(request, endpoint)
        try:
            response = self._serve(request, self.operations[endpoint], dict(args))
        except ApiError as error:
            response = error.response()
        entry["status"] = response.status_code
        return response

    def _capture(self, request: Request, operation: str) -> dict[str, Any]:
        body = json_or_text(request.get_data(cache=True))
        entry = request_entry(request, operation, body, secret_header="authorization")
        with self._lock:
            self.requests.append(entry)
        return entry

    def _serve(self, request: Request, op: Operation, args: dict[str, str]) -> Response:
        key = self._authenticate(request)
        self._check_revision(request)
        self._inject_faults(op)
        decision = self.limiter.hit(key, op.operation_id, op.rate_limits)
        if not decision.allowed:
            raise _throttled(decision.retry_after)
        body = self._body(request, op)
        with self._lock:
            self._advance_jobs()
            response: Response = getattr(self, f"_op_{op.operation_id}")(request, body, **args)
        response.headers["RateLimit-Limit"] = str(decision.limit)
        response.headers["RateLimit-Remaining"] = str(decision.remaining)
        response.headers["RateLimit-Reset"] = str(max(0, round(decision.reset)))
        return response

    def _authenticate(self, request: Request) -> str:
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(
                401, "not_authenticated", "Authentication credentials were not provided.", "Missing API key."
            )
        scheme, _, key = header.partition(" ")
        if scheme != "Klaviyo-API-Key" or key.strip() not in self.api_keys:
            raise ApiError(
                401, "authentication_failed", "Incorrect authentication credentials.", "Invalid or unknown API key."
            )
        return key.strip()

    def _check_revision(self, request: Request) -> None:
        import re

        revision = request.headers.get("revision")
        if not revision:
            raise ApiError(
                400, "invalid", "Invalid input.", "Missing `revision` header (format YYYY-MM-DD).", parameter="revision"
            )
        if not re.match(_REVISION_FORMAT, revision):
            raise ApiError(400, "invalid", "Invalid input.", f"Invalid revision {revision!r}.", parameter="revision")
        try:
            datetime.strptime(revision[:10], "%Y-%m-%d")
        except ValueError:
            raise ApiError(
                400, "invalid", "Invalid input.", f"Invalid revision {revision!r}.", parameter="revision"
            ) from None

    def _inject_faults(self, op: Operation) -> None:
        with self._lock:
            faults = self.faults
            rolled = roll_faults(faults, op.operation_id, self._dice)
            if rolled is None:
                return
            self.faults, roll = rolled
        apply_faults(
            faults,
            roll,
            throttled=_throttled,
            held=lambda: ApiError(504, "timeout", "Gateway timeout.", "Sandbox fault: request held, then timed out."),
            failed=lambda status: ApiError(
                status, "error", "A server error occurred.", "Sandbox fault: injected server error."
            ),
        )

    def _rejecting(self, operation: str) -> Reject | None:
        """The ``reject`` fault when it applies to ``operation``."""
        faults = self.faults
        if faults.reject is None or (faults.operations is not None and operation not in faults.operations):
            return None
        return faults.reject

    def _check_records(self, operation: str, records: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Refuse the request (400, one error per record) when the ``reject`` fault names any of ``records``:
        (pointer to the record's attributes, attributes)."""
        reject = self._rejecting(operation)
        if reject is None:
            return
        errors = []
        for pointer, attributes in records:
            name = reject.matches(attributes)
            if name is not None:
                errors.append(reject.error(f"{pointer}/{name}"))
        refuse(errors)

    # ---- jobs ---------------------------------------------------------------------------------------------------

    def _advance_jobs(self) -> None:
        """Move every running job on to where the clock says it is (called under the lock)."""
        if not self._running:
            return
        now = self._clock()
        for job in self._running:
            job.advance(now)
        self._running = [job for job in self._running if job.status != "complete"]

    def _start_job(
        self,
        kind: str,
        items: list[Any],
        apply: Callable[[int, Any], dict[str, Any] | None],
        *,
        lists: Sequence[str] = (),
    ) -> Job:
        start = self._clock()
        job = Job(str(uuid.uuid4()), kind, start, self.job_delay, items, apply, lists=list(lists))
        self.jobs[job.id] = job
        job.advance(job.start)  # without a delay it is complete at once
        if job.status != "complete":
            self._running.append(job)
        return job

    def _body(self, request: Request, op: Operation) -> Any:
        if op.validator is None:
            return None
        raw = request.get_data(cache=True)
        most = PAYLOAD_LIMITS.get(op.operation_id)
        if most is not None and len(raw) > most:
            size = f"{most // 1_000_000}MB" if most >= 1_000_000 else f"{most // 1_000}KB"
            raise invalid(f"The maximum allowed payload size is {size}; this request has {len(raw)} bytes.", "/data")
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            raise invalid(f"Request body is not valid JSON: {exc}", "/") from None
        error = op.validate(body)
        if error is not None:
            raise invalid(error.detail, error.pointer)
        limit = _BATCH_LIMITS.get(op.operation_id)
        if limit is not None:
            pointer, most = limit
            items = _at(body, pointer)
            if isinstance(items, list) and len(items) > most:
                raise invalid(f"At most {most} items per request, got {len(items)}.", pointer)
        return body

    # ---- profiles -----------------------------------------------------------------------------------------------

    def _matches(self, attributes: dict[str, Any], profile_id: str | None = None) -> list[Profile]:
        found: dict[str, Profile] = {}
        if profile_id:
            if profile_id not in self.profiles:
                raise not_found(f"Profile {profile_id} does not exist.")
            found[profile_id] = self.profiles[profile_id]
        for name in _IDENTIFIERS:
            value = _norm(name, attributes.get(name))
            pid = self._index.get((name, value)) if value else None
            if pid is not None:
                found[pid] = self.profiles[pid]
        return list(found.values())

    def _apply(self, profile: Profile, attributes: dict[str, Any], *, clear_nulls: bool, pointer: str) -> None:
        for name in _IDENTIFIERS:
            if name in attributes and attributes[name] is not None:
                value = _norm(name, attributes[name])
                owner = self._index.get((name, value or ""))
                if owner is not None and owner != profile.id:
                    raise ApiError(
                        409,
                        "duplicate_profile",
                        "Conflict.",
                        f"A profile already exists with this {name}.",
                        pointer=f"{pointer}/{name}",
                        meta={"duplicate_profile_id": owner},
                    )
        for name in _PROFILE_FIELDS:
            if name not in attributes or (attributes[name] is None and not clear_nulls):
                continue
            if name in _IDENTIFIERS:
                old = _norm(name, profile.attributes.get(name))
                if old:
                    self._index.pop((name, old), None)
                new = _norm(name, attributes[name])
                if new:
                    self._index[(name, new)] = profile.id
            profile.attributes[name] = attributes[name]
        for key, value in (attributes.get("properties") or {}).items():
            profile.properties[key] = value
        profile.updated = _now()

    def _upsert(
        self, attributes: dict[str, Any], *, profile_id: str | None = None, clear_nulls: bool, pointer: str
    ) -> tuple[Profile, bool]:
        """The profile these identifiers name (updated) or a new one; True when it was created."""
        matches = self._matches(attributes, profile_id)
        if len(matches) > 1:
            raise ApiError(
                409,
                "duplicate_profile",
                "Conflict.",
                "The identifiers match more than one profile.",
                pointer=pointer,
                meta={"duplicate_profile_id": matches[1].id},
            )
        if matches:
            self._apply(matches[0], attributes, clear_nulls=clear_nulls, pointer=pointer)
            return matches[0], False
        if not any(attributes.get(name) for name in (*_IDENTIFIERS, "_kx")):
            raise invalid("A profile needs at least one identifier (email, phone_number, external_id).", pointer)
        now = _now()
        profile = Profile(id=_profile_id(), attributes={}, properties={}, created=now, updated=now)
        self.profiles[profile.id] = profile
        self._apply(profile, attributes, clear_nulls=clear_nulls, pointer=pointer)
        return profile, True

    def _profile_document(self, request: Request, profile: Profile, status: int) -> Response:
        extra = request.args.get("additional-fields[profile]", "")
        resource = profile.resource(with_subscriptions="subscriptions" in extra.split(","))
        return _json({"data": resource, "links": {"self": resource["links"]["self"]}}, status)

    def _op_create_or_update_profile(self, request: Request, body: Any) -> Response:
        data = body["data"]
        self._check_records("create_or_update_profile", [("/data/attributes", data["attributes"])])
        profile, created = self._upsert(
            data["attributes"], profile_id=data.get("id"), clear_nulls=True, pointer="/data/attributes"
        )
        return self._profile_document(request, profile, 201 if created else 200)

    def _op_create_profile(self, request: Request, body: Any) -> Response:
        attributes = body["data"]["attributes"]
        self._check_records("create_profile", [("/data/attributes", attributes)])
        existing = self._matches(attributes)
        if existing:
            raise ApiError(
                409,
                "duplicate_profile",
                "Conflict.",
                "A profile already exists with one of these identifiers.",
                pointer="/data/attributes",
                meta={"duplicate_profile_id": existing[0].id},
            )
        profile, _ = self._upsert(attributes, clear_nulls=False, pointer="/data/attributes")
        return self._profile_document(request, profile, 201)

    def _op_update_profile(self, request: Request, body: Any, id: str) -> Response:
        data = body["data"]
        if data["id"] != id:
            raise ApiError(
                409, "conflict", "Conflict.", "The id in the body differs from the URL's.", pointer="/data/id"
            )
        profile = self.profiles.get(id)
        if profile is None:
            raise not_found(f"Profile {id} does not exist.")
        self._check_records("update_profile", [("/data/attributes", data.get("attributes", {}))])
        self._apply(profile, data.get("attributes", {}), clear_nulls=True, pointer="/data/attributes")
        patch = (data.get("meta") or {}).get("patch_properties") or {}
        unset = patch.get("unset") or []
        for key in [unset] if isinstance(unset, str) else unset:
            profile.properties.pop(key, None)
        for key, value in (patch.get("append") or {}).items():
            current = profile.properties.get(key)
            profile.properties[key] = [*(current if isinstance(current, list) else []), value]
        for key, value in (patch.get("unappend") or {}).items():
            current = profile.properties.get(key)
            if isinstance(current, list):
                profile.properties[key] = [item for item in current if item != value]
        return self._profile_document(request, profile, 200)

    def _op_get_profile(self, request: Request, _body: Any, id: str) -> Response:
        profile = self.profiles.get(id)
        if profile is None:
            raise not_found(f"Profile {id} does not exist.")
        return self._profile_document(request, profile, 200)

    # ---- bulk profile import ----------------------------------------------------------------------------------

    def _op_bulk_import_profiles(self, request: Request, body: Any) -> Response:
        data = body["data"]
        list_ids = [item["id"] for item in ((data.get("relationships") or {}).get("lists") or {}).get("data", [])]
        for i, list_id in enumerate(list_ids):
            if list_id not in self.lists:
                raise invalid(f"List {list_id} does not exist.", f"/data/relationships/lists/data/{i}/id")
        reject = self._rejecting("bulk_import_profiles")  # as it was when the job was created

        def apply(i: int, record: dict[str, Any]) -> dict[str, Any] | None:
            attributes = record["attributes"]
            pointer = f"/data/attributes/profiles/data/{i}"
            try:
                size = len(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode())
                if size > MAX_BULK_PROFILE_BYTES:
                    raise invalid(
                        f"The maximum allowed payload size per-profile is 100KB; this one is {size}.", pointer
                    )
                name = reject.matches(attributes) if reject is not None else None
                if reject is not None and name is not None:
                    raise reject.error(f"{pointer}/attributes/{name}")
                profile, _ = self._upsert(
                    attributes, profile_id=record.get("id"), clear_nulls=False, pointer=f"{pointer}/attributes"
                )
            except ApiError as error:
                return {
                    "type": "import-error",
                    "id": str(uuid.uuid4()),
                    "attributes": {
                        "code": error.code,
                        "title": error.title,
                        "detail": error.detail,
                        "source": {"pointer": error.source.get("pointer", pointer)},
                        "original_payload": attributes,
                    },
                }
            for list_id in list_ids:
                self.lists[list_id]["members"].add(profile.id)
            return None

        records = data["attributes"]["profiles"]["data"]
        job = self._start_job("profile-bulk-import-job", records, apply, lists=list_ids)
        return _json(self._job_document(job.id), 202)

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.kind != "profile-bulk-import-job":
            raise not_found(f"Bulk import job {job_id} does not exist.")
        return job

    def _job_document(self, job_id: str) -> dict[str, Any]:
        resource = self._job(job_id).resource()
        return {"data": resource, "links": resource["links"]}

    def _op_get_bulk_import_profiles_job(self, request: Request, _body: Any, id: str) -> Response:
        return _json(self._job_document(id), 200)

    def _op_get_errors_for_bulk_import_profiles_job(self, request: Request, _body: Any, id: str) -> Response:
        job = self._job(id)
        return _json({"data": job.errors, "links": {"self": f"{BASE}/api/profile-bulk-import-jobs/{id}/"}}, 200)

    # ---- events -------------------------------------------------------------------------------------------------

    def _record_event(self, profile: Profile, event: dict[str, Any]) -> None:
        name = event["metric"]["data"]["attributes"]["name"]
        when = event.get("time") or _now()
        unique_id = event.get("unique_id") or str(when)[:19]  # Klaviyo: without unique_id, one per second
        key = (name, profile.id, str(unique_id))
        if key in self._event_keys:
            self.events_deduplicated += 1  # accepted and ignored: "only the first processed event is recorded"
            return
        self._event_keys.add(key)
        metric_id = self.metrics.setdefault(name, _short_id())
        self.events.append(
            {
                "id": str(uuid.uuid4()),
                "metric": name,
                "metric_id": metric_id,
                "profile_id": profile.id,
                "time": when,
                "unique_id": event.get("unique_id"),
                "value": event.get("value"),
                "value_currency": event.get("value_currency"),
                "properties": event.get("properties"),
                "backfill": event.get("backfill", False),
            }
        )

    def _op_create_event(self, request: Request, body: Any) -> Response:
        attributes = body["data"]["attributes"]
        profile_data = attributes["profile"]["data"]
        self._check_records(
            "create_event", [("/data/attributes/profile/data/attributes", profile_data.get("attributes") or {})]
        )
        profile, _ = self._upsert(
            profile_data.get("attributes") or {},
            profile_id=profile_data.get("id"),
            clear_nulls=False,
            pointer="/data/attributes/profile/data/attributes",
        )
        self._record_event(profile, attributes)
        return Response(status=202)

    def _op_bulk_create_events(self, request: Request, body: Any) -> Response:
        entries = body["data"]["attributes"]["events-bulk-create"]["data"]
        base = "/data/attributes/events-bulk-create/data"
        total = sum(len(entry["attributes"]["events"]["data"]) for entry in entries)
        if total > MAX_EVENTS_PER_BULK_JOB:
            raise invalid(f"At most {MAX_EVENTS_PER_BULK_JOB} events per request, got {total}.", base)
        # A repeated unique_id for the same profile and metric fails the whole request: nothing is processed.
        seen: set[tuple[Any, ...]] = set()
        for i, entry in enumerate(entries):
            profile_data = entry["attributes"]["profile"]["data"]
            attrs = profile_data.get("attributes") or {}
            who = (profile_data.get("id"), *(_norm(n, attrs.get(n)) for n in _IDENTIFIERS))
            for j, event in enumerate(entry["attributes"]["events"]["data"]):
                unique_id = event["attributes"].get("unique_id")
                if unique_id is None:
                    continue
                key = (who, event["attributes"]["metric"]["data"]["attributes"]["name"], unique_id)
                if key in seen:
                    raise invalid(
                        f"Duplicate unique_id {unique_id!r} for the same profile and metric in one request.",
                        f"{base}/{i}/attributes/events/data/{j}/attributes/unique_id",
                    )
                seen.add(key)
        self._check_records(
            "bulk_create_events",
            [
                (
                    f"{base}/{i}/attributes/profile/data/attributes",
                    entry["attributes"]["profile"]["data"].get("attributes") or {},
                )
                for i, entry in enumerate(entries)
            ],
        )
        for i, entry in enumerate(entries):
            profile_data = entry["attributes"]["profile"]["data"]
            profile, _ = self._upsert(
                profile_data.get("attributes") or {},
                profile_id=profile_data.get("id"),
                clear_nulls=False,
                pointer=f"{base}/{i}/attributes/profile/data/attributes",
            )
            for event in entry["attributes"]["events"]["data"]:
                self._record_event(profile, event["attributes"])
        return Response(status=202)

    # ---- consent ------------------------------------------------------------------------------------------------

    def _list_of(self, data: dict[str, Any]) -> str | None:
        list_id: str | None = (((data.get("relationships") or {}).get("list") or {}).get("data") or {}).get("id")
        if list_id is not None and list_id not in self.lists:
            raise not_found(f"List {list_id} does not exist.")
        return list_id

    def _op_bulk_subscribe_profiles(self, request: Request, body: Any) -> Response:
        data = body["data"]
        historical = bool(data["attributes"].get("historical_import"))
        list_id = self._list_of(data)
        records = data["attributes"]["profiles"]["data"]
        for i, record in enumerate(records):  # check every record before changing anything
            for channel, kinds in (record["attributes"].get("subscriptions") or {}).items():
                for kind, consent in (kinds or {}).items():
                    if not isinstance(consent, dict):
                        continue
                    pointer = f"/data/attributes/profiles/data/{i}/attributes/subscriptions/{channel}/{kind}"
                    if historical and not consent.get("consented_at"):
                        raise invalid("consented_at is required when historical_import is true.", pointer)
                    if consent.get("consented_at") and not historical:
                        raise invalid("consented_at is only allowed when historical_import is true.", pointer)
            if "sms" in (record["attributes"].get("subscriptions") or {}) and not record["attributes"].get(
                "phone_number"
            ):  # Klaviyo texts a number, so an SMS subscription names one
                pointer = f"/data/attributes/profiles/data/{i}/attributes/phone_number"
                raise invalid("A phone number is required to subscribe a profile to SMS.", pointer)
        self._check_records("bulk_subscribe_profiles", _profile_records(records))
        for i, record in enumerate(records):
            attributes = record["attributes"]
            identifiers = {name: attributes[name] for name in ("email", "phone_number") if attributes.get(name)}
            profile, _ = self._upsert(
                identifiers,
                profile_id=record.get("id"),
                clear_nulls=False,
                pointer=f"/data/attributes/profiles/data/{i}/attributes",
            )
            for channel in attributes.get("subscriptions") or {}:
                profile.consent[channel] = "SUBSCRIBED"
                if channel == "email":
                    profile.suppressions -= CLEARED_BY_SUBSCRIBE
            if list_id is not None:
                self.lists[list_id]["members"].add(profile.id)
        return Response(status=202)

    def _op_bulk_unsubscribe_profiles(self, request: Request, body: Any) -> Response:
        data = body["data"]
        list_id = self._list_of(data)
        self._check_records("bulk_unsubscribe_profiles", _profile_records(data["attributes"]["profiles"]["data"]))
        for i, record in enumerate(data["attributes"]["profiles"]["data"]):
            attributes = record["attributes"]
            identifiers = {name: attributes[name] for name in ("email", "phone_number") if attributes.get(name)}
            profile, _ = self._upsert(
                identifiers, clear_nulls=False, pointer=f"/data/attributes/profiles/data/{i}/attributes"
            )
            for channel in attributes.get("subscriptions") or {}:
                profile.consent[channel] = "UNSUBSCRIBED"
                if channel == "email":
                    profile.suppressions.add("UNSUBSCRIBE")
            if list_id is not None:
                self.lists[list_id]["members"].discard(profile.id)
        return Response(status=202)

    def _suppression(
        self, operation: str, kind: str, data: dict[str, Any], change: Callable[[Profile], None]
    ) -> Response:
        """A suppression job over the emails given and the current members of ``relationships.list``."""
        records = ((data["attributes"].get("profiles") or {}).get("data")) or []
        self._check_records(operation, _profile_records(records))
        items: list[tuple[str, str]] = [("email", record["attributes"]["email"]) for record in records]
        list_id = self._list_of(data)
        if list_id is not None:
            items.extend(("id", pid) for pid in sorted(self.lists[list_id]["members"]))

        def apply(i: int, item: tuple[str, str]) -> dict[str, Any] | None:
            kind_of, value = item
            if kind_of == "id":
                profile = self.profiles.get(value)
                if profile is None:  # deleted since the job was created
                    return None
            else:
                try:
                    profile, _ = self._upsert({"email": value}, clear_nulls=False, pointer="/data")
                except ApiError:  # cannot happen with an email alone; a job never fails a later request
                    return None
            change(profile)
            return None

        job = self._start_job(kind, items, apply)
        resource = job.resource()
        return _json({"data": resource, "links": resource["links"]}, 202)

    def _op_bulk_suppress_profiles(self, request: Request, body: Any) -> Response:
        def suppress(profile: Profile) -> None:
            profile.suppressions.add("USER_SUPPRESSED")

        return self._suppression(
            "bulk_suppress_profiles", "profile-suppression-bulk-create-job", body["data"], suppress
        )

    def _op_bulk_unsuppress_profiles(self, request: Request, body: Any) -> Response:
        def unsuppress(profile: Profile) -> None:
            profile.suppressions.discard("USER_SUPPRESSED")  # UNSUBSCRIBE, HARD_BOUNCE, … stay

        kind = "profile-suppression-bulk-delete-job"
        return self._suppression("bulk_unsuppress_profiles", kind, body["data"], unsuppress)

    # ---- lists --------------------------------------------------------------------------------------------------

    def _op_create_list(self, request: Request, body: Any) -> Response:
        attributes = body["data"]["attributes"]
        list_id, now = _short_id(), _now()
        opt_in = attributes.get("opt_in_process") or "double_opt_in"
        self.lists[list_id] = {"name": attributes["name"], "opt_in_process": opt_in, "created": now, "members": set()}
        link = f"{BASE}/api/lists/{list_id}/"
        resource = {
            "type": "list",
            "id": list_id,
            "attributes": {"name": attributes["name"], "created": now, "updated": now, "opt_in_process": opt_in},
            "links": {"self": link},
        }
        return _json({"data": resource, "links": {"self": link}}, 201)

    def _membership(self, operation: str, body: Any, id: str) -> tuple[set[str], list[str]]:
        if id not in self.lists:
            raise not_found(f"List {id} does not exist.")
        ids = [item["id"] for item in body["data"]]
        for i, pid in enumerate(ids):
            if pid not in self.profiles:
                raise invalid(f"Profile {pid} does not exist.", f"/data/{i}/id")
        reject = self._rejecting(operation)  # records named by id: the fault looks at the profiles' identifiers
        if reject is not None:
            refuse(
                [
                    reject.error(f"/data/{i}/id")
                    for i, pid in enumerate(ids)
                    if reject.matches(self.profiles[pid].attributes)
                ]
            )
        members: set[str] = self.lists[id]["members"]
        return members, ids

    def _op_add_profiles_to_list(self, request: Request, body: Any, id: str) -> Response:
        members, ids = self._membership("add_profiles_to_list", body, id)
        members.update(ids)
        return Response(status=204)

    def _op_remove_profiles_from_list(self, request: Request, body: Any, id: str) -> Response:
        members, ids = self._membership("remove_profiles_from_list", body, id)
        members.difference_update(ids)
        return Response(status=204)

    # ---- data privacy, webhooks -----------------------------------------------------------------------------

    def _op_request_profile_deletion(self, request: Request, body: Any) -> Response:
        data = body["data"]["attributes"]["profile"]["data"]
        pointer = "/data/attributes/profile/data/attributes"
        self._check_records("request_profile_deletion", [(pointer, data.get("attributes") or {})])
        matches = self._matches(data.get("attributes") or {}, data.get("id"))
        for profile in matches:
            del self.profiles[profile.id]
            for name in _IDENTIFIERS:
                value = _norm(name, profile.attributes.get(name))
                if value:
                    self._index.pop((name, value), None)
            self.events = [e for e in self.events if e["profile_id"] != profile.id]
            for lst in self.lists.values():
                lst["members"].discard(profile.id)
        self.deletions.append({"time": _now(), "profile_ids": [p.id for p in matches]})
        return Response(status=202)

    def _webhook_resource(self, webhook: dict[str, Any], *, secret: bool = False) -> dict[str, Any]:
        names = ("name", "description", "endpoint_url", "enabled", "created_at", "updated_at")
        attributes = {name: webhook[name] for name in names}
        if secret:
            attributes |= {"secret_key": webhook["secret_key"], "topics": webhook["topics"]}
        return {
            "type": "webhook",
            "id": webhook["id"],
            "attributes": attributes,
            "links": {"self": f"{BASE}/api/webhooks/{webhook['id']}/"},
        }

    def _op_create_webhook(self, request: Request, body: Any) -> Response:
        data = body["data"]
        attributes = data["attributes"]
        if not str(attributes["endpoint_url"]).startswith(("https://", "http://127.0.0.1", "http://localhost")):
            # Klaviyo takes https only; the sandbox also takes a local http URL, for local tests
            raise invalid("endpoint_url must be an https URL.", "/data/attributes/endpoint_url")
        topics = [t["id"] for t in ((data.get("relationships") or {}).get("webhook-topics") or {}).get("data", [])]
        now = _now()
        webhook = {
            "id": str(uuid.uuid4()),
            "name": attributes["name"],
            "description": attributes.get("description"),
            "endpoint_url": attributes["endpoint_url"],
            "secret_key": attributes.get("secret_key"),
            "enabled": attributes.get("enabled", True),
            "topics": topics,
            "created_at": now,
            "updated_at": now,
        }
        self.webhooks[webhook["id"]] = webhook
        resource = self._webhook_resource(webhook)
        return _json({"data": resource, "links": resource["links"]}, 201)

    def _op_get_webhooks(self, request: Request, _body: Any) -> Response:
        data = [self._webhook_resource(w) for w in self.webhooks.values()]
        return _json({"data": data, "links": {"self": f"{BASE}/api/webhooks/"}}, 200)

    # ---- engagement: metrics, events, signed webhooks (klaviyo_webhooks.py) ---------------------------------

    def _op_get_metrics(self, request: Request, _body: Any) -> Response:
        return self.engagement.get_metrics(request)

    def _op_get_events(self, request: Request, _body: Any) -> Response:
        return self.engagement.get_events(request)

    def _admin_engagement(self, request: Request) -> Response:
        return self.engagement.record(request)

    def _admin_webhook_deliveries(self, request: Request) -> Response:
        return self.engagement.deliveries(request)

    # ---- admin (no Klaviyo auth) ------------------------------------------------------------------------------

    def _admin_index(self, request: Request) -> Response:
        text = {
            "sandbox": "klaviyo",
            "notice": "This is the espbridge ESP sandbox, NOT Klaviyo. Nothing sent here reaches a real account.",
            "revision": self.revision,
            "operations": sorted(self.operations),
        }
        return _json(text, 200)

    def _admin_state(self, request: Request) -> Response:
        return Response(json.dumps(self.state(), default=str), content_type="application/json")

    def _admin_requests(self, request: Request) -> Response:
        operation = request.args.get("operation")
        with self._lock:
            entries = [e for e in self.requests if operation is None or e["operation"] == operation]
        return Response(json.dumps({"requests": entries}), content_type="application/json")

    def _admin_faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                faults = Faults.model_validate_json(request.get_data() or b"{}")
            except ValidationError as exc:
                return Response(exc.json(), status=400, content_type="application/json")
            unknown = set(faults.operations or ()) - set(self.operations)
            if unknown:
                return Response(json.dumps({"error": f"unknown operations: {sorted(unknown)}"}), status=400)
            with self._lock:
                self.faults = faults
                self._dice = random.Random(faults.seed)
        return Response(self.faults.model_dump_json(), content_type="application/json")

    def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return Response(json.dumps({"reset": True}), content_type="application/json")


def _profile_records(records: Sequence[dict[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """The records of a ``profiles.data`` batch, each with the pointer to its attributes."""
    return [(f"/data/attributes/profiles/data/{i}/attributes", r["attributes"]) for i, r in enumerate(records)]


def _throttled(retry_after: float) -> ApiError:
    seconds = retry_after_header(retry_after)
    return ApiError(
        429,
        "throttled",
        "Request was throttled.",
        f"Request was throttled. Expected available in {seconds} second{'s' if seconds != '1' else ''}.",
        pointer="/data",
        headers={"Retry-After": seconds},
    )


def _at(document: Any, pointer: str) -> Any:
    node = document
    for part in pointer.strip("/").split("/"):
        if not part:
            continue
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
