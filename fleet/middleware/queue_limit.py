"""A queue's fleet-wide rate limit (``rate_limit`` in its queue file), taken with the job's start.

A reservation due within ``limits.max_slot_wait_s`` is waited for here; a later one is kept and the
job goes back to its queue until then (its next delivery holds the slot), so each job is requeued at
most once and the queue runs at exactly its rate. Beyond ``limits.max_reserve_s`` nothing is reserved
(a far reservation would outlive the broker's visibility timeout): the job retries in about that long.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable

from fleet import asyncio_pool, keys
from fleet.limits import Bucket
from fleet.middleware.base import Job, Middleware, Requeue
from fleet.middleware.start import QueueToken, StartAnswer, StartPlan
from fleet.settings import LimitsSettings, QueueSettings, parse_rate

__all__ = ["QueueRateLimit", "queue_buckets"]


def queue_buckets(queue: QueueSettings) -> list[Bucket]:
    """The queue's token bucket (none without a ``rate_limit``)."""
    if not queue.rate_limit:
        return []
    rate = parse_rate(queue.rate_limit)
    return [Bucket(keys.bucket("queue", queue.name), rate, burst=max(1.0, rate))]


class QueueRateLimit(Middleware):
    def __init__(self, limits: LimitsSettings, sleep: Callable[[float], None] = asyncio_pool.sleep) -> None:
        self.limits = limits
        self.sleep = sleep

    def before_start(self, job: Job, plan: StartPlan) -> None:
        if job.envelope.slot_reserved:
            return  # this delivery is the one its reservation was made for
        counter = keys.rate_counter(job.queue.name, int(time.time()) // 10)
        plan.queue = QueueToken(queue_buckets(job.queue), counter, self.limits.max_reserve_s)

    def after_start(self, job: Job, answer: StartAnswer) -> None:
        if job.envelope.slot_reserved:
            job.envelope.slot_reserved = False
            return
        if answer.queue is None:
            return
        reserved, wait = answer.queue.reserved, answer.queue.wait_s
        if reserved and wait <= self.limits.max_slot_wait_s:
            if wait > 0:
                self.sleep(wait)
                if job.first_link is not None:  # both waits ran from the same instant
                    job.first_link = dataclasses.replace(
                        job.first_link, wait_s=max(0.0, job.first_link.wait_s - wait)
                    )
            return
        job.envelope.slot_reserved = reserved
        countdown = wait if reserved else self.limits.max_reserve_s * random.uniform(0.5, 1.0)
        raise Requeue(countdown, "queue rate limit")
