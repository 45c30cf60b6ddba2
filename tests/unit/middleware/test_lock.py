"""The job lock: one live run per job; a late copy of a finished job is dropped; a copy of a running
one waits in its queue; a dead local holder's lock is dropped; a lock is always released."""

from __future__ import annotations

import pytest

from fleet.middleware.base import Job, Middleware, Requeue, Skip

from .harness import Harness


def test_a_finished_job_is_skipped_and_takes_no_lock() -> None:
    # Given a job that already has its final result
    h = Harness()
    h.jobs.results["t1"] = {"status": "completed"}
    # When a late copy is delivered, Then it is skipped, no model is called and no lock is left
    with pytest.raises(Skip):
        h.runner.run(h.job())
    assert h.jobs.locks == {}
    assert all(p.calls == 0 for p in h.providers.values())


def test_a_job_another_host_runs_waits_in_its_queue() -> None:
    # Given the job's lock held by a worker on another machine, whose heartbeat says it runs the job
    h = Harness()
    h.live["host-b:42"] = {"t1"}
    h.jobs.locks["t1"] = "host-b:42"
    # When a copy is delivered here, Then it goes back to its queue (bounded wait), the lock untouched
    with pytest.raises(Requeue) as info:
        h.runner.run(h.job())
    assert 0.5 <= info.value.countdown_s <= 10.0
    assert h.jobs.locks == {"t1": "host-b:42"}


def test_the_lock_of_a_dead_holder_is_taken_over() -> None:
    # Given the lock held by a worker (on any machine) whose heartbeat lapsed
    h = Harness()
    h.jobs.locks["t1"] = "host-b:42"
    h.jobs.deliveries["t1"] = h.settings.limits.max_deliveries - 1
    # When its redelivery arrives, Then the dead holder's lock is dropped and this delivery takes it,
    # counted as a delivery (a job that kills every worker must still reach the poison limit)
    ran = h.runner.run(h.job(redelivered=True))
    assert ran.result.status == "escalated" and ran.result.reason == "poison_message"
    assert "t1" not in h.jobs.locks


def test_the_lock_is_released_with_the_result() -> None:
    h = Harness()
    ran = h.runner.run(h.job())
    assert ran.written and ran.result.status == "completed"
    assert h.jobs.locks == {} and h.jobs.results["t1"]["status"] == "completed"


def test_a_lock_whose_release_failed_is_released_before_the_next_job() -> None:
    # Given a job whose last writes could not go out (the broker was down)
    h = Harness()
    ran = h.runner.run(h.job(fail_flush=True))
    assert not ran.written and h.jobs.locks == {"t1": "host-a:1#0"}  # "worker#retries"
    # When this process starts its next job, Then the stale lock is released first
    h.runner.run(h.job(task_id="t2"))
    assert "t1" not in h.jobs.locks


def test_a_live_worker_that_no_longer_runs_the_job_loses_its_lock() -> None:
    # Given the lock held by a live worker whose heartbeat no longer lists the job (its pool child
    # died), and which took it long enough ago to have beaten since
    h = Harness()
    h.live["host-b:42"] = set()
    h.jobs.locks["t1"] = "host-b:42"
    ran = h.runner.run(h.job(tier="standard"))  # the lock's TTL (timeout + 30 s) is far from fresh
    assert ran.result.status == "completed" and "t1" not in h.jobs.locks


def test_a_run_whose_job_was_taken_over_writes_nothing() -> None:
    # Given a run that took the lock, and another worker that took the job over meanwhile
    h = Harness()

    class TakeOver(Middleware):
        def before_call(self, job: Job) -> None:
            h.jobs.locks[job.id] = "host-b:42"  # the other worker judged this one dead

    h.middlewares.insert(1, TakeOver())
    h.runner.middlewares = h.middlewares
    ran = h.runner.run(h.job())
    # Then its last writes (result, cost line) are dropped, and the other worker's lock stays
    assert ran.flushed == "superseded" and not ran.written
    assert "t1" not in h.jobs.results and h.jobs.costs == [] and h.jobs.locks == {"t1": "host-b:42"}
