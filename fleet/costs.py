"""Per-job cost records and the spend report of ``fleet costs``.

The execute task appends one record per finished job (completed or escalated) to a capped Redis
stream (``fleet:costs``, ``XADD ... MAXLEN ~``): tier, kind, final model, tokens, cost at list
prices (a quality gate's judge and rewrite calls included), what the job's own calls' tokens would have
cost on the full tier's first link, and the split by model. A shadow run's line says ``shadow`` and
is reported apart.
A job retried by people records only the calls of its new run (the earlier ones were recorded
when it escalated). Stream ids are millisecond timestamps, so ``--since`` is one XRANGE.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from fleet import keys
from fleet.models import Attempt, TaskResult
from fleet.settings import Settings

__all__ = [
    "MAX_RECORDS",
    "CostRecord",
    "batch_saving",
    "cache_saving",
    "full_tier_cost",
    "job_fields",
    "parse_since",
    "read_records",
    "record_job",
    "report",
]

#: Roughly how many job records the stream keeps (MAXLEN ~: trimmed in whole nodes, cheaply).
MAX_RECORDS = 500_000
_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PAGE = 5000


def parse_since(text: str) -> float:
    """``"30m"`` -> 1800.0 seconds (units s, m, h, d, w). Raises ValueError on anything else."""
    match = _SINCE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30m, 1h or 2d (units: s, m, h, d, w)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def full_tier_cost(settings: Settings, input_tokens: int, output_tokens: int) -> float:
    """What ``input_tokens`` + ``output_tokens`` cost on the full tier's first link."""
    provider, model = settings.tier("full").links()[0]
    return settings.model(provider, model).cost(input_tokens, output_tokens)


def job_fields(settings: Settings, result: TaskResult, attempts: Sequence[Attempt]) -> dict[str, str]:
    """The stream entry of a finished job; ``attempts`` are the calls to charge to this record."""
    by_model: dict[str, list[float]] = {}
    for attempt in attempts:
        row = by_model.setdefault(attempt.link, [0, 0, 0.0])
        row[0] += attempt.input_tokens
        row[1] += attempt.output_tokens
        row[2] += attempt.cost_usd
    tokens_in = sum(a.input_tokens for a in attempts)
    tokens_out = sum(a.output_tokens for a in attempts)
    # The all-full price covers the job's own calls: a judge's and a rewrite's are the gate's cost.
    answer_in = sum(a.input_tokens for a in attempts if a.purpose == "answer")
    answer_out = sum(a.output_tokens for a in attempts if a.purpose == "answer")
    cached = sum(a.cached_input_tokens for a in attempts)
    fields = {
        "task_id": result.task_id,
        "status": result.status,
        "tier": str(result.tier) if result.tier is not None else "",
        "kind": result.kind or "",
        "model": f"{result.provider}:{result.model}" if result.model else "",
        "in": str(tokens_in),
        "out": str(tokens_out),
        "cost": repr(round(sum(a.cost_usd for a in attempts), 10)),
        "full": repr(round(full_tier_cost(settings, answer_in, answer_out), 10)),
        "models": json.dumps(by_model, separators=(",", ":")),
    }
    if cached or any(a.cache_write_tokens for a in attempts):
        fields["cached"] = str(cached)
        fields["cache_saved"] = repr(round(cache_saving(settings, attempts), 10))
    if any(a.batch_id and a.outcome == "ok" for a in attempts):
        fields["batch_saved"] = repr(round(batch_saving(settings, attempts), 10))
    return fields


def batch_saving(settings: Settings, attempts: Sequence[Attempt]) -> float:
    """What answering ``attempts``' batch items live would have cost more, in USD (fleet.batch)."""
    saved = 0.0
    for a in attempts:
        if a.batch_id and a.outcome == "ok":
            try:
                saved += settings.model(a.provider, a.model).batch_saving(a.cost_usd)
            except KeyError:
                continue  # a model no longer in the config: no price to say
    return saved


