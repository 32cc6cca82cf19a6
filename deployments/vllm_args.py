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
import os
import re
import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deployments.vllm_plugin import plugboard_vllm_auth as server_auth
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
# Kinds of value an allowed flag takes (ALLOWED_FLAGS).


@dataclass(frozen=True)
class Value:
    """What one allowed flag takes: `kind` is "none" (a switch), "int", "float" (between `low` and
    `high`), "choice" (one of `choices`), "text" (matching `pattern`, which `what` describes to a
    person), or "model_file": a path relative to the deployment's base model folder, naming one of its
    files (or, with `folder`, one of its folders), or one of the words in `choices`."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: frozenset[str] = frozenset()
    pattern: re.Pattern | None = None
    what: str = ""
    folder: bool = False


SWITCH = Value("none")


def _int(low: int, high: int) -> Value:
    return Value("int", low=low, high=high)


def _float(low: float, high: float) -> Value:
    return Value("float", low=low, high=high)


def _choice(*names: str) -> Value:
    return Value("choice", choices=frozenset(names))


def _text(pattern: str, what: str) -> Value:
    return Value("text", pattern=re.compile(pattern), what=what)


_TOOL_CALL_PARSERS = """
    apertus cohere_command3 cohere_command4 deepseek_v3 deepseek_v31 deepseek_v32 deepseek_v4 deepseek_v41 dots
    ernie45 functiongemma gemma4 gigachat3 glm45 glm47 granite granite-20b-fc granite4 hermes hunyuan_a13b hy_v3
    hy_v4 inkling internlm jamba k2_horizon kimi_k2 kimi_k3 lfm2 ling3 llama3_json llama4_json llama4_pythonic
    longcat mimo minicpm5 minimax_m2 minimax_m3 mistral muse_glimmer olmo3 openai phi4_mini_json plamo3 poolside_v1
    pythonic qwen3_coder qwen3_json qwen3_xml seed_oss step3 step3p5 xlam
"""
_REASONING_PARSERS = """
    cohere_command3 cohere_command4 deepseek_r1 deepseek_v3 deepseek_v4 deepseek_v41 ernie45 gemma4 glm45 glm47
    granite granite_thinking_parser holo2 hunyuan_a13b hy_v3 hy_v4 inkling k2_horizon kimi_k2 kimi_k3 ling3 mimo
    minicpmv minimax_m2 minimax_m2_append_think minimax_m3 mistral muse_glimmer nemotron_v3 olmo3 openai_gptoss
    plamo3 poolside_v1 qwen3 seed_oss step3 step3p5
"""
_QUANTIZATIONS = """
    awq auto_awq fp8 fbgemm_fp8 fp_quant modelopt modelopt_fp4 modelopt_mxfp8 modelopt_mixed auto_gptq gptq
    gptq_marlin awq_marlin humming compressed-tensors experts_int8 quark moe_wna16 torchao inc mxfp4 gpt_oss_mxfp4
    deepseek_v4_fp8 online fp8_per_tensor fp8_per_block fp8_per_channel int8_per_channel_weight_only
    nvfp4_per_token mxfp8
"""
_KV_CACHE_DTYPES = """
    auto bfloat16 float16 fp8 fp8_ds_mla fp8_e4m3 fp8_e5m2 fp8_inc fp8_per_token_head int4_per_token_head
    int8_per_token_head nvfp4 nvfp4_4over6 nvfp4_ds_mla turboquant_3bit_nc turboquant_4bit_nc turboquant_k3v4_nc
    turboquant_k8v4 ultraquant_4bit
