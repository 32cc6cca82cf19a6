"""The permission matrix's world (tests/security/test_permission_matrix.py): two workspaces, A and B,
each with a connection, a base model, an adapter that fits it, a node with a cached copy of the model,
a deployment (stopped, so no server is involved) with the adapter attached, gateway keys (a live one and
a revoked one), a member besides its owner, and a personal API token; and one user per role.

Rows are made directly or through the cheap services (no inspection, no agent, no model server), so a
world costs a few tens of milliseconds and each test can have its own."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Membership, Role, TokenScope, Workspace
from accounts.services import api_token_create, membership_set, workspace_create
from audit.models import AuditEntry
from cluster.models import CachedArtifact
from deployments.models import Deployment, DeploymentAdapter
from deployments.services import deployment_create
from inference.models import UsageRecord
from inference.services import inference_key_create, inference_key_revoke
from registry.models import Artifact, Compatibility, Connection
from tests.support.factories import UserFactory
from tests.support.nodes import online_cpu_node

# Who asks. "outsider" owns workspace B and has no membership in A; "admin" is a superuser with no
# membership in A either (administrators do not see into workspaces they do not belong to).
MATRIX_ROLES = ("anonymous", "outsider", "viewer", "editor", "owner", "admin")

# SmolLM2-135M's config.json, the numbers the memory estimate reads.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 2048, "torch_dtype": "bfloat16",
}  # fmt: skip


@dataclass
class MatrixSide:
    """One workspace's objects, by the kind names the matrix's rows use for URL arguments."""

    workspace: Workspace
    objects: dict[str, object] = field(default_factory=dict)
    key_raw: str = ""  # a live gateway key of this workspace
    revoked_key_raw: str = ""

    def marker(self, kind: str) -> str:
        """The unique name an object of `kind` shows in lists (each ends in "-marker")."""
        return f"{kind}-{self.workspace.slug[-1]}-marker"

    def value(self, kind: str):
        """The URL argument for `kind`: an object's primary key, or the value itself (a served name)."""
        obj = self.objects[kind]
        return getattr(obj, "pk", obj)


@dataclass
class MatrixWorld:
    a: MatrixSide
    b: MatrixSide
    users: dict[str, object]  # role -> user (no "anonymous")
    api_tokens: dict[str, str]  # role -> raw personal token, for the API's Bearer header

    def page_client(self, role: str):
        from django.test import Client

        # A view that raises answers 500 here, as it would to a browser, instead of failing the test outright.
        client = Client(raise_request_exception=False)
        if role != "anonymous":
            client.force_login(self.users[role])
        return client

    def api_client(self, role: str) -> APIClient:
        client = APIClient(raise_request_exception=False)
        if role != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.api_tokens[role]}")
        return client


