"""Attaching and detaching adapters on a live deployment: attaches at the same time are judged
one after the other, so the loser gets a message, never a 500; a detached adapter lets go of the
node's cached copy."""

from __future__ import annotations

import threading

import pytest

from cluster import selectors as cluster_selectors
from cluster import services as cluster_services
from cluster.models import CachedArtifact
from deployments import server_metrics, services
from deployments.models import TIMELINE_EVENTS, Deployment, DeploymentAdapter
from deployments.vllm_metrics import Sample
from registry.demo import DEMO_BASE
from tests.support.deployments import adapter_for_demo
from tests.support.nodes import api_as

pytestmark = [pytest.mark.demo, pytest.mark.django_db(transaction=True)]
GiB = 1 << 30


@pytest.fixture
def live(cast, demo) -> Deployment:
    """The demo with pirate attached and room for more (max_loras 4: three adapters on CPU)."""
    return services.deployment_create(
        workspace=cast.team, name="demo", base=demo[DEMO_BASE], adapters=[(demo["pirate"], "pirate")],
        settings={"kv_cache_bytes": GiB, "max_loras": 4},
    )  # fmt: skip


def attach_at_once(users_and_bodies, pk: int) -> list:
    """Sends every attach from its own thread (its own database connection), all released together."""
    start = threading.Barrier(len(users_and_bodies))
    responses: list = [None] * len(users_and_bodies)

    def send(index: int, user, body: dict) -> None:
        client = api_as(user)
        start.wait()
        responses[index] = client.post(f"/api/v1/deployments/{pk}/attach/", body, format="json")

    threads = [threading.Thread(target=send, args=(i, *ub)) for i, ub in enumerate(users_and_bodies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return responses


def test_the_same_adapter_attached_twice_at_once_is_attached_once(cast, demo, live):
    robot = demo["robot"]
    body = {"adapter": robot.pk}

    responses = attach_at_once([(cast.member, body), (cast.admin, body), (cast.member, body)], live.pk)

    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 400, 400], [r.content for r in responses]
    refusals = [r.json()["detail"] for r in responses if r.status_code == 400]
    assert all("already attached" in d or "attached meanwhile" in d for d in refusals), refusals
    assert live.adapters.filter(adapter=robot).count() == 1


def test_two_adapters_under_one_served_name_at_once_get_it_once(cast, demo, live):
    bodies = [{"adapter": demo["robot"].pk, "served_name": "helper"}, {"adapter": demo["json-answer"].pk, "served_name": "helper"}]  # fmt: skip

    responses = attach_at_once([(cast.member, bodies[0]), (cast.admin, bodies[1])], live.pk)

    assert sorted(r.status_code for r in responses) == [202, 400], [r.content for r in responses]
    assert live.adapters.filter(served_name="helper").count() == 1


def test_a_detached_adapter_is_no_longer_in_use_in_the_nodes_cache(cast, demo, live):
    node = live.node
    base = CachedArtifact.objects.create(node=node, artifact=live.base, revision="r", status="ready")
    pirate = CachedArtifact.objects.create(node=node, artifact=demo["pirate"], revision="r", status="ready")
    for cached in (base, pirate):
        cluster_services.cache_lease(cached=cached, holder=live)
    attached = live.adapters.get(served_name="pirate")
    services.adapter_detach(attached=attached)

    services.adapter_forget(attached=live.adapters.get(pk=attached.pk))  # what the supervisor does once unloaded

    in_use = {c.artifact.name: c.leased for c in cluster_selectors.cached_visible_to(cast.member)}
    assert in_use == {live.base.name: True, "pirate": False}


def test_detach_on_the_deployment_page_asks_first(cast, live, client):
    client.force_login(cast.member)

    page = client.get(live.get_absolute_url()).content.decode()

    assert 'data-confirm="Detach demo:pirate? The server unloads it at once' in page


def test_adapters_beyond_the_servers_slots_attach_up_to_the_deployments_limit(cast, demo, tmp_path):
    deployment = services.deployment_create(
        workspace=cast.team, name="lean", base=demo[DEMO_BASE], adapters=[(demo["pirate"], "pirate")],
        settings={"kv_cache_bytes": GiB},
    )  # fmt: skip
    assert deployment.settings["max_loras"] == 1  # the defaults: one slot for one adapter
    api = api_as(cast.member)
    for name in ("robot", "json-answer"):  # more adapters than slots: vLLM swaps them through the slot
        response = api.post(f"/api/v1/deployments/{deployment.pk}/attach/", {"adapter": demo[name].pk}, format="json")
        assert response.status_code == 202, response.content

    Deployment.objects.filter(pk=deployment.pk).update(max_adapters=3)
    extra = adapter_for_demo(cast, tmp_path, "extra")
    refused = api.post(f"/api/v1/deployments/{deployment.pk}/attach/", {"adapter": extra.pk}, format="json")

    assert refused.status_code == 400
    assert refused.json()["detail"].startswith("This deployment holds 3 adapter(s), its limit.")
    assert deployment.adapters.count() == 3


def test_the_adapter_limit_changes_through_the_api_without_a_new_revision(cast, demo, live):
    api = api_as(cast.member)
    url = f"/api/v1/deployments/{live.pk}/"

    raised = api.patch(url, {"max_adapters": 250}, format="json")
    too_low = api.patch(url, {"max_adapters": 0}, format="json")
    services.adapter_attach(deployment=live, adapter=demo["json-answer"])
    below_attached = api.patch(url, {"max_adapters": 1}, format="json")  # two are attached now
    at_attached = api.patch(url, {"max_adapters": 2}, format="json")

    assert raised.status_code == 202 and raised.json()["max_adapters"] == 250 and raised.json()["revision"] == 1
    assert too_low.status_code == 400 and "max_adapters" in too_low.json()["errors"]
    assert below_attached.status_code == 400
    assert below_attached.json()["detail"] == (
        "2 adapter(s) are attached: detach some first, or keep the limit at 2 or more."
    )
    assert at_attached.status_code == 202
    assert Deployment.objects.get(pk=live.pk).max_adapters == 2
    assert api_as(cast.viewer).patch(url, {"max_adapters": 5}, format="json").status_code == 403


def test_an_adapter_reads_loaded_only_while_its_server_serves(cast, live, client):
    live.adapters.update(state=DeploymentAdapter.State.LOADED)
    api = api_as(cast.member)
    client.force_login(cast.member)

    def shown() -> tuple[str, str]:
        api_state = api.get(f"/api/v1/deployments/{live.pk}/").json()["adapters"][0]["state"]
        page = client.get(f"{live.get_absolute_url()}?partial=live").content.decode()
        return api_state, page

    for status, state, label in [("starting", "waiting", "Waiting for the server"), ("ready", "loaded", "Loaded"),
                                 ("stopped", "waiting", "Waiting for the server")]:  # fmt: skip
        Deployment.objects.filter(pk=live.pk).update(status=status)
        api_state, page = shown()
        assert api_state == state, status
        assert f'data-adapter="pirate" data-state="{state}"' in page and f'<span class="small">{label}</span>' in page


def test_a_live_refresh_keeps_the_detach_buttons_for_editors_only(cast, live, client):
    url = f"{live.get_absolute_url()}?partial=live"
    for user, buttons in ((cast.member, 1), (cast.viewer, 0)):
        client.force_login(user)
        refreshed = client.get(url, headers={"HX-Request": "true"}).content.decode()
        assert refreshed.count(">Detach</button>") == buttons, user
        assert 'data-adapter="pirate"' in refreshed and "Timeline" in refreshed


def test_the_page_shows_the_newest_events_and_no_more_than_its_share(cast, live, client):
    for n in range(TIMELINE_EVENTS + 20):
        services.event_record(deployment=live, message=f"event number {n}")
    client.force_login(cast.member)

    page = client.get(f"{live.get_absolute_url()}?partial=live", headers={"HX-Request": "true"}).content.decode()

    timeline = page[page.index("Timeline") :]
    assert timeline.count("event number") == TIMELINE_EVENTS
    assert f"event number {TIMELINE_EVENTS + 19}" in timeline and "event number 0<" not in timeline
    assert timeline.index(f"event number {TIMELINE_EVENTS + 19}") < timeline.index(f"event number {TIMELINE_EVENTS}")


def test_the_page_says_which_adapters_the_server_runs_now_and_what_it_keeps_in_memory(cast, live, client):
    client.force_login(cast.member)
    url = f"{live.get_absolute_url()}?partial=live"

    server_metrics.record(live.pk, Sample(at=server_metrics.now() - 60, adapters_running=["demo:pirate"]))
    stale = client.get(url, headers={"HX-Request": "true"}).content.decode()
    server_metrics.record(live.pk, Sample(at=server_metrics.now(), adapters_running=["demo:pirate"]))
    fresh = client.get(url, headers={"HX-Request": "true"}).content.decode()

    assert "in the running batch" not in stale, "a report a minute old says nothing about now"
    assert fresh.count("in the running batch") == 1
    assert "runs up to 4 adapters in one batch and keeps 4 in memory" in fresh
    assert "Up to 100 may be attached." in fresh
