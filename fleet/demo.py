"""The demo's workload run: submit a sample workload, follow it to its final states, summarise."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.costs import batch_saving, cache_saving
from fleet.errors import FleetError
from fleet.models import TaskResult
from fleet.producer import Client
from fleet.settings import Settings, mask_url

__all__ = ["Progress", "percentile", "pipeline_counts", "run_workload", "summarise"]


@dataclass
class Progress:
    """What the live display shows; updated by :func:`run_workload`."""

    total: int
    submitted: int = 0
    completed: int = 0
    escalated: int = 0
    by_tier: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    #: Pipeline jobs by pipeline name: how many the workload holds, and how many reached a final state.
    pipelines_total: Counter[str] = field(default_factory=Counter)
    pipelines_done: Counter[str] = field(default_factory=Counter)

    @property
    def done(self) -> int:
        return self.completed + self.escalated


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_workload(
    client: Client,
    jobs: list[dict[str, Any]],
    *,
    timeout_s: float = 300.0,
    on_progress: Callable[[Progress], None] | None = None,
    poll_s: float = 0.2,
) -> tuple[dict[str, TaskResult], list[str], Progress]:
    """Submit ``jobs`` and wait for each to reach a final state (or the timeout).

    Returns the results by task id, every submitted task id, and the final progress.
    """
    progress = Progress(
        total=len(jobs), pipelines_total=Counter(str(j["pipeline"]) for j in jobs if j.get("pipeline"))
    )
    task_ids: list[str] = []
    submit_error: list[BaseException] = []

    def submit_all() -> None:
        try:
            for job in jobs:
                task_ids.append(client.submit(job))
                progress.submitted += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            submit_error.append(exc)

    submitter = threading.Thread(target=submit_all, name="fleet-demo-submit", daemon=True)
    submitter.start()
    results: dict[str, TaskResult] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = [t for t in list(task_ids) if t not in results]
        for task_id, res in client.peek(pending).items():
            results[task_id] = res
            if res.status == "completed":
                progress.completed += 1
            else:
                progress.escalated += 1
            if res.tier is not None:
                progress.by_tier[str(res.tier)] += 1
            if res.pipeline is not None:
                progress.pipelines_done[res.pipeline] += 1
        if on_progress is not None:
            on_progress(progress)
        if submit_error:
            raise submit_error[0]
        if not submitter.is_alive() and len(results) == len(task_ids):
            break
        time.sleep(poll_s)
    submitter.join(timeout=1)
    return results, list(task_ids), progress


def _answer_tokens(result: TaskResult) -> tuple[int, int]:
    """The tokens of a result's answering calls (a judge's and a rewrite's are not the job's work)."""
    answering = [a for a in result.attempts if a.purpose == "answer"]
    return sum(a.input_tokens for a in answering), sum(a.output_tokens for a in answering)


def _all_full_tokens(result: TaskResult) -> tuple[int, int]:
    """The tokens of a job answered once by the full tier: its answering calls' for a job; for a
    pipeline, its first step's input (every item of a map: the whole input) and its last step's output."""
    if result.pipeline is None:
        return _answer_tokens(result)
    if not result.steps:
        return 0, 0
    first = result.steps[0].step
    return sum(s.input_tokens for s in result.steps if s.step == first), result.steps[-1].output_tokens


def pipeline_counts(
    task_ids: list[str], jobs: list[dict[str, Any]], results: dict[str, TaskResult]
) -> dict[str, dict[str, int]]:
    """Per pipeline name: its jobs submitted, completed, escalated (escalated or discarded) and lost
    (no final state). ``jobs[i]`` is the request submitted as ``task_ids[i]``."""
    counts: dict[str, dict[str, int]] = {}
    for task_id, job in zip(task_ids, jobs, strict=False):
        name = job.get("pipeline")
        if not name:
            continue
        row = counts.setdefault(str(name), {"submitted": 0, "completed": 0, "escalated": 0, "lost": 0})
        row["submitted"] += 1
        res = results.get(task_id)
        row["lost" if res is None else "completed" if res.status == "completed" else "escalated"] += 1
    return dict(sorted(counts.items()))


def summarise(
    settings: Settings,
    redis_url: str,
    task_ids: list[str],
    results: dict[str, TaskResult],
    jobs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The demo's JSON summary (see ``fleet demo --help``). ``jobs``: the submitted requests, in the
    order of ``task_ids`` (the pipelines' counts need them: a lost job has no result to name its pipeline)."""
    completed = [r for r in results.values() if r.status == "completed"]
    escalated = [r for r in results.values() if r.status != "completed"]
    full_provider, full_model = settings.tier("full").links()[0]
    full_prices = settings.model(full_provider, full_model)
    latencies = [r.latency_ms for r in results.values() if r.latency_ms is not None]
    by_tier: Counter[str] = Counter(str(r.tier) for r in results.values() if r.tier is not None)
    by_model: Counter[str] = Counter(f"{r.provider}:{r.model}" for r in completed)
    checks = [c for r in results.values() for c in r.quality]
    attempts = [a for r in results.values() for a in r.attempts]
    cached = sum(a.cached_input_tokens for a in attempts)
    tokens_in = sum(a.input_tokens for a in attempts)
    return {
        "submitted": len(task_ids),
        "completed": len(completed),
        "escalated": len(escalated),
        "lost": len(task_ids) - len(completed) - len(escalated),
        "by_tier": {tier: by_tier.get(tier, 0) for tier in ("mini", "standard", "full", "fast")},
        "by_model": dict(by_model.most_common()),
        "fallbacks": sum(1 for r in completed if (r.fallback_index or 0) > 0),
        "cost_usd": round(sum(r.cost_usd for r in results.values()), 6),
        "cost_all_full_usd": round(sum(full_prices.cost(*_all_full_tokens(r)) for r in results.values()), 6),
        "judge_cost_usd": round(
            sum(a.cost_usd for r in results.values() for a in r.attempts if a.purpose != "answer"), 6
        ),
        # The providers' prompt caches (SIMULATED by the mock): input tokens read from them, their
        # share of all input tokens, and what they saved at the configured cache prices.
        "cached_input_tokens": cached,
        "cache_hit_ratio": round(cached / tokens_in, 4) if tokens_in else 0.0,
        "cache_saving_usd": round(cache_saving(settings, attempts), 6),
        # The batch lane: jobs that carried a deadline long enough and were answered from a provider
        # batch (SIMULATED by the mock: its batches end after mock.batch_delay_s), and the saving.
        "batch_jobs": sum(
            1 for r in results.values() if any(a.batch_id and a.outcome == "ok" for a in r.attempts)
        ),
        "batch_saving_usd": round(batch_saving(settings, attempts), 6),
        "judged": sum(1 for r in results.values() if any(c.score is not None for c in r.quality)),
        "upgraded": sum(1 for r in results.values() if any(c.action == "upgrade" for c in r.quality)),
        "polished": sum(1 for r in results.values() if any(c.action == "polish" for c in r.quality)),
        "escalated_by_gate": sum(1 for r in escalated if r.reason == "quality_check_failed"),
        "pipelines": pipeline_counts(task_ids, jobs, results),
        "low_confidence": sum(1 for c in checks if c.signals),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
        "p99_ms": round(percentile(latencies, 99), 1),
        "broker": mask_url(redis_url),
    }


