"""Building and checking the vLLM server's command line and environment.

Pure functions: no Django, no I/O. The deployment services call them to turn a
deployment's desired state into `argv` + environment additions for the node
agent, and to check what users type into the "extra arguments" and
"environment" boxes.

Nothing here ever goes through a shell: the node agent starts the server with
an argv list, so shell metacharacters in a value are inert characters.

The flag tables below were read from vLLM 0.32's real parser
(`vllm.entrypoints.launchers.cli_args.make_arg_parser` on a
`FlexibleArgumentParser`); `deployments/tests/test_vllm_args.py` checks them
against that parser whenever `.venv-vllm` exists, so a vLLM upgrade that
renames a flag fails a test instead of slipping through.
"""

from __future__ import annotations

import json
import re
import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from registry.compatibility import VLLM_LORA_RANKS, vllm_rank

GiB = 1024**3
ENTRYPOINT = "vllm.entrypoints.openai.api_server"
# A vLLM general plugin every server loads (see its docstring): found through PYTHONPATH, no install needed.
PLUGIN_PATH = Path(__file__).resolve().parent / "vllm_plugin"
DEVICES = ("cpu", "cuda")
# What `--dtype` accepts in vLLM 0.32.
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# vLLM's own default for --max-lora-rank; used when a deployment starts with no adapter.
VLLM_DEFAULT_MAX_LORA_RANK = 16

# The server settings a deployment may carry (Deployment.settings, the API's
# `settings`), each a field of ServerSpec; anything else given is ignored.
SETTINGS = (
    "dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "max_loras", "max_lora_rank",
    "max_cpu_loras", "enable_prefix_caching", "enforce_eager", "kv_cache_bytes", "cpu_threads", "device",
)  # fmt: skip
# Settings that mean nothing on the other kind of device: dropped when a deployment moves between them.
GPU_ONLY_SETTINGS = ("gpu_memory_utilization", "tensor_parallel_size")
CPU_ONLY_SETTINGS = ("cpu_threads",)
# The defaults the console applies when a setting is left blank.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default
# --max-loras: how many different adapters one batch may hold (each is a preallocated slot in memory).
# Adapters beyond it still serve: vLLM swaps them in least-recently-used first.
DEFAULT_MAX_LORAS = 4
# How many adapters a deployment may have attached (Deployment.max_adapters): a guard on the node's cache.
DEFAULT_MAX_ADAPTERS = 100
# The CPU build refuses to start with its default memory utilisation on small hosts
# (VLLM_NOTES.md); an explicit KV cache size fixes that and skips the warm-up.
DEFAULT_CPU_KV_CACHE_BYTES = 1 * GiB

SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# VLLM_CPU_OMP_THREADS_BIND: "auto", "nobind", or CPU lists like "0-3" or "0-3,8|4-7" (one list per rank).
_CPU_LIST = r"\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*"
CPU_BIND = re.compile(rf"auto|nobind|{_CPU_LIST}(?:\|{_CPU_LIST})*")

# The flags the console sets itself. Users never set them: the console must know
# where the server listens, with which key, under which names, and what it serves.
# vLLM 0.32 has no short aliases for these; `--foo_bar` and `--foo-bar` are the same
# flag (FlexibleArgumentParser), and argparse also accepts any unambiguous prefix
# (`--po` for `--port`), so matching goes through `_canonical` and `_refusal`.
# The model can also be given positionally (`vllm serve MODEL`, or the unused
# `model_tag` positional of the api_server parser): stray positionals are refused.
MANAGED_FLAGS = frozenset({"--host", "--port", "--api-key", "--lora-modules", "--model", "--served-model-name"})

# Flags backed by a field of the deployment (ServerSpec). They are refused in the
# extra arguments because extra arguments come last and would silently override
# values that validate() and the memory estimate were computed from.
FIELD_FLAGS: dict[str, str] = {
    "--enable-lora": "always on (adapters are attached at runtime)",
    "--no-enable-lora": "always on (adapters are attached at runtime)",
    "--max-loras": "max_loras",
    "--max-lora-rank": "max_lora_rank",
    "--max-cpu-loras": "max_cpu_loras",
    "--tensor-parallel-size": "tensor_parallel_size (the number of GPUs placed)",
    "-tp": "tensor_parallel_size (the number of GPUs placed)",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--device-memory-utilization": "gpu_memory_utilization",
    "--kv-cache-memory-bytes": "kv_cache_bytes",
    "--max-model-len": "max_model_len",
    "--dtype": "dtype",
    "--enable-prefix-caching": "enable_prefix_caching",
    "--no-enable-prefix-caching": "enable_prefix_caching",
    "--enforce-eager": "enforce_eager",
    "--no-enforce-eager": "enforce_eager",
}

