"""The vLLM command line: building it exactly, refusing what users must not
set, and — with `.venv-vllm` present — checking it against vLLM 0.32's own
argument parser."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from deployments.vllm_args import (
    ALLOWED_ENV,
    ALLOWED_FLAGS,
    BOOLEAN_FLAGS,
    CODE_FLAGS,
    CONTROL_FLAGS,
    CPU_ONLY_SETTINGS,
    FIELD_FLAGS,
    GPU_ONLY_SETTINGS,
    MANAGED_FLAGS,
    MULTI_VALUE_FLAGS,
    NOT_ABBREVIATIONS,
    PATH_FLAGS,
    SETTINGS,
    AdapterSpec,
    ArgumentError,
    ServerSpec,
    build_command,
    check_against_runtime,
    default_max_lora_rank,
    default_max_loras,
    display,
    env_keep,
    env_masked,
    masked,
    model_path_problem,
    parse_env,
    parse_extra_args,
    reaches_outside,
    resolved_extra_args,
    validate,
)

PY = "/opt/vllm/bin/python"
VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
PLUGIN = str(Path(__file__).resolve().parents[1] / "vllm_plugin")


def cpu_spec(**changes) -> ServerSpec:
    spec = ServerSpec(
        model_path="/cache/smollm2",
        served_name="demo",
        host="127.0.0.1",
        port=8001,
        api_key="s3cret",
        device="cpu",
        max_loras=4,
        max_lora_rank=16,
        adapters=(
            AdapterSpec("demo:pirate", "/cache/pirate", 8),
            AdapterSpec("demo:robot", "/cache/robot", 16),
        ),
    )
    return dataclasses.replace(spec, **changes)


def gpu_spec(**changes) -> ServerSpec:
    spec = ServerSpec(
        model_path="/cache/llama-3-8b",
        served_name="llama",
        host="10.0.0.5",
        port=9100,
        api_key="k-123",
        device="cuda",
        gpu_indices=(2, 3),
        tensor_parallel_size=2,
        max_loras=2,
        max_lora_rank=64,
        adapters=(AdapterSpec("llama:sql", "/cache/sql", 64),),
        dtype="bfloat16",
        max_model_len=8192,
        gpu_memory_utilization=0.85,
        max_cpu_loras=4,
        enable_prefix_caching=False,
        enforce_eager=True,
        extra_args=("--max-num-seqs", "32"),
        extra_env={"HF_HUB_OFFLINE": "1"},
    )
    return dataclasses.replace(spec, **changes)


# --- build_command -----------------------------------------------------------------


def test_it_builds_the_cpu_command_exactly():
    argv, env = build_command(PY, cpu_spec())

    assert argv == [
        PY, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/cache/smollm2",
        "--served-model-name", "demo",
        "--host", "127.0.0.1",
        "--port", "8001",
        "--enable-lora",
        "--max-loras", "4",
        "--max-lora-rank", "16",
        "--lora-modules",
        '{"name":"demo:pirate","path":"/cache/pirate","base_model_name":"demo"}',
        '{"name":"demo:robot","path":"/cache/robot","base_model_name":"demo"}',
        "--dtype", "auto",
        "--kv-cache-memory-bytes", "1073741824",
        "--middleware", "plugboard_vllm_auth.ServerKeyMiddleware",
    ]  # fmt: skip
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONPATH": PLUGIN, "PLUGBOARD_SERVER_KEY": "s3cret"}


def test_it_builds_the_gpu_command_with_every_optional_field_and_extra_args_last():
    argv, env = build_command(PY, gpu_spec())

    assert argv == [
        PY, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/cache/llama-3-8b",
        "--served-model-name", "llama",
        "--host", "10.0.0.5",
        "--port", "9100",
        "--enable-lora",
        "--max-loras", "2",
        "--max-lora-rank", "64",
        "--lora-modules", '{"name":"llama:sql","path":"/cache/sql","base_model_name":"llama"}',
        "--dtype", "bfloat16",
        "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.85",
        "--tensor-parallel-size", "2",
        "--max-cpu-loras", "4",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--max-num-seqs", "32",
        "--middleware", "plugboard_vllm_auth.ServerKeyMiddleware",
    ]  # fmt: skip
    assert env == {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "PYTHONPATH": PLUGIN,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "HF_HUB_OFFLINE": "1",
        "PLUGBOARD_SERVER_KEY": "k-123",
    }


def test_each_lora_module_is_one_json_object_naming_the_base():
    argv, _ = build_command(PY, cpu_spec(adapters=(AdapterSpec("demo:x", "/x/dir with space/é", 8),)))
    value = argv[argv.index("--lora-modules") + 1]
    assert json.loads(value) == {"name": "demo:x", "path": "/x/dir with space/é", "base_model_name": "demo"}


def test_it_leaves_out_lora_modules_when_there_is_no_adapter():
    argv, _ = build_command(PY, cpu_spec(adapters=()))

    assert "--lora-modules" not in argv
    assert "--enable-lora" in argv


def test_on_cpu_the_kv_cache_size_and_thread_binding_come_from_the_fields():
    argv, env = build_command(
        PY, cpu_spec(kv_cache_bytes=2 * 1024**3, cpu_threads=2, extra_env={"OMP_NUM_THREADS": "1"})
    )

    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(2 * 1024**3)
    assert env == {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONPATH": PLUGIN, "VLLM_CPU_OMP_THREADS_BIND": "0-1", "OMP_NUM_THREADS": "1",
        "PLUGBOARD_SERVER_KEY": "s3cret",
    }  # fmt: skip
    _, env = build_command(PY, cpu_spec(cpu_threads="4-7"))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "4-7"


def test_it_emits_enable_prefix_caching_only_when_asked():
    assert "--enable-prefix-caching" in build_command(PY, cpu_spec(enable_prefix_caching=True))[0]
    argv = build_command(PY, cpu_spec())[0]
    assert not {"--enable-prefix-caching", "--no-enable-prefix-caching", "--enforce-eager"} & set(argv)


def test_a_model_path_may_hold_spaces_because_no_shell_splits_it():
    argv, _ = build_command(PY, cpu_spec(model_path="/data/My Models/x"))
    assert argv[argv.index("--model") + 1] == "/data/My Models/x"


def test_build_command_validates_first():
    with pytest.raises(ArgumentError, match="Port 0"):
        build_command(PY, cpu_spec(port=0))


# --- masking -----------------------------------------------------------------------


def test_masked_hides_the_api_key_in_both_spellings_and_an_hf_token():
    argv = ["python", "--api-key", "s3cret", "--port", "1", "--api-key=other", "--hf-token", "hf_abc"]

    assert masked(argv) == ["python", "--api-key", "****", "--port", "1", "--api-key=****", "--hf-token", "****"]
    assert argv[2] == "s3cret"  # a copy, not in place


def test_display_is_a_pasteable_command_without_the_key():
    argv, _ = build_command(PY, cpu_spec())
    shown = display(argv)

    assert "s3cret" not in shown and "--api-key" not in shown, "the key travels in the environment"
    assert """'{"name":"demo:pirate","path":"/cache/pirate","base_model_name":"demo"}'""" in shown


# --- parse_extra_args --------------------------------------------------------------


def test_it_splits_extra_args_like_a_shell_without_running_anything():
    text = """--max-num-seqs 8 --enable-chunked-prefill
        --chat-template 'templates/my chat.jinja' --seed=-1 --response-role bot
        --kv-cache-dtype=fp8 --no-trust-remote-code"""

    assert parse_extra_args(text) == [
        "--max-num-seqs", "8", "--enable-chunked-prefill",
        "--chat-template", "templates/my chat.jinja", "--seed=-1", "--response-role", "bot",
        "--kv-cache-dtype=fp8", "--no-trust-remote-code",
    ]  # fmt: skip


def test_empty_extra_args_are_no_arguments():
    assert parse_extra_args("   \n ") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--hf-overrides $(reboot)", ["--hf-overrides", "$(reboot)"]),
        ("--hf-overrides `reboot`", ["--hf-overrides", "`reboot`"]),
        ('--hf-overrides "a; rm -rf / && reboot | sh"', ["--hf-overrides", "a; rm -rf / && reboot | sh"]),
        ("--hf-overrides=main;reboot", ["--hf-overrides=main;reboot"]),
        ("--seed -1", ["--seed", "-1"]),
    ],
)
def test_shell_metacharacters_in_values_stay_inert_literals(text, expected):
    # An administrator's flag is the one whose value is checked only for control characters.
    assert parse_extra_args(text, allowed_flags={"--hf-overrides"}) == expected


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("--seed 1 ; rm -rf /", "“;”"),
        ("--seed 1 && reboot", "“&&”"),
        ("--seed 1 | sh", "“|”"),
        ("$(reboot)", "“$(reboot)”"),
        ("`reboot`", "“`reboot`”"),
        ("/models/other-model", "“/models/other-model”"),
        ("--enable-chunked-prefill /models/other", "“/models/other”"),
        ("--seed 1 2", "“2”"),
        ("-1", "“-1”"),
    ],
)
def test_it_refuses_stray_positionals_and_injection_attempts(text, token):
    with pytest.raises(ArgumentError, match="positional") as exc:
        parse_extra_args(text)
    assert token in str(exc.value)


@pytest.mark.parametrize("flag", sorted(MANAGED_FLAGS))
@pytest.mark.parametrize("spelling", ["{flag} x", "{flag}=x", "{underscored} x", "{flag}.key x"])
def test_it_refuses_every_managed_flag_in_every_spelling(flag, spelling):
    text = spelling.format(flag=flag, underscored="--" + flag[2:].replace("-", "_"))

    with pytest.raises(ArgumentError, match=f"the console sets {flag} itself"):
        parse_extra_args(text)


@pytest.mark.parametrize(
    ("text", "flag"), [("--por 9", "--port"), ("--api-k x", "--api-key"), ("--served x", "--served-model-name")]
)
def test_it_refuses_abbreviations_that_argparse_expands_to_managed_flags(text, flag):
    with pytest.raises(ArgumentError, match=f"vLLM reads it as {flag}"):
        parse_extra_args(text)


def test_a_real_flag_that_begins_a_refused_one_is_not_taken_for_its_abbreviation():
    assert parse_extra_args("--reasoning-parser deepseek_r1") == ["--reasoning-parser", "deepseek_r1"]
    with pytest.raises(ArgumentError, match="vLLM reads it as --reasoning-parser-plugin"):
        parse_extra_args("--reasoning-parser-pl /tmp/x.py")


def test_flags_are_case_sensitive_so_an_upper_case_flag_is_refused_as_unknown():
    with pytest.raises(ArgumentError, match=re.escape("“--PORT” is not a vLLM flag name (flags are case-sensitive")):
        parse_extra_args("--PORT 9")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("--max-loras 8", "max_loras setting"),
        ("--max_lora_rank=64", "max_lora_rank setting"),
        ("-tp 2", "tensor_parallel_size"),
        ("-tp=2", "tensor_parallel_size"),
        ("-t 2", "vLLM reads it as -tp"),
        ("--device-memory-utilization 0.5", "gpu_memory_utilization setting"),
        ("--kv-cache-memory-bytes 4G", "kv_cache_bytes setting"),
        ("--no-enable-lora", "LoRA is always on"),
        ("--enforce-eager", "enforce_eager setting"),
        ("--config /etc/x.yaml", "reads more flags from a file"),
        ("--uds /tmp/s", "Unix socket"),
        ("--headless", "without the HTTP API"),
        ("--device-ids 0,1", "the console chooses the GPUs"),
        ("--ssl-keyfile k.pem", "plain HTTP"),
        ("-h", "prints help"),
        ("--help=all", "prints help"),
        ("--", "read what follows as the model"),
    ],
)
def test_it_refuses_flags_the_deployment_fields_or_the_console_control(text, reason):
    with pytest.raises(ArgumentError, match=reason):
        parse_extra_args(text)


def test_trust_remote_code_needs_the_administrator_setting():
    with pytest.raises(ArgumentError, match="an administrator must allow remote code"):
        parse_extra_args("--trust-remote-code")
    with pytest.raises(ArgumentError, match="an administrator must allow remote code"):
        parse_extra_args("--trust_remote_code")

    assert parse_extra_args("--trust-remote-code", allow_trust_remote_code=True) == ["--trust-remote-code"]


@pytest.mark.parametrize("flag", sorted(CODE_FLAGS - {"--trust-remote-code"}))
def test_flags_that_load_user_named_code_need_the_administrator_setting_too(flag):
    with pytest.raises(ArgumentError, match="run code named by the user"):
        parse_extra_args(f"{flag} x")

    assert parse_extra_args(f"{flag} x", allow_trust_remote_code=True) == [flag, "x"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--chat-template 'unclosed", "a quote is not closed"),
        ('--chat-template "unclosed', "a quote is not closed"),
        ("--seed 1 \\", "lone backslash"),
        ("--chat-template 'a\nb'", "U\\+000A \\(a line break\\)"),
        ("--chat-template a\\\nb", "U\\+000A"),
        ("--chat-template 'a\x00b'", "U\\+0000 \\(NUL\\)"),
        ("--chat-template a\x1bb", "U\\+001B"),
        ("--chat-template 'abc\u202egpj.exe'", "U\\+202E"),
        ("'--seed 1'", "contains a space"),
    ],
)
def test_it_refuses_unbalanced_quotes_and_control_characters_inside_arguments(text, message):
    with pytest.raises(ArgumentError, match=message):
        parse_extra_args(text)


# --- parse_env ---------------------------------------------------------------------


def test_it_reads_key_value_lines_with_comments_and_quotes():
    text = """
        # quieter logs
        VLLM_LOGGING_PREFIX=[a=b#frag]
        OMP_NUM_THREADS = 4
        GREETING="hello world"
        EMPTY=
        QUOTED='# not a comment'
    """

    assert parse_env(text, allowed_env={"GREETING", "EMPTY", "QUOTED"}) == {
        "VLLM_LOGGING_PREFIX": "[a=b#frag]",
        "OMP_NUM_THREADS": "4",
        "GREETING": "hello world",
        "EMPTY": "",
        "QUOTED": "# not a comment",
    }


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CUDA_VISIBLE_DEVICES", "GPUs placed"),
        ("CUDA_DEVICE_ORDER", "inventory"),
        ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "without a restart"),
        ("VLLM_API_KEY", "its own API key"),
        ("VLLM_CPU_OMP_THREADS_BIND", "CPU threads field"),
        ("VLLM_CPU_KVCACHE_SPACE", "KV cache field"),
    ],
)
def test_it_refuses_the_variables_the_console_manages(name, reason):
    with pytest.raises(ArgumentError, match=f"Line 2: {name} is refused: .*{reason}"):
        parse_env(f"A=1\n{name}=x", allowed_env={"A", name})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1ABC=x", "not a variable name"),
        ("MY-VAR=x", "not a variable name"),
        ("export A=1", "not a variable name"),
        ("just text", "is not KEY=VALUE"),
        ("A=1\nA=2", "A is already set on line 1"),
        ("A=x\x00y", "NUL"),
        ("A=x\x1b[31m", "U\\+001B"),
    ],
)
def test_it_refuses_malformed_environment_lines(text, message):
    with pytest.raises(ArgumentError, match=message):
        parse_env(text, allowed_env={"A", "ABC"})


# --- defaults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranks", "expected"),
    [([1], 1), ([4], 8), ([8], 8), ([9], 16), ([16], 16), ([4, 70], 128), ([300], 320), ([512], 512), ([], 16)],
)
def test_the_default_max_lora_rank_is_the_smallest_vllm_rank_covering_every_adapter(ranks, expected):
    assert default_max_lora_rank(ranks) == expected


@pytest.mark.parametrize(("ranks", "message"), [([513], "up to 512"), ([0], "ranks start at 1")])
def test_the_default_max_lora_rank_refuses_impossible_ranks(ranks, message):
    with pytest.raises(ArgumentError, match=message):
        default_max_lora_rank(ranks)


@pytest.mark.parametrize(
    ("count", "device", "expected"),
    [(0, "cpu", 1), (1, "cpu", 1), (3, "cpu", 3), (9, "cpu", 4), (0, "cuda", 1), (3, "cuda", 3), (40, "cuda", 4)],
)
def test_the_default_max_loras_gives_each_adapter_a_slot_up_to_four(count, device, expected):
    assert default_max_loras(count, device=device) == expected


def test_the_default_max_loras_refuses_an_unknown_device():
    with pytest.raises(ArgumentError, match="not “gpu”"):
        default_max_loras(1, device="gpu")


# --- validate ----------------------------------------------------------------------


def test_good_specs_validate():
    validate(cpu_spec())
    validate(gpu_spec())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (cpu_spec(max_lora_rank=8), "“demo:robot” has rank 16, above max_lora_rank 8; raise max_lora_rank to 16"),
        (cpu_spec(max_lora_rank=24), "max_lora_rank 24 is not one vLLM accepts .* use 32"),
        (gpu_spec(max_loras=0), "max_loras must be at least 1"),
        (
            cpu_spec(adapters=(AdapterSpec("x", "/a", 8), AdapterSpec("x", "/b", 8))),
            "“x” is used by more than one adapter",
        ),
        (cpu_spec(adapters=(AdapterSpec("demo", "/a", 8),)), "“demo” is the base model's served name"),
        (cpu_spec(served_name="-demo"), "served name “-demo” may hold"),
        (cpu_spec(adapters=(AdapterSpec("demo/x", "/a", 8),)), "served name “demo/x” may hold"),
        (gpu_spec(gpu_memory_utilization=0.0), "gpu_memory_utilization 0.0 must be above 0"),
        (gpu_spec(gpu_memory_utilization=1.5), "gpu_memory_utilization 1.5 must be above 0"),
        (cpu_spec(gpu_memory_utilization=0.5), "does not apply on CPU"),
        (gpu_spec(tensor_parallel_size=1), "tensor_parallel_size is 1 but 2 GPU.s. are placed"),
        (gpu_spec(gpu_indices=(), tensor_parallel_size=0), "needs at least one GPU"),
        (gpu_spec(gpu_indices=(1, 1)), "must be distinct"),
        (cpu_spec(port=0), "Port 0 is outside 1–65535"),
        (cpu_spec(port=65536), "Port 65536 is outside"),
        (cpu_spec(gpu_indices=(0,)), "A CPU deployment cannot use GPUs"),
        (cpu_spec(tensor_parallel_size=2), "tensor_parallel_size 1"),
        (cpu_spec(dtype="fp8"), "dtype “fp8” is not one vLLM accepts"),
        (gpu_spec(max_cpu_loras=1), "max_cpu_loras .1. must be at least max_loras .2."),
        (cpu_spec(cpu_threads="0-1; reboot"), "is not a CPU list"),
        (cpu_spec(cpu_threads=0), "cpu_threads must be a positive number"),
        (gpu_spec(cpu_threads=2), "cpu_threads applies only on CPU"),
        (cpu_spec(api_key=""), "The API key must be non-empty"),
        (cpu_spec(model_path="--help"), "The model path must be"),
        (cpu_spec(host="0.0.0.0 --port"), "The host must be non-empty, printable, without spaces"),
        (cpu_spec(adapters=(AdapterSpec("a", "-x", 8),)), "“a” needs a printable path"),
        (cpu_spec(extra_args=("--port", "1")), "the console sets --port itself"),
        (cpu_spec(extra_args=("/other/model",)), "positional"),
        (cpu_spec(extra_env={"CUDA_VISIBLE_DEVICES": "0"}), "CUDA_VISIBLE_DEVICES is refused"),
    ],
)
def test_validate_refuses(spec, message):
    with pytest.raises(ArgumentError, match=message):
        validate(spec)


def test_validate_lists_every_problem_at_once():
    with pytest.raises(ArgumentError) as exc:
        validate(cpu_spec(port=0, max_lora_rank=24, gpu_indices=(0,)))

    assert len(exc.value.problems) == 3


def test_validate_checks_the_extra_arguments_and_environment_under_the_settings_the_spec_carries():
    with pytest.raises(ArgumentError, match="an administrator must allow remote code"):
        validate(cpu_spec(extra_args=("--trust-remote-code",)))
    validate(cpu_spec(extra_args=("--trust-remote-code",), allow_trust_remote_code=True))

    with pytest.raises(ArgumentError, match="PLUGBOARD_ALLOWED_FLAGS"):
        validate(cpu_spec(extra_args=("--hf-overrides", "{}")))
    validate(cpu_spec(extra_args=("--hf-overrides", "{}"), allowed_flags=frozenset({"--hf-overrides"})))

    with pytest.raises(ArgumentError, match=r"MY_TUNING is refused in the environment: .*PLUGBOARD_ALLOWED_ENV"):
        validate(cpu_spec(extra_env={"MY_TUNING": "1"}))
    validate(cpu_spec(extra_env={"MY_TUNING": "1"}, allowed_env=frozenset({"MY_TUNING"})))
    with pytest.raises(ArgumentError, match="MY_PLUGIN_DIR is refused in the environment: it can load code"):
        validate(cpu_spec(extra_env={"MY_PLUGIN_DIR": "/x"}, allowed_env=frozenset({"MY_PLUGIN_DIR"})))

    with pytest.raises(ArgumentError, match="the base model has no such file"):
        validate(cpu_spec(extra_args=("--chat-template", "x.jinja"), model_files=frozenset({"config.json"})))


# --- against vLLM 0.32's real parser -----------------------------------------------

# Runs in .venv-vllm: builds vLLM's parser as its api_server entry point does and
# reports its options and how it parses each argv it is given.
PARSER_PROBE = r"""
import argparse, json, sys, warnings
warnings.simplefilter("ignore")
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:  # older layouts
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

request = json.load(sys.stdin)
parser = make_arg_parser(FlexibleArgumentParser())
options = {}
for action in parser._actions:
    for option in action.option_strings:
        options[option] = "0" if action.nargs == 0 else str(action.nargs)
choices = {o: sorted(map(str, a.choices)) for a in parser._actions if a.choices for o in a.option_strings}
import vllm.reasoning, vllm.tool_parsers
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
choices["--tool-call-parser"] = sorted(vllm.tool_parsers._TOOL_PARSERS_TO_REGISTER)
choices["--reasoning-parser"] = sorted(vllm.reasoning._REASONING_PARSERS_TO_REGISTER)
choices["--quantization"] = choices["-q"] = sorted(QUANTIZATION_METHODS)
keys = ["model", "model_tag", "served_model_name", "host", "port", "api_key", "middleware", "enable_lora", "max_loras",
        "max_lora_rank", "dtype", "max_model_len", "gpu_memory_utilization", "kv_cache_memory_bytes",
        "tensor_parallel_size", "max_cpu_loras", "enable_prefix_caching", "enforce_eager", "max_num_seqs",
        "trust_remote_code", "seed", "chat_template"]
results = []
for args in request:
    try:
        ns = make_arg_parser(FlexibleArgumentParser()).parse_args(args)
        validate_parsed_serve_args(ns)
    except BaseException as exc:
        results.append({"error": f"{type(exc).__name__}: {exc}"})
        continue
    out = {key: getattr(ns, key, None) for key in keys}
    out["lora_modules"] = [
        {"name": m.name, "path": m.path, "base_model_name": m.base_model_name} for m in ns.lora_modules or []
    ]
    results.append(out)
print(json.dumps({"options": options, "choices": choices, "results": results}))
"""

ACCEPTED_EXTRAS = [
    "--max-num-seqs 8 --enable-chunked-prefill --seed -1",
    "--generation-config vllm --no-trust-remote-code --response-role bot",
    "--enable-auto-tool-choice --tool-call-parser hermes --disable-log-stats --reasoning-parser deepseek_r1",
    "--max_num_seqs=4 --kv-cache-dtype fp8 --load-format safetensors --uvicorn-log-level warning -pp 1",
]
# Spellings of managed flags parse_extra_args refuses, and what vLLM would have done with them.
ALIASES = {
    "--port=9999": ("port", 9999),
    "--por 9999": ("port", 9999),
    "--api_key stolen": ("api_key", ["stolen"]),
    "--api-k stolen": ("api_key", ["stolen"]),
    "--served_model_name other": ("served_model_name", ["other"]),
    "--ho 0.0.0.0": ("host", "0.0.0.0"),
    "--model=/other": ("model", "/other"),
    "--max_loras 1": ("max_loras", 1),
    "-tp=1": ("tensor_parallel_size", 1),
}


@pytest.fixture(scope="module")
def real_parser(tmp_path_factory):
    """vLLM 0.32's parser run on the argv lists below, in one subprocess."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} is missing (`make vllm` builds it); the real-parser checks need vLLM installed")
    base = build_command(PY, cpu_spec())[0][3:]
    model = tmp_path_factory.mktemp("model")
    (model / "templates").mkdir()
    (model / "templates" / "chat.jinja").write_text("{{ messages }}")
    with_template = cpu_spec(model_path=str(model), extra_args=("--chat-template", "templates/chat.jinja"))
    argvs = [
        build_command(PY, with_template)[0][3:],
        base,
        build_command(PY, gpu_spec(enable_prefix_caching=True, extra_args=()))[0][3:],
        build_command(PY, gpu_spec())[0][3:],
        *(base + parse_extra_args(text) for text in ACCEPTED_EXTRAS),
        *(base + text.split() for text in ALIASES),
    ]
    proc = subprocess.run(
        [str(VLLM_PYTHON), "-c", PARSER_PROBE],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = iter(report["results"])
    return {
        "template": next(results),
        "template_path": f"{model}/templates/chat.jinja",
        "options": report["options"],
        "choices": report["choices"],
        "cpu": next(results),
        "gpu": next(results),
        "gpu_extras": next(results),
        "extras": [next(results) for _ in ACCEPTED_EXTRAS],
        "aliases": {text: next(results) for text in ALIASES},
    }


def test_vllm_parses_the_cpu_command_to_what_the_spec_says(real_parser):
    parsed = real_parser["cpu"]

    assert "error" not in parsed, parsed
    assert parsed | {"lora_modules": None} == parsed | {
        "model": "/cache/smollm2",
        "model_tag": None,
        "served_model_name": ["demo"],
        "host": "127.0.0.1",
        "port": 8001,
        "api_key": None,
        "middleware": ["plugboard_vllm_auth.ServerKeyMiddleware"],
        "enable_lora": True,
        "max_loras": 4,
        "max_lora_rank": 16,
        "dtype": "auto",
        "kv_cache_memory_bytes": 1024**3,
        "lora_modules": None,
    }
    assert parsed["lora_modules"] == [
        {"name": "demo:pirate", "path": "/cache/pirate", "base_model_name": "demo"},
        {"name": "demo:robot", "path": "/cache/robot", "base_model_name": "demo"},
    ]


def test_vllm_accepts_every_optional_flag_the_builder_emits(real_parser):
    for key, prefix_caching in (("gpu", True), ("gpu_extras", False)):
        parsed = real_parser[key]
        assert "error" not in parsed, parsed
        assert parsed["dtype"] == "bfloat16"
        assert parsed["max_model_len"] == 8192
        assert parsed["gpu_memory_utilization"] == 0.85
        assert parsed["tensor_parallel_size"] == 2
        assert parsed["max_cpu_loras"] == 4
        assert parsed["enable_prefix_caching"] is prefix_caching
        assert parsed["enforce_eager"] is True
    assert real_parser["gpu_extras"]["max_num_seqs"] == 32


def test_vllm_accepts_the_extra_args_parse_extra_args_lets_through_without_a_stray_positional(real_parser):
    for text, parsed in zip(ACCEPTED_EXTRAS, real_parser["extras"], strict=True):
        assert "error" not in parsed, (text, parsed)
        assert parsed["model_tag"] is None, text
        assert parsed["port"] == 8001 and parsed["middleware"] == ["plugboard_vllm_auth.ServerKeyMiddleware"], text
    assert real_parser["extras"][0]["seed"] == -1
    # vLLM checks that a path-like chat template exists: the path the node made of the relative one does.
    assert "error" not in real_parser["template"], real_parser["template"]
    assert real_parser["template"]["chat_template"] == real_parser["template_path"]


def test_the_refused_spellings_really_are_the_managed_flags_to_vllm(real_parser):
    for text, (key, value) in ALIASES.items():
        assert real_parser["aliases"][text].get(key) == value, text
        with pytest.raises(ArgumentError):
            parse_extra_args(text)


def test_the_flag_tables_match_vllms_parser(real_parser):
    options = real_parser["options"]

    assert {o for o, nargs in options.items() if nargs == "0"} == BOOLEAN_FLAGS
    assert {o for o, nargs in options.items() if nargs in ("+", "*")} == MULTI_VALUE_FLAGS
    refused = MANAGED_FLAGS | set(FIELD_FLAGS) | set(CONTROL_FLAGS) | CODE_FLAGS
    assert refused - set(options) == set(), "a refused flag was renamed or removed in vLLM"
    # Refusing abbreviations must not refuse a real flag that merely starts a refused one.
    shadowed = {o for o in options for r in refused if r != o and r.startswith(o) and o[:2] == r[:2]}
    assert shadowed - refused == NOT_ABBREVIATIONS


def test_the_allowlist_names_real_flags_with_the_values_vllm_takes(real_parser):
    options, choices = real_parser["options"], real_parser["choices"]

    assert set(ALLOWED_FLAGS) - set(options) == set(), "an allowed flag was renamed or removed in vLLM"
    assert set(PATH_FLAGS) - set(options) == set(), "a path flag was renamed or removed in vLLM"
    for flag, kind in ALLOWED_FLAGS.items():
        assert (options[flag] == "0") == (kind.kind == "none"), flag
        assert options[flag] in ("0", "None"), f"{flag} takes several values; the table types one"
        if kind.kind == "choice" and flag in choices:
            assert kind.choices <= set(choices[flag]), (flag, kind.choices - set(choices[flag]))


def test_every_deployment_setting_is_a_field_of_the_server_spec():
    fields = {f.name for f in dataclasses.fields(ServerSpec)}
    assert set(SETTINGS) <= fields
    assert set(GPU_ONLY_SETTINGS + CPU_ONLY_SETTINGS) <= set(SETTINGS)


def test_more_adapters_than_slots_are_accepted_on_both_devices():
    # vLLM swaps adapters through its slots (least recently used first); the console's plugin keeps
    # base-model requests out of the last slot on CPU, so no slot needs to stay free there.
    many = tuple(AdapterSpec(f"a{i}", f"/a{i}", 8) for i in range(6))
    for spec in (cpu_spec(max_loras=1, adapters=many), gpu_spec(max_loras=2, adapters=many)):
        validate(spec)


RUNTIME_FLAGS = {
    "--max-num-seqs": {"takes": "int"}, "--max-num-batched-tokens": {"takes": "int"},
    "--cpu-offload-gb": {"takes": "float"}, "--enforce-eager": {"takes": "none"}, "--no-enforce-eager": {"takes": "none"},
    "--compilation-config": {"takes": "text"}, "-O": {"takes": "text"}, "-tp": {"takes": "int"},
}  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ["--max-num-seqs 8 --enforce-eager", "--max_num_seqs=8", "--max-num-b 512", "--compilation-config.mode 3 -O3",
     "-tp 2", "--cpu-offload-gb 1.5"],
)  # fmt: skip
def test_arguments_the_runtime_knows_pass(text):
    check_against_runtime(text.split(), RUNTIME_FLAGS, runtime="vLLM 0.32.0 on cpu-1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--max-num-seqs 8 --speculative-magic on", "vLLM 0.32.0 on cpu-1 does not know “--speculative-magic”"),
        ("--max-num 8", "does not know “--max-num”"),  # a prefix of two flags: argparse calls it ambiguous
        ("--max-num-seqs eight", "argument --max-num-seqs: invalid int value: 'eight'"),
        ("--max_num_batched_tokens=1e3", "argument --max-num-batched-tokens: invalid int value: '1e3'"),
        ("--cpu-offload-gb half", "argument --cpu-offload-gb: invalid float value: 'half'"),
    ],
)
def test_arguments_the_runtime_would_refuse_are_refused_in_its_words(text, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        check_against_runtime(text.split(), RUNTIME_FLAGS, runtime="vLLM 0.32.0 on cpu-1")


# --- the allowlists ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--max-num-seqs 0", "--max-num-seqs takes a whole number from 1 to"),
        ("--max-num-seqs eight", "--max-num-seqs takes a whole number"),
        ("--cpu-offload-gb half", "--cpu-offload-gb takes a number from 0"),
        ("--load-format pt", "--load-format takes one of auto, dummy, safetensors, not “pt”"),
        ("--load-format=tensorizer", "--load-format takes one of"),
        ("--tool-call-parser /tmp/my_parser.py", "--tool-call-parser takes one of"),
        ("--reasoning-parser mine.Parser", "--reasoning-parser takes one of"),
        ("--response-role 'a b'", "--response-role takes a role name"),
        ("--enable-chunked-prefill=false", "--enable-chunked-prefill is a switch and takes no value"),
        ("--max-num-seqs", "“--max-num-seqs” needs a value after it: a whole number"),
        ("--seed.key 1", "--seed takes a whole number .*, not JSON keys"),
        ("--max-num-s 4", "“--max-num-s” is not on the console's list .* PLUGBOARD_ALLOWED_FLAGS"),
        ("--hf-overrides {}", "“--hf-overrides” is not on the console's list"),
        ("--numa-bind-cpus 0 1", "“--numa-bind-cpus” is not on the console's list"),
    ],
)
def test_each_allowed_flag_takes_only_a_value_of_its_kind(text, message):
    with pytest.raises(ArgumentError, match=message):
        parse_extra_args(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("--tokenizer /models/other-team", "another tokenizer folder"),
        ("--download-dir /data/other-team", "a folder on the node outside the deployment's model"),
        ("--allowed-local-media-path /", "read files from a folder on the node"),
        ('--speculative-config \'{"model": "/models/x"}\'', "names a draft model"),
        ("--tool-server http://169.254.169.254", "call the hosts it names"),
        ("--compilation-config.cache_dir /tmp/x", "can name folders on the node"),
    ],
)
def test_path_and_url_flags_are_refused_even_when_an_administrator_lists_them(text, reason):
    flag = text.split()[0].split(".")[0]
    with pytest.raises(ArgumentError, match=f"{reason}.*even if an administrator lists it"):
        parse_extra_args(text, allowed_flags={flag})


