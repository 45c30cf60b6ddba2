"""The batch lane on real workers and the mock provider's batch APIs over HTTP (SIMULATED delays and
item failures): a job that can wait is answered from a provider batch at the batch price, on both wires;
a batch that will not end in time, and a failed item, send their jobs to the live chain before their
deadline; a job without a deadline never waits for a batch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fleet.models import TaskResult
from fleet.monitor import batch_snapshot

from .chaosrig import ChaosFleet, chaos_fleet, wait_for
from .procs import run

pytestmark = pytest.mark.integration

#: The lane's timings, shrunk: a job with a deadline of 6 s or more goes to a batch; pools are
#: submitted within half a second; a batch not ended 3 s before its earliest deadline falls back.
LANE = {
    "FLEET_BATCH__MIN_DEADLINE_S": "6",
    "FLEET_BATCH__MAX_WAIT_S": "0.5",
    "FLEET_BATCH__POLL_S": "0.25",
    "FLEET_BATCH__FALLBACK_MARGIN_S": "3",
}


@pytest.fixture(scope="module")
def lane_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    queues = ("router", "mini", "standard", "batch", "escalations")
    with chaos_fleet(tmp_path_factory.mktemp("batch"), queues=queues, env=LANE) as f:
        yield f


@pytest.fixture
def fleet(lane_fleet: ChaosFleet) -> Iterator[ChaosFleet]:
    lane_fleet.mock_reset()
    lane_fleet.mock_config(batch_delay_s=0.5, batch_failure_rate=0.0, failure_rate=0.0, faults_by_model={})
    yield lane_fleet


def _batches(fleet: ChaosFleet) -> dict[str, Any]:
    """The batch lane as `fleet status --json` shows it."""
    shown = run(["status", "--json"], fleet.cli_env(**LANE))
    assert shown.returncode == 0, shown.stderr
    batches: dict[str, Any] = json.loads(shown.stdout)["batches"]
    return batches


def _job(prompt: str, tier: str, deadline_s: int | None) -> dict[str, object]:
    job: dict[str, object] = {"prompt": prompt, "tier": tier, "max_tokens": 50}
    if deadline_s is not None:
        job["hints"] = {"deadline_s": deadline_s}
    return job


def _batch_price(fleet: ChaosFleet, res: TaskResult) -> float:
    """What the answer's tokens cost at the model's batch price."""
    attempt = res.attempts[-1]
    model = fleet.settings.model(attempt.provider, attempt.model)
    list_price = model.cost(
        attempt.input_tokens, attempt.output_tokens, attempt.cached_input_tokens, attempt.cache_write_tokens
    )
    return list_price * model.batch_price_ratio


@pytest.mark.parametrize("tier", ["mini", "standard"])  # mini: OpenAI's wire; standard: Anthropic's
def test_a_job_that_can_wait_is_answered_from_a_batch_at_the_batch_price(
    fleet: ChaosFleet, tier: str
) -> None:
    # Given three jobs that can wait a minute
    ids = [fleet.client.submit(_job(f"Rename v{i} to w{i} in f{i}.py", tier, 60)) for i in range(3)]
    # Then they wait in the batch lane, not in a live call
    wait_for(
        lambda: fleet.client.status(ids[0]).state in ("batched", "completed"), 20, "the job to be batched"
    )
    # And each is answered from one provider batch, at half the list price, with no live call made
    results = fleet.wait_final(ids, 40)
    batch_ids = set()
    for res in results.values():
        assert res.status == "completed", res
        assert str(res.tier) == tier
        (attempt,) = res.attempts
        assert attempt.outcome == "ok" and attempt.batch_id, attempt
        batch_ids.add(attempt.batch_id)
        assert res.cost_usd == pytest.approx(_batch_price(fleet, res), rel=1e-6)
        assert res.answer
    assert len(batch_ids) == 1, batch_ids  # pooled into one batch
    assert fleet.mock_stats()["total"] == 0  # no live chat call


def test_a_batch_that_will_not_end_in_time_falls_back_before_the_deadline(fleet: ChaosFleet) -> None:
    # Given batches that take far longer than the job can wait (SIMULATED)
    fleet.mock_config(batch_delay_s=3600)
    started = time.time()
    task_id = fleet.client.submit(_job("Rename a to b in late.py", "mini", 14))
    # While its batch is out, `fleet status` shows it, with the time left before it falls back
    state = redis.Redis.from_url(fleet.redis_url)
    wait_for(lambda: batch_snapshot(state)["in_flight"], 10, "the batch to be submitted")
    (flying,) = _batches(fleet)["in_flight"]
    assert flying["link"] == "openai:gpt-4.1-mini" and flying["items"] == 1 and flying["batch_id"]
    assert 0 < flying["fallback_in_s"] <= 14 - 3
    shown = run(["status"], fleet.cli_env(**LANE, COLUMNS="200"))
    state.close()
    assert shown.returncode == 0 and "batch lane" in shown.stdout and flying["batch_id"] in shown.stdout
    # Then the job is answered by its live chain before its deadline of 14 s
    res = fleet.wait_final([task_id], 40)[task_id]
    assert res.status == "completed", res
    assert res.finished_at is not None and res.submitted_at is not None
    assert res.finished_at - res.submitted_at < 14, res.finished_at - res.submitted_at
    # And its record says why: the batch attempt timed out, then a live call answered at list price
    first, last = res.attempts[0], res.attempts[-1]
    assert first.outcome == "batch_timeout" and first.batch_id, first
    assert last.outcome == "ok" and last.batch_id is None, last
    assert time.time() - started >= 14 - 3 - 1  # it waited for the batch until its fallback time


def test_a_failed_batch_item_goes_to_the_live_chain(fleet: ChaosFleet) -> None:
    # Given a provider whose batch items all fail (SIMULATED)
    fleet.mock_config(batch_failure_rate=1.0)
    task_id = fleet.client.submit(_job("Rename c to d in fail.py", "mini", 60))
    res = fleet.wait_final([task_id], 30)[task_id]
    # Then the job is answered live, its failed item on its record
    assert res.status == "completed", res
    assert res.attempts[0].batch_id and res.attempts[0].outcome != "ok", res.attempts
    assert res.attempts[-1].outcome == "ok" and res.attempts[-1].batch_id is None
    assert fleet.mock_stats()["total"] >= 1


def test_a_job_without_a_deadline_never_waits_for_a_batch(fleet: ChaosFleet) -> None:
    fleet.mock_config(batch_delay_s=3600)
    task_id = fleet.client.submit(_job("Rename e to f in now.py", "mini", None))
    res = fleet.wait_final([task_id], 20)[task_id]
    assert res.status == "completed" and all(a.batch_id is None for a in res.attempts), res
