"""Registering from a real S3-protocol server (moto's, on loopback) through boto3
with a custom endpoint: what inspection learns, and every way it refuses."""

from __future__ import annotations

import json

import pytest

from registry.models import ArtifactFile, Compatibility
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build


@pytest.fixture
def store(cast, s3_server):
    return s3_connection(cast.team, s3_server)


def test_it_describes_a_base_model_from_its_config_and_headers(cast, s3_server, store):
    s3_server.put_files("models", "tiny", build.base_model_files())
    artifact = register_and_inspect(cast.team, store, name="tiny", kind="base", location="tiny")

    assert artifact.status == "ready", artifact.problems
    assert artifact.architecture == "LlamaForCausalLM"
    assert (artifact.hidden_size, artifact.num_layers, artifact.num_attention_heads, artifact.num_kv_heads) == (
        64,
        2,
        4,
        2,
    )
    assert artifact.vocab_size == 256 and artifact.context_length == 2048
    expected_params = sum(
        shape[0] * (shape[1] if len(shape) > 1 else 1)
        for shape, _ in build.llama_tensors(build.llama_config()).values()
    )
    assert artifact.parameter_count == expected_params
    assert artifact.weight_bytes == 2 * expected_params and artifact.dtype == "BF16"
    files = {f.path: f for f in artifact.files.all()}
    assert set(files) == {"config.json", "model.safetensors"}
    assert files["model.safetensors"].checksum_kind == "etag" and files["model.safetensors"].checksum
    assert artifact.resolved_revision.startswith("etags:")


def test_it_reads_every_shard_of_a_sharded_checkpoint(cast, s3_server, store):
    s3_server.put_files("models", "sharded", build.sharded_base_model_files())
    artifact = register_and_inspect(cast.team, store, name="sharded", kind="base", location="sharded")

    assert artifact.status == "ready", artifact.problems
    assert len(artifact.tensors) == len(build.llama_tensors(build.llama_config()))
    assert artifact.files.count() == 4


def test_it_describes_an_adapter_and_finds_the_base_it_fits(cast, s3_server, store):
    s3_server.put_files("models", "tiny", build.base_model_files())
    s3_server.put_files("models", "big", build.base_model_files(hidden=128, name="big-llama"))
    s3_server.put_files("models", "lora", build.adapter_files(r=8))
    tiny = register_and_inspect(cast.team, store, name="tiny", kind="base", location="tiny")
    big = register_and_inspect(cast.team, store, name="big", kind="base", location="big")
    lora = register_and_inspect(cast.team, store, name="lora", kind="adapter", location="lora")

    assert lora.status == "ready", lora.problems
    assert (lora.peft_type, lora.rank, lora.lora_alpha, lora.target_modules) == ("LORA", 8, 16, ["q_proj", "v_proj"])
    assert Compatibility.objects.get(adapter=lora, base=tiny).compatible
    verdict = Compatibility.objects.get(adapter=lora, base=big)
    assert not verdict.compatible
    assert any("hidden size 128" in reason for reason in verdict.reasons)


def test_a_missing_prefix_ends_invalid_and_says_where_it_looked(cast, store):
    artifact = register_and_inspect(cast.team, store, name="ghost", kind="base", location="nothing/here")

    assert artifact.status == "invalid"
    assert artifact.problems == ["Nothing found at s3://models/nothing/here/: no object has that prefix."]
    assert not ArtifactFile.objects.filter(artifact=artifact).exists()


def test_a_missing_bucket_is_named(cast, s3_server):
    connection = s3_connection(cast.team, s3_server, bucket="no-such-bucket", name="wrong")
    artifact = register_and_inspect(cast.team, connection, name="x", kind="base", location="x")

    assert artifact.status == "invalid"
    assert "The bucket “no-such-bucket” does not exist" in artifact.problems[0]


