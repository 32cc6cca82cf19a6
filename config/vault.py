"""Encryption of stored secrets at rest (Fernet, PLUGBOARD_SECRETS_KEY).

A sealed value lives in a BinaryField (connection credentials, a deployment's
server key, ...). `secrets_reseal` finds every one of them by looking, not by a
list: any BinaryField of any model whose value is a Fernet token, so a field
added later is rotated with the rest without being registered here."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.apps import apps
from django.conf import settings
from django.db import models, transaction

from config.errors import DomainError

# Every Fernet token starts with the version byte 0x80, which base64 writes as "gAAAAA".
_TOKEN_START = b"gAAAAA"


def _fernet(old_keys: list[str] | tuple[str, ...] = ()) -> MultiFernet:
    """The current key, which seals, then the old ones, which only open what they sealed."""
    keys = [settings.PLUGBOARD_SECRETS_KEY, *settings.PLUGBOARD_SECRETS_KEY_OLD, *old_keys]
    try:
        return MultiFernet([Fernet(k) for k in dict.fromkeys(k for k in keys if k)])
    except ValueError:
        raise DomainError(
            "PLUGBOARD_SECRETS_KEY (or an old key) is not a Fernet key: 32 bytes in URL-safe base64, as "
            '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"` prints.'
        ) from None


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
            "These secrets cannot be decrypted: PLUGBOARD_SECRETS_KEY changed since they were saved. Put the key "
            "they were saved with in PLUGBOARD_SECRETS_KEY_OLD and run `manage.py rotate_secrets_key`, or enter "
            "the credentials again."
        ) from None


@dataclass
class ResealReport:
    resealed: dict[str, int]  # "app.Model.field" → rows re-sealed

    @property
    def total(self) -> int:
        return sum(self.resealed.values())


def binary_fields() -> list[tuple[type[models.Model], models.BinaryField]]:
    """Returns every concrete BinaryField of every installed model: where sealed values can live."""
    return [
        (model, field)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, models.BinaryField)
    ]


def secrets_reseal(*, old_keys: list[str]) -> ResealReport:
    """Re-seals every stored secret with the current PLUGBOARD_SECRETS_KEY,
    opening each with the current key or any of `old_keys`, in one transaction:
    a secret that none of them opens rolls everything back (DomainError naming
    the rows), so a mistyped old key changes nothing."""
    fernet = _fernet(old_keys)
    resealed: dict[str, int] = {}
    unreadable: list[str] = []
    with transaction.atomic():
        for model, field in binary_fields():
            label = f"{model._meta.label}.{field.name}"
            rows = model._default_manager.select_for_update().exclude(**{field.attname: b""})
            for pk, value in rows.values_list("pk", field.attname).iterator():
                value = bytes(value or b"")
                if not value.startswith(_TOKEN_START):
                    continue  # not a sealed value: some other binary data
                try:
                    fresh = fernet.rotate(value)
                except InvalidToken:
                    unreadable.append(f"{label} #{pk}")
                    continue
                model._default_manager.filter(pk=pk).update(**{field.attname: fresh})
                resealed[label] = resealed.get(label, 0) + 1
        if unreadable:
            raise DomainError(
                f"Nothing was changed: {len(unreadable)} stored secret(s) open with neither the current key nor "
                f"the old one(s) given ({', '.join(unreadable[:10])}{', …' if len(unreadable) > 10 else ''}). "
                "Check the old key."
            )
    return ResealReport(resealed=resealed)