# Flags that would take the server out of the console's reach or control.
CONTROL_FLAGS: dict[str, str] = {
    "--config": "it reads more flags from a file on the node, which could override the ones the console sets",
    "--uds": "it makes the server listen on a Unix socket instead of the host and port the console connects to",
    "--headless": "it starts the engine without the HTTP API the console talks to",
    "--grpc": "it serves gRPC instead of the HTTP API the console talks to",
    "--help": "it prints help and exits instead of serving",
    "-h": "it prints help and exits instead of serving",
    "--device-ids": "the console chooses the GPUs (CUDA_VISIBLE_DEVICES) from the deployment's placement",
    "--ssl-keyfile": "the console reaches the server over plain HTTP on the node's internal address",
    "--ssl-certfile": "the console reaches the server over plain HTTP on the node's internal address",
}

# Flags that make the server import or run code, or read a Python-level config, that
# the user names. Allowed only when an administrator allows remote code, like
# --trust-remote-code itself. (vLLM 0.32; --compilation-config can name a backend by
# import path too, but only of modules already installed, and it is a common tuning
# flag, so it stays allowed.)
CODE_FLAGS = frozenset(
    {
        "--trust-remote-code",
        "--tool-parser-plugin",
        "--reasoning-parser-plugin",
        "--middleware",
        "--worker-cls",
        "--worker-extension-cls",
        "--scheduler-cls",
        "--logits-processors",
        "--model-class-overrides",
        "--logging-config",
        "--log-config-file",
        "--kv-transfer-config",
        "--ec-transfer-config",
        "--ec-manager-config",
    }
)

# vLLM 0.32 flags that take no value (store_true, help, and BooleanOptionalAction
# with its --no- twin). Needed to tell a flag's value from a stray positional.
_NEGATABLE = """
    trust-request-chat-template trust-request-mm-kwargs return-tokens-as-token-ids enable-auto-tool-choice
    exclude-tools-when-tool-choice-none enable-prompt-tokens-details enable-per-request-metrics
    enable-server-load-tracking enable-force-include-usage enable-tokenizer-info-endpoint enable-log-outputs
    enable-log-deltas cohere-is-reasoning-model log-error-stack tokens-only enable-scale-out
    disable-uvicorn-access-log allow-credentials enable-ssl-refresh enable-request-id-headers disable-fastapi-docs
    enable-offline-docs enable-flash-late-interaction trust-remote-code allow-deprecated-quantization enforce-eager
    enable-return-routed-experts return-sampling-mask use-fp64-gumbel enable-trace-replay disable-sliding-window
    disable-cascade-attn skip-tokenizer-init enable-prompt-embeds enable-sleep-mode sleep-mode-offload-cudagraph
    enable-cumem-allocator enable-nccl-comm-suspend use-tqdm-on-load enable-mamba-cache-stochastic-rounding
    numa-bind dcp-q-replicate data-parallel-hybrid-lb data-parallel-external-lb enable-hc-sp enable-expert-parallel
    enable-batch-sharded-sampling enable-ep-weight-filter enable-dbo enable-shm-tensor-arena enable-elastic-ep
    disable-nccl-for-dp-synchronization enable-eplb ray-workers-use-nsight disable-custom-all-reduce
    enable-fault-tolerance enable-prefix-caching kv-sharing-fast-prefill swa-bounded-replay
    enable-mamba-shared-prefix-checkpoint use-replayssm language-model-only enable-mm-embeds mm-encoder-only
    interleave-mm-strings skip-mm-profiling mm-device-do-normalize enable-lora enable-tower-connector-lora
    fully-sharded-loras specialize-active-lora enable-mixed-moe-lora-format enable-moe-shared-loras kv-cache-metrics
    cudagraph-metrics enable-layerwise-nvtx-tracing enable-mfu-metrics enable-logging-iteration-details
    jit-monitor-verbose long-prefill-token-threshold-adaptive enable-chunked-prefill disable-chunked-mm-input
    scheduler-reserve-full-isl disable-hybrid-kv-cache-manager async-scheduling enable-flashinfer-autotune
    fail-on-environ-validation enable-log-requests
"""
BOOLEAN_FLAGS = frozenset(
    [f"--{name}" for name in _NEGATABLE.split()]
    + [f"--no-{name}" for name in _NEGATABLE.split()]
    + ["-h", "--help", "--headless", "--grpc", "--data-parallel-multi-port-external-lb", "-dpm"]
    + ["--disable-log-stats", "--aggregate-engine-logging", "-dph", "-dpe", "-ep"]
)
# vLLM 0.32 flags that take one or more values (nargs "+"): every following
# non-flag token belongs to them.
MULTI_VALUE_FLAGS = frozenset(
    {
        "--lora-modules",
        "--api-key",
        "--served-model-name",
        "--allowed-media-domains",
        "--sleep-preserve-parameter-names",
        "--logits-processors",
        "--ignore-patterns",
        "--numa-bind-nodes",
        "--numa-bind-cpus",
        "--kv-cache-dtype-skip-layers",
        "--cpu-offload-params",
        "--offload-params",
        "--lora-target-modules",
        "--collect-detailed-traces",
        "--cudagraph-capture-sizes",
    }
)
# Common vLLM 0.32 tuning flags that take one number (their argparse `type`), so a value
# that is not one is refused where it is typed instead of when the server fails to start.
NUMERIC_FLAGS: dict[str, type] = {
    "--max-num-seqs": int,
    "--seed": int,
    "--max-logprobs": int,
    "--block-size": int,
    "--long-prefill-token-threshold": int,
    "--pipeline-parallel-size": int,
    "-pp": int,
    "--data-parallel-size": int,
    "-dp": int,
    "--cpu-offload-gb": float,
}
# Real vLLM 0.32 flags whose names begin a refused flag's name (--reasoning-parser-plugin):
# argparse takes an exact name as itself, so these are not abbreviations.
NOT_ABBREVIATIONS = frozenset({"--reasoning-parser"})
# Values masked in what the console shows.
SECRET_FLAGS = frozenset({"--api-key", "--hf-token"})