"""
_BIG = 2**31 - 1

# The vLLM 0.32 flags a deployment's extra arguments may hold, each with the value it takes
# (read from its parser, `make_arg_parser`; tests/test_vllm_args.py checks the names and choices
# against it). Anything else is refused unless an administrator lists it in PLUGBOARD_ALLOWED_FLAGS.
# Left out on purpose: flags that name files, folders, URLs, hosts, modules or JSON that can hold
# them (PATH_FLAGS says why for the common ones), and the parsers' names are choices because a
# parser given by path would load code.
ALLOWED_FLAGS: dict[str, Value] = {
    # Scheduling and batching.
    "--max-num-seqs": _int(1, 1 << 20),
    "--max-num-batched-tokens": _int(1, _BIG),
    "--long-prefill-token-threshold": _int(0, _BIG),
    "--scheduling-policy": _choice("fcfs", "priority"),
    "--enable-chunked-prefill": SWITCH,
    "--no-enable-chunked-prefill": SWITCH,
    "--async-scheduling": SWITCH,
    "--no-async-scheduling": SWITCH,
    "--performance-mode": _choice("balanced", "interactivity", "throughput"),
    # Memory and the KV cache.
    "--block-size": _choice("1", "8", "16", "32", "64", "128", "256"),
    "--kv-cache-dtype": _choice(*_KV_CACHE_DTYPES.split()),
    "--cpu-offload-gb": _float(0, 1 << 20),
    "--num-gpu-blocks-override": _int(1, _BIG),
    "--max-cudagraph-capture-size": _int(1, 1 << 20),
    "--prefix-caching-hash-algo": _choice("sha256", "sha256_cbor", "xxhash", "xxhash_cbor"),
    "--disable-sliding-window": SWITCH,
    "--disable-cascade-attn": SWITCH,
    "--no-disable-cascade-attn": SWITCH,
    # Weights: only formats that cannot run code (no pickle "pt", no remote or streamed loaders).
    "--quantization": _choice(*_QUANTIZATIONS.split()),
    "-q": _choice(*_QUANTIZATIONS.split()),
    "--load-format": _choice("auto", "safetensors", "dummy"),
    "--lora-dtype": _choice("auto", "bfloat16", "float16"),
    "--no-trust-remote-code": SWITCH,
    # Parallelism on the GPUs placed.
    "--pipeline-parallel-size": _int(1, 64),
    "-pp": _int(1, 64),
    "--disable-custom-all-reduce": SWITCH,
    "--distributed-executor-backend": _choice("mp", "uni"),
    "--api-server-count": _int(1, 64),
    # Sampling, outputs and the OpenAI API.
    "--seed": _int(-(2**63), 2**63 - 1),
    "--max-logprobs": _int(-1, 1 << 20),
    "--logprobs-mode": _choice("processed_logits", "processed_logprobs", "raw_logits", "raw_logprobs"),
    "--tokenizer-mode": _choice("auto", "hf", "mistral", "deepseek_v32", "deepseek_v4", "inkling", "kimi_k3", "cohere"),
    "--response-role": _text(r"[A-Za-z][A-Za-z0-9_-]{0,31}", "a role name such as assistant"),
    "--chat-template": Value("model_file"),
    "--chat-template-content-format": _choice("auto", "openai", "string"),
    "--generation-config": Value("model_file", choices=frozenset({"auto", "vllm"}), folder=True),
    "--enable-auto-tool-choice": SWITCH,
    "--tool-call-parser": _choice(*_TOOL_CALL_PARSERS.split()),
    "--reasoning-parser": _choice(*_REASONING_PARSERS.split()),
    "--return-tokens-as-token-ids": SWITCH,
    "--enable-prompt-tokens-details": SWITCH,
    "--enable-server-load-tracking": SWITCH,
    "--enable-force-include-usage": SWITCH,
    "--enable-request-id-headers": SWITCH,
    # Logging.
    "--disable-log-stats": SWITCH,
    "--enable-log-requests": SWITCH,
    "--no-enable-log-requests": SWITCH,
    "--max-log-len": _int(0, _BIG),
    "--uvicorn-log-level": _choice("critical", "debug", "error", "info", "trace", "warning"),
    "--disable-uvicorn-access-log": SWITCH,
    "--disable-fastapi-docs": SWITCH,
    "--log-error-stack": SWITCH,
}

# vLLM flags whose value is a file, folder, URL, host, module or JSON that can hold one: refused even
# if an administrator lists them, since the value would reach outside the deployment's own model.
# (--chat-template and --generation-config are allowed above, confined to the model's own files.)
PATH_FLAGS: dict[str, str] = {
    "--tokenizer": "it names another tokenizer folder or hub repository; the server uses the base model's own",
    "--hf-config-path": "it names another config folder or hub repository; the server uses the base model's own",
    "--revision": "it names a hub revision to download; the node serves the base model it fetched",
    "--tokenizer-revision": "it names a hub revision to download; the node serves the base model it fetched",
    "--code-revision": "it names a hub revision of remote code to download",
    "--download-dir": "it names a folder on the node outside the deployment's model",
    "--allowed-local-media-path": "it lets requests read files from a folder on the node",
    "--allowed-media-domains": "it lets requests make the server fetch from other hosts",
    "--speculative-config": "its JSON names a draft model by path or hub id, outside the deployment's model",
    "--model-loader-extra-config": "its JSON can name files on the node",
    "--tool-server": "it makes the server call the hosts it names",
    "--otlp-traces-endpoint": "it makes the server send traces to the URL it names",
    "--ssl-ca-certs": "the console reaches the server over plain HTTP on the node's internal address",
    "--root-path": "it changes the paths the console and the gateway reach the server on",
    "-sc": "its JSON names a draft model by path or hub id, outside the deployment's model",
    "--compilation-config": "its JSON can name folders on the node (cache_dir, debug_dump_path)",
    "-cc": "its JSON can name folders on the node (cache_dir, debug_dump_path)",
}
PATH_FLAG_HINT = "a path relative to the base model's folder, e.g. chat_template.jinja"
# Longest value a typed flag may hold (a chat template's path, a parser's name): more is a mistake.
MAX_VALUE_LENGTH = 1024
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
    server_auth.KEY_VARIABLE: "it holds the deployment's own key, which the console sets",
    "VLLM_CPU_OMP_THREADS_BIND": "it is set from the deployment's CPU threads field",
    "VLLM_CPU_KVCACHE_SPACE": "the KV cache size is set from the deployment's KV cache field (--kv-cache-memory-bytes)",
    "PYTHONPATH": "the console sets it to load its fix for vLLM's CPU LoRA path (deployments/vllm_plugin)",
    "VLLM_PLUGINS": "the console's fix for vLLM's CPU LoRA path is a plugin that must load",
}
# The environment variables a deployment may set: vLLM's tuning variables that name no file, folder,
# URL, host, library or plugin (vLLM 0.32, vllm/envs.py), OpenMP and oneDNN threading and ISA, NCCL
# tuning, and the hub's offline switches. Others are refused unless an administrator lists them in
# PLUGBOARD_ALLOWED_ENV, and those whose names say they load code or read files (_reaches_outside)
# are refused even then.
_ALLOWED_ENV_NAMES = """
    VLLM_LOGGING_LEVEL VLLM_LOGGING_PREFIX VLLM_LOGGING_COLOR VLLM_CONFIGURE_LOGGING VLLM_LOG_STATS_INTERVAL
    VLLM_LOG_BATCHSIZE_INTERVAL VLLM_DISABLE_LOG_LOGO VLLM_NO_USAGE_STATS VLLM_DO_NOT_TRACK NO_COLOR
    VLLM_ENGINE_READY_TIMEOUT_S VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS
    VLLM_HTTP_TIMEOUT_KEEP_ALIVE VLLM_KEEP_ALIVE_ON_ENGINE_DEATH VLLM_CHAT_TEMPLATE_RENDER_TIMEOUT
    VLLM_REGEX_COMPILATION_TIMEOUT_S VLLM_TOOL_PARSE_REGEX_TIMEOUT_SECONDS VLLM_ENFORCE_STRICT_TOOL_CALLING
    VLLM_CPU_NUM_OF_RESERVED_CPU VLLM_CPU_ATTN_SPLIT_KV VLLM_WORKER_MULTIPROC_METHOD VLLM_ENABLE_V1_MULTIPROCESSING
    VLLM_ALLOW_LONG_MAX_MODEL_LEN VLLM_MAX_N_SEQUENCES VLLM_MAX_STOP_STRINGS VLLM_MAX_NUM_BAD_WORDS
    VLLM_XGRAMMAR_CACHE_MB VLLM_V1_OUTPUT_PROC_CHUNK_SIZE VLLM_MQ_MAX_CHUNK_BYTES_MB VLLM_FLOAT32_MATMUL_PRECISION
    VLLM_USE_FLASHINFER_SAMPLER VLLM_DISABLE_COMPILE_CACHE VLLM_SKIP_P2P_CHECK VLLM_DISABLE_PYNCCL
    VLLM_MARLIN_USE_ATOMIC_ADD VLLM_USE_DEEP_GEMM VLLM_KV_CACHE_LAYOUT VLLM_COMPUTE_NANS_IN_LOGITS
    VLLM_ENABLE_CUDAGRAPH_GC VLLM_ALLREDUCE_USE_SYMM_MEM
    OMP_NUM_THREADS OMP_PROC_BIND OMP_PLACES OMP_SCHEDULE OMP_DYNAMIC OMP_WAIT_POLICY OMP_MAX_ACTIVE_LEVELS
    OMP_STACKSIZE OMP_THREAD_LIMIT KMP_AFFINITY KMP_BLOCKTIME KMP_HW_SUBSET KMP_SETTINGS
    MKL_NUM_THREADS OPENBLAS_NUM_THREADS
    ONEDNN_MAX_CPU_ISA ONEDNN_PRIMITIVE_CACHE_CAPACITY ONEDNN_DEFAULT_FPMATH_MODE ONEDNN_VERBOSE
    NCCL_DEBUG NCCL_DEBUG_SUBSYS NCCL_P2P_DISABLE NCCL_P2P_LEVEL NCCL_IB_DISABLE NCCL_SHM_DISABLE
    NCCL_SOCKET_IFNAME NCCL_ALGO NCCL_PROTO NCCL_MIN_NCHANNELS NCCL_MAX_NCHANNELS NCCL_BUFFSIZE NCCL_NTHREADS
    NCCL_CUMEM_ENABLE NCCL_NVLS_ENABLE NCCL_LAUNCH_MODE TORCH_NCCL_ASYNC_ERROR_HANDLING
    CUDA_LAUNCH_BLOCKING CUDA_MODULE_LOADING PYTORCH_CUDA_ALLOC_CONF
    TOKENIZERS_PARALLELISM HF_HUB_OFFLINE TRANSFORMERS_OFFLINE HF_DATASETS_OFFLINE HF_HUB_DISABLE_TELEMETRY
    HF_HUB_DISABLE_PROGRESS_BARS TRANSFORMERS_VERBOSITY