def test_an_administrators_flags_are_allowed_but_never_managed_or_code_flags():
    assert parse_extra_args("--hf-overrides '{\"a\": 1}' --max-num-partial-prefills 2", allowed_flags={
        "--hf-overrides", "--max-num-partial-prefills"
    }) == ["--hf-overrides", '{"a": 1}', "--max-num-partial-prefills", "2"]  # fmt: skip

    # A listed switch brings its --no- twin, as vLLM's BooleanOptionalAction does.
    assert parse_extra_args("--no-kv-sharing-fast-prefill", allowed_flags={"--kv-sharing-fast-prefill"})
    with pytest.raises(ArgumentError, match="the console sets --port itself"):
        parse_extra_args("--port 1", allowed_flags={"--port"})
    with pytest.raises(ArgumentError, match="an administrator must allow remote code"):
        parse_extra_args("--worker-cls x.Y", allowed_flags={"--worker-cls"})
    with pytest.raises(ArgumentError, match="U\\+0000"):
        parse_extra_args("--hf-overrides 'a\x00'", allowed_flags={"--hf-overrides"})


@pytest.mark.parametrize(
    ("value", "folder", "problem"),
    [
        ("/etc/passwd", False, "not an absolute path"),
        ("~/x.jinja", False, "a home folder"),
        ("http://evil/x.jinja", False, "a URL"),
        ("file:x.jinja", False, "a URL"),
        ("../other-model/chat_template.jinja", False, "would leave the model's folder"),
        ("templates/../../x", False, "would leave the model's folder"),
        ("missing.jinja", False, "the base model has no such file"),
        ("templates", False, "the base model has no such file"),
        ("nowhere", True, "the base model has no such folder"),
    ],
)
def test_a_path_flag_must_name_a_file_of_the_base_model(value, folder, problem):
    files = {"config.json", "chat_template.jinja", "templates/tool.jinja"}
    assert problem in model_path_problem(value, files, folder=folder)


