"""An inspection is a claimed job (config/jobs.py): a repeated message does nothing, a worker that lost its
claim records nothing, and the sweep finds inspections whose message or worker was lost — the last tests on
a real Celery worker, a real broker and the loopback S3 server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from registry import services, tasks
from registry.inspection import Inspection
from registry.models import Artifact
from registry.tests.helpers import s3_connection
from tests.support import artifacts as build
from tests.support.agents import wait_for


def registered(workspace, store, name: str, **fields) -> Artifact:
    """An artifact row as registration leaves it, without the message registration sends."""
    return Artifact.objects.create(
        workspace=workspace, name=name, kind="base", connection=store, location=f"claims/{name}", **fields
    )


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks.inspect_artifact, "delay", calls.append)
    return calls


@pytest.mark.django_db
def test_a_repeated_message_finds_nothing_to_claim(cast, s3_server):
    store = s3_connection(cast.team, s3_server)
    artifact = registered(cast.team, store, "busy", status="inspecting", claimed_by="w:1:x", claimed_at=timezone.now())
    assert services.artifact_inspect(artifact_id=artifact.pk) is None
    artifact.refresh_from_db()
    assert (artifact.status, artifact.claimed_by) == ("inspecting", "w:1:x")


@pytest.mark.django_db
def test_a_worker_that_lost_its_claim_records_nothing(cast, s3_server):
    store = s3_connection(cast.team, s3_server)
    artifact = registered(cast.team, store, "taken", status="inspecting", claimed_by="new:2:y")
    result = Inspection(kind="base", problems=["from the old worker"])
    assert services._record_inspection(artifact, result, owner="old:1:x") is False
    artifact.refresh_from_db()
    assert (artifact.status, artifact.problems, artifact.inspected_at) == ("inspecting", [], None)


@pytest.mark.django_db
def test_an_edit_of_the_location_during_an_inspection_drops_its_result(cast, s3_server):
    store = s3_connection(cast.team, s3_server)
    artifact = registered(cast.team, store, "moved", status="inspecting", claimed_by="w:1:x")
    services.artifact_update(artifact=artifact, location="claims/elsewhere")
    artifact.refresh_from_db()
    assert (artifact.status, artifact.claimed_by, artifact.inspection_attempts) == ("pending", "", 0)
    assert services._record_inspection(artifact, Inspection(kind="base", problems=["old"]), owner="w:1:x") is False


@pytest.mark.django_db
def test_the_sweep_requeues_a_silent_inspection_then_gives_up_with_the_reason(cast, s3_server, sent, settings):
    settings.PLUGBOARD_INSPECTION_ATTEMPTS = 3
    store = s3_connection(cast.team, s3_server)
    dead = timezone.now() - timedelta(seconds=tasks.INSPECTION_TIME_LIMIT + 61)
    again = registered(cast.team, store, "again", status="inspecting", claimed_at=dead, inspection_attempts=2)
    spent = registered(cast.team, store, "spent", status="inspecting", claimed_at=dead, inspection_attempts=3)
    running = registered(cast.team, store, "running", status="inspecting", claimed_at=timezone.now())

    assert services.inspections_sweep() == {"failed": [spent.pk], "requeued": [again.pk], "resent": []}

    assert sent == [again.pk]
    again.refresh_from_db()
    spent.refresh_from_db()
    running.refresh_from_db()
    assert (again.status, running.status, spent.status) == ("pending", "inspecting", "invalid")
    assert "started 3 times and its worker stopped each time" in spent.problems[0]
    assert "Inspect it again" in spent.problems[0]


@pytest.mark.django_db
def test_a_request_succeeds_when_the_broker_cannot_take_its_message(cast, s3_server, monkeypatch, caplog):
    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("Redis is restarting")

    monkeypatch.setattr(tasks.inspect_artifact, "delay", broker_down)
    store = s3_connection(cast.team, s3_server)
    with pytest.raises(ConnectionRefusedError):
        tasks.inspect_artifact.delay(1)
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        artifact = services.artifact_register(
            workspace=cast.team, name="unsent", kind="base", connection=store, location="claims/unsent"
        )
    assert Artifact.objects.get(pk=artifact.pk).status == "pending", "the sweep sends it once the broker is back"
    assert "the periodic sweep will send it again" in caplog.text


# On a real worker -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_inspections_whose_message_or_worker_was_lost_end_ready(cast, s3_server, celery_worker_thread, settings):
    for name in ("unsent", "orphaned"):
        s3_server.put_files("models", f"claims/{name}", build.base_model_files())
    store = s3_connection(cast.team, s3_server)
    long_ago = timezone.now() - timedelta(seconds=tasks.INSPECTION_TIME_LIMIT + 61)
    # Registered by a web process that died before sending; claimed by a worker killed mid-inspection.
    unsent = registered(cast.team, store, "unsent", sent_at=long_ago)
    orphaned = registered(
        cast.team, store, "orphaned", status="inspecting", claimed_by="dead:1:x", claimed_at=long_ago,
        inspection_attempts=1,
    )  # fmt: skip

    done = services.inspections_sweep()

    assert done == {"failed": [], "requeued": [orphaned.pk], "resent": [unsent.pk]}
    for artifact in (unsent, orphaned):
        wait_for(lambda a=artifact: Artifact.objects.get(pk=a.pk).status == "ready", timeout=60, what=artifact.name)
    assert Artifact.objects.get(pk=orphaned.pk).inspection_attempts == 2
