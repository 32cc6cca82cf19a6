"""Encryption of connection secrets at rest (Fernet, a key from settings)."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from config.errors import DomainError


def _fernet() -> Fernet:
    key = settings.PLUGBOARD_SECRETS_KEY
    if not key:
        # Derived from SECRET_KEY so a laptop install works with no set-up.
        key = base64.urlsafe_b64encode(hashlib.sha256(("plugboard-secrets:" + settings.SECRET_KEY).encode()).digest())
    return Fernet(key)


def seal(secrets: dict[str, str]) -> bytes:
    """Returns `secrets` encrypted; empty values are dropped, nothing at all gives b''."""
    secrets = {k: v for k, v in secrets.items() if v}
    if not secrets:
        return b""
    return _fernet().encrypt(json.dumps(secrets).encode())


def unseal(blob: bytes | memoryview) -> dict[str, str]:
    """Returns the secrets sealed in `blob`."""
    blob = bytes(blob)
    if not blob:
        return {}
    try:
        return json.loads(_fernet().decrypt(blob))
    except InvalidToken:
        raise DomainError(
            "This connection's secrets cannot be decrypted: PLUGBOARD_SECRETS_KEY changed since they were saved. "
            "Enter the credentials again."
        ) from None
