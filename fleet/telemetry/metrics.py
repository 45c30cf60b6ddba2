"""The fleet's metrics: instruments on one OTel meter, and the helpers the tasks call.

Every helper is a no-op costing one attribute check when no MeterProvider was set up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from fleet.models import Attempt, TaskResult

__all__ = [
    "GENAI_LATEST",
    "Instruments",
    "QueueGauges",
    "Sum",
    "attempt_attributes",
    "genai_latest",
    "job_attributes",
]

#: The ``OTEL_SEMCONV_STABILITY_OPT_IN`` value for the latest (experimental) GenAI conventions.
GENAI_LATEST = "gen_ai_latest_experimental"


def genai_latest(environ: Mapping[str, str]) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` (a comma-separated list) asks for the latest GenAI
    conventions."""
    values = environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return GENAI_LATEST in (v.strip() for v in values.split(","))


#: The latest conventions' usage counters: (Attempt field, name after ``gen_ai.client.inference.usage.``,
#: description).
_USAGE = (
    ("input_tokens", "input_tokens", "Input tokens of model calls (cached ones included)."),
    ("output_tokens", "output_tokens", "Output tokens of model calls (reasoning ones included)."),
    ("cached_input_tokens", "cache_read.input_tokens", "Input tokens read from the provider's prompt cache."),
    (
        "cache_write_tokens",
        "cache_write.input_tokens",
        "Input tokens written to the provider's prompt cache.",
    ),
    ("reasoning_tokens", "reasoning.output_tokens", "Output tokens the model spent reasoning."),
)

#: How long one queue snapshot serves the gauges' callbacks (one Redis read per collection).
SNAPSHOT_TTL_S = 1.0


class Sum:
    """A monotonic counter summed in this process and read by the SDK at each collection (an
    observable counter; exported as the same cumulative or delta sum as a synchronous counter's).

    An :meth:`add` is a dict update under a lock: 0.75 us with four attributes, where the SDK's
    synchronous ``Counter.add`` (attribute checks, a measurement, a view match and an aggregation
    lock for each call) took 5.6 us (``timeit``, one run). Attribute sets must be few (they are: tier,
    kind, model, outcome).
    """

    def __init__(self, meter: Meter, name: str, *, unit: str, description: str) -> None:
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()
        meter.create_observable_counter(name, callbacks=[self._observe], unit=unit, description=description)

    def add(self, amount: float, attributes: Mapping[str, str]) -> None:
        key = tuple(sorted(attributes.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            values = list(self._values.items())
        return [Observation(value, dict(key)) for key, value in values]


class Instruments:
    """Counters and histograms of one process, created once from its meter."""

    def __init__(self, meter: Meter, *, latest: bool = False) -> None:
        self.jobs = Sum(
            meter,
            "fleet.jobs",
            unit="{job}",
            description="Jobs that reached a final state, by tier and outcome.",
        )
        self.duration = meter.create_histogram(
            "fleet.job.duration", unit="s", description="From submit to the job's final result."
        )
        self.tokens = Sum(
            meter,
            "fleet.tokens",
            unit="{token}",
            description="Tokens used, by tier, model, kind and direction.",
        )
        self.cost = Sum(
            meter, "fleet.cost", unit="USD", description="Spend at list prices, by tier, model and kind."
        )
        self.fallbacks = Sum(
            meter,
            "fleet.fallbacks",
            unit="{attempt}",
            description="Failed attempts that moved a job on (retry or next link), by outcome code.",
        )
        self.escalations = Sum(
            meter, "fleet.escalations", unit="{escalation}", description="Jobs handed to people, by reason."
        )
        self.requeues = Sum(
            meter,
            "fleet.rate_limit.requeues",
            unit="{requeue}",
            description="Jobs sent back to their queue to wait (rate limits, a held execution lock).",
        )
        #: The GenAI conventions' model-call metrics: v1.36's by default (a token histogram by
        #: ``gen_ai.token.type``, ``gen_ai.client.operation.duration``), the latest ones with
        #: ``latest`` (a counter per kind of token, cache and reasoning included, and
        #: ``gen_ai.client.inference.duration``).
        self.latest = latest
        self.token_usage = None if latest else meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens per model call."
        )  # fmt: skip
        usage = [(field, f"gen_ai.client.inference.usage.{name}", text) for field, name, text in _USAGE]
        self.usage = {
            field: Sum(meter, name, unit="{token}", description=text) for field, name, text in usage
        } if latest else {}  # fmt: skip
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.inference.duration" if latest else "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of each model call.",
        )

    def record_job(self, result: TaskResult, attempts: Sequence[Attempt]) -> None:
        """A job's final state; ``attempts`` are the calls not counted before (see fleet.costs)."""
        base = job_attributes(result)
        self.jobs.add(1, base)
        if result.latency_ms is not None:
            self.duration.record(result.latency_ms / 1000.0, base)
        for attempt in attempts:
            attrs = attempt_attributes(result, attempt)
            if attempt.input_tokens:
                self.tokens.add(attempt.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            if attempt.output_tokens:
                self.tokens.add(attempt.output_tokens, {**attrs, "gen_ai.token.type": "output"})
            if attempt.cost_usd:
                self.cost.add(attempt.cost_usd, attrs)
            if attempt.outcome != "ok":
                self.fallbacks.add(1, {"fleet.tier": base["fleet.tier"], "fleet.outcome": attempt.outcome})
            if attempt.outcome not in ("circuit_open", "throttled"):  # no call was made for those
                call = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": attempt.provider,
                        "gen_ai.request.model": attempt.model}  # fmt: skip
                self.operation_duration.record(attempt.latency_ms / 1000.0, call)
                if self.token_usage is not None:
                    for kind, count in (("input", attempt.input_tokens), ("output", attempt.output_tokens)):
                        self.token_usage.record(count, {**call, "gen_ai.token.type": kind})
                for field, counter in self.usage.items():
                    count = getattr(attempt, field)
                    if count:
                        counter.add(count, call)