"""
ALLOWED_ENV = frozenset(_ALLOWED_ENV_NAMES.split())
# Listed although a word of their name is one _reaches_outside refuses: their values are settings, not paths
# (PYTORCH_CUDA_ALLOC_CONF is "expandable_segments:True"; NCCL_SOCKET_IFNAME names a network interface;
# VLLM_DISABLE_COMPILE_CACHE is a switch).
ALLOWED_ENV_DESPITE_NAME = frozenset({"PYTORCH_CUDA_ALLOC_CONF", "NCCL_SOCKET_IFNAME", "VLLM_DISABLE_COMPILE_CACHE"})
# Name prefixes and words (between underscores) that say a variable loads code or names a file, a folder,
# a library, a plugin or a place on the network.
_OUTSIDE_PREFIXES = ("LD_", "DYLD_", "PYTHON", "GCONV", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV")
_OUTSIDE_WORD_LIST = """
    PATH PATHS FILE FILES DIR DIRS DIRECTORY FOLDER HOME ROOT URL URI ENDPOINT HOST HOSTS IP ADDR PORT
    PROXY SOCKET CONF CONFIG CFG PLUGIN PLUGINS INJECTION PRELOAD AUDIT LIB LIBRARY SO DLL
"""
_OUTSIDE_WORDS = frozenset(_OUTSIDE_WORD_LIST.split())
# Words that name a place only at the end of a name (TRANSFORMERS_CACHE, but ONEDNN_PRIMITIVE_CACHE_CAPACITY).
_OUTSIDE_LAST_WORDS = frozenset({"CACHE", "MODULE", "MODULES"})
OUTSIDE_REASON = (
    "it can load code or read files outside the deployment, so it is refused even if an administrator lists it "
    "in PLUGBOARD_ALLOWED_ENV"
)
# Longest value a variable may hold: tuning values are short, and a server's environment is not storage.
MAX_ENV_VALUE = 4096

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
    # The administrator's settings in force when the spec is made (PLUGBOARD_ALLOW_TRUST_REMOTE_CODE,
    # PLUGBOARD_ALLOWED_FLAGS, PLUGBOARD_ALLOWED_ENV): validate() checks extra_args and extra_env under
    # them, so a relaunch made after a setting was narrowed is refused like a new deployment would be.
    allow_trust_remote_code: bool = False
    allowed_flags: frozenset[str] = frozenset()
    allowed_env: frozenset[str] = frozenset()
    # The base model's files, as paths relative to its folder, where known: a path flag must name one.
    model_files: frozenset[str] | None = None


# --- Extra arguments -------------------------------------------------------------------


def parse_extra_args(
    text: str,
    *,
    allow_trust_remote_code: bool = False,
    allowed_flags: Iterable[str] = (),
    model_files: Iterable[str] | None = None,
) -> list[str]:
    """Returns the argv items a user's free-text extra arguments stand for, or
    raises ArgumentError naming the first refused token and why.

    The text is split like a POSIX shell would split words (quotes and
    backslashes), but nothing is expanded or run: `$(reboot)` stays the literal
    argument `$(reboot)`. Line breaks between arguments are whitespace, so a
    textarea with one flag per line works; a control character *inside* an
    argument (a quoted newline, NUL, bidi overrides) is refused.

    Flags are case-sensitive, as in argparse: `--PORT` is not `--port`, and since
    every vLLM long flag is lower-case it is refused as a flag vLLM does not know.
    `--flag_name` is vLLM's spelling of `--flag-name` and is treated as the same flag;
    an abbreviation (`--por` for `--port`, which argparse expands) is refused.
    Each flag must be in ALLOWED_FLAGS, with a value of its kind, or among
    `allowed_flags` (the administrator's PLUGBOARD_ALLOWED_FLAGS, whose values are
    only checked for control characters). `allow_trust_remote_code` (an administrator
    setting) allows --trust-remote-code and the other flags that make the server run
    code the user names (CODE_FLAGS). `model_files` (the base model's files, relative
    to its folder) are what a path flag such as --chat-template may name; None checks
    only that the path is relative and stays inside the model's folder.
    """
    try:
        tokens = shlex.split(text, posix=True)
    except ValueError as exc:
        reason = "a quote is not closed" if "quotation" in str(exc) else "it ends with a lone backslash"
        raise ArgumentError(f"The extra arguments cannot be read: {reason}.") from None
    check_extra_args(
        tokens, allow_trust_remote_code=allow_trust_remote_code, allowed_flags=allowed_flags, model_files=model_files
    )
    return tokens


def check_extra_args(
    tokens: Sequence[str],
    *,
    allow_trust_remote_code: bool = False,
    allowed_flags: Iterable[str] = (),
    model_files: Iterable[str] | None = None,
) -> None:
    """Checks already-split extra arguments (see parse_extra_args); returns
    nothing, raises ArgumentError at the first refused token."""
    allowed_flags = frozenset(allowed_flags)
    model_files = None if model_files is None else frozenset(model_files)
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
        kind = ALLOWED_FLAGS.get(name)
        if kind is None:
            if name in PATH_FLAGS:
                raise ArgumentError(
                    f"“{token}” is refused: {PATH_FLAGS[name]}; it stays refused even if an administrator lists it."
                )
            listed = name in allowed_flags or (name.startswith("--no-") and f"--{name[5:]}" in allowed_flags)
            if not listed and name not in CODE_FLAGS:
                raise ArgumentError(
                    f"“{token}” is not on the console's list of vLLM flags a deployment may set; an administrator "
                    "can allow it with PLUGBOARD_ALLOWED_FLAGS."
                )
            i = _skip_values(tokens, i, token, name)  # the administrator's (or a code flag): any value
            continue
        if "." in token.split("=", 1)[0]:
            raise ArgumentError(f"“{token}” is refused: {name} takes {_describe(kind)}, not JSON keys.")
        if kind.kind == "none":
            if "=" in token:
                raise ArgumentError(f"“{token}” is refused: {name} is a switch and takes no value.")
            continue
        if "=" in token:
            value = token.split("=", 1)[1]
        elif i < len(tokens) and not _is_flag(tokens[i]):
            value = tokens[i]
            _check_characters(value)
            i += 1
        else:
            raise ArgumentError(f"“{token}” needs a value after it: {_describe(kind)}.")
        _check_value(name, kind, value, model_files)


def _skip_values(tokens: Sequence[str], i: int, token: str, name: str) -> int:
    """Returns the index after the values of a flag the table does not type (`tokens[i - 1]` is the flag),
    each checked for control characters; the shape (none, one, several) comes from vLLM's parser tables."""
    if "=" in token:
        return i  # the value is inline
    if "." in token and token.startswith("--"):
        # vLLM's dotted JSON form (`--compilation-config.mode 3`) always takes the next token.
        if i >= len(tokens):
            raise ArgumentError(f"“{token}” needs a value after it.")
        _check_characters(tokens[i])
        return i + 1
    if name in BOOLEAN_FLAGS:
        return i
    if name in MULTI_VALUE_FLAGS:
        while i < len(tokens) and not _is_flag(tokens[i]):
            _check_characters(tokens[i])
            i += 1
        return i
    # Any other flag takes one value when one follows (a flag from a newer vLLM is assumed to take one).
    if i < len(tokens) and not _is_flag(tokens[i]):
        _check_characters(tokens[i])
        i += 1
    return i


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


