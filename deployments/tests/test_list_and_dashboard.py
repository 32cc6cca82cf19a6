"""The deployments list (what runs where, for how long, with Start, Stop and Restart) and the home
page's dashboard (what runs, what fails, the nodes, the latest events), as a signed-in person sees them."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.template.defaultfilters import filesizeformat
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from deployments.models import Deployment, DeploymentEvent
from deployments.services import event_record
from registry.demo import DEMO_BASE
from tests.support.deployments import demo_deployment
from tests.support.factories import PASSWORD
from tests.support.nodes import online_cpu_node

pytestmark = pytest.mark.demo

LIST = reverse("deployments:list")
HOME = reverse("home")


def set_status(deployment, status: str, **fields) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(status=status, **fields)


def row(html: str, name: str) -> str:
    """The deployments list's row of `name`."""
    found = re.search(rf'<tr data-deployment="{name}">(.*?)</tr>', html, re.S)
    assert found, f"no row for {name}"
    return found.group(1)


def section(html: str, id_: str) -> str:
    """A part of the dashboard: running, failing, nodes or events."""
    found = re.search(rf'<section[^>]*id="{id_}">(.*?)</section>', html, re.S)
    assert found, f"no section {id_}"
    return found.group(1)


def page(client, user, url: str) -> str:
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def node(tmp_path):
    return online_cpu_node(tmp_path)


# The deployments list


def test_the_list_shows_base_adapters_node_status_and_the_uptime_of_a_running_deployment(cast, client, node):
    alpha = demo_deployment(cast.team, "alpha", adapters={"pirate": "pirate", "robot": "robot"})
    demo_deployment(cast.team, "beta")
    set_status(alpha, "ready", ready_at=timezone.now() - timedelta(hours=3, minutes=12, seconds=30))

    html = page(client, cast.member, LIST)

    alpha_row, beta_row = row(html, "alpha"), row(html, "beta")
    assert DEMO_BASE in alpha_row and "cpu-1" in alpha_row
    assert "pirate" in alpha_row and "robot" in alpha_row
    assert 'data-status="ready"' in alpha_row
    assert '<td class="d-none d-lg-table-cell text-nowrap" data-uptime>3 h 12 min</td>' in alpha_row
    assert 'data-status="pending"' in beta_row and "data-uptime>—</td>" in beta_row


def test_a_degraded_deployment_has_an_uptime_and_a_stopped_one_a_dash(cast, client, node):
    up = demo_deployment(cast.team, "up")
    down = demo_deployment(cast.team, "down")
    set_status(up, "degraded", ready_at=timezone.now() - timedelta(days=2, hours=4, minutes=5))
    set_status(down, "stopped", ready_at=timezone.now() - timedelta(hours=1))

    html = page(client, cast.member, LIST)

    assert "data-uptime>2 d 4 h</td>" in row(html, "up")
    assert "data-uptime>—</td>" in row(html, "down")


def test_editors_get_start_for_stopped_or_failed_and_stop_restart_for_running_deployments(cast, client, node):
    for name, status in (("running", "ready"), ("stopped", "stopped"), ("broken", "failed"), ("booting", "starting")):
        set_status(demo_deployment(cast.team, name), status)

    html = page(client, cast.member, LIST)

    running = row(html, "running")
    assert ">Stop</button>" in running and ">Restart</button>" in running and ">Start</button>" not in running
    assert running.count("data-confirm=") == 2
    for name in ("stopped", "broken"):
        assert ">Start</button>" in row(html, name) and ">Stop</button>" not in row(html, name)
    assert "<button" not in row(html, "booting")


def test_viewers_see_the_deployments_but_no_buttons(cast, client, node):
    set_status(demo_deployment(cast.team, "running"), "ready")
    set_status(demo_deployment(cast.team, "stopped"), "stopped")

    html = page(client, cast.viewer, LIST)

    assert "running" in row(html, "running") and "stopped" in row(html, "stopped")
    assert "<button" not in html.split("<tbody>")[1]


def test_the_list_never_shows_another_workspaces_deployment(cast, client, node):
    demo_deployment(cast.other, "theirs")

    html = page(client, cast.member, LIST)

    assert 'data-deployment="theirs"' not in html and "No deployments yet" in html


@pytest.mark.parametrize(
    ("status", "action", "check"),
    [
        ("ready", "stop", lambda d: d.desired == "stopped" and d.status == "stopping"),
        ("ready", "restart", lambda d: d.restart_requested),
        ("stopped", "start", lambda d: d.desired == "running" and d.status == "pending"),
    ],
)
def test_the_lists_buttons_act_and_come_back_to_the_list(cast, client, node, status, action, check):
    deployment = demo_deployment(cast.team, "demo")
    set_status(deployment, status, desired="stopped" if status == "stopped" else "running")
    client.force_login(cast.member)

    response = client.post(reverse(f"deployments:{action}", args=[deployment.pk]), {"next": LIST})

    assert response.status_code == 302 and response["Location"] == LIST
    deployment.refresh_from_db()
    assert check(deployment)


def test_a_refused_action_comes_back_to_the_list_saying_why(cast, client, node):
    deployment = demo_deployment(cast.team, "demo")
    set_status(deployment, "stopped", desired="stopped")
    client.force_login(cast.member)

    response = client.post(reverse("deployments:stop", args=[deployment.pk]), {"next": LIST}, follow=True)

    assert response.redirect_chain == [(LIST, 302)]
    assert "It is already stopped or stopping." in response.content.decode()


def test_an_action_never_sends_the_browser_to_another_site(cast, client, node):
    deployment = demo_deployment(cast.team, "demo")
    set_status(deployment, "ready")
    client.force_login(cast.member)

    response = client.post(reverse("deployments:restart", args=[deployment.pk]), {"next": "https://evil.example/"})

    assert response["Location"] == deployment.get_absolute_url()


