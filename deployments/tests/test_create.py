"""Deploying through the API: bad input gets a clear error and changes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cluster.models import Node
from deployments import vllm_args
from deployments.models import Deployment, DeploymentAdapter
from registry.demo import DEMO_BASE
from tests.support.deployments import adapter_for_demo, deploy
from tests.support.nodes import api_as, gpu_node

pytestmark = pytest.mark.demo
GiB = 1 << 30


def refused(response, fragment: str) -> None:
    assert response.status_code in (400, 404, 409), response.content
    assert fragment in response.json()["detail"], response.json()["detail"]
    assert not Deployment.objects.exists() and not DeploymentAdapter.objects.exists()


def test_a_good_request_is_accepted_with_defaults_that_fit_its_adapters(cast, demo):
    response = deploy(
        api_as(cast.member),
        demo,
        adapters=[{"adapter": demo["pirate"].pk}, {"adapter": demo["robot"].pk, "served_name": "beep"}],
    )

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending" and body["device"] == "cpu"
    assert body["settings"]["max_lora_rank"] == 8
    assert body["settings"]["max_loras"] == vllm_args.default_max_loras(2, device="cpu")
    assert [a["model_id"] for a in body["adapters"]] == ["demo:beep", "demo:pirate"]


def test_an_incompatible_adapter_is_refused(cast, demo, tmp_path):
    wrong = adapter_for_demo(cast, tmp_path, "wide", hidden=640)
    refused(
        deploy(api_as(cast.member), demo, adapters=[{"adapter": wrong.pk}]), "wide does not fit smollm2-135m-instruct"
    )


def test_an_adapter_rank_above_the_deployments_max_is_refused_and_a_redeploy_offered(cast, demo, tmp_path):
    big = adapter_for_demo(cast, tmp_path, "big", r=32)
    refused(
        deploy(
            api_as(cast.member),
            demo,
            adapters=[{"adapter": big.pk}],
            settings={"max_lora_rank": 16, "kv_cache_bytes": GiB},
        ),
        "rank",
    )
    api = api_as(cast.member)
    pk = deploy(api, demo, settings={"max_lora_rank": 8, "max_loras": 4, "kv_cache_bytes": GiB}).json()["id"]

    response = api.post(f"/api/v1/deployments/{pk}/attach/", {"adapter": big.pk}, format="json")

    assert response.status_code == 400
    assert (
        response.json()["detail"]
        == "big has rank 32, above this deployment's max LoRA rank 8. Redeploy with a larger max LoRA rank to use it."
    )
    assert Deployment.objects.get(pk=pk).adapters.count() == 1


@pytest.mark.parametrize(
    ("adapters", "name", "fragment"),
    [
        ([("pirate", "same"), ("robot", "same")], "demo", "Two adapters have the same served name"),
        ([("pirate", "demo")], "demo", "cannot be the deployment's own name"),
    ],
)
def test_a_served_name_that_collides_is_refused(cast, demo, adapters, name, fragment):
    body = [{"adapter": demo[a].pk, "served_name": s} for a, s in adapters]
    refused(deploy(api_as(cast.member), demo, name=name, adapters=body), fragment)


def test_a_deployment_name_in_use_is_refused(cast, demo):
    api = api_as(cast.member)
    assert deploy(api, demo).status_code == 202
    response = deploy(api, demo)
    assert response.status_code == 400 and "already exists" in response.json()["detail"]
    assert Deployment.objects.count() == 1


def test_an_offline_node_is_refused(cast, demo):
    Node.objects.filter(name="cpu-1").update(last_seen_at=timezone.now() - timedelta(hours=1))
    refused(deploy(api_as(cast.member), demo), "cpu-1 is offline")


def without_node(api, demo, **overrides):
    """Deploys the demo through the API with no node named (automatic placement)."""
    body = {"name": "auto", "base": demo[DEMO_BASE].pk, "settings": {"kv_cache_bytes": GiB}, **overrides}
    return api.post("/api/v1/deployments/", body, format="json")


def test_without_a_node_it_is_placed_on_an_online_node(cast, demo):
    response = without_node(api_as(cast.member), demo, adapters=[{"adapter": demo["pirate"].pk}])

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["node"] == "cpu-1" and body["device"] == "cpu" and body["accelerator_indices"] == []


def test_without_a_node_a_free_gpu_is_chosen_when_one_is_online(cast, demo, tmp_path):
    gpu_node(tmp_path, gpus=2)

    response = without_node(api_as(cast.member), demo)

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["node"] == "gpu-1" and body["device"] == "cuda" and len(body["accelerator_indices"]) == 1


def test_without_a_node_and_none_online_the_answer_says_to_start_an_agent(cast, demo):
    Node.objects.update(last_seen_at=timezone.now() - timedelta(hours=1))
    refused(without_node(api_as(cast.member), demo), "No node is online to place the deployment on: start a node agent")


def test_gpu_numbers_without_a_node_are_refused(cast, demo):
    response = without_node(api_as(cast.member), demo, accelerator_indices=[0])

    assert response.status_code == 400
    assert response.json()["errors"]["accelerator_indices"] == [
        "GPU numbers need the node they are on: name the node, or leave both out."
    ]
    assert not Deployment.objects.exists()


def test_not_enough_memory_is_refused_with_the_numbers(cast, demo):
    refused(deploy(api_as(cast.member), demo, settings={"kv_cache_bytes": 64 * GiB}), "GiB")


@pytest.mark.parametrize(
    ("extra_args", "fragment"),
    [
        ("--port 9999", "--port"),
        ("--api-key=stolen", "--api-key"),
        ("--served-model-name x; rm -rf /", "--served-model-name"),
        ("--trust-remote-code", "--trust-remote-code"),
        ("--max-num-seqs 8 $(reboot)", "$(reboot)"),
    ],
)
def test_managed_flags_and_injection_attempts_are_refused(cast, demo, extra_args, fragment):
    refused(deploy(api_as(cast.member), demo, extra_args=extra_args), fragment)


def test_a_viewer_or_an_outsider_cannot_deploy(cast, demo):
    assert deploy(api_as(cast.viewer), demo).status_code == 403
    assert deploy(api_as(cast.outsider), demo).status_code == 404
    assert not Deployment.objects.exists()


def test_changing_arguments_makes_a_new_revision_and_refusals_change_nothing(cast, demo):
    api = api_as(cast.member)
    pk = deploy(api, demo).json()["id"]

    refused_change = api.patch(f"/api/v1/deployments/{pk}/", {"extra_args": "--host 0.0.0.0"}, format="json")
    assert refused_change.status_code == 400 and "--host" in refused_change.json()["detail"]
    assert (
        api.patch(f"/api/v1/deployments/{pk}/", {"extra_args": ""}, format="json").json()["detail"]
        == "Nothing changed."
    )
    assert Deployment.objects.get(pk=pk).revision == 1

    changed = api.patch(f"/api/v1/deployments/{pk}/", {"settings": {"max_model_len": 1024}}, format="json")
    assert changed.status_code == 202 and changed.json()["revision"] == 2
    assert changed.json()["settings"]["max_model_len"] == 1024
    assert "Revision 2: changed max_model_len; redeploying." in [
        e["message"] for e in api.get(f"/api/v1/deployments/{pk}/").json()["events"]
    ]


def test_only_a_running_server_can_be_restarted(cast, demo):
    api = api_as(cast.member)
    pk = deploy(api, demo).json()["id"]

    response = api.post(f"/api/v1/deployments/{pk}/restart/")

    assert response.status_code == 400 and "start it instead" in response.json()["detail"]
    assert not Deployment.objects.get(pk=pk).restart_requested


def test_the_cluster_page_shows_what_runs_on_each_accelerator_to_its_workspace_only(cast, demo, client):
    deploy(api_as(cast.member), demo)

    client.force_login(cast.member)
    assert ">demo</a> (pending)" in client.get("/cluster/").content.decode()
    client.force_login(cast.outsider)
    page = client.get("/cluster/").content.decode()
    assert "a deployment of another workspace" in page and ">demo</a>" not in page


def test_deleting_asks_first_and_is_refused_until_the_deployment_has_stopped(cast, demo, client):
    pk = deploy(api_as(cast.member), demo).json()["id"]
    client.force_login(cast.member)
    url = f"/deployments/{pk}/delete/"

    assert b"Delete demo?" in client.get(url).content
    refused_delete = client.post(url, follow=True)
    assert b"Stop the deployment and wait until it has stopped" in refused_delete.content
    Deployment.objects.filter(pk=pk).update(desired="stopped", status="stopped")
    assert client.post(url)["Location"] == "/deployments/"
    assert not Deployment.objects.filter(pk=pk).exists()


def test_a_model_or_adapter_a_deployment_uses_cannot_be_deleted_and_the_answer_names_it(cast, demo):
    assert deploy(api_as(cast.member), demo).status_code == 202
    api = api_as(cast.member)
    for url in (f"/api/v1/models/{demo[DEMO_BASE].pk}/", f"/api/v1/adapters/{demo['pirate'].pk}/"):
        response = api.delete(url)
        assert response.status_code == 409, response.content
        assert "in use (deployment demo)" in response.json()["detail"]
    assert api.delete(f"/api/v1/adapters/{demo['robot'].pk}/").status_code == 204, "an adapter nobody uses goes"