def _check_value(name: str, kind: Value, value: str, model_files: frozenset[str] | None) -> None:
    """Refuses a value that is not of the kind ALLOWED_FLAGS gives `name`, saying what it takes."""
    if len(value) > MAX_VALUE_LENGTH:
        raise ArgumentError(f"The value of {name} is longer than {MAX_VALUE_LENGTH} characters.")
    wrong = f"{name} takes {_describe(kind)}, not “{_short(value)}”."
    if kind.kind in ("int", "float"):
        try:
            number = int(value) if kind.kind == "int" else float(value)
        except ValueError:
            raise ArgumentError(wrong) from None
        if not kind.low <= number <= kind.high:
            raise ArgumentError(wrong)
    elif kind.kind == "choice":
        if value not in kind.choices:
            raise ArgumentError(wrong)
    elif kind.kind == "text":
        if not kind.pattern.fullmatch(value):
            raise ArgumentError(wrong)
    elif kind.kind == "model_file" and value not in kind.choices:
        problem = model_path_problem(value, model_files, folder=kind.folder)
        if problem:
            raise ArgumentError(f"{name} “{_short(value)}” is refused: {problem}.")


def _describe(kind: Value) -> str:
    if kind.kind in ("int", "float"):
        low, high = (int(n) if float(n).is_integer() else n for n in (kind.low, kind.high))
        return f"{'a whole number' if kind.kind == 'int' else 'a number'} from {low} to {high}"
    if kind.kind == "choice":
        return "one of " + ", ".join(sorted(kind.choices))
    if kind.kind == "text":
        return kind.what
    if kind.kind == "model_file":
        words = f" ({', or '.join(sorted(kind.choices))} also)" if kind.choices else ""
        return f"{PATH_FLAG_HINT}{words}"
    return "no value"


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def model_path_problem(value: str, model_files: Iterable[str] | None, *, folder: bool = False) -> str | None:
    """Returns why `value` is not a path relative to the base model's folder naming one of `model_files`
    (with `folder`, a folder holding some of them, "." for the model's own), or None. With no manifest
    (None) only the form is checked: relative, no "..", no "~", no URL; the node checks the rest."""
    if not value or value.startswith(("/", "~", "\\")) or _SCHEME.match(value) or "\\" in value:
        return f"give {PATH_FLAG_HINT}, not an absolute path, a home folder or a URL"
    parts = value.split("/")
    if ".." in parts:
        return f"“..” would leave the model's folder; give {PATH_FLAG_HINT}"
    if model_files is None:
        return None
    path = "/".join(p for p in parts if p not in ("", "."))
    files = frozenset(model_files)
    if path in files:
        return None
    if folder and (path == "" or any(f.startswith(path + "/") for f in files)):
        return None
    shown = ", ".join(sorted(files)[:8]) + (", …" if len(files) > 8 else "")
    return f"the base model has no {'such folder' if folder else 'such file'} (its files: {shown or 'none'})"


