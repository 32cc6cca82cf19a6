"""The REST API fuzzed from its own OpenAPI schema (schemathesis) against the console's web process on the
test database: no generated request, valid or not, gets a server error, an answer the schema does not
describe, a status code it does not document, or a content type it does not declare.

The console serves a workspace with something of everything (a connection, a base model, an adapter, their
compatibility, nodes with an accelerator, a deployment with its cache rows, a gateway key, usage), so that
the ids schemathesis tries now and then name real rows. Destructive operations are fuzzed too: it is a
test database, and a revoked token is replaced (OwnersToken below)."""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis

from accounts.models import ApiToken
from accounts.services import api_token_create
from cluster import services as cluster_services
from deployments import services as deployment_services
from inference.models import UsageRecord
from inference.services import inference_key_create, usage_record_many
from registry import services as registry_services
from registry.tests.helpers import register_and_inspect
from tests.support import artifacts as build
from tests.support.nodes import gpu_node, online_cpu_node
from tests.support.web import UvicornServer, console_env

SCHEMA_PATH = "/api/v1/schema/"
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"]
# Cases the fuzzing phase generates per operation (valid and invalid ones); the coverage phase adds its own.
# PLUGBOARD_FUZZ_EXAMPLES and PLUGBOARD_FUZZ_SEED widen or vary a run by hand; CI runs the fixed one.
EXAMPLES = int(os.environ.get("PLUGBOARD_FUZZ_EXAMPLES", "8"))
SEED = int(os.environ.get("PLUGBOARD_FUZZ_SEED", "20261130"))
# A file to append each case's operation, phase, mode (positive, negative) and status to, a line a case.
LOG = os.environ.get("PLUGBOARD_FUZZ_LOG")


@pytest.fixture(scope="module")
def fuzzed_console(django_db_setup, django_db_blocker, tmp_path_factory):
    """The console's web process for the fuzz: rate limits out of the way (thousands of requests in a
    minute from one token) and a short timeout on stores and hubs, so that *Test connection* against
    whatever endpoint the fuzz invents answers in seconds."""
    with django_db_blocker.unblock():
        env = console_env(
            PLUGBOARD_RATE_LIMIT_API_PER_ADDRESS="1000000/60",
            PLUGBOARD_RATE_LIMIT_API_PER_CALLER="1000000/60",
            PLUGBOARD_SOURCE_TIMEOUT="3",
        )
    server = UvicornServer(
        "config.asgi:application", log_path=tmp_path_factory.mktemp("fuzz") / "web.log", env=env
    ).start()
    yield server
    server.stop()
    if "Traceback" in (log := server.log()):  # shown with a failure: what the server errors were
        print(f"The console's log, {server.log_path}:\n{log[-30000:]}")


@pytest.fixture
def filled_workspace(transactional_db, cast, tmp_path):
    """The team's workspace with one of everything the API lists, committed for the web process to see."""
    for name, files in {"tiny": build.base_model_files(), "tiny-lora": build.adapter_files()}.items():
        (tmp_path / name).mkdir()
        for filename, content in files.items():
            (tmp_path / name / filename).write_bytes(content)
    shelf = registry_services.connection_create(
        workspace=cast.team, name="shelf", kind="local", root_path=str(tmp_path), user=cast.admin
    )
    registry_services.connection_create(
        workspace=cast.team, name="store", kind="s3", endpoint_url="http://127.0.0.1:9", bucket="models"
    )
    base = register_and_inspect(cast.team, shelf, name="tiny", kind="base", location="tiny")
    adapter = register_and_inspect(cast.team, shelf, name="tiny-lora", kind="adapter", location="tiny-lora")
    node = online_cpu_node(tmp_path)
    gpu_node(tmp_path)
    deployment = deployment_services.deployment_create(
        workspace=cast.team, name="fuzzed", base=base, node=node, adapters=[(adapter, "lora")],
        settings={"kv_cache_bytes": 1 << 30}, user=cast.admin,
    )  # fmt: skip
    cluster_services.artifact_fetch_request(artifact=adapter, node=node)
    key, _ = inference_key_create(workspace=cast.team, name="fuzz", user=cast.admin)
    usage = UsageRecord(workspace=cast.team, key=key, deployment=deployment, model="fuzzed", endpoint="chat",
                        status=200, prompt_tokens=5, completion_tokens=7, duration_ms=12.5)  # fmt: skip
    usage_record_many(records=[usage])
    return cast.team


class OwnersToken:
    """A personal token of the team's owner (an administrator, admin scope: everything the API does), sent
    with every case. The fuzz may revoke it (DELETE /tokens/{id}/ with its very id answers 204, and every
    request after it would be a 401, revocation deleting it); then it is replaced."""

    def __init__(self, user) -> None:
        self.user = user
        self.renew()

    def renew(self) -> None:
        self.token, self.raw = api_token_create(user=self.user, name="fuzz", scope="admin")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.raw}"}

    def renew_if_revoked(self) -> None:
        if not ApiToken.objects.filter(pk=self.token.pk).exists():
            self.renew()


@pytest.fixture
def owners_token(filled_workspace, cast) -> OwnersToken:
    return OwnersToken(cast.admin)


@pytest.fixture
def api_schema(fuzzed_console, owners_token):
    """The schema the console serves, loaded from the console itself."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["all"],
            "request-timeout": 30,
            "generation": {
                "mode": "all",
                "max-examples": EXAMPLES,
                "no-shrink": True,
                "database": "none",
                # The owner's token goes with every case (OwnersToken); invented credentials would only be 401s.
                "with-security-parameters": False,
            },
            # Coverage: missing, wrong-typed and out-of-range values of every parameter and field (the
            # valid ones are the fuzzing phase's), but not methods the schema does not name (405s, which say
            # nothing about an operation) or a query parameter given twice. About 2,400 cases in all.
            "phases": {
                "coverage": {
                    "generation": {"mode": "negative"},
                    "unexpected-methods": [],
                    "generate-duplicate-query-parameters": False,
                },
                "stateful": {"enabled": False},
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )
    return schemathesis.openapi.from_url(
        fuzzed_console.url + SCHEMA_PATH, headers=owners_token.headers(), config=config, timeout=30
    )


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis 4.32's lazy loader reads and renames the test's `Node._nodeid` to report each operation
    as a subtest; pytest 9.2 keeps the id elsewhere (`_id`) and has no such attribute. A plain one lets it
    run; the subtests still name their operations."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def http():
    """One pool of connections for the whole run, not a connection per case."""
    with requests.Session() as session:
        yield session


@schema.parametrize()
def test_every_operation_answers_every_generated_request_as_its_schema_says(case, fuzzed_console, http, owners_token):
    response = None
    try:
        response = case.call_and_validate(
            base_url=fuzzed_console.url, session=http, headers=owners_token.headers(), timeout=30
        )
    finally:
        if LOG:  # what each case was and got, for counting by hand (the README's figures)
            phase, mode = (case.meta.phase.name.value, case.meta.generation.mode.value) if case.meta else ("", "")
            with open(LOG, "a") as log:
                log.write(
                    f"{case.operation.label}\t{phase}\t{mode}\t{'-' if response is None else response.status_code}\n"
                )
    if case.method == "DELETE" and case.path == "/api/v1/tokens/{id}/":
        owners_token.renew_if_revoked()
