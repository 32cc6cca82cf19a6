"""Every list of the API filters through django-filter and refuses a parameter it does not know
(the registry's lists are tested in registry/tests/test_api.py)."""

from __future__ import annotations

import pytest

from tests.support.deployments import demo_deployment
from tests.support.nodes import api_as, online_cpu_node

LISTS = ["/api/v1/deployments/", "/api/v1/cache/", "/api/v1/usage/"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", LISTS)
def test_an_unknown_query_parameter_is_a_400_naming_it(cast, path):
    response = api_as(cast.member).get(path, {"nodee": "cpu-1"})

    assert response.status_code == 400
    assert response.json()["detail"].startswith("Unknown query parameter “nodee”; this list takes ")


@pytest.mark.demo
@pytest.mark.django_db
def test_deployments_filter_by_name_status_and_node(cast, tmp_path):
    online_cpu_node(tmp_path)
    demo_deployment(cast.team, "alpha")
    demo_deployment(cast.team, "beta")
    api = api_as(cast.member)

    def names(**query):
        response = api.get("/api/v1/deployments/", query)
        assert response.status_code == 200, response.content
        return sorted(d["name"] for d in response.json()["results"])

    assert names() == ["alpha", "beta"]
    assert names(name="ALPHA") == ["alpha"]
    assert names(status="pending", node="cpu-1") == ["alpha", "beta"]
    assert names(status="ready") == []
    assert names(workspace=cast.other.slug) == []
    assert api.get("/api/v1/deployments/", {"status": "asleep"}).status_code == 400