def test_viewers_may_not_use_the_lists_actions(cast, client, node):
    deployment = demo_deployment(cast.team, "demo")
    set_status(deployment, "ready")
    client.force_login(cast.viewer)

    assert client.post(reverse("deployments:stop", args=[deployment.pk]), {"next": LIST}).status_code == 403
    assert Deployment.objects.get(pk=deployment.pk).desired == "running"


def queries_for(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_list_costs_as_many_queries_for_five_deployments_as_for_one(cast, client, node):
    client.force_login(cast.member)
    set_status(demo_deployment(cast.team, "d0", adapters={"pirate": "pirate"}), "ready", ready_at=timezone.now())
    one = queries_for(client, LIST)
    for n in range(1, 5):
        set_status(demo_deployment(cast.team, f"d{n}", adapters={"pirate": "pirate"}), "ready", ready_at=timezone.now())

    assert queries_for(client, LIST) == one


# The home page's dashboard


def test_the_dashboard_shows_what_runs_what_fails_the_nodes_and_recent_events(cast, client, node):
    alpha = demo_deployment(cast.team, "alpha")
    broken = demo_deployment(cast.team, "broken")
    crashing = demo_deployment(cast.team, "crashing")
    rebooting = demo_deployment(cast.team, "rebooting")
    set_status(alpha, "ready", ready_at=timezone.now() - timedelta(minutes=42))
    set_status(broken, "failed", status_reason="CUDA out of memory\nTraceback (most recent call last):")
    set_status(crashing, "restarting", failures=2, status_reason="The server exited with code 1\nlog tail")
    set_status(rebooting, "restarting", failures=0)
    event_record(deployment=alpha, status="ready", message="The server answers.")

    html = page(client, cast.member, HOME)

    running = section(html, "running")
    assert 'data-deployment="alpha"' in running and "42 min" in running
    assert alpha.get_absolute_url() in running
    failing = section(html, "failing")
    assert 'data-deployment="broken"' in failing and "CUDA out of memory" in failing
    assert "Traceback" not in failing
    assert 'data-deployment="crashing"' in failing and "The server exited with code 1" in failing
    assert "rebooting" not in failing and "rebooting" not in running
    nodes = section(html, "nodes")
    assert 'data-node="cpu-1" data-status="online"' in nodes
    cpu = node.accelerators.get()
    used = cpu.memory_total_bytes - cpu.memory_free_bytes
    assert f"{filesizeformat(used)} / {filesizeformat(cpu.memory_total_bytes)}" in nodes
    assert f"cache {filesizeformat(node.cache_used_bytes)} of {filesizeformat(node.cache_quota_bytes)}" in nodes
    events = section(html, "events")
    assert "The server answers." in events and alpha.get_absolute_url() in events
    assert "Nothing is deployed yet" not in html


def test_the_dashboard_never_shows_another_workspaces_deployments_or_events(cast, client, node):
    ours = demo_deployment(cast.team, "ours")
    theirs = demo_deployment(cast.other, "theirs")
    doomed = demo_deployment(cast.other, "doomed")
    set_status(ours, "ready", ready_at=timezone.now())
    set_status(theirs, "ready", ready_at=timezone.now())
    set_status(doomed, "failed", status_reason="Their secret reason")
    event_record(deployment=theirs, message="Their own event")

    html = page(client, cast.member, HOME)

    assert "ours" in section(html, "running")
    for leaked in ("theirs", "doomed", "Their secret reason", "Their own event", theirs.get_absolute_url()):
        assert leaked not in html
    assert 'data-node="cpu-1"' in section(html, "nodes"), "nodes are shared by every workspace"


def test_the_dashboard_lists_the_ten_latest_events_newest_first(cast, client, node):
    deployment = demo_deployment(cast.team, "demo")
    DeploymentEvent.objects.all().delete()
    for n in range(12):
        event_record(deployment=deployment, message=f"Event number {n:02}.")

    events = section(page(client, cast.member, HOME), "events")

    shown = re.findall(r"Event number (\d\d)\.", events)
    assert shown == [f"{n:02}" for n in range(11, 1, -1)]


def test_a_new_user_is_told_to_register_a_model_then_deploy_it(cast, client, db):
    html = page(client, cast.member, HOME)

    started = html.split('id="getting-started"')[1].split("</ol>")[0]
    assert "Nothing is deployed yet" in started
    assert started.index(reverse("registry:artifact_register")) < started.index(reverse("deployments:wizard_start"))
    assert "Nothing of your workspaces is running." in html and "No node agent has reported yet." in html


def test_signing_in_lands_on_the_dashboard(cast, client):
    response = client.post(reverse("login"), {"username": "member", "password": PASSWORD}, follow=True)

    assert response.redirect_chain[-1][0] == HOME
    assert '<h1 class="h3 me-auto mb-0">Dashboard</h1>' in response.content.decode()


def test_the_dashboard_costs_as_many_queries_for_five_deployments_as_for_one(cast, client, node):
    client.force_login(cast.member)

    def add(name: str, status: str) -> None:
        deployment = demo_deployment(cast.team, name, adapters={"pirate": "pirate"})
        set_status(deployment, status, ready_at=timezone.now(), status_reason="Crashed\nmore")
        event_record(deployment=deployment, status=status, message="Changed.")

    add("d0", "ready")
    add("d1", "failed")
    one = queries_for(client, HOME)
    for n in range(2, 6):
        add(f"d{n}", "ready" if n % 2 else "failed")

    assert queries_for(client, HOME) == one
