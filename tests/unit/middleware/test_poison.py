"""The poison guard: a job delivered more than limits.max_deliveries times goes to people instead of
killing worker after worker; first deliveries and copies waiting for a lock are not counted."""

from __future__ import annotations

import pytest

from fleet.errors import Reason
from fleet.middleware.base import Requeue

from .harness import Harness


def test_a_first_delivery_is_not_counted() -> None:
    h = Harness()
    h.runner.run(h.job())
    assert h.jobs.deliveries == {}


def test_past_the_limit_the_job_is_handed_to_people_without_a_call() -> None:
    # Given a job redelivered as often as the limit allows
    h = Harness()
    limit = h.settings.limits.max_deliveries
    h.jobs.deliveries["t1"] = limit - 1
    # When it is delivered once more
    ran = h.runner.run(h.job(redelivered=True))
    # Then it is escalated as a poison message, no model was called, its lock is released
    assert ran.result.status == "escalated" and ran.result.reason == Reason.POISON_MESSAGE
    [(_, reason, detail)] = h.escalations
    assert reason is Reason.POISON_MESSAGE and f"delivered {limit + 1} times" in detail
    assert all(p.calls == 0 for p in h.providers.values())
    assert h.jobs.locks == {} and h.jobs.results["t1"]["status"] == "escalated"


def test_within_the_limit_a_redelivery_runs() -> None:
    h = Harness()
    ran = h.runner.run(h.job(redelivered=True))
    assert ran.result.status == "completed" and h.jobs.deliveries == {"t1": 1}


def test_a_redelivery_that_waited_behind_a_lock_is_counted_when_its_copy_runs() -> None:
    # Given a redelivered job whose lock its worker still holds (the pool process that ran it just
    # died; the worker's heartbeat cannot tell yet)
    h = Harness()
    h.jobs.locks["t1"] = "host-a:1"
    h.jobs.lock_left["t1"] = h.settings.tier("mini").timeout_s + 30 - 1.0  # taken 1 s ago
    first = h.job(redelivered=True)
    with pytest.raises(Requeue):
        h.runner.run(first)
    assert h.jobs.deliveries == {}  # not counted behind the lock
    assert first.envelope.uncounted_redelivery
    # When its copy (a new message: not marked redelivered) runs once the lock is found stale
    h.jobs.lock_left["t1"] = 0.0
    h.live["host-a:1"] = set()
    h.runner.run(h.job(redelivered=False, envelope=first.envelope))
    # Then that delivery was counted, and the envelope no longer carries it
    assert h.jobs.deliveries == {"t1": 1}
    assert not first.envelope.uncounted_redelivery