def resolved_extra_args(spec: ServerSpec) -> list[str]:
    """Returns the spec's extra arguments as the server gets them: the value of each path flag
    (ALLOWED_FLAGS' "model_file" kind) becomes that path inside the deployment's model folder,
    `spec.model_path`. Raises ArgumentError if its real path (symbolic links followed, on the
    node that runs it) leaves the model folder."""
    out: list[str] = []
    tokens = list(spec.extra_args)
    root = os.path.realpath(spec.model_path)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        kind = ALLOWED_FLAGS.get(_canonical(token)) if _is_flag(token) else None
        if kind is None or kind.kind != "model_file":
            out.append(token)
            continue
        flag, inline, value = token.partition("=")
        if not inline:
            value = tokens[i]
            i += 1
        if value not in kind.choices:
            value = os.path.join(spec.model_path, value)
            real = os.path.realpath(value)
            if os.path.commonpath([root, real]) != root:
                raise ArgumentError(f"{flag} “{_short(value)}” leads outside the model's folder; it is refused.")
        out += [f"{flag}={value}"] if inline else [flag, value]
    return out


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


def parse_env(text: str, *, allowed_env: Iterable[str] = ()) -> dict[str, str]:
    """Returns the environment variables in `text` (one `KEY=VALUE` a line), or
    raises ArgumentError naming the line and why. Error messages never quote a
    value: values can be secrets.

    Blank lines and lines starting with `#` are skipped; a `#` later in a line is
    part of the value. Spaces around the name and the value are dropped, and one
    pair of matching quotes around the value is removed ('a b' or "a b"); nothing
    is expanded. Names are case-sensitive, as in the process environment. A name
    must be in ALLOWED_ENV or `allowed_env` (the administrator's
    PLUGBOARD_ALLOWED_ENV), and never one that loads code or reads files.
    """
    env: dict[str, str] = {}
    seen_on: dict[str, int] = {}
    for number, name, value in env_lines(text):
        where = f"Line {number}"
        if value is None:
            raise ArgumentError(f"{where} (“{_short(name)}”) is not KEY=VALUE.")
        if not ENV_NAME.fullmatch(name):
            raise ArgumentError(
                f"{where}: “{_short(name)}” is not a variable name (letters, digits and _, not starting with a digit)."
            )
        try:
            _check_env_value(value)
        except ArgumentError as exc:
            raise ArgumentError(f"{where} ({name}): {exc}") from None
        refusal = _env_refusal(name, allowed_env=frozenset(allowed_env))
        if refusal:
            raise ArgumentError(f"{where}: {name} is refused: {refusal}.")
        if name in env:
            raise ArgumentError(f"{where}: {name} is already set on line {seen_on[name]}.")
        env[name] = value
        seen_on[name] = number
    return env