def test_a_path_flag_naming_a_file_of_the_base_model_is_accepted():
    files = {"config.json", "chat_template.jinja", "templates/tool.jinja"}
    for value, folder in [("chat_template.jinja", False), ("./templates/tool.jinja", False), ("templates", True),
                          (".", True)]:  # fmt: skip
        assert model_path_problem(value, files, folder=folder) is None
    assert parse_extra_args("--chat-template=templates/tool.jinja --generation-config vllm", model_files=files)
    # Without a manifest only the form is checked; the node resolves the path under the model's folder.
    assert model_path_problem("anything.jinja", None) is None


def test_the_node_resolves_a_path_flag_under_the_models_folder(tmp_path):
    model = tmp_path / "model"
    (model / "templates").mkdir(parents=True)
    (model / "templates" / "chat.jinja").write_text("{{ messages }}")
    spec = cpu_spec(model_path=str(model), extra_args=("--chat-template=templates/chat.jinja", "--generation-config",
                                                        ".", "--seed", "1"))  # fmt: skip

    argv, _ = build_command(PY, spec)

    assert argv[argv.index("--seed") - 3 : argv.index("--seed") + 2] == [
        f"--chat-template={model}/templates/chat.jinja", "--generation-config", f"{model}/.", "--seed", "1"
    ]  # fmt: skip