def cache_saving(settings: Settings, attempts: Sequence[Attempt]) -> float:
    """What the providers' prompt caches saved on ``attempts`` at the configured prices, in USD."""
    saved = 0.0
    for a in attempts:
        if a.cached_input_tokens or a.cache_write_tokens:
            try:
                model = settings.model(a.provider, a.model)
            except KeyError:
                continue  # a model no longer in the config: no price to say
            saved += model.cache_saving(a.cached_input_tokens, a.cache_write_tokens)
    return saved


def record_job(
    client: redis.Redis, settings: Settings, result: TaskResult, attempts: Sequence[Attempt]
) -> None:
    """Append the job's record: one XADD, one round trip."""
    client.xadd(
        keys.costs(),
        job_fields(settings, result, attempts),  # type: ignore[arg-type]  # redis-py's invariant dict type
        maxlen=MAX_RECORDS,
        approximate=True,
    )


@dataclass(frozen=True)
class CostRecord:
    at: float
    task_id: str
    status: str
    tier: str
    kind: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    full_cost_usd: float
    by_model: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    #: A pipeline step's line: the pipeline's name and the step's ("" for a job of its own).
    pipeline: str = ""
    step: str = ""
    #: The job's team (``metadata[budgets.team_key]``; "" for none).
    team: str = ""
    #: Input tokens read from the providers' prompt caches, and what that saved.
    cached_tokens: int = 0
    cache_saved_usd: float = 0.0
    #: What the batch lane saved on the job (None: it was not answered from a batch).
    batch_saved_usd: float | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(entry_id: Any, raw: dict[Any, Any]) -> CostRecord | None:
    data = {_text(k): _text(v) for k, v in raw.items()}
    try:
        models = {k: (int(v[0]), int(v[1]), float(v[2])) for k, v in json.loads(data["models"]).items()}
        return CostRecord(
            at=int(_text(entry_id).split("-")[0]) / 1000.0,
            task_id=data["task_id"],
            status=data["status"],
            tier=data["tier"] or "none",
            kind=data["kind"] or "none",
            model=data["model"],
            input_tokens=int(data["in"]),
            output_tokens=int(data["out"]),
            cost_usd=float(data["cost"]),
            full_cost_usd=float(data["full"]),
            by_model=models,
            pipeline=data.get("pipeline", ""),
            step=data.get("step", ""),
            team=data.get("team", ""),
            cached_tokens=int(data.get("cached", 0)),
            cache_saved_usd=float(data.get("cache_saved", 0.0)),
            batch_saved_usd=float(data["batch_saved"]) if "batch_saved" in data else None,
        )
    except (KeyError, ValueError, TypeError, IndexError):
        return None  # not one of ours: skip it rather than fail the report


def read_records(client: redis.Redis, since_s: float | None, *, now: float | None = None) -> list[CostRecord]:
    """The records of jobs finished in the last ``since_s`` seconds (all with None), oldest first."""
    start = "-" if since_s is None else f"{int(((now or time.time()) - since_s) * 1000)}-0"
    out: list[CostRecord] = []
    while True:
        page: list[Any] = client.xrange(keys.costs(), min=start, max="+", count=_PAGE) or []
        for entry_id, raw in page:
            parsed = _parse(entry_id, raw or {})
            if parsed is not None:
                out.append(parsed)
        if len(page) < _PAGE:
            return out
        start = f"({_text(page[-1][0])}"


def _bucket() -> dict[str, Any]:
    return {
        "jobs": 0, "input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
        "cost_all_full_usd": 0.0, "cache_saving_usd": 0.0,
    }  # fmt: skip


