"""The console's own keys: it refuses to start outside DEBUG without them, `make run` writes them once
(config/keys.py), and `manage.py rotate_secrets_key` re-seals every stored secret with a new one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import CommandError, call_command

from config import keys
from config.vault import seal, unseal
from deployments.models import Deployment
from registry.models import Connection
from tests.support.deployments import demo_deployment
from tests.support.nodes import online_cpu_node

ROOT = Path(__file__).resolve().parent.parent
KEY_NAMES = ("SECRET_KEY", "PLUGBOARD_SECRETS_KEY", "PLUGBOARD_SECRETS_KEY_OLD", "DEBUG", "PYTEST_VERSION")


def operator_env(var: Path, **env: str) -> dict[str, str]:
    """The environment of an operator's shell: outside pytest, with none of the keys unless given."""
    base = {k: v for k, v in os.environ.items() if k not in (*KEY_NAMES, "DATABASE_URL", "REDIS_URL")}
    return {**base, "PLUGBOARD_VAR_DIR": str(var), **env}


def manage(var: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=operator_env(var, **env), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def manage_check(var: Path, **env: str) -> subprocess.CompletedProcess:
    return manage(var, "check", **env)


def test_outside_debug_the_console_refuses_to_start_without_its_keys_and_says_what_to_set(tmp_path):
    result = manage_check(tmp_path)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY and PLUGBOARD_SECRETS_KEY are not set" in result.stderr
    assert str(tmp_path / "secret_key") in result.stderr and "Fernet.generate_key()" in result.stderr


def test_outside_debug_a_missing_secrets_key_alone_is_named(tmp_path):
    result = manage_check(tmp_path, SECRET_KEY="x" * 60)

    assert result.returncode != 0 and "PLUGBOARD_SECRETS_KEY is not set" in result.stderr


def test_in_debug_the_console_starts_without_keys(tmp_path):
    result = manage_check(tmp_path, DEBUG="1")

    assert result.returncode == 0, result.stderr


def test_the_key_files_are_written_once_readable_by_their_owner_only_and_let_the_console_start(tmp_path, monkeypatch):
    for name in keys.FILES:
        monkeypatch.delenv(name, raising=False)  # as on a fresh laptop

    written = keys.ensure_files(tmp_path)

    assert sorted(p.name for p in written) == ["secret_key", "secrets_key"]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Fernet((tmp_path / "secrets_key").read_text().strip())  # a valid Fernet key
    before = {p: p.read_text() for p in written}
    assert keys.ensure_files(tmp_path) == []
    assert {p: p.read_text() for p in written} == before
    assert manage_check(tmp_path).returncode == 0


def test_a_key_in_the_environment_is_not_written_to_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "from-the-environment")
    monkeypatch.delenv("PLUGBOARD_SECRETS_KEY", raising=False)

    assert [p.name for p in keys.ensure_files(tmp_path)] == ["secrets_key"]
    assert not (tmp_path / "secret_key").exists()