def test_a_symbolic_link_out_of_the_models_folder_is_refused_at_launch(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "other-team.jinja").write_text("secret")
    (model / "chat.jinja").symlink_to(tmp_path / "other-team.jinja")

    with pytest.raises(ArgumentError, match="leads outside the model's folder"):
        resolved_extra_args(cpu_spec(model_path=str(model), extra_args=("--chat-template", "chat.jinja")))


@pytest.mark.parametrize(
    "name",
    ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONHOME", "PYTHONSTARTUP", "HF_HOME", "TRANSFORMERS_CACHE", "HF_ENDPOINT",
     "NCCL_DEBUG_FILE", "NCCL_TOPO_FILE", "NCCL_NET_PLUGIN", "NCCL_TUNER_PLUGIN", "NCCL_CONF_FILE", "VLLM_PLUGIN_X",
     "CUDA_INJECTION64_PATH", "VLLM_CACHE_ROOT", "VLLM_LOGGING_CONFIG_PATH", "HTTPS_PROXY", "MY_CACHE_DIR",
     "SSL_CERT_FILE", "GCONV_PATH", "VLLM_NCCL_SO_PATH", "VLLM_HOST_IP"],
)  # fmt: skip
def test_variables_that_load_code_or_read_files_are_refused_even_when_an_administrator_lists_them(name):
    assert reaches_outside(name)
    with pytest.raises(
        ArgumentError, match=f"{name} is refused: it can load code or read files outside the deployment"
    ):
        parse_env(f"{name}=/tmp/x", allowed_env={name})


