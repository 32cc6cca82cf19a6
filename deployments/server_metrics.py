"""Live figures of running model servers: the node agent scrapes each ready
server's /metrics every SCRAPE_SECONDS and keeps the samples in Redis, in two
capped lists per deployment: every sample for the last hour, and one a minute
for the last day. Both are trimmed on every write and expire a day after the
last one, so nothing grows however long a server runs or however many come
and go. The deployment page charts them."""

from __future__ import annotations

import json
import logging
import time

import redis

from config.redis_client import client
from deployments import vllm_metrics
from deployments.vllm_metrics import Sample

log = logging.getLogger(__name__)

SCRAPE_SECONDS = 5
FINE_KEEP = 3600 // SCRAPE_SECONDS  # an hour of samples
COARSE_EVERY = 60
COARSE_KEEP = 24 * 60  # a day of one-a-minute samples
EXPIRE_SECONDS = 25 * 3600
WINDOWS = {"hour": "fine", "day": "coarse"}


def _key(deployment_id: int, resolution: str) -> str:
    return f"plugboard:server-metrics:{deployment_id}:{resolution}"


def record(deployment_id: int, sample: Sample) -> None:
    """Keeps `sample` in the deployment's window (and in the coarse one once a minute)."""
    data = json.dumps(sample.to_dict())
    fine, coarse = _key(deployment_id, "fine"), _key(deployment_id, "coarse")
    try:
        r = client()
        newest_coarse = r.lindex(coarse, 0)
        with r.pipeline() as pipe:
            pipe.lpush(fine, data).ltrim(fine, 0, FINE_KEEP - 1).expire(fine, EXPIRE_SECONDS)
            if newest_coarse is None or sample.at - json.loads(newest_coarse)["at"] >= COARSE_EVERY:
                pipe.lpush(coarse, data).ltrim(coarse, 0, COARSE_KEEP - 1).expire(coarse, EXPIRE_SECONDS)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not keep server figures of deployment %s: %s", deployment_id, exc)


def latest(deployment_id: int, *, max_age: float = 15) -> Sample | None:
    """The newest sample, if it is at most `max_age` seconds old (the server still reports), else None."""
    try:
        raw = client().lindex(_key(deployment_id, WINDOWS["hour"]), 0)
    except redis.RedisError as exc:
        log.warning("could not read server figures of deployment %s: %s", deployment_id, exc)
        return None
    sample = Sample.from_dict(json.loads(raw)) if raw else None
    return sample if sample is not None and now() - sample.at <= max_age else None


def window(deployment_id: int, span: str = "hour") -> list[Sample]:
    """The samples of the last hour (every one) or day (one a minute), oldest first."""
    try:
        raw = client().lrange(_key(deployment_id, WINDOWS[span]), 0, -1)
    except redis.RedisError as exc:
        log.warning("could not read server figures of deployment %s: %s", deployment_id, exc)
        return []
    return [Sample.from_dict(json.loads(item)) for item in reversed(raw)]


def forget(deployment_id: int) -> None:
    try:
        client().delete(_key(deployment_id, "fine"), _key(deployment_id, "coarse"))
    except redis.RedisError:
        pass


def series(samples: list[Sample]) -> dict[str, dict[str, dict[float, float]]]:
    """Chart series from consecutive samples: {chart: {line: {time: value}}}. Gauges as sampled;
    token rates and latency percentiles over each interval between two samples."""
    charts: dict[str, dict[str, dict[float, float]]] = {
        "requests": {"running": {}, "waiting": {}},
        "kv_cache": {"KV cache used (%)": {}},
        "tokens": {"prompt tokens/s": {}, "generated tokens/s": {}},
        "ttft": {"p50 (s)": {}, "p95 (s)": {}},
        "e2e": {"p50 (s)": {}, "p95 (s)": {}},
    }
    for before, after in zip([None, *samples], samples, strict=False):
        t = after.at
        charts["requests"]["running"][t] = after.running
        charts["requests"]["waiting"][t] = after.waiting
        charts["kv_cache"]["KV cache used (%)"][t] = round(after.kv_cache_usage * 100, 2)
        if before is None:
            continue
        charts["tokens"]["prompt tokens/s"][t] = vllm_metrics.rate(before, after, "prompt_tokens")
        charts["tokens"]["generated tokens/s"][t] = vllm_metrics.rate(before, after, "generation_tokens")
        for chart in ("ttft", "e2e"):
            for label, q in (("p50 (s)", 0.5), ("p95 (s)", 0.95)):
                value = vllm_metrics.quantile(before, after, chart, q)
                if value is not None:
                    charts[chart][label][t] = value
    return charts


def now() -> float:
    return time.time()
