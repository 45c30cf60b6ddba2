"""Span and metric helpers without a broker: exporter choice, the JSON-lines file, GenAI attributes,
content capture, trace-context propagation, escalation links, job metrics and cost reports."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleet import costs, telemetry
from fleet.errors import ConfigError
from fleet.models import Attempt, TaskResult, Tier
from fleet.settings import Settings, load_settings
from fleet.telemetry.metrics import Instruments, Sum, genai_latest
from fleet.telemetry.runtime import DiscardMetricExporter, exporter_names
from fleet.telemetry.runtime import state as telemetry_state


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(env={"FLEET_STATE_DIR": str(tmp_path)})


@pytest.fixture
def traced(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    """Tracing on in this process, into a trace file only (nothing global is touched)."""
    path = tmp_path / "spans.jsonl"
    settings.telemetry.trace_file = str(path)
    assert telemetry.setup(settings, role="unit", environ={}, force=True, install_global=False)
    yield path
    telemetry.shutdown()


def _spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}, []),
    ],
)
def test_exporters_come_from_the_otel_variables(env: dict[str, str], expected: list[str]) -> None:
    # Given the OTEL_* variables / When the traces exporters are chosen / Then they are as configured
    assert exporter_names(env, "traces") == expected


def test_discard_records_spans_and_metrics_then_drops_them(settings: Settings) -> None:
    # Given the fleet's discard exporters (what the benchmarks use: telemetry on, no backend)
    env = {"OTEL_TRACES_EXPORTER": "discard", "OTEL_METRICS_EXPORTER": "discard"}
    try:
        # When the fleet sets up and makes a span
        assert telemetry.setup(settings, role="unit", environ=env, force=True, install_global=False)
        with telemetry.span("submit") as span:
            # Then the span is real and recording
            assert span.is_recording()
        # And a finished job's metrics are recorded and exported (then dropped)
        attempt = Attempt(link="openai:gpt-4.1-mini", provider="openai", model="gpt-4.1-mini", outcome="ok",
                          input_tokens=10, output_tokens=5, cost_usd=0.001)  # fmt: skip
        result = TaskResult.from_attempts("t1", "completed", [attempt], tier=Tier.MINI, kind="k")
        telemetry.record_job(result, [attempt])
        provider = telemetry_state().meter_provider
        assert provider is not None and provider.force_flush()
        assert "fleet.jobs" in DiscardMetricExporter.last_names
    finally:
        telemetry.shutdown()


def test_an_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OTEL_METRICS_EXPORTER"):
        exporter_names({"OTEL_METRICS_EXPORTER": "prometheus"}, "metrics")


def test_nothing_configured_installs_nothing_and_spans_are_no_ops(settings: Settings) -> None:
    # Given no OTEL_* variables and no trace file
    telemetry.shutdown()
    # When the fleet sets up
    assert not telemetry.setup(settings, environ={})
    # Then no span is recorded and nothing is attached
    with telemetry.span("submit") as span:
        assert not span.is_recording()
    assert telemetry.current_traceparent() is None


def test_the_trace_file_holds_one_json_line_per_span_with_parent_links(traced: Path) -> None:
    # Given tracing into a file / When a parent and a child span end
    with (
        telemetry.span("submit", attributes={"fleet.kind": "k", "fleet.tier": None}),
        telemetry.span("child"),
    ):
        pass
    # Then each is one line with hex ids, the child's parent id, and no None attribute
    child, root = _spans(traced)
    assert root["name"] == "submit" and root["parent_id"] is None
    assert child["parent_id"] == root["span_id"] and child["trace_id"] == root["trace_id"]
    assert len(root["trace_id"]) == 32 and len(root["span_id"]) == 16
    assert root["attributes"] == {"fleet.kind": "k"}
    assert root["end"] >= root["start"] > 0
    assert root["service"] == "fleet-unit"


def test_lines_from_many_threads_never_interleave(traced: Path) -> None:
    # Given many threads ending spans with large attributes at once
    def burst() -> None:
        for _ in range(50):
            with telemetry.span("x", attributes={"fleet.blob": "y" * 5000}):
                pass

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every line parses
    assert len(_spans(traced)) == 400


def _attempt(outcome: str = "ok", **kw: Any) -> Attempt:
    return Attempt(link="openai:gpt-4.1-mini", provider="openai", model="gpt-4.1-mini", outcome=outcome, **kw)


def test_a_chat_span_has_the_genai_attributes_and_no_content_by_default(traced: Path) -> None:
    # Given a failed call then nothing else
    with telemetry.chat_span("openai", "gpt-4.1-mini", 0, prompt="secret prompt", max_tokens=50) as span:
        telemetry.record_response("secret answer", "stop", "gpt-4.1-mini-2025", "gpt-4.1-mini")
        telemetry.end_attempt(span, _attempt("empty_answer", input_tokens=7, output_tokens=0), "empty_answer")
    # Then the span follows the GenAI conventions, with error.type and no text
    [chat] = _spans(traced)
    attrs = chat["attributes"]
    assert chat["name"] == "chat gpt-4.1-mini" and chat["kind"] == "CLIENT"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4.1-mini"
    assert attrs["gen_ai.response.model"] == "gpt-4.1-mini-2025"
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["gen_ai.usage.input_tokens"] == 7
    assert attrs["error.type"] == "empty_answer" and chat["status"] == "ERROR"
    assert attrs["fleet.fallback.index"] == 0
    assert "secret" not in json.dumps(chat)


def test_content_is_captured_only_when_enabled(settings: Settings, tmp_path: Path) -> None:
    # Given capture_content on
    settings.telemetry.capture_content = True
    settings.telemetry.trace_file = str(tmp_path / "c.jsonl")
    telemetry.setup(settings, environ={}, force=True, install_global=False)
    try:
        with telemetry.chat_span("openai", "m", 1, prompt="the prompt", system="be brief") as span:
            telemetry.record_response("the answer", "stop", "", "m")
            telemetry.end_attempt(span, _attempt(), None)
    finally:
        telemetry.shutdown()
    # Then prompt, system instructions and answer are on the span as GenAI messages
    attrs = _spans(tmp_path / "c.jsonl")[0]["attributes"]
    assert json.loads(attrs["gen_ai.input.messages"])[0]["parts"][0]["content"] == "the prompt"
    assert json.loads(attrs["gen_ai.system_instructions"])[0]["content"] == "be brief"
    out = json.loads(attrs["gen_ai.output.messages"])[0]
    assert out["role"] == "assistant" and out["parts"][0]["content"] == "the answer"
    assert attrs["gen_ai.response.model"] == "m"
    assert "error.type" not in attrs


def test_publishing_injects_the_current_context_into_message_headers(traced: Path) -> None:
    # Given no span: nothing is injected
    headers: dict[str, Any] = {"id": "x"}
    telemetry.inject_context(headers=headers)
    assert "traceparent" not in headers
    # When a message is published inside a span (send_task by name included)
    with telemetry.span("route"):
        telemetry.inject_context(headers=headers)
        ref = telemetry.current_traceparent()
    # Then its headers carry that span's context
    route = _spans(traced)[0]
    assert headers["traceparent"] == ref
    assert headers["traceparent"].startswith(f"00-{route['trace_id']}-{route['span_id']}-")


def test_a_resolution_links_back_to_the_escalated_span(traced: Path) -> None:
    # Given the traceparent an escalation record keeps
    with telemetry.span("execute"):
        ref = telemetry.current_traceparent()
    # When a person's action is traced later, elsewhere
    with telemetry.span("escalation.resolve") as span:
        telemetry.link_back(span, ref)
    # Then it is a new trace linking to the job's span; bad references link nothing
    execute, resolve = _spans(traced)
    assert resolve["trace_id"] != execute["trace_id"]
    assert resolve["links"] == [{"trace_id": execute["trace_id"], "span_id": execute["span_id"]}]
    assert telemetry.link_to("garbage") == [] and telemetry.link_to(None) == []


def test_task_span_renames_only_a_celery_run_span(traced: Path) -> None:
    # Given the Celery instrumentation's consumer span, and an unrelated one
    with telemetry.span("run/fleet.execute"):
        telemetry.task_span("execute", {"fleet.tier": "mini"})
    with telemetry.span("something else"):
        assert not telemetry.task_span("execute").is_recording()
    # Then only the task's span is renamed and annotated
    renamed, other = _spans(traced)
    assert renamed["name"] == "execute" and renamed["attributes"] == {"fleet.tier": "mini"}
    assert other["name"] == "something else" and other["attributes"] == {}


def _result(**kw: Any) -> TaskResult:
    base: dict[str, Any] = {
        "task_id": "t1", "status": "completed", "tier": Tier.MINI, "kind": "extract",
        "provider": "groq", "model": "llama-3.3-70b-versatile", "submitted_at": 100.0, "finished_at": 101.5,
    }  # fmt: skip
    base.update(kw)
    return TaskResult(**base)


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def test_job_metrics_by_tier_outcome_model_and_kind() -> None:
    # Given instruments on an in-memory reader
    reader = InMemoryMetricReader()
    instruments = Instruments(MeterProvider(metric_readers=[reader]).get_meter("t"))
    failed = _attempt("server_error", input_tokens=0)
    ok = Attempt(link="groq:llama-3.3-70b-versatile", provider="groq", model="llama-3.3-70b-versatile",
                 outcome="ok", input_tokens=10, output_tokens=4, cost_usd=0.002, latency_ms=20)  # fmt: skip
    # When a completed job with one fallback is recorded
    instruments.record_job(_result(attempts=[failed, ok]), [failed, ok])
    points = _points(reader)
    # Then jobs, latency, tokens, cost and fallbacks carry the expected attributes
    [job] = points["fleet.jobs"]
    assert job.value == 1 and dict(job.attributes) == {
        "fleet.tier": "mini", "fleet.outcome": "completed", "fleet.kind": "extract"
    }  # fmt: skip
    assert points["fleet.job.duration"][0].sum == pytest.approx(1.5)
    tokens = {p.attributes["gen_ai.token.type"]: p.value for p in points["fleet.tokens"]}
    assert tokens == {"input": 10, "output": 4}
    assert points["fleet.cost"][0].value == pytest.approx(0.002)
    [fallback] = points["fleet.fallbacks"]
    assert fallback.attributes["fleet.outcome"] == "server_error"


def test_a_sum_counts_one_series_per_attribute_set_whatever_their_order() -> None:
    # Given a sum on an in-memory reader
    reader = InMemoryMetricReader()
    jobs = Sum(MeterProvider(metric_readers=[reader]).get_meter("t"), "t.jobs", unit="{job}", description="")
    # When it is added to with one attribute set in two orders, and with another set
    jobs.add(1, {"fleet.tier": "mini", "fleet.kind": "extract"})
    jobs.add(2, {"fleet.kind": "extract", "fleet.tier": "mini"})
    jobs.add(5, {"fleet.tier": "full", "fleet.kind": "extract"})
    # Then each set is observed once (OpenTelemetry asks a callback for one observation per set)
    assert sorted(o.value for o in jobs._observe(None)) == [3, 5]  # type: ignore[arg-type]
    # And is one monotonic series with its total, and the next collection keeps counting
    points = {p.attributes["fleet.tier"]: p.value for p in _points(reader)["t.jobs"]}
    assert points == {"mini": 3, "full": 5}
    jobs.add(1, {"fleet.tier": "mini", "fleet.kind": "extract"})
    assert {p.attributes["fleet.tier"]: p.value for p in _points(reader)["t.jobs"]} == {"mini": 4, "full": 5}


@pytest.mark.parametrize("latest", [False, True], ids=["v1.36", "gen_ai_latest_experimental"])
def test_model_call_metrics_follow_the_chosen_genai_conventions(latest: bool) -> None:
    reader = InMemoryMetricReader()
    instruments = Instruments(MeterProvider(metric_readers=[reader]).get_meter("t"), latest=latest)
    call = Attempt(link="openai:o3", provider="openai", model="o3", outcome="ok", input_tokens=2000,
                   cached_input_tokens=1536, cache_write_tokens=0, output_tokens=300, reasoning_tokens=200,
                   latency_ms=1500)  # fmt: skip
    instruments.record_job(_result(attempts=[call]), [call])
    points = _points(reader)
    if not latest:  # the default: v1.36's names, no cache or reasoning counts
        assert {p.attributes["gen_ai.token.type"]: p.sum for p in points["gen_ai.client.token.usage"]} == {
            "input": 2000, "output": 300
        }  # fmt: skip
        assert points["gen_ai.client.operation.duration"][0].sum == pytest.approx(1.5)
        assert not [name for name in points if name.startswith("gen_ai.client.inference")]
        return
    usage = {
        name: pts[0].value
        for name, pts in points.items()
        if name.startswith("gen_ai.client.inference.usage.")
    }
    assert usage == {
        "gen_ai.client.inference.usage.input_tokens": 2000,
        "gen_ai.client.inference.usage.output_tokens": 300,
        "gen_ai.client.inference.usage.cache_read.input_tokens": 1536,
        "gen_ai.client.inference.usage.reasoning.output_tokens": 200,
    }
    assert points["gen_ai.client.inference.duration"][0].sum == pytest.approx(1.5)
    assert "gen_ai.client.token.usage" not in points and "gen_ai.client.operation.duration" not in points


def test_the_opt_in_is_read_from_a_comma_separated_list() -> None:
    assert genai_latest({"OTEL_SEMCONV_STABILITY_OPT_IN": "http, gen_ai_latest_experimental"})
    assert not genai_latest({"OTEL_SEMCONV_STABILITY_OPT_IN": "http"}) and not genai_latest({})


def test_queue_gauges_read_one_snapshot_per_collection() -> None:
    from fleet.telemetry.metrics import QueueGauges

    reader = InMemoryMetricReader()
    calls: list[int] = []

    def snapshot() -> dict[str, dict[str, Any]]:
        calls.append(1)
        return {"mini": {"depth": 3, "oldest_age_s": 1.25}, "full": {"depth": 0, "oldest_age_s": 0.0}}

    QueueGauges(MeterProvider(metric_readers=[reader]).get_meter("t"), snapshot)
    points = _points(reader)
    assert {p.attributes["fleet.queue"]: p.value for p in points["fleet.queue.depth"]} == {
        "mini": 3,
        "full": 0,
    }
    assert {p.attributes["fleet.queue"]: p.value for p in points["fleet.queue.oldest_age"]}["mini"] == 1.25
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800.0), ("1h", 3600.0), ("2d", 172800.0), ("45s", 45.0)]
)
def test_since_accepts_durations(text: str, seconds: float) -> None:
    assert costs.parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "-1h", "1y"])
def test_since_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        costs.parse_since(text)


def test_cost_report_groups_and_prices_the_all_full_saving(settings: Settings) -> None:
    # Given two jobs' records, one with a failed call on another model
    failed = _attempt("truncated", input_tokens=5, output_tokens=3, cost_usd=0.001)
    ok = _attempt(input_tokens=10, output_tokens=2, cost_usd=0.003)
    rows = [
        costs.job_fields(settings, _result(task_id="a", attempts=[failed, ok]), [failed, ok]),
        costs.job_fields(settings, _result(task_id="b", tier=Tier.FULL, kind=None, attempts=[ok]), [ok]),
    ]
    records = [costs._parse(f"{1000 + i}-0", row) for i, row in enumerate(rows)]
    # When the report is made
    data = costs.report([r for r in records if r is not None])
    # Then totals, groups and the all-full price add up
    assert data["jobs"] == 2
    assert data["cost_usd"] == pytest.approx(0.007)
    assert data["input_tokens"] == 25 and data["output_tokens"] == 7
    assert data["by_tier"]["mini"]["jobs"] == 1 and data["by_tier"]["full"]["cost_usd"] == pytest.approx(
        0.003
    )
    assert data["by_kind"]["none"]["jobs"] == 1
    assert data["by_model"]["openai:gpt-4.1-mini"] == {
        "jobs": 2, "input_tokens": 25, "output_tokens": 7, "cost_usd": pytest.approx(0.007)
    }  # fmt: skip
    full = costs.full_tier_cost(settings, 15, 5) + costs.full_tier_cost(settings, 10, 2)
    assert data["cost_all_full_usd"] == pytest.approx(full)
    assert data["saving_usd"] == pytest.approx(full - 0.007)


def test_the_file_exporter_appends_with_o_append(tmp_path: Path) -> None:
    # Given a file with a line already, written by another process
    path = tmp_path / "s.jsonl"
    path.write_text('{"name": "earlier"}\n')
    settings = load_settings(env={"FLEET_STATE_DIR": str(tmp_path)})
    settings.telemetry.trace_file = str(path)
    telemetry.setup(settings, environ={}, force=True, install_global=False)
    try:
        with telemetry.span("later"):
            pass
    finally:
        telemetry.shutdown()
    # Then the new span follows it and nothing is overwritten
    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == ["earlier", "later"]
    assert os.stat(path).st_size > 0
