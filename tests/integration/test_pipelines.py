"""Pipelines on real workers: each step a job on its tier's queue (the mock provider over real HTTP),
one task id for the producer, the steps on its result and in `fleet costs`; a failing step escalates
the pipeline, and a person's answer (or retry) resumes it; a worker killed mid-pipeline loses nothing
and runs no finished step again."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from fleet import keys
from fleet.costs import read_records, report
from fleet.errors import InvalidRequest
from fleet.inbox import Inbox
from fleet.models import Tier

from .chaosrig import ChaosFleet, chaos_fleet, wait_for
from .procs import run

pytestmark = pytest.mark.integration

FULL_MODELS = ("claude-opus-4-1", "o3", "gpt-4.1")
#: The mini tier's limits in this fleet: a 50-chunk fan-out must keep to them.
MINI_PER_MIN, MINI_THREADS = 600, 4
#: A long document: 30 paragraphs of meeting notes (about 14,000 characters).
DOCUMENT = "\n\n".join(
    f"Meeting {n}: the platform team decided to move service s{n} to the new cluster by "
    f"2026-0{1 + n % 9}-15. "
    f"Dana (SRE) owns the cut-over; Lee (payments) reviews the runbook. The open risk is the s{n} "
    "database failover, which was never tested under load; an action was taken to test it first. "
    + "Notes went on about capacity, budgets and the on-call rota. "
    * 4
    for n in range(30)
)


@pytest.fixture(scope="module")
def pipeline_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    queues = ("router", "mini", "standard", "full", "escalations")
    env = {
        "FLEET_QUEUES__MINI__RATE_LIMIT": f'"{MINI_PER_MIN}/m"',
        "FLEET_QUEUES__MINI__CONCURRENCY": str(MINI_THREADS),
    }
    with chaos_fleet(tmp_path_factory.mktemp("pipelines"), queues=queues, env=env) as fleet:
        yield fleet


#: The CLI's settings here: the judge is off, as in the pipeline fleet's workers.
NO_JUDGE = {"FLEET_QUALITY__ENABLED": "false"}


@pytest.fixture
def fleet(pipeline_fleet: ChaosFleet) -> ChaosFleet:
    pipeline_fleet.mock_config(failure_rate=0.0, faults_by_model={}, latency_ms=5)
    return pipeline_fleet


def test_extract_reason_runs_mini_then_full_under_one_task_id(fleet: ChaosFleet) -> None:
    task_id = fleet.client.submit({"prompt": DOCUMENT, "pipeline": "extract_reason", "kind": "notes"})
    res = fleet.client.result(task_id, timeout=60)
    assert res.status == "completed" and res.pipeline == "extract_reason"
    assert [(s.step, s.tier) for s in res.steps] == [("extract", Tier.MINI), ("reason", Tier.FULL)]
    extract = json.loads(res.steps[0].output or "")
    assert set(extract) >= {"entities", "dates", "decisions", "actions"}
    assert res.answer == res.steps[1].output and res.tier is Tier.FULL
    assert res.cost_usd == pytest.approx(sum(s.cost_usd for s in res.steps), abs=1e-8)
    # The reasoning step saw the extraction, not the whole document
    full_in, mini_in = res.steps[1].input_tokens, res.steps[0].input_tokens
    assert 0 < full_in < mini_in / 2
    # `fleet result` shows the steps
    shown = run(["result", task_id], fleet.cli_env(**NO_JUDGE))
    assert shown.returncode == 0, shown.stderr
    assert "pipeline extract_reason" in shown.stdout and "reason" in shown.stdout
    # `fleet costs` splits spend by pipeline and by step
    data = report(read_records(fleet.client.redis, 3600))
    split = data["by_pipeline"]["extract_reason"]["by_step"]
    assert set(split) >= {"extract", "reason"} and split["reason"]["cost_usd"] > 0


def test_review_writes_on_mini_reviews_on_full_revises_on_standard(fleet: ChaosFleet) -> None:
    task_id = fleet.client.submit({"prompt": "Write a runbook for rotating the TLS certificate.",
                                   "pipeline": "review"})  # fmt: skip
    res = fleet.client.result(task_id, timeout=60)
    assert res.status == "completed"
    assert [(s.step, s.tier) for s in res.steps] == [
        ("write", Tier.MINI), ("review", Tier.FULL), ("revise", Tier.STANDARD)
    ]  # fmt: skip
    assert "problems" in json.loads(res.steps[1].output or "")


def test_research_maps_over_chunks_then_joins(fleet: ChaosFleet) -> None:
    task_id = fleet.client.submit({"prompt": DOCUMENT, "pipeline": "research"})
    res = fleet.client.result(task_id, timeout=90)
    assert res.status == "completed"
    chunks = [s for s in res.steps if s.step == "claims"]
    assert len(chunks) >= 3 and [s.index for s in chunks] == list(range(len(chunks)))
    assert {s.tier for s in chunks} == {Tier.MINI}
    assert [s.step for s in res.steps[len(chunks) :]] == ["dedupe", "synthesis"]
    assert res.steps[-1].tier is Tier.FULL


def test_a_fan_out_of_50_chunks_keeps_to_its_tiers_rate_limit_and_concurrency(fleet: ChaosFleet) -> None:
    # Given a text of 50 chunks, and mini calls that take 200 ms
    fleet.mock_config(latency_ms=200)
    text = "\n\n".join(
        f"Section {n}. " + f"Claim {n}: service s{n} moved to the new cluster. " * 70 for n in range(50)
    )
    task_id = fleet.client.submit({"prompt": text, "pipeline": "research"})
    res = fleet.client.result(task_id, timeout=120)
    assert res.status == "completed"
    items = fleet.client.peek([f"{task_id}.claims.{i}" for i in range(50)])
    assert len(items) == 50 and all(r.status == "completed" for r in items.values())
    # Then no more than the pool's threads called at once (each call's span: its end less its latency)
    spans = [(r.finished_at - r.attempts[-1].latency_ms / 1000, r.finished_at) for r in items.values()
             if r.finished_at is not None]  # fmt: skip
    most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert most <= MINI_THREADS
    # And the 50 calls took at least what the rate limit allows (10/s, less a burst of one second's)
    ends = sorted(b for _, b in spans)
    assert ends[-1] - ends[0] >= (50 - MINI_PER_MIN / 60) / (MINI_PER_MIN / 60) * 0.9


def test_an_unknown_pipeline_is_refused_at_the_door(fleet: ChaosFleet) -> None:
    with pytest.raises(InvalidRequest, match="unknown pipeline 'nope'"):
        fleet.client.submit({"prompt": "x", "pipeline": "nope"})
    with pytest.raises(InvalidRequest, match="cannot set tier"):
        fleet.client.submit({"prompt": "x", "pipeline": "review", "tier": "mini"})
    refused = run(["submit", "--pipeline", "nope", "a document"], fleet.cli_env(**NO_JUDGE))
    assert refused.returncode == 6 and "unknown pipeline 'nope'" in refused.stderr
    assert fleet.client.redis.llen("router") == 0  # nothing was enqueued


def test_a_failing_step_escalates_the_pipeline_and_a_persons_answer_resumes_it(fleet: ChaosFleet) -> None:
    # Given every model of the full tier refusing the reasoning step
    fleet.mock_config(faults_by_model={m: {"bad_request": 1.0} for m in FULL_MODELS})
    task_id = fleet.client.submit({"prompt": DOCUMENT, "pipeline": "extract_reason"})
    res = fleet.client.result(task_id, timeout=60)
    # Then the pipeline is escalated at its failed step, with the steps before it
    assert res.status == "escalated" and res.escalation_id and (res.reason or "").startswith("step reason")
    assert [(s.step, s.status) for s in res.steps] == [("extract", "completed"), ("reason", "escalated")]
    inbox = Inbox(fleet.settings, redis_url=fleet.redis_url)
    try:
        record = inbox.get(res.escalation_id)
        assert record.task_id == f"{task_id}.reason"
        assert f"pipeline extract_reason ({task_id}) step reason" in record.detail
        assert "DECISIONS:" in str(record.request)  # the outputs before it, in the step's input
        # When a person answers the step
        inbox.resolve(record.id, "Test the failover first; then cut over.", "dana")
    finally:
        inbox.close()
    # Then the pipeline completes with that answer
    wait_for(
        lambda: fleet.client.result(task_id, timeout=5).status == "completed", 30, "the pipeline to resume"
    )
    done = fleet.client.result(task_id, timeout=5)
    assert done.answer == "Test the failover first; then cut over."
    assert done.steps[-1].resolved_by == "human"


def test_a_retry_runs_just_the_failed_step_again(fleet: ChaosFleet) -> None:
    fleet.mock_config(faults_by_model={m: {"bad_request": 1.0} for m in FULL_MODELS})
    task_id = fleet.client.submit({"prompt": DOCUMENT, "pipeline": "extract_reason"})
    res = fleet.client.result(task_id, timeout=60)
    assert res.status == "escalated" and res.escalation_id
    extract_before = res.steps[0]
    fleet.mock_config(faults_by_model={})
    inbox = Inbox(fleet.settings, redis_url=fleet.redis_url)
    try:
        inbox.retry(res.escalation_id, "dana")
    finally:
        inbox.close()
    done = fleet.client.result(task_id, timeout=60)
    assert done.status == "completed" and done.steps[-1].resolved_by == "model"
    assert done.steps[0] == extract_before  # the extraction did not run again
    lines = [r for r in read_records(fleet.client.redis, 3600) if r.task_id == f"{task_id}.extract"]
    assert len(lines) == 1


def test_a_worker_killed_mid_pipeline_loses_nothing_and_reruns_no_finished_step(fleet: ChaosFleet) -> None:
    # Given the reasoning step slow enough to be killed in the middle of its call
    fleet.mock_config(latency_ms=1500)
    task_id = fleet.client.submit({"prompt": DOCUMENT, "pipeline": "extract_reason"})
    step = f"{task_id}.reason"
    wait_for(lambda: fleet.client.redis.exists(keys.running(step)), 30, "the reasoning step to start")
    # When the full tier's worker is SIGKILLed and restarted
    fleet.supervisor.pools["full"].signal(signal.SIGKILL)
    wait_for(lambda: not fleet.supervisor.pools["full"].alive(), 5, "the worker to die")
    fleet.supervisor.check()
    fleet.mock_config(latency_ms=5)
    # Then the pipeline completes, each step with one result and one cost line
    res = fleet.client.result(task_id, timeout=60)
    assert res.status == "completed" and [s.step for s in res.steps] == ["extract", "reason"]
    lines = [r.task_id for r in read_records(fleet.client.redis, 3600) if r.task_id.startswith(task_id)]
    assert sorted(lines) == [f"{task_id}.extract", f"{task_id}.reason"]
