"""Measures the registry's lists on a large registry: 10,000 base models and
1,000 LoRA adapters in one workspace, with their files and tensor tables as
inspection records them.

It fills a database of its own, then asks, as a signed-in member of the
workspace, through Django's test client (the whole middleware stack, in this
process), N times each after a warm-up:

- the list page as it opens (`/models/`, both kinds), the models list page
  (`/models/?kind=base`) and the adapters list page (`/models/?kind=adapter`);
- the models and adapters lists of the REST API (`/api/v1/models/`,
  `/api/v1/adapters/`);

at two page sizes (25 and 100 by default), and prints p50/p95/p99 in ms and
the number of SQL queries one request makes at each size: the count must not
grow with the page size. Target (issue 12): p95 under 100 ms. `--last-page`
also measures the last page at the first size (the deepest OFFSET).

    .venv/bin/python bench/registry_list.py [--models 10000] [--adapters 1000] [--requests 200]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/plugboard .venv/bin/python bench/registry_list.py

The database: with a PostgreSQL DATABASE_URL, a database of the same name
plus `_bench_registry` on that server, dropped and created afresh (and
dropped at the end unless --keep); otherwise SQLite in a temporary folder.
Redis: REDIS_URL if set, else the embedded Redis in the temporary folder.
Page sizes other than the views' own (25 for the page, 50 for the API) are
set in this process for the measurement (the page has no size parameter).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from anywhere

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import time

from bench import scratch
from bench.scratch import log

ROOT = Path(__file__).resolve().parents[1]
TARGET_P95_MS = 100.0
LAYERS = 30  # SmolLM2-135M's: 272 tensors a model, a realistic tensor table
BASE_FILES = [  # (path, size) as a hub repository of a small model lists them
    ("config.json", 861),
    ("generation_config.json", 132),
    ("model.safetensors", 269_060_552),
    ("special_tokens_map.json", 655),
    ("tokenizer.json", 2_104_556),
    ("tokenizer_config.json", 3_764),
]
ADAPTER_FILES = [("README.md", 5_102), ("adapter_config.json", 702), ("adapter_model.safetensors", 9_853_368)]
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --- Filling it ----------------------------------------------------------------------


def base_tensors(hidden: int, inter: int, vocab: int, kv: int) -> dict:
    """A Llama model's tensor table as inspection stores it: {name: [shape, dtype, bytes]}."""

    def entry(*shape: int) -> list:
        n = 2
        for d in shape:
            n *= d
        return [list(shape), "BF16", n]

    table = {"model.embed_tokens.weight": entry(vocab, hidden), "model.norm.weight": entry(hidden)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        table |= {
            f"{p}.self_attn.q_proj.weight": entry(hidden, hidden),
            f"{p}.self_attn.k_proj.weight": entry(kv, hidden),
            f"{p}.self_attn.v_proj.weight": entry(kv, hidden),
            f"{p}.self_attn.o_proj.weight": entry(hidden, hidden),
            f"{p}.mlp.gate_proj.weight": entry(inter, hidden),
            f"{p}.mlp.up_proj.weight": entry(inter, hidden),
            f"{p}.mlp.down_proj.weight": entry(hidden, inter),
            f"{p}.input_layernorm.weight": entry(hidden),
            f"{p}.post_attention_layernorm.weight": entry(hidden),
        }
    return table


def adapter_tensors(rank: int, hidden: int, modules: list[str]) -> dict:
    table = {}
    for i in range(LAYERS):
        for m in modules:
            group = "self_attn" if m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            p = f"base_model.model.model.layers.{i}.{group}.{m}"
            table[f"{p}.lora_A.weight"] = [[rank, hidden], "F32", rank * hidden * 4]
            table[f"{p}.lora_B.weight"] = [[hidden, rank], "F32", rank * hidden * 4]
    return table


def fill(*, models: int, adapters: int, batch: int = 1000) -> tuple:
    """Creates the member, the workspace (three connections: S3, hub, local), `models` ready base models and
    `adapters` ready adapters with their files and tensor tables, and a second workspace the member is not in
    (so the lists' workspace filter has rows to leave out). Returns (user, workspace)."""
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from accounts.services import workspace_create
    from registry.models import Artifact, ArtifactFile, ArtifactTensors, Connection

    user = get_user_model().objects.create_user(username="bench-member", password="bench-member-password-1")
    outsider = get_user_model().objects.create_user(username="bench-outsider", password="bench-outsider-password-1")
    workspace = workspace_create(name="Bench", owner=user)
    elsewhere = workspace_create(name="Elsewhere", owner=outsider)
    now = timezone.now()

    def connections_of(ws) -> list:
        return [
            Connection.objects.create(
                workspace=ws, name="store", kind="s3", bucket="models", region="us-east-1",
                endpoint_url="http://s3.internal:9000",
            ),
            Connection.objects.create(workspace=ws, name="hub", kind="hf"),
            Connection.objects.create(workspace=ws, name="nfs", kind="local", root_path="/srv/models"),
        ]  # fmt: skip

    shapes = [(576, 1536, 49152, 192), (960, 2560, 49152, 320), (2048, 8192, 128256, 512)]
    tables = [base_tensors(*s) for s in shapes]

    def base(ws, conns, i: int) -> Artifact:
        hidden, inter, vocab, kv = shapes[i % len(shapes)]
        config = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": LAYERS, "num_attention_heads": hidden // 64,
            "num_key_value_heads": kv // 64, "vocab_size": vocab, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 100000, "torch_dtype": "bfloat16", "tie_word_embeddings": True,
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "initializer_range": 0.02,
        }  # fmt: skip
        return Artifact(
            workspace=ws, name=f"model-{i:05d}", kind="base", connection=conns[i % 3],
            location=f"team/llama-{i:05d}", description=f"Fine-tuned Llama number {i} for the bench.",
            tags=["llama", "chat", f"batch-{i % 20}"], license="apache-2.0", created_by=user, status="ready",
            inspected_at=now, resolved_revision=f"{i:040x}", inspection_bytes_read=131072,
            total_bytes=sum(s for _, s in BASE_FILES), weight_bytes=269_060_552, parameter_count=134_515_008,
            dtype="BF16", config=config, architecture="LlamaForCausalLM", hidden_size=hidden, num_layers=LAYERS,
            num_attention_heads=hidden // 64, num_kv_heads=kv // 64, vocab_size=vocab, context_length=8192,
        )  # fmt: skip

    def adapter(ws, conns, i: int) -> Artifact:
        rank = (8, 16, 32, 64)[i % 4]
        modules = TARGET_MODULES[: 2 + i % 6]
        config = {
            "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.05, "bias": "none",
            "target_modules": modules, "task_type": "CAUSAL_LM", "base_model_name_or_path": "team/llama-00000",
            "fan_in_fan_out": False, "use_dora": False, "use_rslora": False, "modules_to_save": None,
        }  # fmt: skip
        return Artifact(
            workspace=ws, name=f"adapter-{i:04d}", kind="adapter", connection=conns[i % 3],
            location=f"team/lora-{i:04d}", description=f"A persona adapter, number {i}.", tags=["lora", "persona"],
            license="apache-2.0", created_by=user, status="ready", inspected_at=now, resolved_revision=f"{i:040x}",
            inspection_bytes_read=65536, total_bytes=sum(s for _, s in ADAPTER_FILES), weight_bytes=9_853_368,
            parameter_count=2_463_342, dtype="F32", config=config, peft_type="LORA", rank=rank,
            lora_alpha=2.0 * rank, target_modules=sorted(modules), base_model_name_or_path="team/llama-00000",
        )  # fmt: skip

    def create(ws, conns, make, count: int, files: list, tensors_of) -> None:
        for start in range(0, count, batch):
            with transaction.atomic():
                rows = Artifact.objects.bulk_create(
                    [make(ws, conns, i) for i in range(start, min(count, start + batch))]
                )
                ArtifactFile.objects.bulk_create(
                    [
                        ArtifactFile(artifact=a, path=path, size=size, checksum=f"{a.pk:064x}", checksum_kind="sha256")
                        for a in rows
                        for path, size in files
                    ],
                    batch_size=batch,
                )
                ArtifactTensors.objects.bulk_create(
                    [ArtifactTensors(artifact=a, tensors=tensors_of(i)) for i, a in enumerate(rows, start)],
                    batch_size=200,
                )

    conns = connections_of(workspace)
    started = time.monotonic()
    create(workspace, conns, base, models, BASE_FILES, lambda i: tables[i % len(tables)])
    log(f"  {models} base models in {time.monotonic() - started:.1f} s")
    started = time.monotonic()

    def lora(i: int) -> dict:
        return adapter_tensors((8, 16, 32, 64)[i % 4], 576, TARGET_MODULES[: 2 + i % 6])

    create(workspace, conns, adapter, adapters, ADAPTER_FILES, lora)
    log(f"  {adapters} adapters in {time.monotonic() - started:.1f} s")
    other = connections_of(elsewhere)
    create(elsewhere, other, base, min(models, 500), BASE_FILES, lambda i: tables[0])
    create(elsewhere, other, adapter, min(adapters, 50), ADAPTER_FILES, lora)
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # What autovacuum does soon after a bulk load: statistics for the planner, and the visibility map
            # that lets a count read the index alone.
            cursor.execute("VACUUM ANALYZE")
    return user, workspace


