"""The demo workload: realistic jobs that ``fleet demo`` submits, shipped as package data.

``fleet/data/workload.jsonl`` holds one ``TaskRequest`` (as JSON) per line, across code, writing,
extraction, support, analysis and ops work, mixed so every tier gets a fair share.
``fleet/data/pipelines.jsonl`` holds the demo's pipeline jobs (``"pipeline": NAME``, docs/pipelines.md):
two of each shipped pipeline, over long meeting notes, a postmortem, long reports and short asks.

A job may name a file of ``fleet/data/`` as ``"system_file"``: its text is added to the job's system
prompt when the workload is read. The support replies share the support policy that way, a prefix of
about 1,200 tokens that the providers' prompt caches (SIMULATED by the mock) can serve.
"""

from __future__ import annotations

import json
import random
from functools import cache
from importlib.resources import files
from typing import Any

__all__ = ["demo_jobs", "load_pipeline_jobs", "load_workload", "sample", "sample_pipelines"]


@cache
def _data_text(name: str) -> str:
    return (files("fleet") / "data" / name).read_text(encoding="utf-8")


def _read(name: str) -> list[dict[str, Any]]:
    """The jobs of ``fleet/data/<name>``, in file order (fresh dicts on each call)."""
    text = _data_text(name)
    jobs: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        job = json.loads(line)
        if not isinstance(job, dict):
            raise ValueError(f"{name} line {number}: expected a JSON object")
        shared = job.pop("system_file", None)
        if shared is not None:
            policy = _data_text(str(shared))
            job["system"] = f"{job['system']}\n\n{policy}" if job.get("system") else policy
        jobs.append(job)
    return jobs


def _cycle(jobs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` jobs through ``jobs`` again and again, `` (variant k)`` on the prompt of the k-th repeat."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not jobs:
        return []
    out: list[dict[str, Any]] = []
    for i in range(n):
        k, index = divmod(i, len(jobs))
        job = dict(jobs[index])
        if k:
            job["prompt"] = f"{job['prompt']} (variant {k})"
        out.append(job)
    return out


def load_workload() -> list[dict[str, Any]]:
    """Return every job of the demo workload, in file order (fresh dicts on each call).

    Raises:
        ValueError: a line is not a JSON object (the file ships with the package, so this is a packaging bug).
    """
    return _read("workload.jsonl")


def load_pipeline_jobs() -> list[dict[str, Any]]:
    """Return every pipeline job of the demo, in file order (fresh dicts on each call).

    Raises:
        ValueError: a line is not a JSON object (a packaging bug).
    """
    return _read("pipelines.jsonl")


def sample(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Return ``n`` jobs: with ``seed`` 0 the first ``n`` in file order, else a seeded shuffle of the file.

    When ``n`` exceeds the workload, it cycles through it again, appending `` (variant k)`` to the prompt
    of the k-th repeat so every submitted prompt stays distinct.

    Raises:
        ValueError: ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    jobs = load_workload()
    if seed:
        random.Random(seed).shuffle(jobs)
    return _cycle(jobs, n)


def sample_pipelines(n: int) -> list[dict[str, Any]]:
    """Return ``n`` pipeline jobs in file order, cycling (with `` (variant k)``) as :func:`sample` does.

    Raises:
        ValueError: ``n`` is negative.
    """
    return _cycle(load_pipeline_jobs(), n)


def demo_jobs(n: int, pipelines: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Return the ``n`` jobs ``fleet demo`` submits: ``min(pipelines, n)`` pipeline jobs spread evenly
    among ``n - pipelines`` jobs of :func:`sample` (so they run under the same load, not after it).

    Raises:
        ValueError: ``n`` or ``pipelines`` is negative.
    """
    if n < 0 or pipelines < 0:
        raise ValueError(f"n and pipelines must be >= 0, got {n} and {pipelines}")
    count = min(pipelines, n)
    singles = iter(sample(n - count, seed))
    # The i-th pipeline job at the middle of the i-th of ``count`` equal stretches: distinct slots.
    slots = {(2 * i + 1) * n // (2 * count): job for i, job in enumerate(sample_pipelines(count))}
    return [slots[pos] if pos in slots else next(singles) for pos in range(n)]