# The corpus of bad artifacts: each ends invalid with the reason a person needs,
# and nothing of it is recorded but the reasons.
BAD = {
    "dora": ("adapter", lambda: build.adapter_files(use_dora=True), "uses DoRA"),
    "bias": ("adapter", lambda: build.adapter_files(bias="lora_only"), 'vLLM needs bias "none"'),
    "modules-to-save": (
        "adapter",
        lambda: build.adapter_files(modules_to_save=["lm_head"]),
        "modules_to_save: lm_head",
    ),
    "rank-1024": ("adapter", lambda: build.adapter_files(r=1024), "Its rank is 1024; vLLM serves ranks up to 512"),
    "not-lora": ("adapter", lambda: build.adapter_files(peft_type="IA3"), "vLLM serves LoRA adapters only"),
    "no-adapter-config": (
        "adapter",
        lambda: {k: v for k, v in build.adapter_files().items() if k != "adapter_config.json"},
        "adapter_config.json is missing",
    ),
    "no-config": (
        "base",
        lambda: {k: v for k, v in build.base_model_files().items() if k != "config.json"},
        "config.json is missing",
    ),
    "pickle": (
        "base",
        lambda: {"config.json": json.dumps(build.llama_config()).encode(), "pytorch_model.bin": b"\x80\x02pickle"},
        "Pickle-based weights can run code when loaded and are refused: pytorch_model.bin",
    ),
    "no-weights": ("base", lambda: {"config.json": json.dumps(build.llama_config()).encode()}, "No weights found"),
    "truncated-header": (
        "base",
        lambda: {"config.json": b"{}", "model.safetensors": build.safetensors_bytes({"w": ([4, 4], "F32")})[:20]},
        "malformed safetensors header: the header claims",
    ),
    "oversized-header": (
        "base",
        lambda: {"config.json": b"{}", "model.safetensors": (10**12).to_bytes(8, "little") + b"{}"},
        "more than the 104,857,600 allowed",
    ),
    "garbage-header": (
        "base",
        lambda: {"config.json": b"{}", "model.safetensors": (6).to_bytes(8, "little") + b"nope!!" + bytes(16)},
        "the header is not valid JSON",
    ),
    "traversal": (
        "base",
        lambda: {**build.base_model_files(), "../../../etc/evil.safetensors": b"x"},
        "would escape the artifact's folder",
    ),
    "lonely-lora-a": (
        "adapter",
        lambda: {
            "adapter_config.json": json.dumps(build.adapter_config()).encode(),
            "adapter_model.safetensors": build.safetensors_bytes(
                {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": ([8, 64], "F32")}
            ),
        },
        "has a lora_A but no lora_B",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_artifact_ends_invalid_with_the_reason(cast, s3_server, store, case):
    kind, files, reason = BAD[case]
    s3_server.put_files("models", f"bad/{case}", files())
    artifact = register_and_inspect(cast.team, store, name=case, kind=kind, location=f"bad/{case}")

    assert artifact.status == "invalid"
    assert any(reason in problem for problem in artifact.problems), artifact.problems
    # Nothing half-registered: no manifest, no description, no verdicts.
    assert not artifact.files.exists()
    assert artifact.tensors == {} and artifact.parameter_count is None and artifact.config == {}
    assert not Compatibility.objects.filter(adapter=artifact).exists()


def test_an_adapter_for_another_hidden_size_does_not_fit_and_says_why(cast, s3_server, store):
    s3_server.put_files("models", "tiny", build.base_model_files())
    s3_server.put_files("models", "wide-lora", build.adapter_files(hidden=96))
    tiny = register_and_inspect(cast.team, store, name="tiny", kind="base", location="tiny")
    lora = register_and_inspect(cast.team, store, name="wide", kind="adapter", location="wide-lora")

    verdict = Compatibility.objects.get(adapter=lora, base=tiny)
    assert not verdict.compatible
    assert (
        "model.layers.0.self_attn.q_proj: the adapter maps 96 → 96 features but tiny's module is 64 → 64"
        in verdict.reasons[0]
    )


def test_pickle_weights_pass_when_an_administrator_allows_them(cast, s3_server, store, settings):
    settings.PLUGBOARD_ALLOW_PICKLE_WEIGHTS = True
    s3_server.put_files("models", "legacy", {**build.base_model_files(), "pytorch_model.bin": b"\x80\x02"})
    artifact = register_and_inspect(cast.team, store, name="legacy", kind="base", location="legacy")

    assert artifact.status == "ready", artifact.problems


def test_an_object_under_sse_kms_is_checked_by_size_as_its_etag_is_no_md5(cast, s3_server, store, tmp_path):
    from cluster import services as cluster_services
    from cluster.cache import ArtifactCache
    from cluster.inventory import Inventory

    files = build.base_model_files()
    s3_server.put_files("models", "sealed", {"config.json": files["config.json"]})
    s3_server.client().put_object(
        Bucket="models", Key="sealed/model.safetensors", Body=files["model.safetensors"], ServerSideEncryption="aws:kms"
    )

    artifact = register_and_inspect(cast.team, store, name="sealed", kind="base", location="sealed")

    assert artifact.status == "ready", artifact.problems
    manifest = {f.path: f for f in artifact.files.all()}
    assert manifest["config.json"].checksum_kind == "etag"
    weights = manifest["model.safetensors"]
    assert weights.checksum_kind == "" and weights.checksum, "the ETag is kept to notice a changed object"

    node = cluster_services.node_register(
        name="n", address="127.0.0.1", cache_dir=str(tmp_path), cache_quota_bytes=2**30
    )
    cache = ArtifactCache(tmp_path / "cache")
    node = cluster_services.node_report(
        node=node,
        inventory=Inventory(hostname="n", cpu_count=1, memory_total_bytes=1, memory_available_bytes=1),
        cache=cache,
    )
    cached = cluster_services.artifact_fetch_request(artifact=artifact, node=node)
    fetched = cluster_services.artifact_fetch_run(cached_id=cached.pk, cache=cache)

    assert fetched.status == "ready", fetched.error
    assert fetched.unverified == ["model.safetensors"]
