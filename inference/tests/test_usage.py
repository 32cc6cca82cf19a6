"""Usage records: how a batch is written, and the usage API (records and
sums per deployment, adapter and key) as each member of the cast sees it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.services import workspace_create
from inference import services
from inference.models import InferenceKey, UsageRecord
from tests.support.nodes import api_as

pytestmark = pytest.mark.django_db


def record(
    workspace, *, key=None, minutes_ago: float = 1, model="demo", adapter="", status=200, prompt=10, completion=20
):
    return UsageRecord(
        created_at=timezone.now() - timedelta(minutes=minutes_ago), workspace_id=workspace.pk,
        key_id=key.pk if key else None, model=model, adapter=adapter, endpoint="chat/completions", stream=True,
        status=status, prompt_tokens=prompt, completion_tokens=completion, ttft_ms=12.5, duration_ms=100,
    )  # fmt: skip


def test_a_batch_keeps_records_whose_key_went_and_drops_those_whose_workspace_went(cast):
    gone = workspace_create(name="Gone", owner=cast.admin)
    key, _ = services.inference_key_create(workspace=cast.team, name="app")
    batch = [record(cast.team, key=key), record(gone)]
    gone_key, _ = services.inference_key_create(workspace=cast.team, name="deleted")
    batch.append(record(cast.team, key=gone_key))
    gone_key.delete()
    gone.delete()
    services.usage_record_many(records=batch)
    kept = {(r.workspace_id, r.key_id) for r in UsageRecord.objects.all()}
    assert kept == {(cast.team.pk, None), (cast.team.pk, key.pk)}
    assert InferenceKey.objects.get(pk=key.pk).last_used_at == batch[0].created_at


def test_the_summary_sums_per_deployment_adapter_and_key_over_the_period(cast):
    key, _ = services.inference_key_create(workspace=cast.team, name="app")
    services.usage_record_many(
        records=[
            record(cast.team, key=key, model="demo", minutes_ago=1),
            record(cast.team, key=key, model="demo:pirate", adapter="pirate", minutes_ago=2, status=502, completion=0),
            record(cast.team, key=key, model="demo:pirate", adapter="pirate", minutes_ago=3),
            record(cast.team, key=key, model="demo", minutes_ago=90),  # outside the last hour
            record(cast.other, model="theirs", minutes_ago=1),
        ]
    )
    api = api_as(cast.viewer)
    by_adapter = api.get("/api/v1/usage/summary/?period=hour&by=adapter").json()
    groups = {g["name"]: g for g in by_adapter["groups"]}
    assert set(groups) == {"demo", "demo:pirate"}, "only the caller's workspaces, only the last hour"
    assert (groups["demo:pirate"]["requests"], groups["demo:pirate"]["errors"]) == (2, 1)
    assert (groups["demo:pirate"]["prompt_tokens"], groups["demo:pirate"]["completion_tokens"]) == (20, 20)
    assert by_adapter["bucket_seconds"] == 60 and sum(b["requests"] for b in by_adapter["series"]) == 3
    by_key = api.get("/api/v1/usage/summary/?period=day&by=key").json()
    assert [(g["name"], g["requests"]) for g in by_key["groups"]] == [(f"app ({key.prefix}…)", 4)]
    assert api.get("/api/v1/usage/summary/?period=year").status_code == 400
    assert api.get("/api/v1/usage/summary/?by=colour").status_code == 400


def test_usage_records_are_listed_to_members_only(cast):
    services.usage_record_many(records=[record(cast.team), record(cast.other, model="theirs")])
    assert [r["model"] for r in api_as(cast.viewer).get("/api/v1/usage/").json()["results"]] == ["demo"]
    assert [r["model"] for r in api_as(cast.outsider).get("/api/v1/usage/").json()["results"]] == ["theirs"]
    assert api_as(cast.outsider).get("/api/v1/usage/summary/").json()["groups"][0]["name"] == "(deleted deployment)"


def test_the_usage_page_charts_and_lists_the_members_usage_only(cast, client):
    key, _ = services.inference_key_create(workspace=cast.team, name="app")
    services.usage_record_many(
        records=[
            record(cast.team, key=key, model="demo:pirate", adapter="pirate", minutes_ago=2),
            record(cast.team, model="demo", minutes_ago=5),
            record(cast.other, model="theirs"),
        ]
    )
    UsageRecord.objects.filter(key=None, workspace=cast.team).update(user=cast.member)
    client.force_login(cast.viewer)
    page = client.get(reverse("inference:usage") + "?period=hour&by=adapter").content.decode()
    assert 'data-usage-group="demo:pirate"' in page and 'data-usage-group="demo"' in page
    assert 'data-line="demo:pirate"' in page, "a line per adapter in the charts"
    assert "theirs" not in page
    assert f'key app <span class="mono">({key.prefix}…)</span>' in page and "playground: member" in page
    client.force_login(cast.outsider)
    page = client.get(reverse("inference:usage")).content.decode()
    assert "demo:pirate" not in page and 'data-usage-group="(deleted deployment)"' in page
