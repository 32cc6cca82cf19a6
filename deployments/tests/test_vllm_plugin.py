"""The console's vLLM plugin (deployments/vllm_plugin), run in the vLLM runtime's own Python:
vLLM finds it through the PYTHONPATH the console gives its servers, and with it a token
without an adapter gets nothing from the LoRA path even when the last slot holds one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.conf import settings

from deployments import vllm_args

PROBE = r"""
import importlib.metadata, json, torch
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.plugins import load_general_plugins

def answers():
    slots, r, hidden = 3, 4, 8
    a = torch.zeros(slots, 1, r, hidden); a[-1] = 1.0  # only the last slot holds an adapter
    b = torch.zeros(slots, 1, hidden, r); b[-1] = 1.0
    x = torch.ones(3, hidden); tokens = torch.tensor([-1, 2, -1])  # two tokens without an adapter
    shrunk = torch.zeros(3, r); punica_cpu.bgmv_shrink(x, a, shrunk, tokens, 1.0)
    expanded = torch.zeros(3, hidden); punica_cpu.bgmv_expand(shrunk, b, expanded, tokens, True)
    sliced = torch.zeros(3, hidden); punica_cpu.bgmv_expand_slice(shrunk, b, sliced, tokens, 0, hidden, True)
    # The prefill path: sgmv ops call the bgmv ones of their module.
    prefill = torch.zeros(3, r)
    lora_ops.sgmv_shrink(x, a, prefill, None, torch.tensor([1, 1, 1]), tokens, 3, 1, 3, 1.0)
    return [t.sum(dim=1).tolist() for t in (shrunk, expanded, sliced, prefill)]

before = answers()
load_general_plugins()
print(json.dumps({
    "plugins": sorted(e.name for e in importlib.metadata.entry_points(group="vllm.general_plugins")),
    "before": before, "after": answers(),
}))
"""


@pytest.fixture
def vllm_python():
    if not settings.PLUGBOARD_VLLM_PYTHON.exists():
        pytest.skip("the vLLM runtime is missing (`make vllm` builds it)")
    return str(settings.PLUGBOARD_VLLM_PYTHON)


def test_the_plugin_keeps_tokens_without_an_adapter_out_of_the_last_slot(vllm_python):
    _, env = vllm_args.build_command(sys.executable, demo_spec())
    proc = subprocess.run(
        [vllm_python, "-c", PROBE], env={"PYTHONPATH": env["PYTHONPATH"], "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert "plugboard_cpu_lora" in result["plugins"]
    shrunk, expanded, sliced, prefill = result["before"]  # vLLM alone: every token reads the last slot
    assert shrunk == [32.0, 32.0, 32.0] and prefill == [32.0, 32.0, 32.0]
    shrunk, expanded, sliced, prefill = result["after"]
    assert shrunk == [0.0, 32.0, 0.0] and prefill == [0.0, 32.0, 0.0]
    assert expanded == [0.0, 256.0, 0.0] and sliced == [0.0, 256.0, 0.0]


def test_every_server_gets_the_plugin_and_a_user_cannot_take_it_away():
    _, env = vllm_args.build_command("/usr/bin/python3", demo_spec())
    assert env["PYTHONPATH"] == str(vllm_args.PLUGIN_PATH)
    for name in ("PYTHONPATH", "VLLM_PLUGINS"):
        with pytest.raises(vllm_args.ArgumentError, match=name):
            vllm_args.parse_env(f"{name}=/tmp/elsewhere", allowed_env={name})


def demo_spec() -> vllm_args.ServerSpec:
    return vllm_args.ServerSpec(
        model_path="/models/demo", served_name="demo", host="127.0.0.1", port=8000, api_key="k",
        device="cpu", max_loras=2, max_lora_rank=8,
    )  # fmt: skip
