"""A server that dies after every health check ends failed, with the reason, after MAX_FAILURES crashes:
becoming ready in between does not reset the count. One that stayed up past CRASH_WINDOW starts counting
afresh."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import services
from deployments.models import Deployment
from deployments.supervisor import CRASH_WINDOW, MAX_FAILURES, Supervisor
from tests.support.deployments import demo_deployment
from tests.support.nodes import online_cpu_node

pytestmark = [pytest.mark.django_db, pytest.mark.demo]


def ready_then_crash(supervisor: Supervisor, pk: int, *, up_for: timedelta) -> Deployment:
    """The server passes its health check, stays up `up_for`, then its process is found gone."""
    d = Deployment.objects.get(pk=pk)
    if d.status != "ready":
        services.deployment_mark_ready(deployment=d, reason="The server answers on /health.")
    Deployment.objects.filter(pk=pk).update(ready_at=timezone.now() - up_for)
    supervisor.crashed(Deployment.objects.get(pk=pk), "The server process exited.")
    return Deployment.objects.get(pk=pk)


@pytest.fixture
def deployment(cast, tmp_path):
    online_cpu_node(tmp_path)
    d = demo_deployment(cast.team, "demo")
    Deployment.objects.filter(pk=d.pk).update(status="starting")
    return d


def test_a_server_that_dies_after_each_health_check_ends_failed(deployment, tmp_path):
    supervisor = Supervisor("cpu-1", None, tmp_path / "runs")
    statuses = []
    for _ in range(MAX_FAILURES):
        d = ready_then_crash(supervisor, deployment.pk, up_for=timedelta(seconds=30))
        statuses.append(d.status)
        if d.status == "restarting":
            Deployment.objects.filter(pk=d.pk).update(status="starting")  # the next launch
    assert statuses == ["restarting"] * (MAX_FAILURES - 1) + ["failed"]
    assert f"It failed {MAX_FAILURES} times in a row" in d.status_reason


def test_a_server_that_stayed_up_starts_counting_afresh(deployment, tmp_path):
    supervisor = Supervisor("cpu-1", None, tmp_path / "runs")
    for _ in range(MAX_FAILURES - 1):
        ready_then_crash(supervisor, deployment.pk, up_for=timedelta(seconds=30))
        Deployment.objects.filter(pk=deployment.pk).update(status="starting")
    d = ready_then_crash(supervisor, deployment.pk, up_for=CRASH_WINDOW + timedelta(minutes=1))
    assert (d.status, d.failures) == ("restarting", 1)