def test_make_run_reseals_the_secrets_of_an_install_from_before_the_key_files(tmp_path):
    """Such an install ran with no keys at all: the development SECRET_KEY, and a secrets key derived from it."""
    seal_one = (
        "from accounts.models import Workspace; from registry.models import Connection; from config.vault import seal; "
        "Connection.objects.create(workspace=Workspace.objects.create(name='W', slug='w'), name='hub', kind='hf', "
        "encrypted_secrets=seal({'token': 'hf_old'}))"
    )
    assert manage(tmp_path, "migrate", "-v", "0", DEBUG="1").returncode == 0
    assert manage(tmp_path, "shell", "-c", seal_one, DEBUG="1").returncode == 0

    # What scripts/run_console.py does before and after its migrations.
    upgrade = (
        "import runpy, sys; from pathlib import Path; run = runpy.run_path('scripts/run_console.py'); "
        "old = run['ensure_keys'](Path(sys.argv[1])); assert old; "
        "sys.exit(run['manage']('rotate_secrets_key', env={'PLUGBOARD_SECRETS_KEY_OLD': old}))"
    )
    upgraded = subprocess.run(
        [sys.executable, "-c", upgrade, str(tmp_path)], cwd=ROOT, env=operator_env(tmp_path),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert "registry.Connection.encrypted_secrets: 1 re-sealed" in upgraded.stdout

    read = "from registry.models import Connection; from config.vault import unseal; " \
        "print(unseal(Connection.objects.get(name='hub').encrypted_secrets))"  # fmt: skip
    opened = manage(tmp_path, "shell", "-c", read)  # no DEBUG: the new key files alone
    assert opened.returncode == 0, opened.stderr
    assert "hf_old" in opened.stdout


# Rotation ---------------------------------------------------------------------------------------


@pytest.fixture
def sealed_rows(cast, tmp_path):
    """A hub connection with a token, an S3 connection with keys, and a deployment with its server key,
    all sealed with the current key; and a local connection with nothing sealed."""
    hub = Connection.objects.create(
        workspace=cast.team, name="hub", kind="hf", encrypted_secrets=seal({"token": "hf_1"})
    )
    s3 = Connection.objects.create(
        workspace=cast.team, name="s3", kind="s3",
        encrypted_secrets=seal({"access_key_id": "AKIA", "secret_access_key": "shh"}),
    )  # fmt: skip
    plain = Connection.objects.create(workspace=cast.team, name="plain", kind="local", root_path=str(tmp_path))
    online_cpu_node(tmp_path)
    deployment = demo_deployment(cast.team, "rotated")
    Deployment.objects.filter(pk=deployment.pk).update(encrypted_api_key=seal({"api_key": "pbk_1"}))
    return hub, s3, plain, deployment


def stored(model, pk, field) -> bytes:
    return bytes(getattr(model.objects.get(pk=pk), field))


@pytest.mark.demo
def test_rotation_reseals_every_stored_secret_with_the_new_key(sealed_rows, settings, capsys):
    hub, s3, plain, deployment = sealed_rows
    old, new = settings.PLUGBOARD_SECRETS_KEY, Fernet.generate_key().decode()
    settings.PLUGBOARD_SECRETS_KEY, settings.PLUGBOARD_SECRETS_KEY_OLD = new, [old]
    # During the switch the old key still opens what it sealed.
    assert unseal(stored(Connection, hub.pk, "encrypted_secrets")) == {"token": "hf_1"}

    call_command("rotate_secrets_key")

    out = capsys.readouterr().out
    assert "registry.Connection.encrypted_secrets: 2 re-sealed" in out
    assert "deployments.Deployment.encrypted_api_key: 1 re-sealed" in out and "Re-sealed 3 secret(s)" in out
    settings.PLUGBOARD_SECRETS_KEY_OLD = []  # the old key is gone: the new one alone opens everything
    assert unseal(stored(Connection, hub.pk, "encrypted_secrets")) == {"token": "hf_1"}
    assert unseal(stored(Connection, s3.pk, "encrypted_secrets"))["secret_access_key"] == "shh"
    assert Deployment.objects.get(pk=deployment.pk).api_key == "pbk_1"
    assert stored(Connection, plain.pk, "encrypted_secrets") == b""
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt(stored(Connection, hub.pk, "encrypted_secrets"))


@pytest.mark.demo
def test_rotation_takes_the_old_key_from_a_file(sealed_rows, settings, tmp_path):
    hub = sealed_rows[0]
    old_file = tmp_path / "old-key"
    old_file.write_text(settings.PLUGBOARD_SECRETS_KEY + "\n")
    settings.PLUGBOARD_SECRETS_KEY = Fernet.generate_key().decode()

    call_command("rotate_secrets_key", "--old-key-file", str(old_file))

    assert unseal(stored(Connection, hub.pk, "encrypted_secrets")) == {"token": "hf_1"}


@pytest.mark.demo
def test_rotation_with_a_wrong_old_key_changes_nothing_and_names_the_rows(sealed_rows, settings):
    hub, _, _, deployment = sealed_rows
    before = stored(Connection, hub.pk, "encrypted_secrets")
    settings.PLUGBOARD_SECRETS_KEY = Fernet.generate_key().decode()
    settings.PLUGBOARD_SECRETS_KEY_OLD = [Fernet.generate_key().decode()]

    with pytest.raises(CommandError, match=r"Nothing was changed: 3 stored secret\(s\) open with neither") as raised:
        call_command("rotate_secrets_key")

    assert f"registry.Connection.encrypted_secrets #{hub.pk}" in str(raised.value)
    assert f"deployments.Deployment.encrypted_api_key #{deployment.pk}" in str(raised.value)
    assert stored(Connection, hub.pk, "encrypted_secrets") == before


def test_a_secret_sealed_with_an_unknown_key_says_how_to_recover(cast, settings):
    connection = Connection.objects.create(
        workspace=cast.team, name="hub", kind="hf", encrypted_secrets=seal({"token": "t"})
    )
    settings.PLUGBOARD_SECRETS_KEY = Fernet.generate_key().decode()

    with pytest.raises(Exception, match=r"PLUGBOARD_SECRETS_KEY_OLD and run `manage\.py rotate_secrets_key`"):
        unseal(stored(Connection, connection.pk, "encrypted_secrets"))
