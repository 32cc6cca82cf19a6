"""The real demo content (SmolLM2-135M-Instruct and its LoRA adapters, built
by `make demo`): registered as `make run` does, and inspected from S3 while
counting the bytes that really cross the wire."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command

from conftest import DEMO_STORE
from registry.demo import DEMO_BASE, demo_register
from registry.models import Artifact, Compatibility
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support.counting_proxy import CountingProxy

pytestmark = pytest.mark.demo
DEMO_MODEL = DEMO_STORE / DEMO_BASE


@pytest.fixture(scope="module")
def demo_files() -> dict[str, Path]:
    if not (DEMO_MODEL / ".complete").exists():
        pytest.fail("The demo content is missing: `make test` builds it (make demo).")
    return {p.name: p for p in DEMO_MODEL.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_inspecting_the_demo_model_from_s3_reads_under_one_percent_of_it(cast, s3_server, demo_files):
    s3_server.put_files("demo", "smollm2", {name: path.read_bytes() for name, path in demo_files.items()})
    proxy = CountingProxy("127.0.0.1", s3_server.port)
    try:
        store = s3_connection(cast.team, s3_server, bucket="demo")
        store.endpoint_url = proxy.url
        store.save()
        proxy.reset()
        artifact = register_and_inspect(cast.team, store, name="smollm2", kind="base", location="smollm2")
        downloaded = proxy.bytes_down
    finally:
        proxy.close()

    total = sum(p.stat().st_size for p in demo_files.values())
    assert artifact.status == "ready", artifact.problems
    assert artifact.total_bytes == total
    assert downloaded < total / 100, f"read {downloaded:,} of {total:,} bytes"
    assert artifact.inspection_bytes_read <= downloaded
    print(f"\ninspection of {total:,} bytes moved {downloaded:,} bytes over the wire ({downloaded / total:.4%})")
    assert (artifact.architecture, artifact.hidden_size, artifact.num_layers) == ("LlamaForCausalLM", 576, 30)
    assert 134_000_000 < artifact.parameter_count < 136_000_000


def test_the_demo_content_registers_ready_and_every_adapter_fits(cast):
    artifacts = demo_register(workspace=cast.team, store=DEMO_STORE)
    again = demo_register(workspace=cast.team, store=DEMO_STORE)

    assert [a.pk for a in again] == [a.pk for a in artifacts], "registering twice must not duplicate"
    assert all(a.status == "ready" for a in artifacts), {a.name: a.problems for a in artifacts}
    base = Artifact.objects.get(workspace=cast.team, name=DEMO_BASE)
    adapters = [a for a in artifacts if a.is_adapter]
    assert len(adapters) >= 2
    verdicts = Compatibility.objects.filter(base=base)
    assert {v.adapter.name for v in verdicts if v.compatible} == {a.name for a in adapters}


def test_the_register_demo_command_reports_each_artifact(cast, capsys, settings):
    call_command("register_demo", "--workspace", cast.team.slug, "--store", str(DEMO_STORE))

    out = capsys.readouterr().out
    assert f"Base model    {DEMO_BASE}" in out and "ready" in out
