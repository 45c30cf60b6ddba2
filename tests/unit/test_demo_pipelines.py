"""`fleet demo` counts its pipeline jobs: per pipeline submitted, completed, escalated and lost, in the
summary (from results built by hand) and in the live progress; a pipeline's all-on-full baseline."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.demo import pipeline_counts, run_workload, summarise
from fleet.models import StepResult, TaskResult, Tier
from fleet.settings import Settings, load_settings


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(env={})


def _step(step: str, tier: Tier, inp: int, out: int, cost: float, index: int | None = None) -> StepResult:
    suffix = "" if index is None else f".{index}"
    return StepResult(step=step, index=index, task_id=f"p.{step}{suffix}", status="completed", tier=tier,
                      provider="mock", model="m", input_tokens=inp, output_tokens=out, cost_usd=cost,
                      resolved_by="model", output=f"{step} out")  # fmt: skip


def _pipeline(task_id: str, name: str, status: Any, steps: list[StepResult]) -> TaskResult:
    return TaskResult(task_id=task_id, status=status, pipeline=name, steps=steps, tier=steps[-1].tier,
                      answer=steps[-1].output if status == "completed" else None,
                      input_tokens=sum(s.input_tokens for s in steps),
                      output_tokens=sum(s.output_tokens for s in steps),
                      cost_usd=sum(s.cost_usd for s in steps), submitted_at=1.0, finished_at=2.0)  # fmt: skip


def _job(task_id: str, status: Any, tier: Tier = Tier.MINI) -> TaskResult:
    return TaskResult(
        task_id=task_id, status=status, tier=tier, answer="a", submitted_at=1.0, finished_at=1.5
    )


#: Submitted in this order: task_ids[i] is jobs[i].
JOBS: list[dict[str, Any]] = [
    {"prompt": "a plain job"},
    {"prompt": "notes one", "pipeline": "extract_reason"},
    {"prompt": "notes two", "pipeline": "extract_reason"},
    {"prompt": "a long text", "pipeline": "research"},
    {"prompt": "another long text", "pipeline": "research"},
    {"prompt": "write a runbook", "pipeline": "review"},
    {"prompt": "another plain job"},
    {"prompt": "lost plain job"},
    {"prompt": "draft an email", "pipeline": "draft_polish"},
]
TASK_IDS = [f"t{i}" for i in range(len(JOBS))]
EXTRACT = [_step("extract", Tier.MINI, 4000, 300, 0.002), _step("reason", Tier.FULL, 200, 500, 0.02)]
RESEARCH = [
    _step("claims", Tier.MINI, 1100, 80, 0.001, 0),
    _step("claims", Tier.MINI, 900, 70, 0.001, 1),
    _step("dedupe", Tier.MINI, 200, 100, 0.0005),
    _step("synthesis", Tier.FULL, 150, 400, 0.015),
]
RESULTS: dict[str, TaskResult] = {
    "t0": _job("t0", "completed"),
    "t1": _pipeline("t1", "extract_reason", "completed", EXTRACT),
    "t2": _pipeline("t2", "extract_reason", "escalated", EXTRACT),  # failed at its reasoning step
    "t3": _pipeline("t3", "research", "completed", RESEARCH),
    # t4 (research) has no final state: lost
    "t5": _pipeline("t5", "review", "discarded", [_step("write", Tier.MINI, 50, 300, 0.001)]),
    "t6": _job("t6", "escalated", Tier.FULL),
    # t7 (a plain job) lost too
    "t8": _pipeline("t8", "draft_polish", "completed", [_step("draft", Tier.MINI, 60, 250, 0.001)]),
}


def test_each_pipeline_counts_its_own_jobs_and_a_lost_one() -> None:
    assert pipeline_counts(TASK_IDS, JOBS, RESULTS) == {
        "draft_polish": {"submitted": 1, "completed": 1, "escalated": 0, "lost": 0},
        "extract_reason": {"submitted": 2, "completed": 1, "escalated": 1, "lost": 0},
        "research": {"submitted": 2, "completed": 1, "escalated": 0, "lost": 1},
        "review": {"submitted": 1, "completed": 0, "escalated": 1, "lost": 0},  # discarded: not completed
    }


def test_the_summary_reports_the_pipelines_and_counts_them_in_its_totals(settings: Settings) -> None:
    summary = summarise(settings, "redis://127.0.0.1:6379/0", TASK_IDS, RESULTS, JOBS)
    assert summary["pipelines"] == pipeline_counts(TASK_IDS, JOBS, RESULTS)
    assert list(summary["pipelines"]) == sorted(summary["pipelines"])
    # Every task id counts once in the totals, a pipeline's as one job (not one per step)
    assert (summary["submitted"], summary["completed"], summary["escalated"], summary["lost"]) == (9, 4, 3, 2)
    assert sum(row["lost"] for row in summary["pipelines"].values()) == 1
    assert summary["cost_usd"] == pytest.approx(sum(r.cost_usd for r in RESULTS.values()), abs=1e-6)


def test_a_pipelines_all_on_full_baseline_is_its_input_once_and_its_answer(settings: Settings) -> None:
    # Given a research pipeline alone: its map's items are the whole input, synthesis the answer
    provider, model = settings.tier("full").links()[0]
    prices = settings.model(provider, model)
    summary = summarise(settings, "redis://x", ["t3"], {"t3": RESULTS["t3"]}, [JOBS[3]])
    assert summary["cost_all_full_usd"] == pytest.approx(prices.cost(1100 + 900, 400), abs=1e-6)


def test_no_pipeline_jobs_no_pipelines_line(settings: Settings) -> None:
    summary = summarise(settings, "redis://x", ["t0"], {"t0": RESULTS["t0"]}, [JOBS[0]])
    assert summary["pipelines"] == {}


class _FakeClient:
    """Submits in order and answers every peek with the results known so far."""

    def __init__(self) -> None:
        self.ids = iter(TASK_IDS)

    def submit(self, job: dict[str, Any]) -> str:
        return next(self.ids)

    def peek(self, task_ids: list[str]) -> dict[str, TaskResult]:
        return {t: RESULTS[t] for t in task_ids if t in RESULTS}


def test_the_live_progress_counts_pipelines_done_against_those_submitted() -> None:
    _, ids, progress = run_workload(_FakeClient(), JOBS, timeout_s=0.5, poll_s=0.01)  # type: ignore[arg-type]
    assert ids == TASK_IDS
    assert dict(progress.pipelines_total) == {
        "extract_reason": 2,
        "research": 2,
        "review": 1,
        "draft_polish": 1,
    }
    assert dict(progress.pipelines_done) == {
        "extract_reason": 2,
        "research": 1,
        "review": 1,
        "draft_polish": 1,
    }
    assert (progress.completed, progress.escalated) == (4, 3)


def test_lost_jobs_say_where_each_was_last_seen() -> None:
    import time

    from fleet.demo import lost_jobs
    from fleet.errors import TaskNotFound
    from fleet.models import JobStatus

    class Records:
        def status(self, task_id: str) -> JobStatus:
            if task_id == "gone":
                raise TaskNotFound("no job gone")
            return JobStatus(task_id=task_id, state="running", queue="mini", since=time.time() - 30,
                             worker="vm:1:abc#0", attempt=2)  # fmt: skip

    done = {"ok": TaskResult(task_id="ok", status="completed")}
    rows = lost_jobs(Records(), ["ok", "stuck", "gone"], done)  # type: ignore[arg-type]
    assert [r["task_id"] for r in rows] == ["stuck", "gone"]
    assert rows[0]["state"] == "running" and rows[0]["queue"] == "mini" and rows[0]["worker"] == "vm:1:abc#0"
    assert 29 <= rows[0]["for_s"] <= 60 and rows[0]["attempt"] == 2
    assert rows[1]["state"] == "unknown" and "no job gone" in rows[1]["detail"]
