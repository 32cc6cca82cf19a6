"""A fetch is a claimed job (config/jobs.py): a repeated or redelivered message does nothing while it runs or
after it ended, a worker that lost its claim writes nothing, and the sweep finds fetches whose message or
agent was lost. The first tests read the rows only; the last ones run on a real node agent and S3 server."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from cluster import services, tasks
from cluster.cache import FetchCancelled
from cluster.models import CachedArtifact, Node
from config import jobs
from registry.models import Artifact, ArtifactKind, Connection
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build
from tests.support.agents import wait_for
from tests.support.counting_proxy import CountingProxy


@pytest.fixture
def node(cast):
    return Node.objects.create(name="alpha", address="127.0.0.1", cache_dir="/nonexistent", cache_quota_bytes=1)


@pytest.fixture
def fetch_row(cast, node):
    """A cache entry of a new artifact on `node`, in the state `fields` say."""
    store = Connection.objects.create(workspace=cast.team, name="c", kind="local", root_path="/")
    made = []

    def make(**fields) -> CachedArtifact:
        artifact = Artifact.objects.create(
            workspace=cast.team, name=f"m{len(made)}", kind=ArtifactKind.BASE, connection=store, location="m"
        )
        made.append(CachedArtifact.objects.create(node=node, artifact=artifact, revision="r1", **fields))
        return made[-1]

    return make


@pytest.fixture
def sent(monkeypatch):
    """The fetch messages the code under test sends (this file's unit tests only look at the rows)."""
    calls = []
    monkeypatch.setattr(tasks.fetch_artifact, "apply_async", lambda args, queue: calls.append((args[0], queue)))
    return calls


@pytest.mark.django_db
class TestTheClaim:
    def test_a_message_for_a_fetch_another_agent_runs_does_nothing(self, fetch_row):
        cached = fetch_row(status="fetching", claimed_by="other:1:x", heartbeat_at=timezone.now())
        assert services.artifact_fetch_run(cached_id=cached.pk, cache=None) is None
        cached.refresh_from_db()
        assert (cached.status, cached.claimed_by) == ("fetching", "other:1:x")

    @pytest.mark.parametrize("status", ["ready", "failed", "cancelled"])
    def test_a_message_for_a_fetch_that_ended_does_nothing(self, fetch_row, status):
        cached = fetch_row(status=status, claimed_by="other:1:x")
        assert services.artifact_fetch_run(cached_id=cached.pk, cache=None) is None
        cached.refresh_from_db()
        assert cached.status == status

    def test_a_worker_whose_claim_was_taken_writes_nothing(self, fetch_row):
        cached = fetch_row(status="fetching", claimed_by="new-owner:2:y", heartbeat_at=timezone.now())
        writer = services._ProgressWriter(services._mine(cached.pk, "old-owner:1:x"), total=100)
        with pytest.raises(FetchCancelled):
            writer(50, 100)
        ended = services._finish(cached.pk, "old-owner:1:x", CachedArtifact.Status.FAILED, "boom")
        assert (ended.status, ended.error, ended.bytes_done) == ("fetching", "", 0)

    def test_progress_refreshes_the_heartbeat_of_its_own_claim(self, fetch_row):
        then = timezone.now() - timedelta(minutes=3)
        cached = fetch_row(status="fetching", claimed_by="me:1:x", heartbeat_at=then)
        services._ProgressWriter(services._mine(cached.pk, "me:1:x"), total=100)(100, 100)
        cached.refresh_from_db()
        assert cached.heartbeat_at > then and cached.bytes_done == 100


@pytest.mark.django_db
class TestTheAgentsStart:
    def test_fetches_a_dead_agent_held_are_queued_again_and_sent(self, node, fetch_row, sent):
        left = fetch_row(status="fetching", claimed_by="dead:1:x", heartbeat_at=timezone.now())
        mine = fetch_row(status="fetching", claimed_by=jobs.worker_id(), heartbeat_at=timezone.now())
        assert services.fetches_resume(node=node) == [left.pk]
        left.refresh_from_db()
        mine.refresh_from_db()
        assert (left.status, left.claimed_by) == ("queued", "")
        assert mine.status == "fetching", "a fetch this agent runs is left alone"
        assert sent == [(left.pk, "node.alpha")]


@pytest.mark.django_db
class TestTheSweep:
    def test_a_queued_fetch_whose_message_went_out_long_ago_is_sent_again(self, node, fetch_row, sent, settings):
        lost = fetch_row(status="queued", sent_at=timezone.now() - timedelta(seconds=301))
        fresh = fetch_row(status="queued", sent_at=timezone.now())
        node.last_seen_at = timezone.now()
        node.save()
        assert services.fetches_sweep() == {"failed": [], "requeued": [], "resent": [lost.pk]}
        assert sent == [(lost.pk, "node.alpha")]
        fresh.refresh_from_db()
        assert fresh.status == "queued"
        assert services.fetches_sweep()["resent"] == [], "sent again only once its new message is old too"

    def test_a_running_fetch_gone_silent_is_queued_again(self, node, fetch_row, sent, settings):
        settings.PLUGBOARD_FETCH_STALE_SECONDS = 300
        node.last_seen_at = timezone.now()
        node.save()
        silent = fetch_row(status="fetching", claimed_by="x", heartbeat_at=timezone.now() - timedelta(seconds=301))
        alive = fetch_row(status="fetching", claimed_by="y", heartbeat_at=timezone.now() - timedelta(seconds=200))
        assert services.fetches_sweep() == {"failed": [], "requeued": [silent.pk], "resent": []}
        silent.refresh_from_db()
        alive.refresh_from_db()
        assert (silent.status, silent.claimed_by, alive.status) == ("queued", "", "fetching")
        assert sent == [(silent.pk, "node.alpha")]

    def test_the_fetches_of_a_node_gone_for_good_fail_with_the_reason(self, node, fetch_row, sent, settings):
        settings.PLUGBOARD_NODE_GONE_SECONDS = 3600
        node.last_seen_at = timezone.now() - timedelta(seconds=3601)
        node.save()
        queued = fetch_row(status="queued")
        running = fetch_row(status="fetching", claimed_by="x", heartbeat_at=timezone.now() - timedelta(hours=2))
        done = services.fetches_sweep()
        assert sorted(done["failed"]) == sorted([queued.pk, running.pk]) and not done["requeued"] and not sent
        for row in (queued, running):
            row.refresh_from_db()
            assert row.status == "failed"
            assert "The node alpha has not reported since" in row.error and "its agent is gone" in row.error

    def test_the_sweep_is_scheduled(self, settings):
        scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
        assert {"cluster.tasks.sweep_fetches", "registry.tasks.sweep_inspections"} <= scheduled


# On real components ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_fetch_whose_message_was_lost_is_found_by_the_sweep_and_ends_ready(cast, s3_server, agents, settings):
    settings.PLUGBOARD_NODE_HEARTBEAT_SECONDS = 1
    agents("alpha")
    s3_server.put_files("models", "lost/tiny", build.base_model_files())
    artifact = register_and_inspect(
        cast.team, s3_connection(cast.team, s3_server), name="lost", kind="base", location="lost/tiny"
    )
    # The state a web process that died between its commit and the send leaves: wanted, and no message.
    cached = CachedArtifact.objects.create(
        node=Node.objects.get(name="alpha"), artifact=artifact, revision=artifact.resolved_revision,
        sent_at=timezone.now() - timedelta(seconds=settings.PLUGBOARD_JOB_RESEND_SECONDS + 1),
    )  # fmt: skip

    assert services.fetches_sweep()["resent"] == [cached.pk]

    wait_for(lambda: CachedArtifact.objects.get(pk=cached.pk).status == "ready", timeout=60, what="the fetch")


@pytest.mark.django_db(transaction=True)
def test_a_message_delivered_again_while_the_fetch_runs_downloads_nothing_twice(cast, s3_server, agents):
    size = 60 * 1024 * 1024
    payload = build.random_safetensors(size)
    s3_server.put_files("models", "twice", {**build.base_model_files(), "extra.safetensors": payload})
    proxy = CountingProxy("127.0.0.1", s3_server.port)
    store = s3_connection(cast.team, s3_server, name="via-proxy")
    store.endpoint_url = proxy.url
    store.save()
    artifact = register_and_inspect(cast.team, store, name="twice", kind="base", location="twice")
    # 20 MB/s: three seconds of fetching, in which the same message arrives twice more.
    agents("alpha", env={"PLUGBOARD_FETCH_MAX_BYTES_PER_SECOND": str(20 * 1024 * 1024)})
    proxy.reset()

    cached = services.artifact_fetch_request(artifact=artifact, node=Node.objects.get(name="alpha"))
    wait_for(lambda: CachedArtifact.objects.get(pk=cached.pk).bytes_done > 0, timeout=30, what="the fetch to start")
    for _ in range(2):  # as a broker redelivers after its visibility timeout, or the sweep resends
        tasks.fetch_artifact.apply_async(args=[cached.pk], queue="node.alpha")
    wait_for(lambda: CachedArtifact.objects.get(pk=cached.pk).status != "fetching", timeout=60, what="the fetch")
    cached.refresh_from_db()
    proxy.close()

    assert cached.status == "ready", cached.error
    assert proxy.bytes_down < size * 1.2, f"{proxy.bytes_down:,} bytes came down for a {size:,}-byte file"
    assert cached.bytes_transferred <= size + 1024 * 1024
    data = (Path(cached.node.cache_dir) / "artifacts" / cached.key / "extra.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(payload).hexdigest()