# Environment variables the console sets (or that would undo what it set).
MANAGED_ENV: dict[str, str] = {
    "CUDA_VISIBLE_DEVICES": "the console sets it from the GPUs placed for the deployment",
    "CUDA_DEVICE_ORDER": "the console sets it so GPU numbers mean the same as in the node's inventory",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "the console sets it so adapters can be attached without a restart",
    "VLLM_API_KEY": "the console gives each deployment its own API key",
    "VLLM_CPU_OMP_THREADS_BIND": "it is set from the deployment's CPU threads field",
    "VLLM_CPU_KVCACHE_SPACE": "the KV cache size is set from the deployment's KV cache field (--kv-cache-memory-bytes)",
    "PYTHONPATH": "the console sets it to load its fix for vLLM's CPU LoRA path (deployments/vllm_plugin)",
    "VLLM_PLUGINS": "the console's fix for vLLM's CPU LoRA path is a plugin that must load",
}
# Environment variables that load code into the server; allowed with remote code only.
CODE_ENV = frozenset({"LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "PYTHONHOME", "VLLM_LOGGING_CONFIG_PATH"})

_NEGATIVE_NUMBER = re.compile(r"-\d+$|-\d*\.\d+$")  # argparse reads these as values, not flags
_LONG_NAME = re.compile(r"--[a-z0-9][a-z0-9-]*")
_SHORT_NAME = re.compile(r"-[A-Za-z][A-Za-z0-9]*")


class ArgumentError(ValueError):
    """A server argument or environment setting is refused; the message says
    which one, why, and what to do instead."""

    def __init__(self, message: str, problems: Sequence[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


@dataclass(frozen=True)
class AdapterSpec:
    served_name: str
    path: str
    rank: int


@dataclass(frozen=True, kw_only=True)
class ServerSpec:
    """What one vLLM server should run. `device` is "cpu" or "cuda";
    `gpu_indices` are the node's GPU numbers (inventory order) on cuda."""

    model_path: str
    served_name: str
    host: str
    port: int
    api_key: str
    device: str
    max_loras: int
    max_lora_rank: int
    adapters: tuple[AdapterSpec, ...] = ()
    gpu_indices: tuple[int, ...] = ()
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    max_cpu_loras: int | None = None
    enable_prefix_caching: bool | None = None
    enforce_eager: bool = False
    kv_cache_bytes: int | None = None
    # CPU only: an int n binds the first n cores ("0-(n-1)"); a string is passed
    # as VLLM_CPU_OMP_THREADS_BIND ("0-1", "auto", "nobind"). None: vLLM's "auto".
    cpu_threads: int | str | None = None
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)


# --- Extra arguments -------------------------------------------------------------------


def parse_extra_args(text: str, *, allow_trust_remote_code: bool = False) -> list[str]:
    """Returns the argv items a user's free-text extra arguments stand for, or
    raises ArgumentError naming the first refused token and why.

    The text is split like a POSIX shell would split words (quotes and
    backslashes), but nothing is expanded or run: `$(reboot)` stays the literal
    argument `$(reboot)`. Line breaks between arguments are whitespace, so a
    textarea with one flag per line works; a control character *inside* an
    argument (a quoted newline, NUL, bidi overrides) is refused.

    Flags are case-sensitive, as in argparse: `--PORT` is not `--port`, and since
    every vLLM long flag is lower-case it is refused as a flag vLLM does not know.
    `--flag_name` is vLLM's spelling of `--flag-name` and is treated as the same flag,
    as are unambiguous prefixes (`--por` for `--port`), which argparse expands.
    `allow_trust_remote_code` (an administrator setting) allows --trust-remote-code
    and the other flags that make the server run code the user names (CODE_FLAGS).
    """
    try:
        tokens = shlex.split(text, posix=True)
    except ValueError as exc:
        reason = "a quote is not closed" if "quotation" in str(exc) else "it ends with a lone backslash"
        raise ArgumentError(f"The extra arguments cannot be read: {reason}.") from None
    check_extra_args(tokens, allow_trust_remote_code=allow_trust_remote_code)
    return tokens


def check_extra_args(tokens: Sequence[str], *, allow_trust_remote_code: bool = False) -> None:
    """Checks already-split extra arguments (see parse_extra_args); returns
    nothing, raises ArgumentError at the first refused token."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        _check_characters(token)
        if not _is_flag(token):
            raise ArgumentError(_not_a_flag(token))
        if token == "--":
            raise ArgumentError("“--” is refused: it would make vLLM read what follows as the model to serve.")
        name = _canonical(token)
        _check_flag_name(token, name)
        refusal = _refusal(name, allow_trust_remote_code=allow_trust_remote_code)
        if refusal:
            raise ArgumentError(f"“{token}” is refused: {refusal}.")
        i += 1
        if "=" in token:
            _check_value(name, token.split("=", 1)[1])
            continue  # the value is inline
        if "." in token and token.startswith("--"):
            # vLLM's dotted JSON form (`--compilation-config.mode 3`) always takes the next token.
            if i >= len(tokens):
                raise ArgumentError(f"“{token}” needs a value after it.")
            _check_characters(tokens[i])
            i += 1
            continue
        if name in BOOLEAN_FLAGS:
            continue
        if name in MULTI_VALUE_FLAGS:
            while i < len(tokens) and not _is_flag(tokens[i]):
                _check_characters(tokens[i])
                i += 1
            continue
        # Any other flag takes one value when one follows (a flag unknown to this
        # table, e.g. from a newer vLLM on a GPU host, is assumed to take one).
        if i < len(tokens) and not _is_flag(tokens[i]):
            _check_characters(tokens[i])
            _check_value(name, tokens[i])
            i += 1
        elif name in NUMERIC_FLAGS:
            raise ArgumentError(f"“{token}” needs a value after it.")


def check_against_runtime(tokens: Sequence[str], flags: dict[str, dict], *, runtime: str) -> None:
    """Checks already-checked extra arguments against the flags a node's runtime reports
    (cluster.inventory.vllm_flags): a flag that runtime's parser does not know, or a value of the
    wrong type for it, raises ArgumentError in the parser's own words. `runtime` names it for people."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not _is_flag(token):
            continue  # a value: checked with its flag
        name, attached = _runtime_flag(token, flags)
        if name is None:
            raise ArgumentError(
                f"{runtime} does not know “{_short(token)}”; its parser says: unrecognized arguments: {_short(token)}"
            )
        if attached is None and i < len(tokens) and not _is_flag(tokens[i]):
            attached = tokens[i]
        takes = flags[name].get("takes")
        if takes in ("int", "float") and attached is not None:
            try:
                (int if takes == "int" else float)(attached)
            except ValueError:
                raise ArgumentError(f"argument {name}: invalid {takes} value: '{_short(attached)}'") from None


def _runtime_flag(token: str, flags: dict[str, dict]) -> tuple[str | None, str | None]:
    """Returns (the runtime's flag `token` stands for, a value written into the token), as argparse
    reads it: `--a_b=1`, `--a-b.key` (vLLM's JSON form), an unambiguous prefix, or `-O3`."""
    value = token.split("=", 1)[1] if "=" in token else None
    if token.startswith("--"):
        name = _canonical(token)
        if name in flags:
            return name, value
        matches = [flag for flag in flags if flag.startswith(name) and flag.startswith("--")]
        return (matches[0], value) if len(matches) == 1 else (None, None)
    if token in flags:
        return token, None
    if token[:2] in flags:  # a short flag with its value attached
        return token[:2], token[2:].lstrip("=")
    return None, None


def _check_value(name: str, value: str) -> None:
    """Refuses a value vLLM's parser would not take for `name` (only flags in NUMERIC_FLAGS are known)."""
    kind = NUMERIC_FLAGS.get(name)
    if kind is None:
        return
    try:
        kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ArgumentError(f"“{name}” takes {what}, not “{_short(value)}”.") from None


def _not_a_flag(token: str) -> str:
    if token.startswith("-") and " " in token:
        return f"“{token}” contains a space, so vLLM would read it as a positional argument, not a flag."
    return (
        f"“{token}” is neither a flag nor a flag's value; vLLM would read it as a positional argument "
        "(the model to serve). Extra arguments are flags (starting with - or --) and their values."
    )


_CONTROL_NAMES = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab", "\x00": "NUL"}


def _check_characters(token: str) -> None:
    for ch in token:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            name = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "a control character").lower()
            raise ArgumentError(
                f"{_quoted(token)} contains U+{ord(ch):04X} ({name}); control and invisible "
                "characters are refused inside an argument."
            )


def _quoted(token: str) -> str:
    # repr shows an argument with control characters without printing them.
    return repr(token) if any(not ch.isprintable() for ch in token) else f"“{token}”"


def _is_flag(token: str) -> bool:
    """Returns whether argparse would read `token` as an option rather than a value."""
    if len(token) < 2 or not token.startswith("-"):
        return False
    if _NEGATIVE_NUMBER.match(token):
        return False
    # argparse reads a dash-led argument containing a space as a positional value
    # (unless it is an exact `--flag=value`): `"--port 9"` is not the --port flag.
    return not (" " in token and "=" not in token)


def _canonical(token: str) -> str:
    """Returns the flag name vLLM's parser sees: the part before `=` and before the
    first `.` (the JSON-key form), with underscores turned into dashes."""
    name = token.split("=", 1)[0]
    if name.startswith("--"):
        return "--" + name[2:].split(".", 1)[0].replace("_", "-")
    return name


def _check_flag_name(token: str, name: str) -> None:
    if name.startswith("--"):
        if not _LONG_NAME.fullmatch(name):
            hint = " (flags are case-sensitive and vLLM's are lower-case)" if name != name.lower() else ""
            raise ArgumentError(f"“{token}” is not a vLLM flag name{hint}.")
    elif not _SHORT_NAME.fullmatch(name):
        raise ArgumentError(f"“{token}” is not a vLLM flag name.")


def _refusal(name: str, *, allow_trust_remote_code: bool) -> str | None:
    """Returns why the flag `name` (canonical) is refused, or None. An
    abbreviation counts as the flag argparse would expand it to."""
    refused = (*MANAGED_FLAGS, *FIELD_FLAGS, *CONTROL_FLAGS, *CODE_FLAGS)
    if name in refused:
        flag = name
    elif name in NOT_ABBREVIATIONS:
        return None
    else:
        flag = next((f for f in sorted(refused, key=len) if _abbreviates(name, f)), None)
        if flag is None:
            return None
    via = "" if name == flag else f"vLLM reads it as {flag}, and "
    if flag in MANAGED_FLAGS:
        return f"{via}the console sets {flag} itself"
    if flag in FIELD_FLAGS:
        setting = FIELD_FLAGS[flag]
        if setting.startswith("always"):
            return f"{via}LoRA is {setting}"
        return f"{via}{flag} comes from the deployment's {setting} setting; change it there"
    if flag in CONTROL_FLAGS:
        return f"{via}{CONTROL_FLAGS[flag]}"
    if not allow_trust_remote_code:
        return f"{via}{flag} lets the server run code named by the user; an administrator must allow remote code first"
    return None


def _abbreviates(name: str, flag: str) -> bool:
    """Returns whether argparse (allow_abbrev, Python 3.11) could read `name` as `flag`."""
    if name.startswith("--") != flag.startswith("--"):
        return False
    if flag.startswith(name):
        return True  # `--por` → `--port`, `-t` → `-tp`
    # A two-character short flag takes its value glued on: `-hfoo` is `-h foo`.
    return not flag.startswith("--") and len(flag) == 2 and name.startswith(flag)


# --- Environment -----------------------------------------------------------------------


def parse_env(text: str, *, allow_trust_remote_code: bool = False) -> dict[str, str]:
    """Returns the environment variables in `text` (one `KEY=VALUE` a line), or
    raises ArgumentError naming the line and why.

    Blank lines and lines starting with `#` are skipped; a `#` later in a line is
    part of the value. Spaces around the name and the value are dropped, and one
    pair of matching quotes around the value is removed ('a b' or "a b"); nothing
    is expanded. Names are case-sensitive, as in the process environment.
    `allow_trust_remote_code` allows the variables that load code (CODE_ENV).
    """
    env: dict[str, str] = {}
    seen_on: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        where = f"Line {number}"
        if "=" not in line:
            raise ArgumentError(f"{where} (“{_short(line)}”) is not KEY=VALUE.")
        name, value = (part.strip() for part in line.split("=", 1))
        if not ENV_NAME.fullmatch(name):
            raise ArgumentError(
                f"{where}: “{_short(name)}” is not a variable name (letters, digits and _, not starting with a digit)."
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        try:
            _check_characters(value)
        except ArgumentError as exc:
            raise ArgumentError(f"{where} ({name}): {exc}") from None
        refusal = _env_refusal(name, allow_trust_remote_code=allow_trust_remote_code)
        if refusal:
            raise ArgumentError(f"{where}: {name} is refused: {refusal}.")
        if name in env:
            raise ArgumentError(f"{where}: {name} is already set on line {seen_on[name]}.")
        env[name] = value
        seen_on[name] = number
    return env


def _env_refusal(name: str, *, allow_trust_remote_code: bool) -> str | None:
    if name in MANAGED_ENV:
        return MANAGED_ENV[name]
    if name in CODE_ENV and not allow_trust_remote_code:
        return "it loads code into the server; an administrator must allow remote code first"
    return None


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- Defaults --------------------------------------------------------------------------


def default_max_lora_rank(ranks: Iterable[int]) -> int:
    """Returns the smallest --max-lora-rank vLLM accepts that covers every
    adapter rank in `ranks` (4 → 8, 9 → 16, 300 → 320). With no adapter it
    returns vLLM's own default, 16, which covers the common ranks 8 and 16 for
    adapters attached later. Raises ArgumentError above 512 or below 1."""
    ranks = list(ranks)
    if not ranks:
        return VLLM_DEFAULT_MAX_LORA_RANK
    if min(ranks) < 1:
        raise ArgumentError(f"An adapter rank of {min(ranks)} is not a LoRA rank; ranks start at 1.")
    rank = vllm_rank(max(ranks))
    if rank is None:
        raise ArgumentError(f"An adapter has rank {max(ranks)}; vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}.")
    return rank


def default_max_loras(adapter_count: int, *, device: str) -> int:
    """Returns the --max-loras a deployment with `adapter_count` adapters gets: room for all of them in one
    batch, up to DEFAULT_MAX_LORAS (each slot costs memory). More adapters than slots still serve, swapped in
    least-recently-used first; the same holds on CPU, where the console's plugin keeps requests without an
    adapter out of the last slot (vllm_plugin/plugboard_vllm.py)."""
    _check_device(device)
    if adapter_count < 0:
        raise ArgumentError(f"An adapter count of {adapter_count} makes no sense.")
    return max(1, min(adapter_count, DEFAULT_MAX_LORAS))


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise ArgumentError(f"The device must be one of {', '.join(DEVICES)}, not “{device}”.")


# --- Validation and building -----------------------------------------------------------


def validate(spec: ServerSpec) -> None:
    """Checks a ServerSpec against what the console and vLLM accept; returns
    nothing, raises ArgumentError listing every problem found."""
    problems: list[str] = []
    add = problems.append
    if spec.device not in DEVICES:
        add(f"The device must be one of {', '.join(DEVICES)}, not “{spec.device}”.")
    # A value starting with "-" would be read as a flag; paths may hold spaces, the host and key not.
    for label, value, spaces in (
        ("model path", spec.model_path, True),
        ("host", spec.host, False),
        ("API key", spec.api_key, False),
    ):
        if not value or value.startswith("-") or not all(ch.isprintable() and (spaces or ch != " ") for ch in value):
            add(
                f"The {label} must be non-empty, printable{'' if spaces else ', without spaces'}, and not start with “-”."
            )
    if not 1 <= spec.port <= 65535:
        add(f"Port {spec.port} is outside 1–65535.")
    if spec.dtype not in DTYPES:
        add(f"dtype “{spec.dtype}” is not one vLLM accepts ({', '.join(DTYPES)}).")

    # Names: what clients put in "model"; the gateway routes on them.
    names = [spec.served_name, *(a.served_name for a in spec.adapters)]
    for name in names:
        if not SERVED_NAME.fullmatch(name):
            add(
                f"The served name “{name}” may hold letters, digits, “.”, “_”, “:” and “-”, starting with a letter or digit."
            )
    for name in sorted({n for n in names if names.count(n) > 1}):
        what = "the base model's served name" if name == spec.served_name else "used by more than one adapter"
        add(f"The served name “{name}” is {what}; every served name must be unique.")

    if spec.max_lora_rank not in VLLM_LORA_RANKS:
        add(
            f"max_lora_rank {spec.max_lora_rank} is not one vLLM accepts "
            f"({', '.join(map(str, VLLM_LORA_RANKS))}); use {vllm_rank(spec.max_lora_rank) or 512}."
        )
    for adapter in spec.adapters:
        if adapter.rank < 1:
            add(f"Adapter “{adapter.served_name}” has rank {adapter.rank}; ranks start at 1.")
        elif adapter.rank > spec.max_lora_rank:
            add(
                f"Adapter “{adapter.served_name}” has rank {adapter.rank}, above max_lora_rank "
                f"{spec.max_lora_rank}; raise max_lora_rank to {vllm_rank(adapter.rank) or 'at most 512'}."
            )
        if not adapter.path or adapter.path.startswith("-") or not adapter.path.isprintable():
            add(f"Adapter “{adapter.served_name}” needs a printable path that does not start with “-”.")
    if spec.max_loras < 1:
        add(f"max_loras must be at least 1, not {spec.max_loras}.")
    if spec.max_cpu_loras is not None and spec.max_cpu_loras < spec.max_loras:
        add(f"max_cpu_loras ({spec.max_cpu_loras}) must be at least max_loras ({spec.max_loras}); vLLM refuses less.")

    if spec.gpu_memory_utilization is not None:
        if spec.device == "cpu":
            add("gpu_memory_utilization does not apply on CPU; the KV cache size (kv_cache_bytes) sizes memory there.")
        elif not 0 < spec.gpu_memory_utilization <= 1:
            add(f"gpu_memory_utilization {spec.gpu_memory_utilization} must be above 0 and at most 1.")
    if spec.max_model_len is not None and spec.max_model_len < 1:
        add(f"max_model_len must be positive, not {spec.max_model_len}.")
    if spec.kv_cache_bytes is not None and spec.kv_cache_bytes < 1:
        add(f"kv_cache_bytes must be positive, not {spec.kv_cache_bytes}.")

    if spec.device == "cuda":
        if not spec.gpu_indices:
            add("A GPU deployment needs at least one GPU.")
        if len(set(spec.gpu_indices)) != len(spec.gpu_indices) or any(i < 0 for i in spec.gpu_indices):
            add(f"GPU numbers {list(spec.gpu_indices)} must be distinct and not negative.")
        if spec.tensor_parallel_size != len(spec.gpu_indices):
            add(
                f"tensor_parallel_size is {spec.tensor_parallel_size} but {len(spec.gpu_indices)} GPU(s) are "
                "placed; vLLM shards the model over exactly tensor_parallel_size GPUs."
            )
        if spec.cpu_threads is not None:
            add("cpu_threads applies only on CPU.")
    elif spec.device == "cpu":
        if spec.gpu_indices:
            add(f"A CPU deployment cannot use GPUs (got {list(spec.gpu_indices)}).")
        if spec.tensor_parallel_size != 1:
            add("The console runs CPU deployments with tensor_parallel_size 1.")
        if isinstance(spec.cpu_threads, bool) or (isinstance(spec.cpu_threads, int) and spec.cpu_threads < 1):
            add(f"cpu_threads must be a positive number of cores or a CPU list, not {spec.cpu_threads!r}.")
        elif isinstance(spec.cpu_threads, str) and not CPU_BIND.fullmatch(spec.cpu_threads):
            add(f"cpu_threads “{spec.cpu_threads}” is not a CPU list like “0-3” or “0,2,4”, nor auto/nobind.")

    # extra_args and extra_env normally come from parse_extra_args/parse_env; they are
    # checked again for what is never allowed (the administrator-gated code flags were
    # checked against the setting at parse time, which this spec does not carry).
    for check in (
        lambda: check_extra_args(spec.extra_args, allow_trust_remote_code=True),
        lambda: _check_env_dict(spec.extra_env),
    ):
        try:
            check()
        except ArgumentError as exc:
            add(str(exc))
    if problems:
        raise ArgumentError(" ".join(problems), problems)


def _check_env_dict(env: dict[str, str]) -> None:
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            raise ArgumentError(f"“{_short(name)}” is not an environment variable name.")
        if name in MANAGED_ENV:
            raise ArgumentError(f"{name} is refused in the environment: {MANAGED_ENV[name]}.")
        _check_characters(value)


def build_command(python: str, spec: ServerSpec) -> tuple[list[str], dict[str, str]]:
    """Returns the argv that starts vLLM's OpenAI server for `spec`, and the
    environment variables to add to the node agent's environment. Calls
    validate() first (raising ArgumentError).

    The console's own flags come first, then the optional fields that are set,
    then the user's extra arguments. `--lora-modules` is left out when there is no
    adapter (it needs at least one value). On CPU the KV cache size is always
    given (1 GiB by default): with vLLM's default memory utilisation the CPU build
    refuses to start on small hosts."""
    validate(spec)
    argv = [
        python,
        "-m",
        ENTRYPOINT,
        "--model",
        spec.model_path,
        "--served-model-name",
        spec.served_name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--api-key",
        spec.api_key,
        "--enable-lora",
        "--max-loras",
        str(spec.max_loras),
        "--max-lora-rank",
        str(spec.max_lora_rank),
    ]
    if spec.adapters:
        argv.append("--lora-modules")
        argv += [
            json.dumps(
                {"name": a.served_name, "path": a.path, "base_model_name": spec.served_name}, separators=(",", ":")
            )
            for a in spec.adapters
        ]
    argv += ["--dtype", spec.dtype]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", repr(float(spec.gpu_memory_utilization))]
    kv_cache_bytes = spec.kv_cache_bytes
    if kv_cache_bytes is None and spec.device == "cpu":
        kv_cache_bytes = DEFAULT_CPU_KV_CACHE_BYTES
    if kv_cache_bytes is not None:
        argv += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
    if spec.tensor_parallel_size != 1:
        argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    if spec.max_cpu_loras is not None:
        argv += ["--max-cpu-loras", str(spec.max_cpu_loras)]
    if spec.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching")
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    argv += spec.extra_args

    # PYTHONPATH holds only the console's plugin: the server never sees the console's own modules.
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONPATH": str(PLUGIN_PATH)}
    if spec.device == "cuda":
        # CUDA numbers GPUs fastest-first by default; the inventory (NVML) numbers
        # them by PCI bus. Without this the placed GPU numbers could pick other GPUs.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpu_indices))
    elif spec.cpu_threads is not None:
        threads = spec.cpu_threads
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{threads - 1}" if isinstance(threads, int) else threads
    env.update(spec.extra_env)
    return argv, env


def masked(argv: Sequence[str]) -> list[str]:
    """Returns a copy of `argv` with secret values (after --api-key and
    --hf-token, in either spelling) replaced by `****`."""
    out: list[str] = []
    masking = False
    for token in argv:
        if masking and not _is_flag(token):
            out.append("****")
            continue
        masking = False
        name = _canonical(token) if token.startswith("-") else ""
        if name in SECRET_FLAGS:
            if "=" in token:
                out.append(token.split("=", 1)[0] + "=****")
                continue
            masking = True  # --api-key takes one or more keys
        out.append(token)
    return out


def display(argv: Sequence[str]) -> str:
    """Returns the command line as a person would paste it into a shell, with
    secrets masked: what the review step and the deployment page show."""
    return shlex.join(masked(argv))
