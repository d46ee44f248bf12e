"""The Klaviyo part of the ESP sandbox: a WSGI app (werkzeug) emulating the Klaviyo endpoints espbridge uses.

THIS IS A SANDBOX, NOT KLAVIYO. Every response carries ``X-Espbridge-Sandbox: klaviyo``.

Each request to ``/api/…`` goes through the same gates as on Klaviyo, in this order: the route (404/405), the
``Authorization: Klaviyo-API-Key <key>`` header against the accepted keys (401), the ``revision`` header (400),
fault injection (``/_sandbox/faults``), the operation's burst/steady/daily windows per API key (429 with
``Retry-After``), then the JSON body against the operation's request schema from Klaviyo's OpenAPI spec (400 naming
``source.pointer``). Errors use Klaviyo's format ``{"errors": [{"id", "status", "code", "title", "detail",
"source"}]}``. State lives in memory, behind one lock; bulk jobs are processed at once (their status is
``complete`` when the POST returns). Every request is recorded (Authorization left out) for contract tests.

Admin endpoints (no Klaviyo auth): ``GET /_sandbox/state``, ``GET /_sandbox/requests``, ``POST /_sandbox/faults``,
``POST /_sandbox/reset``.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .ratelimit import FixedWindowLimiter, retry_after_header
from .spec import Operation, load_operations, spec_revision

__all__ = ["DEFAULT_API_KEY", "SANDBOX_HEADER", "Faults", "KlaviyoSandbox"]

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
        Rule("/_sandbox/", methods=["GET"], endpoint="admin_index"),
        Rule("/_sandbox/state", methods=["GET"], endpoint="admin_state"),
        Rule("/_sandbox/requests", methods=["GET"], endpoint="admin_requests"),
        Rule("/_sandbox/faults", methods=["GET", "POST"], endpoint="admin_faults"),
        Rule("/_sandbox/reset", methods=["POST"], endpoint="admin_reset"),
    ],
    strict_slashes=False,
)


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
    reject_emails: list[str] = Field(
        default_factory=list, description="Profiles with these emails are rejected per record in bulk imports."
    )
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


class ApiError(Exception):
    """A request refused in Klaviyo's error format."""

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
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.source = {"pointer": pointer} if pointer is not None else {"parameter": parameter} if parameter else {}
        self.meta, self.headers = meta, headers or {}

    def response(self) -> Response:
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
        return _json({"errors": [error]}, self.status, headers=self.headers)


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
    """The emulated Klaviyo account(s): a WSGI callable; ``api_keys`` are the accepted private keys."""

    def __init__(self, *, api_keys: Iterable[str] = (DEFAULT_API_KEY,), time_scale: float = 1.0) -> None:
        self.api_keys = frozenset(api_keys)
        if not self.api_keys:
            raise ValueError("the sandbox needs at least one accepted API key")
        self.operations: dict[str, Operation] = load_operations()
        self.revision = spec_revision()
        self.limiter = FixedWindowLimiter(time_scale=time_scale)
        self._lock = threading.RLock()
        self._reset_state()
        self.faults = Faults()
        self._dice = random.Random()

    # ---- state -------------------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self.profiles: dict[str, Profile] = {}
        self._index: dict[tuple[str, str], str] = {}  # (identifier kind, normalised value) → profile id
        self.metrics: dict[str, str] = {}  # name → id
        self.events: list[dict[str, Any]] = []
        self._event_keys: set[tuple[str, str, str]] = set()
        self.events_deduplicated = 0
        self.lists: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
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
            subscriptions = {p.id: dict(p.consent) for p in self.profiles.values() if p.consent}
            suppressions = {p.id: sorted(p.suppressions) for p in self.profiles.values() if p.suppressions}
            lists = {lid: {**lst, "members": sorted(lst["members"])} for lid, lst in self.lists.items()}
            by_operation: dict[str, int] = {}
            for entry in self.requests:
                key = entry["operation"] or "unrouted"
                by_operation[key] = by_operation.get(key, 0) + 1
            return {
                "sandbox": "klaviyo",
                "profiles": [p.resource(with_subscriptions=True) for p in self.profiles.values()],
                "events": list(self.events),
                "events_deduplicated": self.events_deduplicated,
                "metrics": dict(self.metrics),
                "subscriptions": subscriptions,
                "suppressions": suppressions,
                "lists": lists,
                "jobs": {jid: {k: v for k, v in job.items() if k != "errors"} for jid, job in self.jobs.items()},
                "webhooks": [self._webhook_resource(w, secret=True) for w in self.webhooks.values()],
                "deletions": list(self.deletions),
                "requests": {"total": len(self.requests), "by_operation": by_operation},
            }

    def webhook_subscribers(self, topic: str) -> list[dict[str, Any]]:
        """Hook for the later "emit signed webhooks" item: the stored webhooks subscribed to ``topic``.

        Emitting is not implemented yet; it will POST to each ``endpoint_url`` signed with its ``secret_key``
        (ESP_NOTES 1.3: hex HMAC-SHA256 over raw body + Klaviyo-Timestamp).
        """
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
        raw = request.get_data(cache=True)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        entry = {
            "time": _now(),
            "operation": operation,
            "method": request.method,
            "path": request.path,
            "query": request.query_string.decode(),
            "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            "body": body,
            "status": None,
        }
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
            if faults.operations is not None and op.operation_id not in faults.operations:
                return
            storm = faults.storm_429 > 0
            if storm:
                self.faults = faults.model_copy(update={"storm_429": faults.storm_429 - 1})
            fail = self._dice.random() < faults.error_rate
            hold = self._dice.random() < faults.timeout_rate
        if faults.slow_seconds:
            time.sleep(faults.slow_seconds)
        if storm:
            raise _throttled(float(faults.storm_retry_after))
        if hold:
            time.sleep(faults.timeout_seconds)
            raise ApiError(504, "timeout", "Gateway timeout.", "Sandbox fault: request held, then timed out.")
        if fail:
            raise ApiError(
                faults.error_status, "error", "A server error occurred.", "Sandbox fault: injected server error."
            )

    def _body(self, request: Request, op: Operation) -> Any:
        if op.validator is None:
            return None
        raw = request.get_data(cache=True)
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
        profile, created = self._upsert(
            data["attributes"], profile_id=data.get("id"), clear_nulls=True, pointer="/data/attributes"
        )
        return self._profile_document(request, profile, 201 if created else 200)

    def _op_create_profile(self, request: Request, body: Any) -> Response:
        attributes = body["data"]["attributes"]
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
        records = data["attributes"]["profiles"]["data"]
        rejected = {_norm("email", email) for email in self.faults.reject_emails}
        errors: list[dict[str, Any]] = []
        started = _now()
        for i, record in enumerate(records):
            attributes = record["attributes"]
            pointer = f"/data/attributes/profiles/data/{i}"
            try:
                if _norm("email", attributes.get("email")) in rejected:
                    raise invalid("Sandbox fault: this record is rejected.", f"{pointer}/attributes/email")
                profile, _ = self._upsert(
                    attributes, profile_id=record.get("id"), clear_nulls=False, pointer=f"{pointer}/attributes"
                )
            except ApiError as error:
                errors.append(
                    {
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
                )
                continue
            for list_id in list_ids:
                self.lists[list_id]["members"].add(profile.id)
        finished = datetime.now(UTC)
        job_id = str(uuid.uuid4())
        self.jobs[job_id] = {
            "kind": "profile-bulk-import-job",
            "status": "complete",
            "created_at": started,
            "started_at": started,
            "completed_at": finished.isoformat(timespec="seconds"),
            "expires_at": (finished + timedelta(days=7)).isoformat(timespec="seconds"),
            "total_count": len(records),
            "completed_count": len(records) - len(errors),
            "failed_count": len(errors),
            "lists": list_ids,
            "errors": errors,
        }
        return _json(self._job_document(job_id), 202)

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None or job["kind"] != "profile-bulk-import-job":
            raise not_found(f"Bulk import job {job_id} does not exist.")
        return job

    def _job_document(self, job_id: str) -> dict[str, Any]:
        job = self._job(job_id)
        names = ("status", "created_at", "total_count", "completed_count", "failed_count")
        attributes = {name: job[name] for name in (*names, "completed_at", "expires_at", "started_at")}
        link = f"{BASE}/api/profile-bulk-import-jobs/{job_id}/"
        resource = {
            "type": "profile-bulk-import-job",
            "id": job_id,
            "attributes": attributes,
            "relationships": {"lists": {"data": [{"type": "list", "id": lid} for lid in job["lists"]]}},
            "links": {"self": link},
        }
        return {"data": resource, "links": {"self": link}}

    def _op_get_bulk_import_profiles_job(self, request: Request, _body: Any, id: str) -> Response:
        return _json(self._job_document(id), 200)

    def _op_get_errors_for_bulk_import_profiles_job(self, request: Request, _body: Any, id: str) -> Response:
        job = self._job(id)
        return _json({"data": job["errors"], "links": {"self": f"{BASE}/api/profile-bulk-import-jobs/{id}/"}}, 200)

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

    def _suppression_targets(self, data: dict[str, Any]) -> list[Profile]:
        targets = []
        for i, record in enumerate(((data["attributes"].get("profiles") or {}).get("data")) or []):
            profile, _ = self._upsert(
                {"email": record["attributes"]["email"]},
                clear_nulls=False,
                pointer=f"/data/attributes/profiles/data/{i}/attributes",
            )
            targets.append(profile)
        list_id = self._list_of(data)
        if list_id is not None:
            targets.extend(self.profiles[pid] for pid in self.lists[list_id]["members"])
        return targets

    def _suppression_job(self, kind: str, total: int) -> Response:
        job_id, now = str(uuid.uuid4()), _now()
        attributes = {"status": "complete", "created_at": now, "completed_at": now, "total_count": total}
        self.jobs[job_id] = {"kind": kind, **attributes, "completed_count": total}
        link = {"self": f"{BASE}/api/{kind}s/{job_id}/"}
        resource = {"type": kind, "id": job_id, "attributes": attributes | {"completed_count": total}, "links": link}
        return _json({"data": resource, "links": link}, 202)

    def _op_bulk_suppress_profiles(self, request: Request, body: Any) -> Response:
        targets = self._suppression_targets(body["data"])
        for profile in targets:
            profile.suppressions.add("USER_SUPPRESSED")
        return self._suppression_job("profile-suppression-bulk-create-job", len(targets))

    def _op_bulk_unsuppress_profiles(self, request: Request, body: Any) -> Response:
        targets = self._suppression_targets(body["data"])
        for profile in targets:
            profile.suppressions.discard("USER_SUPPRESSED")  # UNSUBSCRIBE, HARD_BOUNCE, … stay
        return self._suppression_job("profile-suppression-bulk-delete-job", len(targets))

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

    def _membership(self, body: Any, id: str) -> tuple[set[str], list[str]]:
        if id not in self.lists:
            raise not_found(f"List {id} does not exist.")
        ids = [item["id"] for item in body["data"]]
        for i, pid in enumerate(ids):
            if pid not in self.profiles:
                raise invalid(f"Profile {pid} does not exist.", f"/data/{i}/id")
        members: set[str] = self.lists[id]["members"]
        return members, ids

    def _op_add_profiles_to_list(self, request: Request, body: Any, id: str) -> Response:
        members, ids = self._membership(body, id)
        members.update(ids)
        return Response(status=204)

    def _op_remove_profiles_from_list(self, request: Request, body: Any, id: str) -> Response:
        members, ids = self._membership(body, id)
        members.difference_update(ids)
        return Response(status=204)

    # ---- data privacy, webhooks -----------------------------------------------------------------------------

    def _op_request_profile_deletion(self, request: Request, body: Any) -> Response:
        data = body["data"]["attributes"]["profile"]["data"]
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
        if not str(attributes["endpoint_url"]).startswith("https://"):
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
