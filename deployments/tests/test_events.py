"""A deployment's timeline is bounded: the newest PLUGBOARD_EVENTS_KEPT events are kept, the page and the
API's detail show the latest, and the events page and `events/` page back through the rest."""

from __future__ import annotations

import pytest

from deployments import services
from deployments.models import TIMELINE_EVENTS, DeploymentEvent
from tests.support.deployments import demo_deployment
from tests.support.nodes import api_as, online_cpu_node

pytestmark = pytest.mark.demo


@pytest.fixture
def deployment(cast, tmp_path):
    online_cpu_node(tmp_path)
    return demo_deployment(cast.team, "demo")


def record(deployment, count: int) -> None:
    for n in range(count):
        services.event_record(deployment=deployment, message=f"event number {n}")


def test_only_the_newest_events_are_kept(deployment, settings):
    settings.PLUGBOARD_EVENTS_KEPT = 30
    record(deployment, 45)

    kept = list(DeploymentEvent.objects.filter(deployment=deployment).values_list("message", flat=True))
    assert len(kept) == 30
    assert "event number 44" in kept and "event number 15" in kept and "event number 14" not in kept


def test_the_api_shows_the_latest_and_pages_through_all(cast, deployment, settings):
    settings.PLUGBOARD_EVENTS_KEPT = 500
    record(deployment, TIMELINE_EVENTS + 30)
    api = api_as(cast.viewer)

    detail = api.get(f"/api/v1/deployments/{deployment.pk}/").json()
    assert len(detail["events"]) == TIMELINE_EVENTS
    assert detail["events"][0]["message"] == f"event number {TIMELINE_EVENTS + 29}"

    first = api.get(f"/api/v1/deployments/{deployment.pk}/events/").json()
    total = DeploymentEvent.objects.filter(deployment=deployment).count()
    assert first["count"] == total and len(first["results"]) == 50 and first["next"]
    last = api.get(first["next"]).json()
    assert last["results"][-1]["message"] == "Deployed smollm2-135m-instruct on cpu-1."
    assert api_as(cast.outsider).get(f"/api/v1/deployments/{deployment.pk}/events/").status_code == 404


def test_the_events_page_pages_back_from_the_newest(cast, client, deployment, settings):
    settings.PLUGBOARD_EVENTS_KEPT = 500
    record(deployment, TIMELINE_EVENTS + 30)
    client.force_login(cast.viewer)

    assert "All events" in client.get(f"/deployments/{deployment.pk}/").content.decode()
    newest = client.get(f"/deployments/{deployment.pk}/events/").content.decode()
    older = client.get(f"/deployments/{deployment.pk}/events/?page=2").content.decode()
    assert f"event number {TIMELINE_EVENTS + 29}" in newest and "event number 0<" not in newest
    assert "event number 0<" in older and "Page 2 of 2" in older
