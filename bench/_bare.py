"""Bare Celery apps for side-by-side benchmarks (no fleet code on the task path)."""

from __future__ import annotations

import os
import time

import httpx
import redis
from celery import Celery

app = Celery("bare", broker=os.environ.get("FLEET_REDIS_URL"), backend=os.environ.get("FLEET_REDIS_URL"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=os.environ.get("BARE_ACKS_LATE", "1") == "1",
    worker_prefetch_multiplier=int(os.environ.get("BARE_PREFETCH", "1")),
    task_default_queue="bare",
)
_client = httpx.Client(timeout=30)
#: Where bare tasks record when they finished (no result backend on the measured path).
FINISHES = "bare:finishes"
_redis = redis.Redis.from_url(os.environ["FLEET_REDIS_URL"]) if os.environ.get("FLEET_REDIS_URL") else None


def _call_mock() -> None:
    _client.post(
        os.environ["FLEET_MOCK__URL"] + "/v1/chat/completions",
        json={"model": "bare", "messages": [{"role": "user", "content": "hi"}]},
    )


@app.task(name="bare.limited", rate_limit=os.environ.get("BARE_RATE_LIMIT", "300/m"), ignore_result=True)
def limited() -> None:
    """The same model call as the fleet's, limited by Celery's own per-worker rate_limit."""
    _call_mock()
    if _redis is not None:
        _redis.rpush(FINISHES, time.time())


@app.task(name="bare.noop")
def noop() -> None:
    return None


@app.task(name="bare.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="bare.route")
def route(i: int) -> None:
    """A trivial router: re-enqueue onto one of four queues by a fixed rule."""
    app.send_task("bare.noop", queue=("mini", "standard", "full", "fast")[i % 4])
