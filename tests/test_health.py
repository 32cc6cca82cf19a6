"""/healthz, /readyz and `manage.py doctor`: what a load balancer and an operator ask of an install."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from cluster.models import Node
from tests.support.nodes import online_cpu_node


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_liveness_answers_anyone_without_touching_anything(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"  # a broken broker does not make the process "dead"
    response = client.get("/healthz")
    assert (response.status_code, response.content) == (200, b"ok")


def test_readiness_is_200_when_database_migrations_and_broker_answer(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok", "redis": "ok"}}


def test_readiness_is_503_naming_the_broken_part_and_no_detail(client, db, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "migrations": "ok", "redis": "failing"}
    assert "127.0.0.1" not in response.content.decode()  # the address stays with the operator's doctor


def test_doctor_passes_on_a_working_install(db, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "a-configured-key")
    monkeypatch.setenv("PLUGBOARD_SECRETS_KEY", "a-configured-fernet-key")
    online_cpu_node(tmp_path)
    call_command("doctor")
    out = capsys.readouterr().out
    assert "ok   node cpu-1: online at" in out
    assert "FAIL" not in out


def test_doctor_names_each_problem_and_fails(db, tmp_path, capsys, monkeypatch, settings):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("PLUGBOARD_SECRETS_KEY", raising=False)
    settings.VAR_DIR = tmp_path  # no key files there either
    node = online_cpu_node(tmp_path)
    Node.objects.filter(pk=node.pk).update(last_seen_at=timezone.now() - timedelta(hours=1))
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"

    with pytest.raises(CommandError, match="3 check\\(s\\) failed: redis, secrets, node cpu-1"):
        call_command("doctor")
    out = capsys.readouterr().out
    assert "FAIL redis: ConnectionError" in out
    assert "FAIL secrets: SECRET_KEY and PLUGBOARD_SECRETS_KEY not configured" in out
    assert "FAIL node cpu-1: offline (last seen" in out


def test_doctor_says_when_no_node_ever_reported(db, capsys):
    with pytest.raises(CommandError):
        call_command("doctor")
    assert "no node agent has ever reported" in capsys.readouterr().out


def test_the_probes_answer_over_plain_http_when_the_console_redirects_to_https(client, db, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/connections/").status_code == 301  # everything else goes to https
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
