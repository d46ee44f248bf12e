"""Errors raised by connector code.

EspbridgeError
├── AppendOnlyViolation   an update or delete of an append-only row (consent ledger) was attempted
├── NotFound              a row does not exist in the caller's store
└── InvalidInput          a value a caller passed is unusable; ``field`` names it
"""

from __future__ import annotations


class EspbridgeError(Exception):
    """Root of every error espbridge raises on purpose."""


class AppendOnlyViolation(EspbridgeError):
    pass


class NotFound(EspbridgeError):
    pass


class InvalidInput(EspbridgeError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