def env_lines(text: str) -> list[tuple[int, str, str | None]]:
    """Returns (line number, name, value) for each line of `text` that is not blank or a comment, as
    parse_env reads it (one pair of quotes around the value removed); the value is None on a line
    without "=". Nothing is checked: parse_env does that."""
    lines = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            lines.append((number, line, None))
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        lines.append((number, name, value))
    return lines


# How a stored value is shown, and what an edit writes to keep one it never saw.
ENV_MASK = "****"


def env_names(text: str) -> list[str]:
    """Returns the names `text` sets (one `KEY=VALUE` a line), in order."""
    return [name for _, name, value in env_lines(text) if value is not None]


def env_masked(text: str) -> str:
    """Returns `text` as pages show it: "NAME=****" a line, values never."""
    return "\n".join(f"{name}={ENV_MASK}" for name in env_names(text))


def env_keep(text: str, stored: str) -> str:
    """Returns `text` with each "NAME=****" line (a value left masked, as env_masked shows it) replaced by
    NAME's line in `stored`: how an edit keeps a value it never saw. Other lines are kept as typed; a name
    left out is removed. Raises ArgumentError for a masked NAME that `stored` does not set."""
    kept = {name: raw for raw in stored.split("\n") for (_, name, value) in env_lines(raw) if value is not None}
    out = []
    for number, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        found = env_lines(raw)
        if found and found[0][2] == ENV_MASK:
            name = found[0][1]
            if name not in kept:
                raise ArgumentError(
                    f"Line {number}: {name}={ENV_MASK} keeps a stored value, but {name} has none; type its value."
                )
            raw = kept[name].strip()
        out.append(raw)
    return "\n".join(out)


