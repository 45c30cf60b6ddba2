"""What the fleet looks like right now, read from Redis and from the workers.

Queue depth and the age of the oldest waiting job come from the broker's lists (Flower cannot show
them: mher/flower#1173; on RabbitMQ the depth comes from a passive declare, and there is no age);
rates from the per-10-second counters the tasks keep; bucket fill from
the token buckets; workers, in-flight jobs and pool sizes from one Celery ``inspect`` broadcast.
``fleet status``, ``fleet metrics`` (Prometheus text for KEDA/HPA) and telemetry all read this.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import redis

from fleet import brokers, keys
from fleet.batch.lane import in_flight
from fleet.budgets import queue_spend_reads, spend_of
from fleet.escalations import RedisEscalationStore
from fleet.limits import Bucket, CircuitBreaker, RateLimiter
from fleet.settings import Settings, mask_url, parse_rate

__all__ = [
    "batch_snapshot",
    "budget_snapshot",
    "collect",
    "oldest_submitted_at",
    "prometheus_text",
    "queue_snapshot",
]


def oldest_submitted_at(client: redis.Redis, queue: str) -> float | None:
    """When the oldest job waiting on ``queue`` was submitted (kombu pops from a list's right; a queue
    has one list per priority)."""
    pipe = client.pipeline(transaction=False)
    for name in keys.queue_lists(queue):
        pipe.lindex(name, -1)
    oldest: float | None = None
    for raw in pipe.execute():
        if raw is None:
            continue
        try:
            message = json.loads(raw)
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            at = float(args[1]["submitted_at"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not one of ours (a poison message, say): no age to tell
        oldest = at if oldest is None else min(oldest, at)
    return oldest


def queue_snapshot(settings: Settings, client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Depth, oldest age (Redis only), rate over the last minute and bucket fill of every queue."""
    now = time.time()
    url = settings.broker.url
    amqp = brokers.amqp_depths(url, keys.QUEUES) if brokers.is_amqp(url) else None
    slot = int(now) // 10
    pipe = client.pipeline(transaction=False)
    for queue in keys.QUEUES:
        for name in keys.queue_lists(queue):
            pipe.llen(name)
        pipe.mget([keys.rate_counter(queue, s) for s in range(slot - 5, slot + 1)])
    raw = pipe.execute()
    steps = len(keys.queue_lists(keys.QUEUES[0])) + 1
    limiter = RateLimiter(client)
    out: dict[str, dict[str, Any]] = {}
    for i, queue in enumerate(keys.QUEUES):
        chunk = raw[i * steps : (i + 1) * steps]
        depth = int(sum(chunk[:-1])) if amqp is None else amqp[queue]
        started = sum(int(v) for v in chunk[-1] if v is not None)
        # RabbitMQ cannot show a waiting message without taking it: no age there.
        oldest = oldest_submitted_at(client, queue) if depth and amqp is None else None
        qs = settings.queues[queue]
        fill = None
        if qs.rate_limit:
            rate = parse_rate(qs.rate_limit)
            fill = round(limiter.fill(Bucket(keys.bucket("queue", queue), rate, burst=max(1.0, rate))), 2)
        out[queue] = {
            "depth": depth,
            "oldest_age_s": round(max(0.0, now - oldest), 3) if oldest else 0.0,
            "rate_last_min": started,
            "rate_limit": qs.rate_limit,
            "bucket_fill": fill,
            "configured_concurrency": qs.concurrency,
            "workers": 0,
            "concurrency": 0,
            "in_flight": 0,
        }
    return out


def collect(
    settings: Settings, client: redis.Redis, app: Any, url: str, timeout: float = 1.0
) -> dict[str, Any]:
    """Everything `fleet status` shows: queues, workers, breakers, the escalation inbox."""
    queues = queue_snapshot(settings, client)
    inspect = app.control.inspect(timeout=timeout)
    active_queues = inspect.active_queues() or {}
    stats = inspect.stats() or {}
    active = inspect.active() or {}
    for node, consumed in active_queues.items():
        pool = (stats.get(node) or {}).get("pool", {})
        for q in consumed:
            entry = queues.get(q.get("name"))
            if entry is not None:
                entry["workers"] += 1
                entry["concurrency"] += int(pool.get("max-concurrency", 0) or 0)
                entry["in_flight"] += len(active.get(node, []))
    store = RedisEscalationStore(client)
    return {
        "broker": mask_url(url),
        "queues": queues,
        "breakers": CircuitBreaker(client, settings.breaker).states(sorted(settings.providers)),
        "escalations_open": store.count("open"),
        "escalations_claimed": store.count("claimed"),
        "budgets": budget_snapshot(settings, client),
        "batches": batch_snapshot(client),
    }


def batch_snapshot(client: redis.Redis, now: float | None = None) -> dict[str, Any]:
    """The batch lane: jobs pooled per ``provider:model``, and each batch in flight (its provider's
    id, its items, how long it has been out, how long until its jobs fall back to live calls)."""
    now = time.time() if now is None else now
    members: Any = client.smembers(keys.batch_pools())
    links = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    pipe = client.pipeline(transaction=False)
    for link in links:
        pipe.zcard(keys.batch_pool(link))
    pooled = {link: int(n) for link, n in zip(links, pipe.execute() if links else [], strict=True) if n}
    flying = [
        {"link": b.link, "batch_id": b.batch_id, "state": b.state, "items": len(b.jobs),
         "age_s": round(now - b.created_at, 1), "fallback_in_s": round(b.fallback_at - now, 1)}
        for b in in_flight(client)
    ]  # fmt: skip
    return {"pooled": pooled, "in_flight": flying}


def budget_snapshot(settings: Settings, client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Spend today and this month (UTC) against budget, for every team named in ``[budgets.teams]``
    (one round trip)."""
    teams = sorted(t for t in settings.budgets.teams if t != "*")
    if not teams:
        return {}
    pipe = client.pipeline(transaction=False)
    queue_spend_reads(pipe, teams, time.time())
    out: dict[str, dict[str, Any]] = {}
    for team, raw in zip(teams, pipe.execute(), strict=True):
        spend = spend_of(team, settings.budgets.budget(team), raw)
        budget = spend.budget
        out[team] = {
            "day_usd": round(spend.day_usd, 4),
            "daily_usd": budget.daily_usd if budget else None,
            "month_usd": round(spend.month_usd, 4),
            "monthly_usd": budget.monthly_usd if budget else None,
            "over": spend.over,
        }
    return out


def prometheus_text(snapshot: dict[str, dict[str, Any]], escalations_open: int) -> str:
    """Queue gauges in the Prometheus text format (for KEDA's prometheus scaler or an HPA)."""
    lines = []
    gauges = [
        ("fleet_queue_depth", "depth", "Jobs waiting on the queue."),
        ("fleet_queue_oldest_age_seconds", "oldest_age_s", "Age of the oldest waiting job."),
        ("fleet_queue_started_last_minute", "rate_last_min", "Jobs started in the last minute."),
    ]
    for metric, field, help_text in gauges:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        for queue, data in snapshot.items():
            lines.append(f'{metric}{{queue="{queue}"}} {data[field]}')
    lines += [
        "# HELP fleet_escalations_open Escalations waiting for a person.",
        "# TYPE fleet_escalations_open gauge",
        f"fleet_escalations_open {escalations_open}",
    ]
    return "\n".join(lines) + "\n"
