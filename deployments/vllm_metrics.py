"""vLLM's Prometheus metrics, read into the few figures the deployment page
charts: requests running and waiting, KV cache usage, token counters, the
time-to-first-token and end-to-end latency histograms, and the adapters in
use. Pure logic: text in, a sample out; rates and percentiles come from two
samples in a row."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

GAUGES = {"running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting",
          "kv_cache_usage": "vllm:kv_cache_usage_perc"}  # fmt: skip
COUNTERS = {"prompt_tokens": "vllm:prompt_tokens_total", "generation_tokens": "vllm:generation_tokens_total"}
HISTOGRAMS = {"ttft": "vllm:time_to_first_token_seconds", "e2e": "vllm:e2e_request_latency_seconds"}


@dataclass
class Sample:
    """One scrape: gauges as they were, counters and histogram buckets as totals since the server started."""

    at: float
    running: float = 0
    waiting: float = 0
    kv_cache_usage: float = 0  # 0..1
    prompt_tokens: float = 0
    generation_tokens: float = 0
    # Histograms: upper bounds and cumulative counts, as Prometheus keeps them.
    ttft: list[tuple[float, float]] = field(default_factory=list)
    e2e: list[tuple[float, float]] = field(default_factory=list)
    adapters_running: list[str] = field(default_factory=list)
    adapters_waiting: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sample:
        data = dict(data)
        for name in HISTOGRAMS:
            data[name] = [tuple(b) for b in data.get(name, [])]
        return cls(**data)


def parse(text: str, *, at: float) -> Sample:
    """The sample in vLLM's /metrics `text`, summed over its engines."""
    sample = Sample(at=at)
    totals: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    latest_lora = (-math.inf, "", "")
    histogram_of = {f"{metric}_bucket": name for name, metric in HISTOGRAMS.items()}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        name, value = match["name"], _number(match["value"])
        if name == "vllm:lora_requests_info":
            # A gauge per state whose value is when it was set: the newest says what runs now.
            labels = dict(_LABEL.findall(match["labels"] or ""))
            if value >= latest_lora[0]:
                latest_lora = (value, labels.get("running_lora_adapters", ""), labels.get("waiting_lora_adapters", ""))
        elif name in histogram_of:
            le = _number(dict(_LABEL.findall(match["labels"] or "")).get("le", "+Inf"))
            into = buckets[histogram_of[name]]
            into[le] = into.get(le, 0) + value
        else:
            totals[name] = totals.get(name, 0) + value
    for attribute, metric in {**GAUGES, **COUNTERS}.items():
        setattr(sample, attribute, totals.get(metric, 0))
    for name in HISTOGRAMS:
        setattr(sample, name, sorted(buckets[name].items()))
    sample.adapters_running = [a for a in latest_lora[1].split(",") if a]
    sample.adapters_waiting = [a for a in latest_lora[2].split(",") if a]
    return sample


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def rate(before: Sample, after: Sample, counter: str) -> float:
    """Per second between two samples; 0 across a server restart (its counters start again)."""
    elapsed = after.at - before.at
    delta = getattr(after, counter) - getattr(before, counter)
    return delta / elapsed if elapsed > 0 and delta >= 0 else 0.0


def quantile(before: Sample, after: Sample, histogram: str, q: float) -> float | None:
    """The q-quantile (0..1) of what the histogram observed between two samples, interpolated
    within its bucket as Prometheus' histogram_quantile does; None when it observed nothing."""
    old = dict(getattr(before, histogram))
    counts = [(le, count - old.get(le, 0)) for le, count in getattr(after, histogram)]
    if not counts or counts[-1][1] <= 0 or any(c < 0 for _, c in counts):
        return None
    rank = q * counts[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in counts:
        if count >= rank:
            if math.isinf(le):
                return lower_bound  # above the last finite bound: the bound is all that is known
            span = count - lower_count
            return lower_bound + (le - lower_bound) * ((rank - lower_count) / span if span else 1)
        lower_bound, lower_count = le, count
    return None