def simulated_quality(
    mock_url: str,
    full_model: str,
    jobs: list[dict[str, Any]],
    results: dict[str, TaskResult],
    task_ids: list[str],
) -> dict[str, Any]:
    """SIMULATED quality, from the mock provider's hidden truth (``POST /_mock/truth``): the share of
    answered jobs whose final answer is not flawed, and the same for the same jobs all answered by the
    full tier's first model. Only a measurement harness asks this; the fleet never does."""
    import httpx

    answered = [results[t] for t in task_ids if t in results and results[t].status == "completed"]
    body = {
        "answers": [r.answer or "" for r in answered],
        "model": full_model,
        "prompts": [str(job.get("prompt", "")) for job in jobs],
    }
    truth = httpx.post(f"{mock_url.rstrip('/')}/_mock/truth", json=body, timeout=60).json()
    sound = sum(1 for t in truth["answers"] if not t.get("flawed"))
    full_sound = sum(1 for flawed in truth["counterfactual"] if not flawed)
    by_tier: dict[str, list[int]] = {}
    for res, t in zip(answered, truth["answers"], strict=True):
        counts = by_tier.setdefault(str(res.tier), [0, 0])
        counts[0] += 0 if t.get("flawed") else 1
        counts[1] += 1
    return {
        "quality": round(sound / len(answered), 4) if answered else 0.0,
        "quality_by_tier": {tier: round(ok / n, 4) for tier, (ok, n) in sorted(by_tier.items())},
        "quality_all_full": round(full_sound / len(jobs), 4) if jobs else 0.0,
        "quality_simulated": True,
        "quality_note": "SIMULATED by the mock provider (fleet/providers/mock_quality.py): which answers "
        "are flawed, and what the full tier's model would have answered, are the mock's hidden truth",
    }


def lost_jobs(
    client: Client, task_ids: list[str], results: dict[str, TaskResult], limit: int = 20
) -> list[dict[str, Any]]:
    """Where each job with no final result was last seen (its record: state, queue, how long it has
    been there, the worker running it): what to look for in the workers' logs. At most ``limit``."""
    rows: list[dict[str, Any]] = []
    for task_id in [t for t in task_ids if t not in results][:limit]:
        try:
            status = client.status(task_id)
        except FleetError as exc:  # no record at all (or the broker is away): say so
            rows.append({"task_id": task_id, "state": "unknown", "detail": str(exc)})
            continue
        waited = status.waited_s
        rows.append({
            "task_id": task_id, "state": status.state, "queue": status.queue,
            "for_s": None if waited is None else round(waited, 1),
            "worker": status.worker, "attempt": status.attempt,
        })  # fmt: skip
    return rows
