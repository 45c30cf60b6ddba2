"""One trace per job with real worker processes writing a trace file, and `fleet costs` against
the results: submit -> route -> execute -> chat {model} -> escalate, parent links across processes
(also through the router's send_task, opentelemetry-python-contrib#609), GenAI attributes,
content only when enabled, no API key anywhere, and a person's resolution linked back."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fleet import keys, telemetry
from fleet.inbox import Inbox
from fleet.models import TaskResult
from fleet.producer import Client
from fleet.settings import Settings, load_settings
from fleet.supervisor import FleetOptions, Supervisor

from ..conftest import flush_fleet_keys, other_db_url
from .conftest import CANARY_KEYS
from .procs import run

pytestmark = pytest.mark.integration

MINI = ["gpt-4.1-mini", "llama-3.3-70b-versatile", "claude-sonnet-4-5"]  # queues/mini.toml
#: Spans without a model call: the skipped links of a chain leave no chat span.
NO_CALL = {"circuit_open", "throttled"}


@dataclass
class TracedFleet:
    settings: Settings
    supervisor: Supervisor
    client: Client
    redis_url: str
    trace_file: Path
    state_dir: Path

    def mock_config(self, **patch: object) -> None:
        httpx.post(f"{self.supervisor.mock_url}/_mock/config", json=patch, timeout=5).raise_for_status()

    def spans(self) -> list[dict[str, Any]]:
        if not self.trace_file.exists():
            return []
        return [json.loads(line) for line in self.trace_file.read_text().splitlines()]

    def run_jobs(self, requests: list[dict[str, Any]]) -> list[TaskResult]:
        ids = [self.client.submit(r) for r in requests]
        return [self.client.result(i, timeout=60) for i in ids]

    def traces_of(self, results: list[TaskResult], *, timeout: float = 15) -> dict[str, list[dict[str, Any]]]:
        """Each job's trace (by task id), once its finished execute span (the delivery that gave it
        its result, with ``fleet.outcome``) is in the file.

        The execute span ends after Celery stored the result, so the file may lag the result a moment;
        a job requeued for a rate limit has an earlier execute span that does not say it finished.
        """
        wanted = {r.task_id for r in results}
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            trace_of = {
                s["attributes"]["fleet.task_id"]: s["trace_id"] for s in spans if s["name"] == "submit"
            }
            by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for s in spans:
                by_trace[s["trace_id"]].append(s)
            done = {
                task_id: by_trace[trace_of[task_id]]
                for task_id in wanted
                if task_id in trace_of
                and any(
                    s["name"] == "execute" and "fleet.outcome" in s["attributes"]
                    for s in by_trace[trace_of[task_id]]
                )
            }
            if len(done) == len(wanted) or time.monotonic() > deadline:
                return done
            time.sleep(0.1)


def _start(broker_url: str, state: Path, trace_file: Path, **overrides: Any) -> TracedFleet:
    env = dict(os.environ, FLEET_REDIS_URL=broker_url, FLEET_STATE_DIR=str(state))
    settings = load_settings(
        profile="demo",
        env=env,
        overrides={"mock.latency_ms": 5, "telemetry.trace_file": str(trace_file), **overrides},
    )
    sup = Supervisor(
        settings,
        FleetOptions(
            flower=False, publish_state=False, log_dir=state / "logs", shutdown_grace_s=10, env=CANARY_KEYS
        ),
    )
    sup.start()
    settings.mock.url = sup.mock_url
    # This process is the producer: its submit spans go to the same file (not the global provider).
    telemetry.setup(settings, role="producer", force=True, install_global=False)
    return TracedFleet(settings, sup, Client(settings, redis_url=broker_url), broker_url, trace_file, state)


@pytest.fixture(scope="module")
def traced(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedFleet]:
    state = tmp_path_factory.mktemp("traced-fleet")
    url = other_db_url(broker_url)
    flush_fleet_keys(url)
    fleet = _start(url, state, state / "spans.jsonl")
    try:
        yield fleet
    finally:
        fleet.client.close()
        fleet.supervisor.stop()
        telemetry.shutdown()


@pytest.fixture
def clean(traced: TracedFleet) -> Iterator[TracedFleet]:
    flush_fleet_keys(traced.redis_url)
    httpx.post(f"{traced.supervisor.mock_url}/_mock/reset", timeout=5)
    traced.mock_config(failure_rate=0.0, down_models=[], faults_by_model={})
    telemetry.setup(traced.settings, role="producer", force=True, install_global=False)
    yield traced
    traced.mock_config(failure_rate=0.0, down_models=[], faults_by_model={})


def _routed_jobs(n: int, tag: str) -> list[dict[str, Any]]:
    levels = ["low", "medium", "high"]
    return [
        {
            "prompt": f"{tag} job {i}: add a docstring to parse_rate_{i}()",
            "kind": f"test.{levels[i % 3]}",
            "hints": {"complexity": levels[i % 3]},
        }
        for i in range(n)
    ]


def _one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


def _chats(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["name"].startswith("chat ")), key=lambda s: s["start"])


def test_each_of_50_jobs_has_one_trace_from_submit_to_its_model_calls(clean: TracedFleet) -> None:
    # Given a fleet whose every process writes the trace file
    # When 50 jobs go through the router onto all tiers
    results = clean.run_jobs(_routed_jobs(50, "trace"))
    traces = clean.traces_of(results)
    # Then each job has exactly one trace: submit is the root, route its child, execute the route's
    assert len(traces) == 50
    assert len({spans[0]["trace_id"] for spans in traces.values()}) == 50
    for res in results:
        spans = traces[res.task_id]
        submit, route = _one(spans, "submit"), _one(spans, "route")
        assert submit["parent_id"] is None
        assert route["parent_id"] == submit["span_id"]
        # the router re-enqueues by task name (send_task): the tier's span continues the same trace;
        # a delivery requeued for a rate limit is a child of the delivery that requeued it
        executes = sorted((s for s in spans if s["name"] == "execute"), key=lambda s: s["start"])
        assert [e["parent_id"] for e in executes] == [route["span_id"]] + [
            e["span_id"] for e in executes[:-1]
        ]
        finished = [e for e in executes if "fleet.outcome" in e["attributes"]]
        assert len(finished) == 1, [e["attributes"] for e in executes]
        execute = finished[0]
        assert {submit["service"], route["service"], execute["service"]} == {
            "fleet-producer", "fleet-router", f"fleet-{res.tier}"
        }  # fmt: skip
        assert route["attributes"]["fleet.tier"] == execute["attributes"]["fleet.tier"] == str(res.tier)
        assert route["attributes"]["fleet.routing.reasons"] == res.routing.reasons  # type: ignore[union-attr]
        assert execute["attributes"]["fleet.kind"] == res.kind
        assert execute["attributes"]["fleet.cost_usd"] == pytest.approx(res.cost_usd)
        assert execute["attributes"]["fleet.fallback.index"] == res.fallback_index
        # and one chat span per model call, children of execute, with the GenAI attributes
        chats = _chats(spans)
        calls = [a for a in res.attempts if a.outcome not in NO_CALL]
        assert [c["name"] for c in chats] == [f"chat {a.model}" for a in calls]
        assert chats[-1]["parent_id"] == execute["span_id"]
        for chat, attempt in zip(chats, calls, strict=True):
            attrs = chat["attributes"]
            assert chat["parent_id"] in {e["span_id"] for e in executes}
            assert attrs["gen_ai.operation.name"] == "chat"
            assert attrs["gen_ai.provider.name"] == attempt.provider
            assert attrs["gen_ai.request.model"] == attempt.model
            assert attrs["gen_ai.usage.input_tokens"] == attempt.input_tokens
            assert attrs["gen_ai.usage.output_tokens"] == attempt.output_tokens
        last = chats[-1]["attributes"]
        assert last["gen_ai.response.model"] == res.model
        assert last["gen_ai.response.finish_reasons"] == ["stop"]
        assert "error.type" not in last
        # nothing from Celery's own publish spans leaks in (they never end for send_task)
        assert not [s["name"] for s in spans if s["name"].startswith(("apply_async/", "run/"))]


def test_a_fallback_shows_two_attempt_spans_with_error_type_on_the_first(clean: TracedFleet) -> None:
    # Given the mini tier's primary model always answers empty
    clean.mock_config(faults_by_model={MINI[0]: {"empty_answer": 1.0}})
    # When pinned mini jobs run
    results = clean.run_jobs([{"prompt": f"Rename x{i} to total", "tier": "mini"} for i in range(3)])
    traces = clean.traces_of(results)
    # Then each trace has two chat spans: the primary's failure, then the fallback's answer
    for res in results:
        assert [a.outcome for a in res.attempts] == ["empty_answer", "ok"]
        first, second = _chats(traces[res.task_id])
        assert first["name"] == f"chat {MINI[0]}" and second["name"] == f"chat {MINI[1]}"
        assert first["attributes"]["error.type"] == "empty_answer"
        assert first["status"] == "ERROR"
        assert first["attributes"]["fleet.fallback.index"] == 0
        assert "error.type" not in second["attributes"]
        assert second["attributes"]["fleet.fallback.index"] == 1
        # a pinned job skips the router: execute hangs straight off submit
        assert (
            _one(traces[res.task_id], "execute")["parent_id"]
            == _one(traces[res.task_id], "submit")["span_id"]
        )


def test_no_content_by_default_and_no_api_key_in_any_attribute(clean: TracedFleet) -> None:
    # Given canary API keys in every worker's environment, and calls that fail on auth
    clean.mock_config(faults_by_model={MINI[0]: {"auth": 1.0}})
    marker = "secret-prompt-text-7f3a"
    # When jobs run
    results = clean.run_jobs([{"prompt": f"{marker} {i}", "tier": "mini"} for i in range(3)])
    clean.traces_of(results)
    text = clean.trace_file.read_text()
    # Then no span carries the prompt, the answer or a key
    assert marker in json.dumps([r.model_dump() for r in results])  # the marker is real text of the jobs
    assert marker not in text
    assert "gen_ai.input.messages" not in text and "gen_ai.output.messages" not in text
    assert results[0].answer and results[0].answer[:40] not in text
    for key in CANARY_KEYS.values():
        assert key not in text


def test_content_is_recorded_when_enabled(broker_url: str, tmp_path: Path) -> None:
    # Given a small fleet (the mini pool only) with telemetry.capture_content on
    url = other_db_url(other_db_url(broker_url))
    flush_fleet_keys(url)
    sup_fleet = _start(url, tmp_path, tmp_path / "spans.jsonl", **{"telemetry.capture_content": True})
    try:
        # When a pinned job runs
        prompt = "Capture me: rename tmp_7d1 to total"
        results = sup_fleet.run_jobs([{"prompt": prompt, "tier": "mini", "system": "Be terse."}])
        chat = _chats(sup_fleet.traces_of(results)[results[0].task_id])[-1]["attributes"]
    finally:
        sup_fleet.client.close()
        sup_fleet.supervisor.stop()
    # Then the chat span holds the prompt, the system instructions and the answer, in GenAI form
    assert json.loads(chat["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": prompt}]}
    ]
    assert json.loads(chat["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be terse."}]
    output = json.loads(chat["gen_ai.output.messages"])
    assert output[0]["role"] == "assistant"
    assert output[0]["parts"][0]["content"] == results[0].answer
    for key in CANARY_KEYS.values():
        assert key not in (tmp_path / "spans.jsonl").read_text()


def test_an_escalation_is_traced_and_its_resolution_links_back(clean: TracedFleet) -> None:
    # Given every model of the mini tier down
    clean.mock_config(down_models=MINI)
    # When a pinned mini job escalates and a person resolves it
    [res] = clean.run_jobs([{"prompt": "Rename y to total", "tier": "mini"}])
    assert res.status == "escalated" and res.escalation_id
    deadline = time.monotonic() + 15
    spans = clean.traces_of([res])[res.task_id]
    while not any(s["name"] == "notify" for s in spans) and time.monotonic() < deadline:
        time.sleep(0.1)
        spans = clean.traces_of([res])[res.task_id]
    inbox = Inbox(clean.settings, redis_url=clean.redis_url)
    try:
        record = inbox.resolve(res.escalation_id, "total = y", "alice")
    finally:
        inbox.close()
    # Then notify is a child of execute, the record keeps the execute span's context,
    execute, notify = _one(spans, "execute"), _one(spans, "notify")
    assert notify["parent_id"] == execute["span_id"]
    assert notify["service"] == "fleet-escalations"
    assert record.trace_id is not None
    assert record.trace_id.startswith(f"00-{execute['trace_id']}-{execute['span_id']}-")  # traceparent
    # and the person's resolution is a span of its own with a link to that execute span
    resolved = [s for s in clean.spans() if s["name"] == "escalation.resolve"]
    assert len(resolved) == 1
    assert resolved[0]["links"] == [{"trace_id": execute["trace_id"], "span_id": execute["span_id"]}]
    assert resolved[0]["trace_id"] != execute["trace_id"]


def test_fleet_costs_json_sums_match_the_results(clean: TracedFleet) -> None:
    # Given finished jobs on every tier, some with fallbacks (their failed calls cost tokens too)
    clean.mock_config(faults_by_model={MINI[0]: {"truncated": 0.5}})
    results = clean.run_jobs(_routed_jobs(12, "cost"))
    finished = time.monotonic()
    assert redis.Redis.from_url(clean.redis_url).xlen(keys.costs()) == 12
    # When `fleet costs --json` reads the records
    env = dict(os.environ, FLEET_REDIS_URL=clean.redis_url, FLEET_STATE_DIR=str(clean.state_dir))
    done = run(["costs", "--since", "1h", "--json"], env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    # Then its totals and groups add up to the results
    assert data["jobs"] == 12
    assert data["cost_usd"] == pytest.approx(sum(r.cost_usd for r in results), abs=1e-6)
    assert data["input_tokens"] == sum(r.input_tokens for r in results)
    assert data["output_tokens"] == sum(r.output_tokens for r in results)
    for tier in {str(r.tier) for r in results}:
        mine = [r for r in results if str(r.tier) == tier]
        assert data["by_tier"][tier]["jobs"] == len(mine)
        assert data["by_tier"][tier]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in mine), abs=1e-6)
    calls: dict[str, int] = defaultdict(int)
    for r in results:
        for a in r.attempts:
            calls[a.link] += a.input_tokens
    assert {m: row["input_tokens"] for m, row in data["by_model"].items()} == dict(calls)
    assert sum(row["jobs"] for row in data["by_kind"].values()) == 12
    provider, model = clean.settings.tier("full").links()[0]
    prices = clean.settings.model(provider, model)
    full = sum(prices.cost(r.input_tokens, r.output_tokens) for r in results)
    assert data["cost_all_full_usd"] == pytest.approx(full, abs=1e-6)
    assert data["saving_usd"] == pytest.approx(full - data["cost_usd"], abs=1e-6)
    assert 0 < data["saving_ratio"] < 1
    # and a window that starts after the last job finished holds none of them
    time.sleep(max(0.0, 1.5 - (time.monotonic() - finished)))
    done = run(["costs", "--since", "1s", "--json"], env)
    assert done.returncode == 0 and json.loads(done.stdout)["jobs"] == 0


def test_a_pipeline_is_one_trace_from_submit_through_every_step(clean: TracedFleet) -> None:
    # Given a pipeline of two steps (mini extracts, full reasons)
    task_id = clean.client.submit({"prompt": "Notes: Dana owns the cut-over on 2026-03-15.",
                                   "pipeline": "extract_reason"})  # fmt: skip
    res = clean.client.result(task_id, timeout=60)
    assert res.status == "completed" and len(res.steps) == 2
    # Then the submit span's trace holds the route span and both steps' execute and chat spans
    deadline = time.monotonic() + 15
    while True:
        spans = clean.spans()
        submit = [
            s for s in spans if s["name"] == "submit" and s["attributes"].get("fleet.task_id") == task_id
        ]
        trace = [s for s in spans if submit and s["trace_id"] == submit[0]["trace_id"]]
        executed = {s["attributes"].get("fleet.task_id") for s in trace if s["name"] == "execute"}
        if executed >= {f"{task_id}.extract", f"{task_id}.reason"} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert executed >= {f"{task_id}.extract", f"{task_id}.reason"}
    assert any(s["name"] == "route" for s in trace)
    models = {s["attributes"].get("gen_ai.request.model") for s in trace if s["name"].startswith("chat")}
    assert {res.steps[0].model, res.steps[1].model} <= models