def _side(letter: str, owner, member, tmp_path) -> MatrixSide:
    """Workspace `letter` owned by `owner`, `member` a viewer in it, and one object of each kind."""
    workspace = workspace_create(name=f"Matrix {letter.upper()}", owner=owner)
    membership_set(workspace=workspace, user=member, role=Role.VIEWER)
    (tmp_path / letter).mkdir()
    connection = Connection.objects.create(
        workspace=workspace, name=f"connection-{letter}-marker", kind="local", root_path=str(tmp_path / letter)
    )
    ready = dict(status="ready", inspected_at=timezone.now(), total_bytes=1 << 20, weight_bytes=1 << 20)
    model = Artifact.objects.create(
        workspace=workspace, name=f"model-{letter}-marker", kind="base", connection=connection, location="base",
        architecture="LlamaForCausalLM", hidden_size=576, num_layers=30, num_attention_heads=9, num_kv_heads=3,
        vocab_size=49152, context_length=2048, parameter_count=134_515_008, dtype="bfloat16", config=SMOLLM2_CONFIG,
        **ready,
    )  # fmt: skip
    adapter = Artifact.objects.create(
        workspace=workspace, name=f"adapter-{letter}-marker", kind="adapter", connection=connection,
        location="adapter", peft_type="LORA", rank=8, lora_alpha=16, target_modules=["q_proj"], **ready,
    )  # fmt: skip
    compatibility = Compatibility.objects.create(adapter=adapter, base=model, compatible=True)
    node = online_cpu_node(tmp_path, name=f"node-{letter}")
    cached = CachedArtifact.objects.create(node=node, artifact=model, status=CachedArtifact.Status.READY)
    # Through the service, so its settings, revision and key are what a real deployment has; then stopped,
    # as if its server had been stopped, so that nothing is (or should be) running.
    deployment = deployment_create(
        workspace=workspace, name=f"deployment-{letter}-marker", base=model, node=node,
        adapters=[(adapter, "pirate")], settings={"kv_cache_bytes": 1 << 30}, user=owner,
    )  # fmt: skip
    Deployment.objects.filter(pk=deployment.pk).update(
        desired=Deployment.Desired.STOPPED, status=Deployment.Status.STOPPED
    )
    DeploymentAdapter.objects.filter(deployment=deployment).update(state=DeploymentAdapter.State.LOADED)
    key, key_raw = inference_key_create(workspace=workspace, name=f"key-{letter}-marker", user=owner)
    revoked, revoked_raw = inference_key_create(workspace=workspace, name=f"revoked-{letter}", user=owner)
    inference_key_revoke(key=revoked)
    token, _ = api_token_create(user=owner, name=f"token-{letter}-marker")
    UsageRecord.objects.create(
        workspace=workspace, key=key, deployment=deployment, model=f"usage-{letter}-marker", endpoint="chat/completions",
        status=200, prompt_tokens=3, completion_tokens=5, duration_ms=12.0,
    )  # fmt: skip
    audit = AuditEntry.objects.create(
        workspace=workspace, workspace_name=workspace.name, actor_name=owner.username, action="workspace.update",
        target_type="workspace", target_id=workspace.pk, target_name=f"audit-{letter}-marker",
    )  # fmt: skip
    objects = {
        "audit": audit,
        "workspace": workspace, "member": member, "connection": connection, "model": model, "adapter": adapter,
        "compatibility": compatibility, "node": node, "accelerator": node.accelerators.first(), "cached": cached,
        "deployment": deployment, "revision": 1, "served_name": "pirate", "step": "base", "key": key, "token": token,
    }  # fmt: skip
    return MatrixSide(workspace=workspace, objects=objects, key_raw=key_raw, revoked_key_raw=revoked_raw)


def build_matrix_world(tmp_path) -> MatrixWorld:
    users = {
        "owner": UserFactory(username="a-owner"),
        "editor": UserFactory(username="a-editor"),
        "viewer": UserFactory(username="a-viewer"),
        "outsider": UserFactory(username="b-owner"),
        "admin": UserFactory(username="root", is_staff=True, is_superuser=True),
    }
    a = _side("a", users["owner"], UserFactory(username="member-a-marker"), tmp_path)
    b = _side("b", users["outsider"], UserFactory(username="member-b-marker"), tmp_path)
    Membership.objects.create(workspace=a.workspace, user=users["editor"], role=Role.EDITOR)
    Membership.objects.create(workspace=a.workspace, user=users["viewer"], role=Role.VIEWER)
    # A token's scope is not this matrix's subject (accounts/tests/test_token_scopes.py): the broadest
    # leaves what each request may do to the caller's role.
    tokens = {role: api_token_create(user=u, name="matrix", scope=TokenScope.ADMIN)[1] for role, u in users.items()}
    return MatrixWorld(a=a, b=b, users=users, api_tokens=tokens)


@pytest.fixture
def matrix_world(db, tmp_path) -> MatrixWorld:
    return build_matrix_world(tmp_path)


@pytest.fixture
def matrix_world_committed(transactional_db, tmp_path) -> MatrixWorld:
    """The same world, committed, for a web process of its own (the gateway's rows) to read."""
    return build_matrix_world(tmp_path)