def _rounded(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ordered = sorted(groups.items(), key=lambda item: (-item[1]["cost_usd"], item[0]))
    return {
        name: {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for name, row in ordered
    }


def report(records: Sequence[CostRecord], *, since_s: float | None = None) -> dict[str, Any]:
    """Spend and tokens by tier, model and kind (and pipeline and step), and the saving against
    running everything on full.

    ``by_model`` splits each job's calls by the model that made them (failed calls included);
    its ``jobs`` counts the jobs that called the model at least once.
    """
    by_tier: dict[str, dict[str, Any]] = defaultdict(_bucket)
    by_kind: dict[str, dict[str, Any]] = defaultdict(_bucket)
    by_model: dict[str, dict[str, Any]] = defaultdict(_bucket)
    by_team: dict[str, dict[str, Any]] = defaultdict(_bucket)
    by_pipeline: dict[str, dict[str, Any]] = defaultdict(_bucket)
    by_step: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(_bucket))
    totals = _bucket()
    shadow = _bucket()
    statuses: dict[str, int] = defaultdict(int)
    for rec in records:
        statuses[rec.status] += 1
        if rec.status == "shadow":  # a shadow run on full is its own line, not the jobs' spend
            shadow["jobs"] += 1
            shadow["cost_usd"] += rec.cost_usd
            continue
        rows = [totals, by_tier[rec.tier], by_kind[rec.kind], by_team[rec.team or "none"]]
        if rec.pipeline:
            rows += [by_pipeline[rec.pipeline], by_step[rec.pipeline][rec.step]]
        for row in rows:
            row["jobs"] += 1
            row["input_tokens"] += rec.input_tokens
            row["cached_input_tokens"] += rec.cached_tokens
            row["output_tokens"] += rec.output_tokens
            row["cost_usd"] += rec.cost_usd
            row["cost_all_full_usd"] += rec.full_cost_usd
            row["cache_saving_usd"] += rec.cache_saved_usd
        for link, (tokens_in, tokens_out, cost) in rec.by_model.items():
            row = by_model[link]
            row["jobs"] += 1
            row["input_tokens"] += tokens_in
            row["output_tokens"] += tokens_out
            row["cost_usd"] += cost
    for row in by_model.values():
        # A model's share of the all-full price is not meaningful; its cache share is not recorded.
        del row["cost_all_full_usd"], row["cached_input_tokens"], row["cache_saving_usd"]
    cost, full = totals["cost_usd"], totals["cost_all_full_usd"]
    return {
        "since_s": since_s,
        "jobs": totals["jobs"],
        "by_status": dict(sorted(statuses.items())),
        "input_tokens": totals["input_tokens"],
        "output_tokens": totals["output_tokens"],
        "cost_usd": round(cost, 6),
        "cost_all_full_usd": round(full, 6),
        "saving_usd": round(full - cost, 6),
        "saving_ratio": round(1 - cost / full, 4) if full > 0 else 0.0,
        # The providers' prompt caches: the share of input tokens read from them, and the saving.
        "cached_input_tokens": totals["cached_input_tokens"],
        "cache_hit_ratio": round(totals["cached_input_tokens"] / totals["input_tokens"], 4)
        if totals["input_tokens"]
        else 0.0,
        "cache_saving_usd": round(totals["cache_saving_usd"], 6),
        # The batch lane: jobs answered from a provider batch, and what that saved on live prices.
        "batch_jobs": sum(1 for r in records if r.batch_saved_usd is not None and r.status != "shadow"),
        "batch_saving_usd": round(sum(r.batch_saved_usd or 0.0 for r in records if r.status != "shadow"), 6),
        "by_tier": _rounded(by_tier),
        "by_model": _rounded(by_model),
        "by_kind": _rounded(by_kind),
        "by_team": _rounded(by_team),
        # Pipelines' steps (each a job, counted above too), by pipeline and by step.
        "by_pipeline": {
            name: {**row, "by_step": _rounded(by_step[name])} for name, row in _rounded(by_pipeline).items()
        },
        "shadow": {"runs": shadow["jobs"], "cost_usd": round(shadow["cost_usd"], 6)},
    }