# --- Measuring -----------------------------------------------------------------------


@contextlib.contextmanager
def page_sizes(size: int | None):
    """Sets the page's and the API's page size in this process (None: the views' own)."""
    if size is None:
        yield
        return
    from django.core import paginator
    from rest_framework.pagination import PageNumberPagination

    from registry import views

    class Sized(paginator.Paginator):
        def __init__(self, object_list, per_page, *args, **kwargs):
            super().__init__(object_list, size, *args, **kwargs)

    saved = PageNumberPagination.page_size
    PageNumberPagination.page_size = size
    views.Paginator = Sized
    try:
        yield
    finally:
        PageNumberPagination.page_size = saved
        views.Paginator = paginator.Paginator


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def measure(client, path: str, *, requests: int, warmup: int, rows: int | None) -> dict:
    """Times `requests` GETs of `path` after `warmup` untimed ones; counts the queries of one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def get():
        response = client.get(path)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.content[:500]!r}")
        return response

    for _ in range(warmup):
        get()
    with CaptureQueriesContext(connection) as captured:
        response = get()
    # Read now: the next request's request_started empties the log this context slices.
    queries = [q["sql"] for q in captured.captured_queries]
    shown = _rows_in(response)
    if rows is not None and shown != rows:
        raise SystemExit(f"{path} shows {shown} rows, not {rows}: the page size did not take")
    times, cpu = [], time.process_time()
    # The database's share: the time of every query of the timed requests (the recording costs microseconds).
    with CaptureQueriesContext(connection) as timed:
        for _ in range(requests):
            started = time.perf_counter()
            get()
            times.append(1000 * (time.perf_counter() - started))
    cpu_ms = 1000 * (time.process_time() - cpu) / requests
    sql_ms = 1000 * sum(float(q["time"]) for q in timed.captured_queries) / requests
    return {
        "path": path, "rows": shown, "queries": len(queries), "sql": queries,
        "p50_ms": statistics.median(times), "p95_ms": percentile(times, 95), "p99_ms": percentile(times, 99),
        "max_ms": max(times), "cpu_ms_mean": cpu_ms, "sql_ms_mean": sql_ms, "bytes": len(response.content),
    }  # fmt: skip


def _rows_in(response) -> int:
    if response["Content-Type"].startswith("application/json"):
        return len(response.json()["results"])
    return response.content.count(b"<tr>") - 1  # the header's row


def profile(client, path: str, *, requests: int, top: int, sort: str) -> str:
    """cProfile of `requests` GETs of `path`: the busiest functions by `sort` (cumulative or tottime)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        client.get(path)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(top)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10_000, help="base models in the workspace (10000)")
    parser.add_argument("--adapters", type=int, default=1_000, help="adapters in the workspace (1000)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per list and size (200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests before them (20)")
    parser.add_argument("--sizes", default="25,100", help="comma-separated page sizes (25,100)")
    parser.add_argument("--last-page", action="store_true", help="also time the last page at the first size")
    parser.add_argument("--show-queries", action="store_true", help="print each list's SQL")
    parser.add_argument("--profile", metavar="PATH", help="cProfile this list path (e.g. /api/v1/models/) and print")
    parser.add_argument(
        "--profile-sort", default="cumulative", choices=("cumulative", "tottime"), help="order of --profile's table"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the database (and the temporary folder)")
    parser.add_argument(
        "--reuse", action="store_true", help="PostgreSQL: measure the registry a --keep run left instead of filling"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    # Hundreds of requests a minute from one caller: the API's per-caller and per-address limits would
    # answer 429 long before the end. Far above the load, so they are still counted (and cost what they cost).
    os.environ.update(PLUGBOARD_RATE_LIMIT_API_PER_ADDRESS="100000000", PLUGBOARD_RATE_LIMIT_API_PER_CALLER="100000000")
    os.environ["DEBUG"] = "false"
    world = scratch.prepare("plugboard-bench-registry-", database_suffix="_bench_registry", reuse=args.reuse)
    if world.database:
        where = f"{world.where} ({'a --keep run left' if args.reuse else 'created for this run'})"
    else:
        where = world.where
    try:
        log(f"database: {where}; Redis: {os.environ.get('REDIS_URL') or 'embedded, in ' + str(world.tmp)}")
        world.start()
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.test import Client

        user = get_user_model().objects.filter(username="bench-member").first() if args.reuse else None
        if user is None:
            log(f"filling: {args.models} base models and {args.adapters} adapters in one workspace")
            started = time.monotonic()
            user, _ = fill(models=args.models, adapters=args.adapters)
            log(f"filled in {time.monotonic() - started:.0f} s")
        else:
            log("reusing the registry a --keep run left")
        client = Client()
        client.force_login(user)
        print("rate limits: API per address and per caller set to 100000000/60 for this run (still counted)")
        lists = [
            ("list page (all)", "/models/", args.models + args.adapters),
            ("models page", "/models/?kind=base", args.models),
            ("models API", "/api/v1/models/", args.models),
            ("adapters page", "/models/?kind=adapter", args.adapters),
            ("adapters API", "/api/v1/adapters/", args.adapters),
        ]
        results = []
        for size in sizes:
            with page_sizes(size):
                for name, path, total in lists:
                    r = measure(client, path, requests=args.requests, warmup=args.warmup, rows=min(size, total))
                    results.append({"list": name, "size": size, **r})
                    log(f"{name:<16} size {size:>3}: p95 {r['p95_ms']:6.1f} ms, {r['queries']} queries")
                    if args.last_page and size == sizes[0]:
                        last = -(-total // size)
                        sep = "&" if "?" in path else "?"
                        r = measure(client, f"{path}{sep}page={last}", requests=args.requests, warmup=args.warmup,
                                    rows=total - (last - 1) * size)  # fmt: skip
                        results.append({"list": f"{name} (last)", "size": size, **r})
                        log(f"{name + ' (last)':<16} size {size:>3}: p95 {r['p95_ms']:6.1f} ms, {r['queries']} queries")

        print(f"\n{'list':<22} {'size':>4} {'rows':>4} {'queries':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7} {'CPU ms':>6} {'SQL ms':>6} {'KiB':>6}")  # fmt: skip
        for r in results:
            print(
                f"{r['list']:<22} {r['size']:>4} {r['rows']:>4} {r['queries']:>7} {r['p50_ms']:7.1f} "
                f"{r['p95_ms']:7.1f} {r['p99_ms']:7.1f} {r['max_ms']:7.1f} {r['cpu_ms_mean']:6.1f} {r['sql_ms_mean']:6.1f} {r['bytes'] / 1024:6.1f}"
            )
        verdicts = {}
        for name, _, _ in lists:
            mine = [r for r in results if r["list"] == name]
            counts = {r["size"]: r["queries"] for r in mine}
            worst = max(r["p95_ms"] for r in mine)
            verdicts[name] = {"same_queries": len(set(counts.values())) == 1, "p95_met": worst < TARGET_P95_MS}
            print(
                f"{name}: queries {counts} ({'same at every size' if verdicts[name]['same_queries'] else 'GROWS'}); "
                f"worst p95 {worst:.1f} ms (target < {TARGET_P95_MS:g} ms: "
                f"{'met' if verdicts[name]['p95_met'] else 'NOT MET'})"
            )
        print(f"load average: {Path('/proc/loadavg').read_text().strip()}; cores: {os.cpu_count()}; "
              f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[1]}")  # fmt: skip
        if args.show_queries:
            for r in results:
                print(f"\n{r['list']} (size {r['size']}):")
                for q in r["sql"]:
                    print(f"  {q}")
        if args.profile:
            print(f"\nprofile of {args.requests} GETs of {args.profile}:")
            print(profile(client, args.profile, requests=args.requests, top=40, sort=args.profile_sort))
        if args.json:
            args.json.write_text(json.dumps({"results": results, "verdicts": verdicts}, indent=2) + "\n")
        return 0 if all(v["same_queries"] and v["p95_met"] for v in verdicts.values()) else 1
    finally:
        world.close(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