def _check_env_value(value: str) -> None:
    if len(value) > MAX_ENV_VALUE:
        raise ArgumentError(f"its value is longer than {MAX_ENV_VALUE} characters.")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            name = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "a control character").lower()
            raise ArgumentError(
                f"its value contains U+{ord(ch):04X} ({name}); control and invisible characters are refused."
            )


def _env_refusal(name: str, *, allowed_env: frozenset[str]) -> str | None:
    if name in MANAGED_ENV:
        return MANAGED_ENV[name]
    if name in ALLOWED_ENV:
        return None
    if reaches_outside(name):
        return OUTSIDE_REASON
    if name in allowed_env:
        return None
    return (
        "it is not on the console's list of environment variables a deployment may set; an administrator can "
        "allow it with PLUGBOARD_ALLOWED_ENV"
    )


def reaches_outside(name: str) -> bool:
    """Returns whether a variable's name says it can load code or read files (LD_PRELOAD, PYTHONPATH,
    *_PATH, *_FILE, *_DIR, *_HOME, *_URL, *_PLUGIN*, *_CONF, ...), unless ALLOWED_ENV_DESPITE_NAME
    lists it; the administrator's list cannot allow such a name."""
    if name in ALLOWED_ENV_DESPITE_NAME:
        return False
    upper = name.upper()
    words = upper.split("_")
    return (
        upper.startswith(_OUTSIDE_PREFIXES)
        or any(word in _OUTSIDE_WORDS for word in words)
        or words[-1] in _OUTSIDE_LAST_WORDS
        or any(word.endswith(("PATH", "DIR", "FILE", "HOME", "PRELOAD")) for word in words)
    )


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

    # extra_args and extra_env come from parse_extra_args/parse_env when a person saves them; they are
    # checked again here under the settings the spec carries, which are those in force now: a relaunch
    # after an administrator narrowed a setting is refused, not started with what is no longer allowed.
    for check in (
        lambda: check_extra_args(
            spec.extra_args, allow_trust_remote_code=spec.allow_trust_remote_code,
            allowed_flags=spec.allowed_flags, model_files=spec.model_files,
        ),
        lambda: _check_env_dict(spec.extra_env, allowed_env=spec.allowed_env),
    ):  # fmt: skip
        try:
            check()
        except ArgumentError as exc:
            add(str(exc))
    if problems:
        raise ArgumentError(" ".join(problems), problems)


