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


#: Completions of the bare tasks: a counter and a hash of finish times (what a result would give).
DONE, DONE_AT = "bare:done", "bare:done_at"


def _done(i: int) -> None:
    if _redis is not None:
        pipe = _redis.pipeline(transaction=False)
        pipe.incr(DONE)
        pipe.hset(DONE_AT, str(i), time.time())
        pipe.execute()


@app.task(name="bare.noop", ignore_result=True)
def noop(i: int = 0) -> None:
    """A no-op task that records that it ran."""
    _done(i)


@app.task(name="bare.sleep", ignore_result=True)
def sleep(i: int, seconds: float) -> None:
    time.sleep(seconds)
    _done(i)


@app.task(name="bare.route", ignore_result=True)
def route(i: int) -> None:
    """A trivial router: re-enqueue onto one of four queues by a fixed rule."""
    app.send_task("bare.noop", args=[i], queue=("mini", "standard", "full", "fast")[i % 4])
