"""The adapter protocol the sync engine talks to, and the no-op adapter used until the ESP issues land.

The Klaviyo and ActiveCampaign issues widen this protocol to batch operations (upsert profiles, send events,
set subscriptions, mirror lists, erase); the outbox path that calls it is already real.
"""

from __future__ import annotations

from typing import Protocol

from ..store import OutboxRow


class EspAdapter(Protocol):
    name: str

    def deliver(self, row: OutboxRow) -> None:
        """Make the ESP reflect the change ``row`` records; raise to have it retried."""


class NoopAdapter:
    """Accepts every outbox row and sends nothing; counts what it saw so tests and the demo can show it."""

    name = "noop"

    def __init__(self) -> None:
        self.delivered = 0

    def deliver(self, row: OutboxRow) -> None:
        self.delivered += 1
