"""Changing a deployment after it was made: arguments and resources (node,
GPUs) become a new revision, through the API and the edit page; the old node
hands the server over to the new one. The real move, with vLLM, is in
test_vllm_e2e.py."""

from __future__ import annotations

import signal
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from cluster.models import CachedArtifact, CacheLease, Node
from conftest import DEMO_STORE
from deployments import processes, services
from deployments.models import Deployment
from deployments.supervisor import Supervisor
from registry.demo import DEMO_BASE, demo_register
from tests.support.deployments import deploy
from tests.support.nodes import api_as, gpu_node, online_cpu_node

pytestmark = pytest.mark.demo
GiB = 1 << 30


def patch(api, pk, body):
    return api.patch(f"/api/v1/deployments/{pk}/", body, format="json")


def messages_of(deployment: Deployment) -> list[str]:
    return [e.message for e in deployment.events.all()]


# Resources through the API -------------------------------------------------------


def test_moving_to_another_node_makes_a_new_revision_there(cast, demo, tmp_path):
    online_cpu_node(tmp_path, "cpu-2")
    api = api_as(cast.member)
    pk = deploy(api, demo).json()["id"]

    response = patch(api, pk, {"node": "cpu-2"})

    assert response.status_code == 202, response.content
    assert (response.json()["node"], response.json()["revision"]) == ("cpu-2", 2)
    assert "Revision 2: changed node; redeploying on cpu-2." in messages_of(Deployment.objects.get(pk=pk))


def test_a_move_to_an_offline_node_or_one_without_room_is_refused_and_changes_nothing(cast, demo, tmp_path):
    online_cpu_node(tmp_path, "asleep")
    Node.objects.filter(name="asleep").update(last_seen_at=timezone.now() - timedelta(hours=1))
    online_cpu_node(tmp_path, "small", memory=2 * GiB)
    api = api_as(cast.member)
    pk = deploy(api, demo).json()["id"]

    asleep = patch(api, pk, {"node": "asleep", "settings": {"max_model_len": 512}})
    small = patch(api, pk, {"node": "small"})

    assert asleep.status_code == 400 and "asleep is offline" in asleep.json()["detail"]
    assert small.status_code == 400 and "less than the" in small.json()["detail"], small.json()
    deployment = Deployment.objects.get(pk=pk)
    assert (deployment.node.name, deployment.revision, deployment.settings.get("max_model_len")) == ("cpu-1", 1, None)


def test_gpus_change_on_a_gpu_node_but_never_to_a_busy_or_missing_one(cast, demo, tmp_path):
    gpu_node(tmp_path, gpus=2)
    api = api_as(cast.member)
    pk = deploy(api, demo, node="gpu-1", accelerator_indices=[0], settings={}).json()["id"]
    other = deploy(api, demo, name="other", node="gpu-1", accelerator_indices=[1], settings={}).json()["id"]

    busy = patch(api, pk, {"accelerator_indices": [1]})
    missing = patch(api, pk, {"accelerator_indices": [2]})
    assert busy.status_code == 400 and "GPU 1 is given to another deployment" in busy.json()["detail"]
    assert missing.status_code == 400 and "has no GPU 2" in missing.json()["detail"]
    assert Deployment.objects.get(pk=pk).accelerator_indices == [0]

    api.post(f"/api/v1/deployments/{other}/stop/")
    both = patch(api, pk, {"accelerator_indices": [0, 1]})

    assert both.status_code == 202, both.content
    assert both.json()["accelerator_indices"] == [0, 1] and both.json()["settings"]["tensor_parallel_size"] == 2
    assert "Revision 2: changed tensor_parallel_size, GPUs; redeploying." in messages_of(Deployment.objects.get(pk=pk))


def test_moving_from_cpu_to_gpu_fits_the_settings_to_the_gpu(cast, demo, tmp_path):
    gpu_node(tmp_path)
    api = api_as(cast.member)
    pk = deploy(api, demo, settings={"kv_cache_bytes": GiB, "cpu_threads": "0-1"}).json()["id"]
    assert Deployment.objects.get(pk=pk).settings["max_loras"] == 1  # one adapter, one slot

    response = patch(api, pk, {"node": "gpu-1", "accelerator_indices": [0]})

    assert response.status_code == 202, response.content
    deployment = Deployment.objects.get(pk=pk)
    assert (deployment.device, deployment.accelerator_indices) == ("cuda", [0])
    assert "cpu_threads" not in deployment.settings
    assert deployment.settings["tensor_parallel_size"] == 1
    assert deployment.settings["max_loras"] == 1


