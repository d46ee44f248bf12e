"""ESP credentials encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``).

The key comes from ``ESPBRIDGE_CREDENTIALS_KEY``: one or more comma-separated Fernet keys. The first encrypts;
every one decrypts, so a key is rotated by putting the new one first and re-saving the connections.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from .errors import EspbridgeError


class CredentialsUnavailable(EspbridgeError):
    """No key is configured, or none of the configured keys opens the stored credentials."""


def new_key() -> str:
    """A fresh key for ``ESPBRIDGE_CREDENTIALS_KEY``."""
    return Fernet.generate_key().decode("ascii")


class CredentialCipher:
    def __init__(self, keys: SecretStr | None) -> None:
        text = keys.get_secret_value() if keys is not None else ""
        try:
            fernets = [Fernet(key.strip()) for key in text.split(",") if key.strip()]
        except ValueError:
            raise CredentialsUnavailable(
                "ESPBRIDGE_CREDENTIALS_KEY: each key must be 32 url-safe base64-encoded bytes "
                "(make one with `espbridge esp keygen`)"
            ) from None
        self._fernet = MultiFernet(fernets) if fernets else None

    def __repr__(self) -> str:
        return f"CredentialCipher(keys={'set' if self._fernet else 'unset'})"

    def encrypt(self, credentials: dict[str, Any]) -> str:
        return self._require().encrypt(json.dumps(credentials).encode()).decode("ascii")

    def decrypt(self, token: str) -> dict[str, Any]:
        try:
            credentials: dict[str, Any] = json.loads(self._require().decrypt(token.encode("ascii")))
        except InvalidToken:
            raise CredentialsUnavailable(
                "the stored ESP credentials cannot be decrypted with ESPBRIDGE_CREDENTIALS_KEY (a key was changed "
                "without keeping the old one after it?)"
            ) from None
        return credentials

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            raise CredentialsUnavailable(
                "ESPBRIDGE_CREDENTIALS_KEY is not set: ESP credentials are stored encrypted with it "
                "(make one with `espbridge esp keygen`)"
            )
        return self._fernet
