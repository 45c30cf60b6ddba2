"""The demo workload: realistic jobs that ``fleet demo`` submits, shipped as package data.

``fleet/data/workload.jsonl`` holds one ``TaskRequest`` (as JSON) per line, across code, writing,
extraction, support, analysis and ops work, mixed so every tier gets a fair share.
"""

from __future__ import annotations

import json
import random
from importlib.resources import files
from typing import Any

__all__ = ["load_workload", "sample"]


def load_workload() -> list[dict[str, Any]]:
    """Return every job of the demo workload, in file order (fresh dicts on each call).

    Raises:
        ValueError: a line is not a JSON object (the file ships with the package, so this is a packaging bug).
    """
    text = (files("fleet") / "data" / "workload.jsonl").read_text(encoding="utf-8")
    jobs: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        job = json.loads(line)
        if not isinstance(job, dict):
            raise ValueError(f"workload.jsonl line {number}: expected a JSON object")
        jobs.append(job)
    return jobs


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
    if not jobs:
        return []
    if seed:
        random.Random(seed).shuffle(jobs)
    out: list[dict[str, Any]] = []
    for i in range(n):
        k, index = divmod(i, len(jobs))
        job = dict(jobs[index])
        if k:
            job["prompt"] = f"{job['prompt']} (variant {k})"
        out.append(job)
    return out