def test_the_demo_is_placed_on_the_recorded_h200_and_told_to_use_that_gpu(cast, db, tmp_path):
    gpu_node(tmp_path)
    base = next(a for a in demo_register(workspace=cast.team, store=DEMO_STORE) if a.name == DEMO_BASE)

    deployment = services.deployment_create(workspace=cast.team, name="on-gpu", base=base)

    assert (deployment.node.name, deployment.device, deployment.accelerator_indices) == ("gpu-1", "cuda", [0])
    _, env = services.server_command(
        name=deployment.name,
        device=deployment.device,
        indices=deployment.accelerator_indices,
        options=deployment.settings,
        extra_args="",
        extra_env="",
        allow_trust_remote_code=False,
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


# The hand-over between supervisors ------------------------------------------------------


@pytest.fixture
def stand_in_server():
    """A process in its own session standing in for a model server (the real one is in the e2e test)."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture
def moving(cast, demo, tmp_path, stand_in_server) -> Deployment:
    """A deployment whose server (a stand-in) runs on cpu-1 with its base model leased there, just moved to cpu-2."""
    cpu_1, cpu_2 = Node.objects.get(name="cpu-1"), online_cpu_node(tmp_path, "cpu-2")
    pk = deploy(api_as(cast.member), demo).json()["id"]
    Deployment.objects.filter(pk=pk).update(
        pid=stand_in_server.pid, port=1, launched_node=cpu_1, launched_revision=1, status="ready"
    )
    deployment = Deployment.objects.get(pk=pk)
    cached = CachedArtifact.objects.create(node=cpu_1, artifact=deployment.base, revision="r", status="ready")
    CacheLease.objects.create(cached=cached, holder=deployment)
    return services.deployment_update(deployment=deployment, node=cpu_2)


def test_the_old_node_stops_the_server_and_releases_it_before_the_new_one_starts(moving, tmp_path, stand_in_server):
    deployment = moving
    old, new = Supervisor("cpu-1", None, tmp_path / "logs-1"), Supervisor("cpu-2", None, tmp_path / "logs-2")

    new.tick()  # before the old node has acted
    deployment.refresh_from_db()
    assert (deployment.status, deployment.pid) == ("restarting", stand_in_server.pid)
    assert deployment.status_reason == "Waiting for cpu-1 to stop the old server."

    old.tick()
    deployment.refresh_from_db()
    assert not processes.alive(stand_in_server.pid)
    assert (deployment.pid, deployment.port, deployment.launched_node) == (None, None, None)
    assert deployment.status_reason == "Stopped the server on cpu-1; it moves to cpu-2."
    assert "Stopped the server on cpu-1; it moves to cpu-2." in messages_of(deployment), "on the timeline too"
    assert not deployment.leases.exists()

    new.tick()  # now it fetches there, to start
    deployment.refresh_from_db()
    assert deployment.status == "fetching"
    assert CachedArtifact.objects.filter(node__name="cpu-2", artifact=deployment.base).exists()


def test_the_new_node_does_not_wait_for_an_old_node_that_is_offline(moving, tmp_path):
    deployment = moving
    Node.objects.filter(name="cpu-1").update(last_seen_at=timezone.now() - timedelta(hours=1))

    Supervisor("cpu-2", None, tmp_path / "logs-2").tick()

    deployment.refresh_from_db()
    assert deployment.launched_node is None and deployment.status == "fetching"
    assert "cpu-1 is offline; starting on cpu-2 without waiting for it." in messages_of(deployment)


# The edit page -------------------------------------------------------------------


def test_the_edit_page_shows_the_current_values_and_saves_a_new_revision(cast, demo, client):
    pk = deploy(api_as(cast.member), demo).json()["id"]
    client.force_login(cast.member)
    url = f"/deployments/{pk}/edit/"

    page = client.get(url).content.decode()
    assert 'name="max_loras" value="1"' in page and 'name="kv_cache_gib" value="1.0"' in page
    assert "Saving makes revision 2 and restarts the server" in page

    form = {"node": Node.objects.get(name="cpu-1").pk, "dtype": "auto", "max_loras": "1", "max_lora_rank": "8",
            "kv_cache_gib": "1.0", "enforce_eager": ""}  # fmt: skip
    unchanged = client.post(url, form)
    assert unchanged.status_code == 200 and "Nothing changed." in unchanged.content.decode()

    managed = client.post(url, {**form, "extra_args": "--api-key mine"})
    assert managed.status_code == 200 and "--api-key" in managed.content.decode()
    assert Deployment.objects.get(pk=pk).revision == 1

    saved = client.post(url, {**form, "max_model_len": "1024", "extra_args": "--max-num-seqs 4"}, follow=True)
    deployment = Deployment.objects.get(pk=pk)
    assert (deployment.revision, deployment.settings["max_model_len"], deployment.extra_args) == (
        2,
        1024,
        "--max-num-seqs 4",
    )
    assert "Saved as revision 2: redeploying on cpu-1." in saved.content.decode()


def test_only_editors_see_and_use_the_edit_page(cast, demo, client):
    pk = deploy(api_as(cast.member), demo).json()["id"]

    client.force_login(cast.viewer)
    assert "/edit/" not in client.get(f"/deployments/{pk}/").content.decode()
    assert client.get(f"/deployments/{pk}/edit/").status_code == 403
    client.force_login(cast.outsider)
    assert client.get(f"/deployments/{pk}/edit/").status_code == 404


def test_choosing_more_gpus_on_the_edit_page_shards_over_them(cast, demo, client, tmp_path):
    gpu_node(tmp_path, gpus=2)
    pk = deploy(api_as(cast.member), demo, node="gpu-1", accelerator_indices=[0], settings={}).json()["id"]
    client.force_login(cast.member)
    url = f"/deployments/{pk}/edit/"
    page = client.get(url).content.decode()
    assert 'name="tensor_parallel_size" value="1"' in page and 'name="gpus" value="0"' in page

    form = {"node": Node.objects.get(name="gpu-1").pk, "gpus": "0, 1", "dtype": "auto", "tensor_parallel_size": "1",
            "max_loras": "1", "max_lora_rank": "8", "gpu_memory_utilization": "0.9"}  # fmt: skip
    response = client.post(url, form)

    assert response.status_code == 302, response.content.decode()
    deployment = Deployment.objects.get(pk=pk)
    assert deployment.accelerator_indices == [0, 1] and deployment.settings["tensor_parallel_size"] == 2
