"""`make run`'s first start: an administrator and a default workspace, once."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.core.management import call_command

from accounts.models import Membership


def test_the_first_run_creates_an_admin_and_prints_the_password_once(db, capsys, monkeypatch):
    monkeypatch.delenv("PLUGBOARD_ADMIN_PASSWORD", raising=False)
    call_command("ensure_admin")
    first = capsys.readouterr().out
    call_command("ensure_admin")
    second = capsys.readouterr().out

    password = first.split("password: ")[1].split()[0]
    assert authenticate(username="admin", password=password) is not None
    assert password not in second and "exists" in second
    assert Membership.objects.get(user__username="admin", workspace__slug="default").role == "owner"


def test_the_password_can_come_from_the_environment(db, capsys, monkeypatch):
    monkeypatch.setenv("PLUGBOARD_ADMIN_PASSWORD", "from-the-environment-1")
    call_command("ensure_admin")

    assert "password from PLUGBOARD_ADMIN_PASSWORD" in capsys.readouterr().out
    assert authenticate(username="admin", password="from-the-environment-1") is not None
