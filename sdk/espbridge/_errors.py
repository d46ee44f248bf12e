"""What the SDK raises at the call site, and what it reports to ``on_error`` from the background.

A storefront only ever sees :class:`InvalidMessage` raised (and only with ``raise_on_invalid=True``): a send
failure is never raised into the caller. Everything the consumer gives up on reaches ``on_error`` as a
:class:`Rejected` or :class:`Dropped`, with the messages concerned (for whole spool segments discarded by the
overflow policy, only their count: they are not read back from disk to be reported).
"""

from __future__ import annotations


class EspbridgeError(Exception):
    """Base class of every error of this package."""


class InvalidMessage(EspbridgeError, ValueError):
    """A call's arguments cannot become a valid message: ``field`` names what is wrong, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Rejected(EspbridgeError):
    """The ingestion service refused a message (a 4xx other than 429); retrying it would not help.

    ``field`` and ``reason`` are the server's, when it named them (it names them for each refused message of a
    batch; the other messages of that batch were stored).
    """

    def __init__(self, status: int, reason: str, field: str | None = None) -> None:
        where = f"{field}: " if field else ""
        super().__init__(f"HTTP {status}: {where}{reason}")
        self.status = status
        self.field = field
        self.reason = reason


class Dropped(EspbridgeError):
    """Messages were discarded without being sent: the overflow policy ran, or the process ended with messages
    that had nowhere durable to go (no spool). ``count`` says how many; ``reason`` why."""

    def __init__(self, count: int, reason: str) -> None:
        super().__init__(f"{count} message(s) dropped: {reason}")
        self.count = count
        self.reason = reason
