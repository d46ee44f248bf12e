"""The one protocol every ESP adapter implements, and the values the sync engine hands it.

The engine (connector/sync) owns everything ESP-neutral: which records are due, loading them, coalescing,
skipping unchanged profiles by fingerprint, retries, dead letters, links. An adapter only maps records to its
ESP's API and reports, per record, what happened. Adapters never raise for a record: an ``Outcome`` says which
input indexes were done, rejected (the ESP refused that record; sending it again will not help), skipped
(nothing the ESP can take), or failed with an ``EspError`` (the engine retries or dead-letters by its type).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..store import Cart, CartItem, Contact, Event
from .errors import EspError


@dataclass(frozen=True)
class ConsentChange:
    """A contact's current consent on one channel, as the engine read it from consent_state and the ledger."""

    contact: Contact
    channel: str
    status: str
    occurred_at: dt.datetime
    #: The ledger action behind the state ("grant", "withdraw", "bounce", "complaint", …).
    action: str | None = None
    #: Collected before the ESP was connected (full syncs): sent as a historical import where the ESP has one.
    imported: bool = False


@dataclass(frozen=True)
class TrackedEvent:
    event: Event
    contact: Contact


@dataclass(frozen=True)
class AbandonedCart:
    """A cart the store decided is abandoned (inactive, not converted), with its lines, for ESPs that run their
    own abandoned-cart automations on cart data (ActiveCampaign's Deep Data)."""

    cart: Cart
    items: tuple[CartItem, ...]
    contact: Contact


@dataclass(frozen=True)
class SegmentRef:
    """A segment mirrored to one ESP: ``mirror`` is that ESP's entry of ``Segment.mirror`` (a Klaviyo
    ``list_id``, an ActiveCampaign ``tag`` or ``list_id``; empty: the adapter names it after the segment)."""

    id: int
    name: str
    mirror: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MembershipChange:
    """A contact's current membership of a mirrored segment, as the engine read it from segment_members."""

    contact: Contact
    member: bool
    #: The ESP's id of the contact (esp_links), when the profile sync already stored one.
    remote_id: str | None = None
    #: Subscribed on email: where the mirror is a list that must not subscribe anyone, only these are added.
    subscribed: bool = False


@dataclass
class Outcome:
    """Per input index: ``remote_ids`` (done, with the ESP's id when known), ``rejected`` / ``skipped`` (reason),
    ``failed`` (with ``error``). Indexes in none of them are done."""

    remote_ids: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    error: EspError | None = None
    requests: int = 0
    #: ``mirror_segment``: settings learned while sending (a list created) to keep in the segment's mirror.
    mirror: dict[str, Any] | None = None

    def fail(self, indexes: Sequence[int], error: EspError) -> None:
        self.failed.update(i for i in indexes if i not in self.rejected and i not in self.skipped)
        self.error = error


class EspAdapter(Protocol):
    """An ESP as the sync engine sees it. Instances are per store connection and used by one thread at a time."""

    esp: str

    def fingerprint(self, contact: Contact, consents: dict[str, str]) -> str | None:
        """A digest of what would be sent for ``contact`` (its mapped profile and its consent per channel):
        equal to the stored hash means the ESP already has it, so no request is needed. None: the ESP cannot
        take this contact at all (no identifier it accepts, such as an anonymous visitor)."""
        ...

    def upsert_profiles(
        self, contacts: Sequence[Contact], *, bulk: bool, consents: Sequence[ConsentChange] = ()
    ) -> Outcome:
        """Create or update profiles; ``bulk`` for large batches (full syncs), else one request per profile.

        ``consents`` (full syncs): the consent of these contacts, collected before the ESP was connected, to be
        set with them, in the same import where the ESP allows it. An index is done only when its profile and
        each of its consents took effect; a consent the ESP refuses makes its contact rejected."""
        ...

    def send_events(self, events: Sequence[TrackedEvent], *, backfill: bool = False) -> Outcome:
        """Send tracked events exactly once (deduplicated by messageId); ``backfill`` for historical imports."""
        ...

    def set_consent(self, changes: Sequence[ConsentChange]) -> Outcome:
        """Make the ESP's subscription state match ours: subscribe, unsubscribe, or suppress."""
        ...

    def send_carts(self, carts: Sequence[AbandonedCart]) -> Outcome:
        """Hand abandoned carts to the ESP's own cart automations (skipped where the ESP has none)."""
        ...

    def erase(self, contacts: Sequence[Contact]) -> Outcome:
        """Ask the ESP to delete these people and their data (the right to erasure)."""
        ...

    def mirror_membership(self, segment: SegmentRef, changes: Sequence[MembershipChange]) -> Outcome:
        """Make the ESP's copy of ``segment`` (a list or tag) match: members added, others removed. Never
        changes anyone's consent (no subscribe or unsubscribe calls)."""
        ...

    def close(self) -> None: ...
