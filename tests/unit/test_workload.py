"""The demo workload: every line a valid request, distinct prompts, known kinds, sampling; the demo's
pipeline jobs (fleet/data/pipelines.jsonl), and how the demo spreads them among the others."""

from __future__ import annotations

import collections

import pytest

from fleet.models import Tier, validate_request
from fleet.settings import load_settings
from fleet.workload import demo_jobs, load_pipeline_jobs, load_workload, sample, sample_pipelines

#: The kind labels the workload may use (cost reports group by them; keep the set small).
KNOWN_KINDS = frozenset(
    {
        "code.function",
        "code.bugfix",
        "code.review",
        "code.tests",
        "code.refactor",
        "code.docstring",
        "code.boilerplate",
        "code.sql",
        "code.autocomplete",
        "write.email",
        "write.release_notes",
        "write.summary",
        "write.marketing",
        "write.translate",
        "extract.invoice",
        "extract.email",
        "extract.logs",
        "classify.ticket",
        "support.reply",
        "support.triage",
        "analysis.compare",
        "analysis.metric",
        "analysis.incident",
        "analysis.threat_model",
        "ops.runbook",
        "ops.alert",
        "ops.infra",
        "ops.postmortem",
        "lookup.quick",
    }
)


def test_every_line_is_a_valid_request() -> None:
    # Given the shipped workload / When each line is validated / Then none raises
    jobs = load_workload()
    for job in jobs:
        validate_request(job)


def test_at_least_150_distinct_prompts() -> None:
    prompts = [job["prompt"] for job in load_workload()]
    assert len(prompts) >= 150
    assert len(set(prompts)) == len(prompts)


def test_every_kind_is_known() -> None:
    kinds = {job.get("kind") for job in load_workload()}
    assert kinds <= KNOWN_KINDS, sorted(str(k) for k in kinds - KNOWN_KINDS)


def test_the_mix_exercises_every_routing_path() -> None:
    # Given the workload / Then each precedence rule of the router has jobs to act on
    jobs = [validate_request(job) for job in load_workload()]
    pins = collections.Counter(job.tier for job in jobs if job.tier is not None)
    assert 0.02 <= sum(pins.values()) / len(jobs) <= 0.10
    assert set(pins) == set(Tier)
    budgets = [j.hints.latency_budget_ms for j in jobs if j.hints.latency_budget_ms is not None]
    assert len(budgets) / len(jobs) >= 0.10
    assert all(500 <= ms <= 1500 for ms in budgets)
    assert any(j.hints.safety_critical for j in jobs)
    assert any(j.hints.requires_reasoning for j in jobs)
    assert {j.hints.complexity for j in jobs if j.hints.complexity} == {"low", "medium", "high"}
    assert 8 <= sum(j.response_schema is not None for j in jobs) <= 15
    # (a deadline is no routing hint: it only sends the job to the batch lane)
    hinted = sum(bool(set(job.get("hints", {})) - {"deadline_s"}) for job in load_workload())
    assert 0.35 <= hinted / len(jobs) <= 0.65
    deadlines = sum(j.hints.deadline_s is not None for j in jobs)
    assert 0.15 <= deadlines / len(jobs) <= 0.35


@pytest.mark.parametrize("n", [10, 400])
def test_sample_sizes_and_distinct_prompts(n: int) -> None:
    # When n jobs are sampled (400 is more than the file holds) / Then there are n, all distinct and valid
    jobs = sample(n)
    assert len(jobs) == n
    assert len({job["prompt"] for job in jobs}) == n
    for job in jobs:
        validate_request(job)


def test_sample_takes_the_first_n_then_cycles_with_variants() -> None:
    workload = load_workload()
    jobs = sample(len(workload) + 2)
    assert jobs[:10] == workload[:10]
    assert jobs[len(workload)]["prompt"] == workload[0]["prompt"] + " (variant 1)"
    assert jobs[len(workload)]["kind"] == workload[0]["kind"]


def test_sample_with_a_seed_is_deterministic() -> None:
    # Given a seed / Then the same jobs every time, a different pick than file order, and n < 0 refused
    assert sample(20, seed=3) == sample(20, seed=3)
    assert sample(20, seed=3) != sample(20)
    assert sample(0) == []
    with pytest.raises(ValueError):
        sample(-1)


def test_the_pipeline_jobs_run_each_shipped_pipeline_twice_over_fitting_inputs() -> None:
    # Given the demo's pipeline jobs / Then each is a valid request naming a configured pipeline,
    # two of each, distinct from each other and from the workload, the reading ones over long texts
    jobs = load_pipeline_jobs()
    for job in jobs:
        assert validate_request(job).pipeline is not None
    configured = set(load_settings(env={}).pipelines)
    names = collections.Counter(job["pipeline"] for job in jobs)
    assert set(names) == configured and set(names.values()) == {2}
    prompts = [job["prompt"] for job in jobs]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & {job["prompt"] for job in load_workload()}
    assert all(len(j["prompt"]) >= 5000 for j in jobs if j["pipeline"] in ("extract_reason", "research"))
    assert any(len(j["prompt"]) > 8000 for j in jobs if j["pipeline"] == "research")  # more than 2 chunks


@pytest.mark.parametrize(("n", "pipelines"), [(200, 8), (40, 8), (9, 8), (5, 8), (30, 20), (10, 0)])
def test_demo_jobs_spread_the_pipeline_jobs_among_the_sample(n: int, pipelines: int) -> None:
    jobs = demo_jobs(n, pipelines)
    assert len(jobs) == n
    assert len({job["prompt"] for job in jobs}) == n
    picked = [i for i, job in enumerate(jobs) if "pipeline" in job]
    assert [jobs[i] for i in picked] == sample_pipelines(min(pipelines, n))
    assert [job for job in jobs if "pipeline" not in job] == sample(n - len(picked))
    if 0 < len(picked) < n:  # spread out: neither all first nor all last
        assert picked[0] < n // len(picked) and picked[-1] >= n - n // len(picked)


def test_sample_pipelines_cycles_with_variants() -> None:
    base = load_pipeline_jobs()
    jobs = sample_pipelines(len(base) + 1)
    assert jobs[: len(base)] == base
    assert jobs[-1] == {**base[0], "prompt": base[0]["prompt"] + " (variant 1)"}
    with pytest.raises(ValueError):
        demo_jobs(10, -1)
