"""The deployment lifecycle: every allowed move is made, every forbidden one
is refused (logged, nothing written), and the named moves the supervisor and
the pages use land where they say."""

from __future__ import annotations

import itertools
import logging

import pytest

from cluster.models import Node
from deployments import lifecycle, services
from deployments.lifecycle import STATES, IllegalTransition
from deployments.models import Deployment, DeploymentEvent
from registry.models import Artifact, ArtifactKind, Connection

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(cast) -> Deployment:
    connection = Connection.objects.create(workspace=cast.team, name="c", kind="local", root_path="/")
    base = Artifact.objects.create(
        workspace=cast.team, name="m", kind=ArtifactKind.BASE, connection=connection, location="m"
    )
    node = Node.objects.create(name="n", address="127.0.0.1", cache_dir="/c", cache_quota_bytes=1)
    return Deployment.objects.create(workspace=cast.team, name="d", base=base, node=node, device="cpu")


def at(deployment: Deployment, status: str) -> Deployment:
    Deployment.objects.filter(pk=deployment.pk).update(status=status)
    DeploymentEvent.objects.all().delete()
    deployment.refresh_from_db()
    return deployment


@pytest.mark.parametrize(("current", "target"), list(itertools.product(STATES, STATES)))
def test_every_move_is_made_or_refused_as_the_table_says(deployment, caplog, current, target):
    deployment = at(deployment, current)
    if lifecycle.allowed(current, target):
        services._move(deployment=deployment, to=target, reason="because")
        assert Deployment.objects.get(pk=deployment.pk).status == target
        events = list(DeploymentEvent.objects.values_list("status", "message"))
        assert events == ([] if target == current else [(target, "because")]), "an event for a change only"
    else:
        with caplog.at_level(logging.ERROR), pytest.raises(IllegalTransition):
            services._move(deployment=deployment, to=target, reason="because", pid=4242)
        row = Deployment.objects.get(pk=deployment.pk)
        assert (row.status, row.pid) == (current, None) and not DeploymentEvent.objects.exists(), "nothing written"
        assert f"from {current} to {target}" in caplog.text and deployment.name in caplog.text


def test_the_table_is_what_the_readme_says():
    assert sum(lifecycle.allowed(a, b) for a, b in itertools.product(STATES, STATES)) == 41
    assert not lifecycle.allowed("stopped", "ready") and not lifecycle.allowed("failed", "restarting")
    assert lifecycle.allowed("restarting", "restarting") and not lifecycle.allowed("ready", "ready")


def test_a_move_is_judged_by_the_status_in_the_database_not_a_stale_copy(deployment):
    stale = at(deployment, "ready")
    Deployment.objects.filter(pk=deployment.pk).update(status="stopping")  # the web stopped it meanwhile
    with pytest.raises(IllegalTransition):
        services.deployment_mark_degraded(deployment=stale, reason="/health does not answer.")
    assert Deployment.objects.get(pk=deployment.pk).status == "stopping"


def test_the_named_moves_land_where_they_say(deployment):
    d = services.deployment_mark_fetching(deployment=at(deployment, "pending"), reason="Fetching.")
    assert d.status == "fetching"
    d = services.deployment_mark_started(
        deployment=d, pid=1, process_identity="", port=2, command="vllm", log_path="/l", node=d.node
    )
    assert (d.status, d.pid, d.port, d.launched_revision, d.launched_node) == ("starting", 1, 2, 1, d.node)
    d = services.deployment_mark_ready(deployment=d, reason="Up.", log_tail="ok")
    assert (d.status, d.log_tail, d.failures) == ("ready", "ok", 0) and d.ready_at is not None
    d = services.deployment_mark_degraded(deployment=d, reason="Down.")
    d = services.deployment_mark_restarting(deployment=d, reason="Crashed.", pid=None, failures=1)
    assert (d.status, d.pid, d.failures) == ("restarting", None, 1)
    d = services.deployment_mark_started(
        deployment=d, pid=3, process_identity="", port=4, command="vllm", log_path="/l", node=d.node
    )
    assert (d.status, d.pid) == ("restarting", 3), "a restart stays restarting until the server answers"
    d = services.deployment_mark_failed(deployment=d, reason="Crash loop.", pid=None, port=None)
    d = services.deployment_mark_stopped(deployment=d)
    assert (d.status, d.pid, d.port, d.launched_node) == ("stopped", None, None, None)
    assert [e.status for e in d.events.all()] == [
        "fetching",
        "starting",
        "ready",
        "degraded",
        "restarting",
        "failed",
        "stopped",
    ]


def test_a_hand_over_is_on_the_timeline_even_when_the_new_node_marked_it_restarting_first(deployment):
    stale = at(deployment, "ready")  # what the old node read at the start of its tick
    Deployment.objects.filter(pk=deployment.pk).update(status="restarting")  # the new node, meanwhile
    services.deployment_release(deployment=stale, node=deployment.node, reason="Stopped the server on n; it moves.")
    assert list(DeploymentEvent.objects.values_list("message", flat=True)) == ["Stopped the server on n; it moves."]
    assert Deployment.objects.get(pk=deployment.pk).status == "restarting"


def test_a_move_refuses_a_field_it_does_not_own(deployment):
    deployment.status = Deployment.Status.STARTING
    deployment.save()
    with pytest.raises(TypeError, match="does not set desired"):
        services.deployment_mark_failed(deployment=deployment, reason="x", desired="stopped")
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.STARTING
