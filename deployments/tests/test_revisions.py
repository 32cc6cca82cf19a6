"""A deployment's revision history: each revision's arguments and resources,
who made it and when, what changed between revisions in words, and rolling
back to an earlier one (a new revision, checked like any change), on the page
and through the API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from cluster.models import Node
from deployments.models import Deployment, DeploymentRevision
from deployments.revisions import Snapshot, describe
from tests.support.deployments import GiB, deploy
from tests.support.nodes import api_as, online_cpu_node

pytestmark = pytest.mark.demo


@pytest.fixture
def changed(cast, demo) -> Deployment:
    """The demo deployed by the member (revision 1), then given a shorter context and an extra argument (revision 2)."""
    api = api_as(cast.member)
    pk = deploy(api, demo).json()["id"]
    response = patch(api, pk, {"settings": {"max_model_len": 1024}, "extra_args": "--max-num-seqs 8"})
    assert response.status_code == 202, response.content
    return Deployment.objects.get(pk=pk)


def patch(api, pk, body):
    return api.patch(f"/api/v1/deployments/{pk}/", body, format="json")


def rollback(api, pk, revision):
    return api.post(f"/api/v1/deployments/{pk}/rollback/", {"revision": revision}, format="json")


def snapshot(**overrides) -> Snapshot:
    fields = {"node": "cpu-1", "accelerator_indices": [], "settings": {"max_loras": 1}, "extra_args": "",
              "extra_env": ""}  # fmt: skip
    return Snapshot(**{**fields, **overrides})


# What changed, in words ------------------------------------------------------------


def test_the_words_give_each_changed_setting_its_old_and_new_value():
    old = snapshot(settings={"max_model_len": 2048, "kv_cache_bytes": GiB, "dtype": "bfloat16"})
    new = snapshot(settings={"max_model_len": 1024, "kv_cache_bytes": 2 * GiB, "enforce_eager": True})

    assert describe(old, new) == [
        "dtype back to its default (was bfloat16)",
        "enforce_eager set to on",
        "kv_cache_bytes 1 GiB → 2 GiB",
        "max_model_len 2048 → 1024",
    ]


def test_the_words_name_a_move_to_another_node_and_other_gpus():
    old = snapshot(node="cpu-1")
    new = snapshot(node="gpu-1", accelerator_indices=[0, 1])

    assert describe(old, new) == ["node cpu-1 → gpu-1", "GPUs none → 0, 1"]


def test_the_words_name_each_extra_argument_added_changed_or_removed():
    old = snapshot(extra_args="--max-num-seqs 4 --disable-log-stats --seed=1")
    new = snapshot(extra_args="--max-num-seqs 8\n--seed=1 --swap-space 2")

    assert describe(old, new) == [
        "extra arguments: '--max-num-seqs 4' → '--max-num-seqs 8'",
        "extra arguments: '--swap-space 2' added",
        "extra arguments: '--disable-log-stats' removed",
    ]
    assert describe(snapshot(), snapshot(extra_args="--max-num-seqs 8")) == [
        "extra arguments: '--max-num-seqs 8' added"
    ]


def test_the_words_name_each_environment_variable_added_changed_or_removed_but_never_a_value():
    old = snapshot(extra_env="VLLM_LOGGING_LEVEL=INFO\nOMP_NUM_THREADS=2")
    new = snapshot(extra_env="# quieter\nVLLM_LOGGING_LEVEL=WARNING\nTOKENIZERS_PARALLELISM=false")

    assert describe(old, new) == [
        "environment: TOKENIZERS_PARALLELISM added",
        "environment: VLLM_LOGGING_LEVEL changed",
        "environment: OMP_NUM_THREADS removed",
    ]


def test_the_same_arguments_written_otherwise_are_no_change():
    old = snapshot(extra_args="--max-num-seqs 8  --seed 1", extra_env="A=1\n\nB=2")
    new = snapshot(extra_args="--seed 1\n--max-num-seqs 8", extra_env="B = 2\nA=1")

    assert describe(old, new) == []


# The history is recorded -------------------------------------------------------------


def test_deploying_records_revision_1_made_by_the_deployer(cast, demo):
    pk = deploy(api_as(cast.member), demo).json()["id"]

    revision = DeploymentRevision.objects.get(deployment_id=pk)
    deployment = Deployment.objects.get(pk=pk)
    assert (revision.number, revision.created_by, revision.node) == (1, cast.member, deployment.node)
    assert revision.settings == deployment.settings and revision.settings["kv_cache_bytes"] == GiB


def test_each_change_records_a_revision_with_who_made_it_through_the_api_or_the_edit_page(cast, changed, client):
    client.force_login(cast.admin)
    form = {"node": changed.node_id, "dtype": "auto", "max_loras": "1", "max_lora_rank": "8", "kv_cache_gib": "1.0",
            "max_model_len": "1024", "extra_args": "--max-num-seqs 8", "extra_env": "OMP_NUM_THREADS=2"}  # fmt: skip
    assert client.post(f"/deployments/{changed.pk}/edit/", form).status_code == 302

    by_number = {r.number: r for r in changed.revisions.all()}
    assert sorted(by_number) == [1, 2, 3]
    assert (by_number[2].created_by, by_number[2].settings["max_model_len"]) == (cast.member, 1024)
    assert (by_number[3].created_by, by_number[3].env_text) == (cast.admin, "OMP_NUM_THREADS=2")


def test_the_api_lists_the_revisions_newest_first_with_what_changed(cast, changed):
    response = api_as(cast.viewer).get(f"/api/v1/deployments/{changed.pk}/revisions/")

    assert response.status_code == 200, response.content
    second, first = response.json()
    assert (second["number"], second["current"], second["created_by"], second["node"]) == (2, True, "member", "cpu-1")
    assert second["changes"] == ["max_model_len set to 1024", "extra arguments: '--max-num-seqs 8' added"]
    assert (first["number"], first["current"], first["changes"]) == (1, False, ["first revision"])


@pytest.mark.django_db(transaction=True)
def test_upgrading_records_a_revision_for_older_deployments_and_seals_their_environment(cast, changed):
    """Migrations 0006 (a revision for deployments made before revisions were kept) and 0007 (environments
    sealed), run on a database that holds a deployment as it was before them."""
    executor = MigrationExecutor(connection)
    executor.migrate([("deployments", "0005_revisions")])
    old = executor.loader.project_state([("deployments", "0005_revisions")]).apps
    old.get_model("deployments", "DeploymentRevision").objects.filter(deployment_id=changed.pk).delete()
    old.get_model("deployments", "Deployment").objects.filter(pk=changed.pk).update(extra_env="HF_TOKEN_X=s3cret")

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes("deployments"))

    changed.refresh_from_db()
    (revision,) = changed.revisions.all()
    assert (revision.number, revision.created_by, revision.extra_args) == (2, None, "--max-num-seqs 8")
    assert revision.created_at == changed.updated_at
    assert changed.env_text == revision.env_text == "HF_TOKEN_X=s3cret"
    with connection.cursor() as cursor:
        cursor.execute("SELECT encrypted_env FROM deployments_deployment WHERE id = %s", [changed.pk])
        (stored,) = cursor.fetchone()
    assert b"s3cret" not in bytes(stored) and bytes(stored).startswith(b"gAAAAA")


# Rolling back ------------------------------------------------------------------------


def test_rolling_back_makes_a_new_revision_with_the_old_values_and_says_so(cast, changed):
    response = rollback(api_as(cast.admin), changed.pk, 1)

    assert response.status_code == 202, response.content
    assert response.json()["revision"] == 3
    deployment = Deployment.objects.get(pk=changed.pk)
    first, third = deployment.revisions.get(number=1), deployment.revisions.get(number=3)
    assert (deployment.settings, deployment.extra_args) == (first.settings, "")
    assert (third.settings, third.extra_args, third.restores, third.created_by) == (first.settings, "", 1, cast.admin)
    assert "Rolled back to revision 1 as revision 3." in [e.message for e in deployment.events.all()]
    assert deployment.launched_revision != deployment.revision, "the supervisor redeploys it"


def test_rolling_back_a_move_moves_it_back_and_is_checked_like_any_move(cast, demo, tmp_path):
    online_cpu_node(tmp_path, "cpu-2")
    api = api_as(cast.member)
    pk = deploy(api, demo).json()["id"]
    assert patch(api, pk, {"node": "cpu-2"}).status_code == 202
    Node.objects.filter(name="cpu-1").update(last_seen_at=timezone.now() - timedelta(hours=1))

    offline = rollback(api, pk, 1)
    assert offline.status_code == 400 and "cpu-1 is offline" in offline.json()["detail"]
    assert Deployment.objects.get(pk=pk).revision == 2

    online_cpu_node(tmp_path)
    back = rollback(api, pk, 1)
    assert back.status_code == 202, back.content
    assert (back.json()["node"], back.json()["revision"]) == ("cpu-1", 3)


def test_rolling_back_to_the_current_an_unknown_or_an_identical_revision_is_refused(cast, changed):
    api = api_as(cast.member)

    current = rollback(api, changed.pk, 2)
    unknown = rollback(api, changed.pk, 9)

    assert current.status_code == 400 and "Revision 2 is the current one" in current.json()["detail"]
    assert unknown.status_code == 400 and "has no revision 9" in unknown.json()["detail"]
    assert Deployment.objects.get(pk=changed.pk).revision == 2
    assert rollback(api, changed.pk, 1).status_code == 202
    again = rollback(api, changed.pk, 1)
    assert again.status_code == 400 and "the deployment has now: nothing to roll back" in again.json()["detail"]
    assert Deployment.objects.get(pk=changed.pk).revision == 3


def test_viewers_may_not_roll_back_and_outsiders_do_not_see_the_history(cast, changed):
    assert rollback(api_as(cast.viewer), changed.pk, 1).status_code == 403
    assert rollback(api_as(cast.outsider), changed.pk, 1).status_code == 404
    assert api_as(cast.outsider).get(f"/api/v1/deployments/{changed.pk}/revisions/").status_code == 404
    assert Deployment.objects.get(pk=changed.pk).revision == 2


# The page ----------------------------------------------------------------------------


def test_the_page_lists_the_revisions_and_editors_roll_back_from_it(cast, changed, client):
    client.force_login(cast.member)
    url = f"/deployments/{changed.pk}/revisions/1/rollback/"

    page = client.get(f"/deployments/{changed.pk}/").content.decode()
    assert 'id="revisions"' in page and "max_model_len set to 1024" in page and "by member" in page
    assert page.count("Roll back to this revision") == 1 and f'action="{url}"' in page
    assert "data-confirm=" in page.split('id="revisions"')[1]

    response = client.post(url, follow=True)

    assert "Rolled back to revision 1 as revision 3: redeploying." in response.content.decode()
    assert Deployment.objects.get(pk=changed.pk).revision == 3


def test_viewers_see_the_history_without_the_buttons(cast, changed, client):
    client.force_login(cast.viewer)

    page = client.get(f"/deployments/{changed.pk}/").content.decode()

    assert 'id="revisions"' in page and "Revision 1" in page and "Roll back to this revision" not in page
    assert client.post(f"/deployments/{changed.pk}/revisions/1/rollback/").status_code == 403
    client.force_login(cast.outsider)
    assert client.post(f"/deployments/{changed.pk}/revisions/1/rollback/").status_code == 404