def test_variables_off_the_list_need_the_administrator():
    with pytest.raises(
        ArgumentError, match=r"MY_TUNING is refused: it is not on the console's list .* PLUGBOARD_ALLOWED_ENV"
    ):
        parse_env("MY_TUNING=1")
    assert parse_env("MY_TUNING=1", allowed_env={"MY_TUNING"}) == {"MY_TUNING": "1"}
    # The administrator cannot take over what the console sets.
    with pytest.raises(ArgumentError, match="CUDA_VISIBLE_DEVICES is refused: the console sets it"):
        parse_env("CUDA_VISIBLE_DEVICES=0", allowed_env={"CUDA_VISIBLE_DEVICES"})


def test_the_built_in_list_holds_no_name_that_reaches_outside_and_none_the_console_sets():
    assert {name for name in ALLOWED_ENV if reaches_outside(name)} == set()
    assert not ALLOWED_ENV & set(__import__("deployments.vllm_args").vllm_args.MANAGED_ENV)
    for name in ["OMP_NUM_THREADS", "VLLM_LOGGING_LEVEL", "NCCL_SOCKET_IFNAME", "TOKENIZERS_PARALLELISM",
                 "HF_HUB_OFFLINE", "PYTORCH_CUDA_ALLOC_CONF", "ONEDNN_MAX_CPU_ISA"]:  # fmt: skip
        assert parse_env(f"{name}=1") == {name: "1"}


