"""The Inference tab's page: what it offers to talk to, for whom. The chat
itself runs in the browser against the gateway (tests/test_console_start.py
drives it in Chromium against real vLLM; the session way into the gateway is
tested in test_gateway.py)."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from deployments import services as deployment_services
from deployments.models import Deployment
from tests.support.deployments import demo_deployment
from tests.support.nodes import online_cpu_node

pytestmark = [pytest.mark.django_db, pytest.mark.demo]


@pytest.fixture
def deployment(cast, tmp_path) -> Deployment:
    online_cpu_node(tmp_path)
    d = demo_deployment(cast.team, "demo", adapters={"pirate": "pirate", "json-answer": "json"})
    Deployment.objects.filter(pk=d.pk).update(status="ready", port=1)
    return d


def config_of(response) -> dict:
    return json.loads(
        response.content.decode().split('id="playground-config" type="application/json">')[1].split("</script>")[0]
    )


def test_the_tab_offers_the_base_and_loaded_adapters_and_lists_the_rest_greyed(cast, client, deployment):
    client.force_login(cast.viewer)
    response = client.get(reverse("playground"))
    assert response.status_code == 200
    targets = {t["id"]: t["ready"] for t in config_of(response)["targets"]}
    assert targets == {"demo": True, "demo:pirate": True, "demo:json": False}
    page = response.content.decode()
    assert '<option value="demo:json" disabled>' in page and "(pending)" in page
    assert config_of(response)["gatewayUrl"] == "http://testserver/v1"
    assert "pbi_" not in page and "pbk_" not in page, "no key of any kind in the page"


def test_try_it_opens_the_tab_on_that_deployment(cast, client, deployment):
    other = deployment_services.deployment_create(
        workspace=cast.team, name="other", base=deployment.base, settings={"kv_cache_bytes": 1 << 30}
    )
    client.force_login(cast.member)
    detail = client.get(deployment.get_absolute_url()).content.decode()
    assert f'href="/inference/?deployment={deployment.pk}"' in detail and "http://testserver/v1" in detail
    assert 'id="raw-server"' not in detail, "the server's own address is for administrators"
    response = client.get(reverse("playground") + f"?deployment={other.pk}")
    assert [t["id"] for t in config_of(response)["targets"]] == ["other"]
    client.force_login(cast.admin)
    assert 'id="raw-server"' in client.get(deployment.get_absolute_url()).content.decode()


def test_an_outsider_sees_none_of_the_teams_deployments(cast, client, deployment):
    client.force_login(cast.outsider)
    response = client.get(reverse("playground") + f"?deployment={deployment.pk}")
    assert "demo" not in response.content.decode() and b"No deployment to chat with yet" in response.content
