"""Klaviyo behind the sync engine's ``EspAdapter`` protocol: ``KlaviyoClient`` calls, per-record outcomes.

Where a Klaviyo request refuses named records (a 400 whose JSON pointers name them), those records are
recorded as rejected and the rest of the batch is sent again without them, so one bad address never holds
back a thousand good ones. Bulk profile imports are asynchronous at Klaviyo: the adapter waits for the job
(bounded by ``job_timeout``) and reads its import errors, so rejections are known before a link is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence

from ..errors import InvalidInput
from ..store import Contact
from .base import AbandonedCart, ConsentChange, MembershipChange, Outcome, SegmentRef, TrackedEvent
from .batches import MAX_REJECTION_ROUNDS as MAX_REJECTION_ROUNDS
from .batches import mark_failed, send_resilient
from .errors import Accepted, EspError, Rejected, Transient
from .klaviyo import ConsentUpdate, KlaviyoClient, KlaviyoEvent, KlaviyoProfile, ProfileMapping, plan_consent


class KlaviyoAdapter:
    """Parameters:
    client: the HTTP client (its limiter is the shared rate limiter).
    mapping: the store's field mapping.
    list_id: the Klaviyo list subscriptions go to (None: subscribe without a list).
    job_timeout / poll_interval: how long to wait for a bulk import job, and how often to look.
    pause: called with (operation, seconds) on a 429, so every worker honours the Retry-After.
    """

    esp = "klaviyo"

    def __init__(
        self,
        client: KlaviyoClient,
        mapping: ProfileMapping | None = None,
        *,
        list_id: str | None = None,
        job_timeout: float = 600.0,
        poll_interval: float = 1.0,
        pause: Callable[[str, float], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.mapping = mapping or ProfileMapping()
        self.list_id = list_id
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self._pause = pause
        self._sleep = sleep

    def close(self) -> None:
        self.client.close()

    def fingerprint(self, contact: Contact, consents: dict[str, str]) -> str | None:
        try:
            resource = self.mapping.profile(contact).resource()
        except InvalidInput:
            return None
        document = json.dumps([resource, sorted(consents.items())], sort_keys=True, default=str)
        return hashlib.sha256(document.encode()).hexdigest()

    # profiles

    def upsert_profiles(
        self, contacts: Sequence[Contact], *, bulk: bool, consents: Sequence[ConsentChange] = ()
    ) -> Outcome:
        outcome = self._upsert_profiles(contacts, bulk=bulk)
        if consents:
            self._import_consents(contacts, consents, outcome)
        return outcome

    def _import_consents(
        self, contacts: Sequence[Contact], consents: Sequence[ConsentChange], outcome: Outcome
    ) -> None:
        """Klaviyo takes consent in separate calls: once the profiles are in, the consents of those that went in
        are sent as historical imports; a refused or failed consent makes its contact refused or failed."""
        index_of = {contact.id: index for index, contact in enumerate(contacts)}
        settled = outcome.rejected.keys() | outcome.skipped.keys() | outcome.failed
        changes = [c for c in consents if c.contact.id in index_of and index_of[c.contact.id] not in settled]
        if not changes:
            return
        consent = self.set_consent([dataclasses.replace(c, imported=True) for c in changes])
        outcome.requests += consent.requests
        for position, change in enumerate(changes):
            index = index_of[change.contact.id]
            if position in consent.rejected:
                outcome.remote_ids.pop(index, None)
                outcome.rejected.setdefault(index, consent.rejected[position])
            elif position in consent.failed and consent.error is not None:
                outcome.remote_ids.pop(index, None)
                outcome.fail([index], consent.error)

    def _upsert_profiles(self, contacts: Sequence[Contact], *, bulk: bool) -> Outcome:
        outcome = Outcome()
        profiles: dict[int, KlaviyoProfile] = {}
        for index, contact in enumerate(contacts):
            try:
                profiles[index] = self.mapping.profile(contact)
            except InvalidInput as exc:
                outcome.skipped[index] = f"no identifier Klaviyo accepts ({exc})"
        if bulk:
            self._bulk_profiles(profiles, outcome)
            return outcome
        indexes = list(profiles)
        for position, index in enumerate(indexes):
            try:
                ref = self.client.import_profile(profiles[index])
            except Rejected as error:
                outcome.requests += 1
                outcome.rejected[index] = error.message
            except EspError as error:
                outcome.requests += 1
                self._failed(outcome, indexes[position:], error)
                break
            else:
                outcome.requests += 1
                outcome.remote_ids[index] = ref.id
        return outcome

    def _bulk_profiles(self, profiles: dict[int, KlaviyoProfile], outcome: Outcome) -> None:
        sent = send_resilient(
            list(profiles),
            lambda chunk: self.client.bulk_import_profiles([profiles[i] for i in chunk]),
            outcome,
            pause=self._pause,
        )
        for accepted, chunk in sent:
            if accepted.job_id is None:
                continue
            try:
                self._await_job(accepted.job_id, chunk, profiles, outcome)
            except EspError as error:
                self._failed(outcome, chunk, error)

    def _await_job(self, job_id: str, chunk: list[int], profiles: dict[int, KlaviyoProfile], outcome: Outcome) -> None:
        deadline = time.monotonic() + self.job_timeout
        while True:
            status = self.client.bulk_import_job(job_id)
            outcome.requests += 1
            if status.finished:
                break
            if time.monotonic() >= deadline:
                raise Transient(f"bulk import job {job_id} still {status.status} after {self.job_timeout:.0f} s")
            self._sleep(self.poll_interval)
        if not status.failed_count:
            return
        by_identifier: dict[tuple[str, str], int] = {}
        for index in chunk:
            profile = profiles[index]
            for name in ("email", "phone_number", "external_id"):
                value = getattr(profile, name)
                if value:
                    by_identifier.setdefault((name, value.lower() if name == "email" else value), index)
        failures = self.client.bulk_import_errors(job_id)
        outcome.requests += 1
        for failure in failures:
            payload = failure.original_payload or {}
            attrs = payload.get("attributes", payload) if isinstance(payload, dict) else {}
            for name in ("email", "phone_number", "external_id"):
                value = attrs.get(name) if isinstance(attrs, dict) else None
                if isinstance(value, str):
                    match = by_identifier.get((name, value.lower() if name == "email" else value))
                    if match is not None:
                        outcome.rejected[match] = f"{failure.title}: {failure.detail} [{failure.code}]"
                        break

    # events

    def send_events(self, events: Sequence[TrackedEvent], *, backfill: bool = False) -> Outcome:
        outcome = Outcome()
        mapped: dict[int, KlaviyoEvent] = {}
        for index, tracked in enumerate(events):
            try:
                mapped[index] = self.mapping.event(tracked.event, tracked.contact, backfill=backfill)
            except InvalidInput as exc:
                outcome.skipped[index] = f"not sendable to Klaviyo ({exc})"
        indexes = list(mapped)
        if len(indexes) == 1:
            try:
                self.client.create_event(mapped[indexes[0]])
                outcome.requests += 1
            except Rejected as error:
                outcome.requests += 1
                outcome.rejected[indexes[0]] = error.message
            except EspError as error:
                outcome.requests += 1
                self._failed(outcome, indexes, error)
            return outcome

        def send(chunk: list[int]) -> list[Accepted]:
            return list(self.client.bulk_create_events([mapped[i] for i in chunk]).accepted)

        send_resilient(indexes, send, outcome, pause=self._pause)
        return outcome

    # consent

    def set_consent(self, changes: Sequence[ConsentChange]) -> Outcome:
        outcome = Outcome()
        groups: dict[str, list[int]] = {"subscribe": [], "historical": [], "unsubscribe": [], "suppress": []}
        updates: dict[int, ConsentUpdate] = {}
        emails: dict[int, str] = {}
        for index, change in enumerate(changes):
            plan = plan_consent(
                change.contact,
                change.channel,
                change.status,
                occurred_at=change.occurred_at,
                ledger_action=change.action,
                imported=change.imported,
            )
            if plan.action == "none":
                outcome.skipped[index] = f"nothing to send for {change.channel} {change.status}"
            elif plan.action == "suppress" and plan.email:
                groups["suppress"].append(index)
                emails[index] = plan.email
            elif plan.update is not None:
                updates[index] = plan.update
                key = "historical" if plan.action == "subscribe" and plan.historical_import else plan.action
                groups[key].append(index)
        calls: dict[str, Callable[[list[int]], list[Accepted]]] = {
            "subscribe": lambda chunk: self.client.subscribe([updates[i] for i in chunk], list_id=self.list_id),
            "historical": lambda chunk: self.client.subscribe(
                [updates[i] for i in chunk], historical_import=True, list_id=self.list_id
            ),
            "unsubscribe": lambda chunk: self.client.unsubscribe([updates[i] for i in chunk]),
            "suppress": lambda chunk: self.client.suppress([emails[i] for i in chunk]),
        }
        # Withdrawals first: if the account's budget runs out mid-way, the unsubscribes are the ones that went.
        for key in ("suppress", "unsubscribe", "historical", "subscribe"):
            if groups[key]:
                send_resilient(groups[key], calls[key], outcome, pause=self._pause)
        return outcome

    # carts and erasure

    def send_carts(self, carts: Sequence[AbandonedCart]) -> Outcome:
        # Klaviyo's abandoned-cart flows trigger on the "Checkout Started" events, which are already sent.
        return Outcome(skipped=dict.fromkeys(range(len(carts)), "Klaviyo runs abandoned carts from checkout events"))

    def erase(self, contacts: Sequence[Contact]) -> Outcome:
        """One data-privacy deletion job per person, by the first identifier Klaviyo takes."""
        outcome = Outcome()
        for index, contact in enumerate(contacts):
            try:
                person = self.mapping.identifiers(contact)
            except InvalidInput as exc:
                outcome.skipped[index] = f"no identifier Klaviyo accepts ({exc})"
                continue
            if not person.email and not person.phone_number:
                outcome.skipped[index] = "Klaviyo deletes by email or phone only"
                continue
            outcome.requests += 1
            try:
                self.client.request_deletion(
                    email=person.email, phone_number=None if person.email else person.phone_number
                )
            except Rejected as error:
                outcome.rejected[index] = error.message
            except EspError as error:
                self._failed(outcome, [i for i in range(index, len(contacts)) if i not in outcome.skipped], error)
                break
        return outcome

    # segments

    def mirror_membership(self, segment: SegmentRef, changes: Sequence[MembershipChange]) -> Outcome:
        """A list per segment: members added to it, the others removed, by Klaviyo profile id, 1,000 a request.

        The list is ``segment.mirror["list_id"]``, or one created as ``espbridge: <name>`` (single opt-in) whose id
        the outcome carries for the engine to keep. A contact without a Klaviyo id yet is upserted first (the
        profile only: no consent). List relationship calls never subscribe or unsubscribe anyone."""
        outcome = Outcome()
        ids = {index: change.remote_id for index, change in enumerate(changes) if change.remote_id}
        unlinked = [index for index, change in enumerate(changes) if not change.remote_id]
        if unlinked:
            upserted = self._upsert_profiles([changes[i].contact for i in unlinked], bulk=False)
            outcome.requests += upserted.requests
            outcome.skipped.update({unlinked[k]: reason for k, reason in upserted.skipped.items()})
            outcome.rejected.update({unlinked[k]: reason for k, reason in upserted.rejected.items()})
            ids.update({unlinked[k]: remote_id for k, remote_id in upserted.remote_ids.items()})
            if upserted.error is not None:
                # No list call is made: every change not skipped or rejected goes back for a retry, those whose
                # profile id was already known included (their add or remove was not sent either).
                outcome.fail(range(len(changes)), upserted.error)
                return outcome
        list_id = segment.mirror.get("list_id")
        if not ids or (not list_id and not any(changes[i].member for i in ids)):
            return outcome  # nothing to add, and no list yet that anyone could be removed from
        if not list_id:
            outcome.requests += 1
            try:
                list_id = self.client.create_list(f"espbridge: {segment.name}", opt_in_process="single_opt_in")
            except EspError as error:
                self._failed(outcome, list(ids), error)
                return outcome
            outcome.mirror = {**segment.mirror, "list_id": list_id}
        adds = [i for i in sorted(ids) if changes[i].member]  # in the changes' order
        removes = [i for i in sorted(ids) if not changes[i].member]
        if adds:
            send_resilient(
                adds,
                lambda chunk: self.client.add_to_list(list_id, [ids[i] for i in chunk]),
                outcome,
                pause=self._pause,
            )
        if removes:
            send_resilient(
                removes,
                lambda chunk: self.client.remove_from_list(list_id, [ids[i] for i in chunk]),
                outcome,
                pause=self._pause,
            )
        return outcome

    # plumbing

    def _failed(self, outcome: Outcome, indexes: Sequence[int], error: EspError) -> None:
        mark_failed(outcome, indexes, error, self._pause)
