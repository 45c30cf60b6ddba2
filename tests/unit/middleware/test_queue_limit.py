"""The queue's rate limit: a token due within limits.max_slot_wait_s is waited for in the slot; a later
one is reserved and the job waits in its queue; its next delivery takes no second token."""

from __future__ import annotations

import pytest

from fleet import keys
from fleet.middleware.base import Requeue
from fleet.settings import load_settings

from .harness import Harness


def _harness(rate: str) -> Harness:
    settings = load_settings(env={}, overrides={"queues.mini.rate_limit": rate})
    return Harness(settings)


def test_a_token_due_soon_is_waited_for_in_the_slot() -> None:
    # Given a queue of 2 jobs a second (a burst of 2) whose bucket is used up
    h = _harness("2/s")
    h.runner.run(h.job(task_id="a"))
    h.runner.run(h.job(task_id="b"))
    # When a third job starts, Then it sleeps about half a second and runs
    ran = h.runner.run(h.job(task_id="c"))
    assert ran.result.status == "completed"
    assert 0.4 <= max(h.slept) <= 0.55


def test_a_token_due_later_is_reserved_and_the_job_waits_in_its_queue() -> None:
    # Given a queue of 1 job a minute whose token was just taken
    h = _harness("1/m")
    h.runner.run(h.job(task_id="a"))
    job = h.job(task_id="b")
    # When the next job starts, Then it goes back to its queue until its reserved slot
    with pytest.raises(Requeue) as info:
        h.runner.run(job)
    assert 55 <= info.value.countdown_s <= 60
    assert job.envelope.slot_reserved and job.envelope.requeues == 1
    assert "b" not in h.jobs.locks  # the lock was released on the way out
    # And its next delivery runs on that reservation without taking another token
    queue_bucket = keys.bucket("queue", "mini")
    before = h.limits.tats[queue_bucket]
    ran = h.runner.run(h.job(task_id="b", envelope=job.envelope))
    assert ran.result.status == "completed" and h.limits.tats[queue_bucket] == before
    assert not job.envelope.slot_reserved


def test_every_start_is_counted_for_fleet_status() -> None:
    h = _harness("100/s")
    for n in range(3):
        h.runner.run(h.job(task_id=f"j{n}"))
    prefix = keys.rate_counter("mini", 0)[:-1]
    assert sum(v for k, v in h.limits.counters.items() if k.startswith(prefix)) == 3
