"""The console's two keys: SECRET_KEY (Django's signing key: sessions, CSRF,
password reset links) and PLUGBOARD_SECRETS_KEY (the Fernet key that seals
stored secrets, config/vault.py). Each comes from the environment, else from
a file under VAR_DIR that `make run` writes once. No Django here: settings
import it before Django is configured."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

# setting name → file under VAR_DIR
FILES = {"SECRET_KEY": "secret_key", "PLUGBOARD_SECRETS_KEY": "secrets_key"}

# What a debug server (and the test suite) signs with when no key is configured. Public, so never used
# outside DEBUG: settings refuse to start instead (see `load`).
DEVELOPMENT_SECRET_KEY = "plugboard-insecure-development-key-change-me"


def derived_secrets_key(secret_key: str) -> str:
    """Returns the Fernet key earlier versions derived from SECRET_KEY when
    PLUGBOARD_SECRETS_KEY was unset: debug servers still use it, and an install
    upgraded from then needs it once to re-seal its secrets."""
    return base64.urlsafe_b64encode(hashlib.sha256(("plugboard-secrets:" + secret_key).encode()).digest()).decode()


def new_value(name: str) -> str:
    if name == "PLUGBOARD_SECRETS_KEY":
        return Fernet.generate_key().decode()
    return secrets.token_urlsafe(50)


def read(var_dir: Path, name: str, *, files: bool = True) -> str:
    """Returns the key `name` from the environment, else (with `files`) from
    its file under `var_dir`, else ''."""
    value = os.environ.get(name, "").strip()
    if value or not files:
        return value
    path = Path(var_dir) / FILES[name]
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def ensure_files(var_dir: Path) -> list[Path]:
    """Writes each key that is neither in the environment nor on file to a new
    file under `var_dir`, readable by its owner only; returns the files written."""
    var_dir = Path(var_dir)
    var_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, filename in FILES.items():
        path = var_dir / filename
        if os.environ.get(name, "").strip() or path.exists():
            continue
        # O_EXCL: two processes starting at once must not each write (and use) a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(new_value(name) + "\n")
        written.append(path)
    return written


def missing_message(missing: list[str], var_dir: Path) -> str:
    names = " and ".join(missing)
    return (
        f"{names} {'is' if len(missing) == 1 else 'are'} not set, and DEBUG is off: the console will not sign "
        f"sessions or seal credentials with a key anyone can read in its source. Set {names} in the environment "
        f"(SECRET_KEY: any long random string; PLUGBOARD_SECRETS_KEY: a Fernet key, from `python -c "
        f'"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`), or put them in '
        f"{', '.join(str(Path(var_dir) / FILES[n]) for n in missing)} (`make run` writes these once), "
        f"or set DEBUG=1 for a development server."
    )
