"""What a deployment's life writes to the audit log: who deployed, changed, attached, detached, stopped,
started, rolled back and deleted it, from where; never an environment value."""

from __future__ import annotations

import pytest

from audit.models import AuditEntry
from deployments.models import Deployment
from registry.demo import DEMO_BASE
from tests.support.deployments import deploy
from tests.support.nodes import api_as

pytestmark = pytest.mark.demo


def test_each_change_through_the_api_is_recorded_with_its_actor_and_address(cast, demo):
    api = api_as(cast.member)
    api.defaults["REMOTE_ADDR"] = "10.0.0.7"
    created = deploy(api, demo, extra_env="TOKENIZERS_PARALLELISM=false")
    pk = created.json()["id"]
    assert api.patch(f"/api/v1/deployments/{pk}/", {"extra_args": "--max-num-seqs 8"}, format="json").status_code == 202
    Deployment.objects.filter(pk=pk).update(status="ready")
    assert (
        api.post(f"/api/v1/deployments/{pk}/attach/", {"adapter": demo["robot"].pk}, format="json").status_code == 202
    )
    assert api.post(f"/api/v1/deployments/{pk}/adapters/robot/detach/").status_code == 202
    assert api.post(f"/api/v1/deployments/{pk}/rollback/", {"revision": 1}, format="json").status_code == 202
    assert api.post(f"/api/v1/deployments/{pk}/stop/").status_code == 202
    Deployment.objects.filter(pk=pk).update(status="stopped")
    assert api.delete(f"/api/v1/deployments/{pk}/").status_code == 204

    entries = AuditEntry.objects.filter(target_type="deployment", target_id=pk).order_by("at", "id")
    assert [e.action for e in entries] == [
        "deployment.create", "deployment.update", "deployment.attach", "deployment.detach", "deployment.update",
        "deployment.rollback", "deployment.stop", "deployment.delete",
    ]  # fmt: skip
    first = entries[0]
    assert (first.actor, first.address, first.workspace) == (cast.member, "10.0.0.7", cast.team)
    assert first.detail == {"base": DEMO_BASE, "node": "cpu-1", "adapters": ["pirate"]}
    assert entries[1].detail == {"revision": 2, "changed": ["extra arguments"]}
    assert "false" not in str(list(entries.values("detail")))
