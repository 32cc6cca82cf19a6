"""Fixtures the deployment tests share."""

from __future__ import annotations

import pytest

from conftest import DEMO_STORE
from registry.demo import demo_register
from tests.support.nodes import online_cpu_node


@pytest.fixture
def demo(cast, tmp_path) -> dict:
    """The demo model and adapters registered in the team's workspace ({name: artifact}),
    with an online CPU node, cpu-1, to deploy them on."""
    artifacts = {a.name: a for a in demo_register(workspace=cast.team, store=DEMO_STORE)}
    online_cpu_node(tmp_path)
    return artifacts
