"""The quality gate on real workers, with the mock provider's SIMULATED model quality over real HTTP:
a failed answer is upgraded, polished or escalated; verdicts feed pass rates that move a failing kind
up a tier at the router; shadow runs on full are judged side by side and show in `fleet quality`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from fleet import keys
from fleet.models import Tier

from ..conftest import flush_fleet_keys
from .chaosrig import ChaosFleet, chaos_fleet, wait_for
from .procs import run

pytestmark = pytest.mark.integration

ENV = {
    "FLEET_QUALITY__ENABLED": "true",
    "FLEET_MOCK__SIMULATE_QUALITY": "true",
    # every answer on mini and standard is judged; full's only when upgraded or flagged
    "FLEET_QUALITY__TIERS__MINI__SAMPLE_RATE": "1.0",
    "FLEET_QUALITY__TIERS__STANDARD__SAMPLE_RATE": "1.0",
    "FLEET_QUALITY__KINDS__TEST_POLISH__ACTION": '"polish"',
    "FLEET_QUALITY__KINDS__TEST_PEOPLE__ACTION": '"escalate"',
    "FLEET_QUALITY__FEEDBACK__MIN_JUDGED": "5",
    "FLEET_QUALITY__FEEDBACK__REFRESH_S": "0.2",
    "FLEET_ROUTER__SHADOW_RATE": "1.0",  # every answer below full is re-run on full in the background
}
#: The simulation made certain: gpt-4.1-mini gets every job wrong, the judge catches every flaw and
#: raises no false alarm, the stronger models are always right, no answer shows a confidence signal.
CERTAIN = {
    "enabled": True,
    "capability": {"gpt-4.1-mini": 0, "claude-sonnet-4-5": 5, "claude-opus-4-1": 5},
    "flaw_within": 0.0, "flaw_at_edge": 0.0, "flaw_beyond": 1.0,
    "judge_catch": 1.0, "judge_false_alarm": 0.0, "signal_when_flawed": 0.0, "signal_when_sound": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def quality_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    queues = ("router", "mini", "standard", "full", "escalations")
    with chaos_fleet(tmp_path_factory.mktemp("quality"), queues=queues, env=ENV) as fleet:
        yield fleet


@pytest.fixture
def fleet(quality_fleet: ChaosFleet) -> Iterator[ChaosFleet]:
    quality_fleet.mock_reset()
    quality_fleet.mock_config(quality=CERTAIN)
    # Not FLUSHDB: the running workers hold kombu's queue bindings (a publish with none is routed
    # nowhere), and lose them only here (see flush_fleet_keys).
    flush_fleet_keys(quality_fleet.redis_url)
    yield quality_fleet


def _quality(fleet: ChaosFleet) -> dict[str, object]:
    done = run(["quality", "--since", "1h", "--json"], fleet.cli_env(**ENV))
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(done.stdout)
    return data


def _row(data: dict[str, object], tier: str, kind: str) -> dict[str, object]:
    rows = data["by_kind_and_tier"]
    assert isinstance(rows, list)
    return next(r for r in rows if r["tier"] == tier and r["kind"] == kind)


def test_a_flawed_mini_answer_is_upgraded_and_ships_from_standard(fleet: ChaosFleet) -> None:
    # Given a job the router sends to mini, whose model answers it wrong, and a watch on every write
    # of a result key (each is PUBLISHed on the key's channel)
    watch = redis.Redis.from_url(fleet.redis_url).pubsub()
    watch.psubscribe(keys.result("*"))
    task_id = fleet.client.submit({"prompt": "Rename x to total in: x = a + b", "kind": "test.upgrade",
                                   "hints": {"complexity": "low"}})  # fmt: skip
    # When it runs, Then the judge fails mini's answer, the job runs again on standard, and passes
    res = fleet.client.result(task_id, timeout=60)
    # and its result key was written once, with its final result: never a RETRY state of the hop to
    # standard, which Celery's check-then-write could put over the final result of the standard run
    writes = [json.loads(m["data"])["status"] for m in iter(lambda: watch.get_message(timeout=1.0), None)
              if m["type"] == "pmessage" and m["channel"] == keys.result(task_id).encode()]  # fmt: skip
    watch.close()
    assert writes == ["SUCCESS"], writes
    assert res.status == "completed" and res.tier is Tier.STANDARD and res.model == "claude-sonnet-4-5"
    assert [(c.tier, c.action) for c in res.quality] == [(Tier.MINI, "upgrade"), (Tier.STANDARD, "pass")]
    assert res.quality[0].score is not None and res.quality[0].score <= 2 and res.quality[0].problems
    assert [a.purpose for a in res.attempts] == ["answer", "judge", "answer", "judge"]
    assert res.routing is not None and "upgraded to standard" in res.routing.reasons[-1]
    # And the verdicts count on each tier's pass rate
    data = _quality(fleet)
    assert (_row(data, "mini", "test.upgrade")["judged"], _row(data, "mini", "test.upgrade")["passed"]) == (
        1,
        0,
    )
    assert _row(data, "standard", "test.upgrade")["passed"] == 1


def test_a_kind_set_to_polish_is_rewritten_by_a_stronger_model(fleet: ChaosFleet) -> None:
    job = {"prompt": "Summarise: the meeting moved to Tuesday.", "kind": "test_polish", "tier": "mini"}
    task_id = fleet.client.submit(job)
    res = fleet.client.result(task_id, timeout=60)
    assert res.status == "completed" and res.tier is Tier.MINI and res.model == "claude-sonnet-4-5"
    assert [c.action for c in res.quality] == ["polish"]
    assert [a.purpose for a in res.attempts] == ["answer", "judge", "polish"]


def test_a_kind_set_to_escalate_goes_to_people(fleet: ChaosFleet) -> None:
    task_id = fleet.client.submit({"prompt": "Draft the refund reply for order 1182.", "kind": "test_people",
                                   "tier": "mini"})  # fmt: skip
    res = fleet.client.result(task_id, timeout=60)
    assert res.status == "escalated" and res.reason == "quality_check_failed"
    record = fleet.store().for_task(task_id)
    assert record is not None and "quality gate" in record.detail


def test_failures_move_a_kind_up_at_the_router_and_say_why(fleet: ChaosFleet) -> None:
    # Given five jobs of one kind failing on mini (each then upgraded and passing on standard)
    jobs = [{"prompt": f"Extract the order id from: 'Order #A-{n} shipped'", "kind": "test.feedback",
             "hints": {"complexity": "low"}} for n in range(5)]  # fmt: skip
    # (a complexity hint is never moved by feedback: the content classifier must decide)
    jobs = [{**j, "hints": {}} for j in jobs]
    ids = [fleet.client.submit(j) for j in jobs]
    first = fleet.wait_final(ids, timeout=90)
    assert len(first) == 5 and {r.quality[0].tier for r in first.values()} == {Tier.MINI}
    # When the next job of that kind is routed (the router reads the pass rates again within 0.2 s)
    wait_for(lambda: _row(_quality(fleet), "mini", "test.feedback")["judged"] == 5, 10, "the verdicts")
    next_job = {**jobs[0], "prompt": "Extract the id from: 'Order #B-9'"}
    again = fleet.client.result(fleet.client.submit(next_job), timeout=60)
    # Then it goes straight to standard, with the feedback in its reasons
    assert again.routing is not None and again.routing.tier is Tier.STANDARD
    assert "quality feedback: test.feedback passed 0 of 5 checked on mini" in again.routing.reasons[-1]
    assert [c.tier for c in again.quality] == [Tier.STANDARD]
    moved = _quality(fleet)["moved_up"]
    assert isinstance(moved, list) and moved[0]["kind"] == "test.feedback"
    # And `fleet classify --report --feedback` says what the feedback moved
    line = json.dumps({"prompt": "Extract the id from: 'Order #C-1'", "kind": "test.feedback"})
    report = run(["classify", "--report", "--feedback"], fleet.cli_env(**ENV), input=line + "\n")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["tier"] == "standard"
    assert "quality feedback moved 1 test.feedback job(s) from mini up to standard" in report.stderr


def test_a_shadow_run_on_full_is_judged_side_by_side_and_reported(fleet: ChaosFleet) -> None:
    # Given a mini model that answers right this time (so the job completes on mini)
    fleet.mock_config(quality={**CERTAIN, "capability": {"gpt-4.1-mini": 5, "claude-opus-4-1": 5}})
    task_id = fleet.client.submit({"prompt": "Translate 'good morning' to French.", "kind": "test.shadow",
                                   "tier": "mini"})  # fmt: skip
    res = fleet.client.result(task_id, timeout=60)
    # Then the producer's result is mini's, unchanged by its shadow run
    assert res.status == "completed" and res.tier is Tier.MINI and res.model == "gpt-4.1-mini"
    # And the shadow run answers on full, both answers are judged together, and fleet quality shows it
    shadow = fleet.wait_final([f"shadow-{task_id}"], timeout=60)[f"shadow-{task_id}"]
    assert shadow.tier is Tier.FULL and shadow.quality[0].action.startswith("compared: mini scored")
    wait_for(lambda: _row(_quality(fleet), "mini", "test.shadow").get("shadow") == 1, 10, "the comparison")
    row = _row(_quality(fleet), "mini", "test.shadow")
    assert row["shadow_pass_rate"] == 1.0 and row["shadow_full_pass_rate"] == 1.0
    # And its cost is a line of its own
    from fleet.costs import read_records

    lines = {r.task_id: r.status for r in read_records(fleet.client.redis, None)}
    assert lines[task_id] == "completed" and lines[f"shadow-{task_id}"] == "shadow"


def test_draft_polish_rewrites_on_full_only_the_drafts_below_its_threshold(fleet: ChaosFleet) -> None:
    # Given the draft_polish pipeline (its draft step judges every mini draft; full rewrites a failure)
    # When mini's draft is wrong
    failed = fleet.client.result(
        fleet.client.submit(
            {"prompt": "Draft a two-line status update on the migration.", "pipeline": "draft_polish"}
        ),
        timeout=60,
    )
    # Then the judge fails it and the full tier's model rewrites it
    assert failed.status == "completed" and [s.step for s in failed.steps] == ["draft"]
    assert [c.action for c in failed.quality] == ["polish"] and failed.steps[0].quality[0].score is not None
    assert failed.model == "claude-opus-4-1"  # queues/full.toml's first link, not standard's
    # And when mini's draft is right, it ships as drafted: judged, not rewritten
    fleet.mock_config(quality={**CERTAIN, "capability": {"gpt-4.1-mini": 5, "claude-sonnet-4-5": 5}})
    passed = fleet.client.result(
        fleet.client.submit(
            {"prompt": "Draft a two-line status update on the backup job.", "pipeline": "draft_polish"}
        ),
        timeout=60,
    )
    assert [c.action for c in passed.quality] == ["pass"] and passed.model == "gpt-4.1-mini"