def test_the_vllm_variables_on_the_list_are_ones_vllm_reads():
    envs = VLLM_PYTHON.parents[1] / "lib" / "python3.11" / "site-packages" / "vllm" / "envs.py"
    if not envs.exists():
        pytest.skip(f"{envs} is missing (`make vllm` builds it)")
    known = set(re.findall(r'^    "([A-Z0-9_]+)":', envs.read_text(), re.M))
    assert {n for n in ALLOWED_ENV if n.startswith("VLLM_")} - known == set()


@pytest.mark.parametrize(("text", "message"), [("TOKEN=sk-\x00abc", "U\\+0000"), ("TOKEN=" + "x" * 5000, "longer")])
def test_an_environment_error_never_quotes_the_value(text, message):
    with pytest.raises(ArgumentError, match=message) as exc:
        parse_env(text, allowed_env={"TOKEN"})
    assert "sk-" not in str(exc.value) and "xxxx" not in str(exc.value)


def test_values_are_masked_and_a_masked_line_keeps_the_stored_value():
    stored = "OMP_NUM_THREADS=4\nHF_TOKEN_X='s3cret value'\n# a comment"

    assert env_masked(stored) == "OMP_NUM_THREADS=****\nHF_TOKEN_X=****"
    assert env_keep("OMP_NUM_THREADS=8\nHF_TOKEN_X=****", stored) == "OMP_NUM_THREADS=8\nHF_TOKEN_X='s3cret value'"
    assert env_keep("HF_TOKEN_X = ****", stored) == "HF_TOKEN_X='s3cret value'"
    with pytest.raises(ArgumentError, match="Line 2: NEW=\\*\\*\\*\\* keeps a stored value, but NEW has none"):
        env_keep("OMP_NUM_THREADS=****\nNEW=****", stored)
