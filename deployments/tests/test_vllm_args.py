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
    BOOLEAN_FLAGS,
    CODE_FLAGS,
    CONTROL_FLAGS,
    CPU_ONLY_SETTINGS,
    FIELD_FLAGS,
    GPU_ONLY_SETTINGS,
    MANAGED_FLAGS,
    MULTI_VALUE_FLAGS,
    NOT_ABBREVIATIONS,
    SETTINGS,
    AdapterSpec,
    ArgumentError,
    ServerSpec,
    build_command,
    check_against_runtime,
    default_max_lora_rank,
    default_max_loras,
    display,
    masked,
    parse_env,
    parse_extra_args,
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
        "--api-key", "s3cret",
        "--enable-lora",
        "--max-loras", "4",
        "--max-lora-rank", "16",
        "--lora-modules",
        '{"name":"demo:pirate","path":"/cache/pirate","base_model_name":"demo"}',
        '{"name":"demo:robot","path":"/cache/robot","base_model_name":"demo"}',
        "--dtype", "auto",
        "--kv-cache-memory-bytes", "1073741824",
    ]  # fmt: skip
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONPATH": PLUGIN}


def test_it_builds_the_gpu_command_with_every_optional_field_and_extra_args_last():
    argv, env = build_command(PY, gpu_spec())

    assert argv == [
        PY, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/cache/llama-3-8b",
        "--served-model-name", "llama",
        "--host", "10.0.0.5",
        "--port", "9100",
        "--api-key", "k-123",
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
    ]  # fmt: skip
    assert env == {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "PYTHONPATH": PLUGIN,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "HF_HUB_OFFLINE": "1",
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
    argv, env = build_command(PY, cpu_spec(kv_cache_bytes=2 * 1024**3, cpu_threads=2, extra_env={"OMP_X": "1"}))

    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(2 * 1024**3)
    assert env == {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONPATH": PLUGIN, "VLLM_CPU_OMP_THREADS_BIND": "0-1", "OMP_X": "1"
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

    assert "s3cret" not in shown
    assert "--api-key '****'" in shown
    assert """'{"name":"demo:pirate","path":"/cache/pirate","base_model_name":"demo"}'""" in shown


# --- parse_extra_args --------------------------------------------------------------


def test_it_splits_extra_args_like_a_shell_without_running_anything():
    text = """--max-num-seqs 8 --enable-chunked-prefill
        --chat-template '{{ messages }} ; rm -rf /' --seed=-1 --numa-bind-cpus 0 1
        --compilation-config.mode 3 -O3 --no-trust-remote-code"""

    assert parse_extra_args(text) == [
        "--max-num-seqs", "8", "--enable-chunked-prefill",
        "--chat-template", "{{ messages }} ; rm -rf /", "--seed=-1", "--numa-bind-cpus", "0", "1",
        "--compilation-config.mode", "3", "-O3", "--no-trust-remote-code",
    ]  # fmt: skip


def test_empty_extra_args_are_no_arguments():
    assert parse_extra_args("   \n ") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--tokenizer $(reboot)", ["--tokenizer", "$(reboot)"]),
        ("--tokenizer `reboot`", ["--tokenizer", "`reboot`"]),
        ('--response-role "a; rm -rf / && reboot | sh"', ["--response-role", "a; rm -rf / && reboot | sh"]),
        ("--revision=main;reboot", ["--revision=main;reboot"]),
        ("--seed -1", ["--seed", "-1"]),
    ],
)
def test_shell_metacharacters_in_values_stay_inert_literals(text, expected):
    assert parse_extra_args(text) == expected


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
        # tokens for the hub mirror
        HF_ENDPOINT=https://hub.internal/?a=b#frag
        OMP_NUM_THREADS = 4
        GREETING="hello world"
        EMPTY=
        QUOTED='# not a comment'
    """

    assert parse_env(text) == {
        "HF_ENDPOINT": "https://hub.internal/?a=b#frag",
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
        parse_env(f"A=1\n{name}=x")


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
        parse_env(text)


def test_variables_that_load_code_need_the_administrator_setting():
    with pytest.raises(ArgumentError, match="LD_PRELOAD is refused: it loads code"):
        parse_env("LD_PRELOAD=/tmp/x.so")

    assert parse_env("LD_LIBRARY_PATH=/opt/x", allow_trust_remote_code=True) == {"LD_LIBRARY_PATH": "/opt/x"}


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


def test_validate_leaves_administrator_gated_flags_to_parse_time():
    validate(cpu_spec(extra_args=("--trust-remote-code",)))


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
keys = ["model", "model_tag", "served_model_name", "host", "port", "api_key", "enable_lora", "max_loras",
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
print(json.dumps({"options": options, "results": results}))
"""

ACCEPTED_EXTRAS = [
    "--max-num-seqs 8 --enable-chunked-prefill --seed -1",
    "--chat-template '{{ messages }} ; rm -rf /' --numa-bind-cpus 0 1 --no-trust-remote-code",
    "--enable-auto-tool-choice --tool-call-parser hermes --disable-log-stats --reasoning-parser deepseek_r1",
    "--compilation-config.mode 3 -O3 --max_num_seqs=4",
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
def real_parser():
    """vLLM 0.32's parser run on the argv lists below, in one subprocess."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} is missing (`make vllm` builds it); the real-parser checks need vLLM installed")
    base = build_command(PY, cpu_spec())[0][3:]
    argvs = [
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
        "options": report["options"],
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
        "api_key": ["s3cret"],
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
        assert parsed["port"] == 8001 and parsed["api_key"] == ["s3cret"], text
    assert real_parser["extras"][0]["seed"] == -1
    assert real_parser["extras"][1]["chat_template"] == "{{ messages }} ; rm -rf /"


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