def _check_env_dict(env: dict[str, str], *, allowed_env: frozenset[str]) -> None:
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            raise ArgumentError(f"“{_short(name)}” is not an environment variable name.")
        refusal = _env_refusal(name, allowed_env=allowed_env)
        if refusal:
            raise ArgumentError(f"{name} is refused in the environment: {refusal}.")
        try:
            _check_env_value(value)
        except ArgumentError as exc:
            raise ArgumentError(f"{name}: {exc}") from None


def build_command(python: str, spec: ServerSpec) -> tuple[list[str], dict[str, str]]:
    """Returns the argv that starts vLLM's OpenAI server for `spec`, and the
    environment variables to add to the node agent's environment. Calls
    validate() first (raising ArgumentError).

    The console's own flags come first, then the optional fields that are set,
    then the user's extra arguments, then the middleware that guards every route
    with the deployment's key, which travels in the environment
    (PLUGBOARD_SERVER_KEY), never in argv. `--lora-modules` is left out when there is no
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
    argv += resolved_extra_args(spec)  # path flags confined to the model's folder
    # No --api-key (it would show in `ps`, and it guards only /v1): the console's middleware guards every
    # route with the key from the environment. Last, so it is the outermost: a middleware the user may add
    # (--middleware, with remote code allowed) sees only requests that carry the key.
    argv += ["--middleware", server_auth.IMPORT_PATH]

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
    env[server_auth.KEY_VARIABLE] = spec.api_key  # after the user's variables, which must not replace it
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
