"""The gateway's own figures in Prometheus' text format, for an existing
Prometheus to scrape from the console's /metrics: requests by deployment,
model and status, latency and time-to-first-token histograms, and tokens.
Counted in this process (each web process answers for itself). Labels name
only models that exist: a request for an unknown model counts under
model="", so a client cannot grow the label set by inventing names."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    observations: int = 0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
        self.total += seconds
        self.observations += 1


class GatewayMetrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.tokens: Counter[tuple[str, str, str]] = Counter()
        self.duration: dict[tuple[str, str], Histogram] = {}
        self.ttft: dict[tuple[str, str], Histogram] = {}

    def observe(
        self, *, deployment: str, model: str, status: int, duration: float, ttft: float | None,
        prompt_tokens: int, completion_tokens: int,
    ) -> None:  # fmt: skip
        self.requests[deployment, model, status] += 1
        self.duration.setdefault((deployment, model), Histogram()).observe(duration)
        if ttft is not None:
            self.ttft.setdefault((deployment, model), Histogram()).observe(ttft)
        if prompt_tokens:
            self.tokens[deployment, model, "prompt"] += prompt_tokens
        if completion_tokens:
            self.tokens[deployment, model, "completion"] += completion_tokens

    def render(self, *, usage_backlog: int = 0, usage_dropped: int = 0) -> str:
        lines = [
            "# HELP plugboard_gateway_usage_backlog Usage records taken but not yet written to the database.",
            "# TYPE plugboard_gateway_usage_backlog gauge",
            f"plugboard_gateway_usage_backlog {usage_backlog}",
            "# HELP plugboard_gateway_usage_dropped_total Usage records dropped because the database took none for long.",
            "# TYPE plugboard_gateway_usage_dropped_total counter",
            f"plugboard_gateway_usage_dropped_total {usage_dropped}",
            "# HELP plugboard_gateway_requests_total Requests through the gateway and the playground.",
            "# TYPE plugboard_gateway_requests_total counter",
        ]
        for (deployment, model, status), n in sorted(self.requests.items()):
            lines.append(
                f"plugboard_gateway_requests_total{_labels(deployment=deployment, model=model, status=status)} {n}"
            )
        lines += [
            "# HELP plugboard_gateway_tokens_total Tokens the model servers counted, by kind.",
            "# TYPE plugboard_gateway_tokens_total counter",
        ]
        for (deployment, model, kind), n in sorted(self.tokens.items()):
            lines.append(f"plugboard_gateway_tokens_total{_labels(deployment=deployment, model=model, kind=kind)} {n}")
        for name, help_text, histograms in (
            ("plugboard_gateway_request_duration_seconds", "Time from the request to its last byte.", self.duration),
            ("plugboard_gateway_time_to_first_token_seconds", "Time to the first streamed chunk.", self.ttft),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for (deployment, model), h in sorted(histograms.items()):
                for bound, count in zip(BUCKETS, h.counts, strict=True):
                    lines.append(f"{name}_bucket{_labels(deployment=deployment, model=model, le=bound)} {count}")
                lines.append(f"{name}_bucket{_labels(deployment=deployment, model=model, le='+Inf')} {h.observations}")
                lines.append(f"{name}_sum{_labels(deployment=deployment, model=model)} {h.total}")
                lines.append(f"{name}_count{_labels(deployment=deployment, model=model)} {h.observations}")
        return "\n".join(lines) + "\n"


def _labels(**labels) -> str:
    escaped = (
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), "")}"'
        for k, v in labels.items()
    )
    return "{" + ",".join(escaped) + "}"
