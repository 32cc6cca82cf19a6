"""Every string the API accepts has a length limit, and one that fits its column: an over-long value is a
400 that names the field, never a database error (PostgreSQL refuses what SQLite silently stores).
Read from the API's own OpenAPI schema, so a new field without a limit fails here."""

from __future__ import annotations

import pytest
from django.apps import apps
from drf_spectacular.generators import SchemaGenerator

from tests.support.nodes import api_as

# Request fields that are looked up, never stored: a workspace's or node's slug or name picks an existing row.
LOOKUPS = {"workspace", "node"}


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def request_components(schema) -> set[str]:
    names = set()
    for operations in schema["paths"].values():
        for operation in operations.values():
            for content in (operation.get("requestBody") or {}).get("content", {}).values():
                if ref := content["schema"].get("$ref"):
                    names.add(ref.rsplit("/", 1)[-1])
    return names


def unbounded_strings(component: dict) -> list[str]:
    found = []
    for name, prop in (component.get("properties") or {}).items():
        if prop.get("readOnly") or name in LOOKUPS or "$ref" in prop or "allOf" in prop or "enum" in prop:
            continue
        if prop.get("type") == "string" and prop.get("format") not in ("date-time", "date") and "maxLength" not in prop:
            found.append(name)
        if prop.get("type") == "array":
            items = prop.get("items") or {}
            if "maxItems" not in prop or (items.get("type") == "string" and "maxLength" not in items):
                found.append(f"{name}[]")
    return found


def test_every_string_a_request_may_carry_has_a_limit(schema):
    components = schema["components"]["schemas"]
    names = request_components(schema)
    assert "ConnectionWrite" in names  # the walk finds what it looks for

    missing = {name: fields for name in sorted(names) if (fields := unbounded_strings(components[name]))}
    assert missing == {}, f"give these request fields a max_length (and lists a max_length): {missing}"


# Where each request body's fields are stored: (app, model), or None for a body stored nowhere as such.
# A new request body fails test_every_request_body_says_where_it_is_stored until it has a row here.
STORED_IN = {
    "AdapterChoice": ("deployments", "DeploymentAdapter"),
    "ApiToken": ("accounts", "ApiToken"),
    "ArtifactWrite": ("registry", "Artifact"),
    "ConnectionWrite": ("registry", "Connection"),
    "DeploymentCreate": ("deployments", "Deployment"),
    "FetchRequest": None,  # names a node to fetch onto
    "InferenceKeyCreate": ("inference", "InferenceKey"),
    "MembershipCreate": ("auth", "User"),  # a username, looked up
    "PatchedArtifactUpdate": ("registry", "Artifact"),
    "PatchedConnectionWrite": ("registry", "Connection"),
    "PatchedDeploymentUpdate": ("deployments", "Deployment"),
    "PatchedMembershipUpdate": None,  # a role, one of three
    "Rollback": None,  # a revision number
    "WorkspaceCreate": ("accounts", "Workspace"),
}


def test_every_request_body_says_where_it_is_stored(schema):
    assert set(STORED_IN) == request_components(schema)


def test_no_limit_is_longer_than_the_column_its_value_goes_into(schema):
    components = schema["components"]["schemas"]
    too_long = []
    for name, where in STORED_IN.items():
        if where is None or name not in components:
            continue
        model = apps.get_model(*where)
        columns = {f.name: f.max_length for f in model._meta.concrete_fields if getattr(f, "max_length", None)}
        for field, prop in (components[name].get("properties") or {}).items():
            if field in columns and prop.get("maxLength", 0) > columns[field]:
                too_long.append(f"{name}.{field}: {prop['maxLength']} > column {columns[field]}")
    assert too_long == []


def test_an_over_long_value_is_a_400_that_names_the_field(cast):
    response = api_as(cast.member).post(
        "/api/v1/connections/",
        {"workspace": cast.team.slug, "name": "store", "kind": "s3", "bucket": "b", "region": "r" * 51},
        format="json",
    )
    assert response.status_code == 400
    assert "region" in str(response.json())