def job_attributes(result: TaskResult) -> dict[str, str]:
    """The low-cardinality attributes of a job's metrics."""
    return {
        "fleet.tier": str(result.tier) if result.tier is not None else "none",
        "fleet.outcome": result.status,
        "fleet.kind": result.kind or "none",
    }


def attempt_attributes(result: TaskResult, attempt: Attempt) -> dict[str, str]:
    return {
        "fleet.tier": str(result.tier) if result.tier is not None else "none",
        "fleet.kind": result.kind or "none",
        "gen_ai.provider.name": attempt.provider,
        "gen_ai.request.model": attempt.model,
    }


class QueueGauges:
    """Observable gauges of queue depth and oldest age, from one snapshot function.

    Register them in one process only (the fleet registers them in the escalations pool): every
    process that did would report the same queues again.
    """

    def __init__(self, meter: Meter, snapshot: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._cached: tuple[float, Mapping[str, Mapping[str, Any]]] | None = None
        meter.create_observable_gauge(
            "fleet.queue.depth", callbacks=[self._depth], unit="{job}", description="Jobs waiting."
        )
        meter.create_observable_gauge(
            "fleet.queue.oldest_age",
            callbacks=[self._oldest],
            unit="s",
            description="Age of the oldest waiting job.",
        )

    def _read(self) -> Mapping[str, Mapping[str, Any]]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > SNAPSHOT_TTL_S:
                self._cached = (now, self._snapshot())
            return self._cached[1]

    def _observe(self, field: str) -> Iterable[Observation]:
        return [
            Observation(float(q.get(field) or 0.0), {"fleet.queue": name}) for name, q in self._read().items()
        ]

    def _depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe("depth")

    def _oldest(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe("oldest_age_s")
