"""The job lock: one live run per job; a late copy of a finished job is dropped; a copy of a running
one waits in its queue; a dead local holder's lock is dropped; a lock is always released."""

from __future__ import annotations

import pytest

from fleet.middleware.base import Requeue, Skip

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
    # Given the job's lock held by a worker on another machine
    h = Harness()
    h.jobs.locks["t1"] = "host-b:42"
    # When a copy is delivered here, Then it goes back to its queue (bounded wait), the lock untouched
    with pytest.raises(Requeue) as info:
        h.runner.run(h.job())
    assert 0.5 <= info.value.countdown_s <= 10.0
    assert h.jobs.locks == {"t1": "host-b:42"}


def test_the_lock_of_a_dead_local_holder_is_dropped() -> None:
    # Given the lock held by a process of this machine that no longer exists
    import socket

    h = Harness(owner=f"{socket.gethostname()}:1")
    h.jobs.locks["t1"] = f"{socket.gethostname()}:999999999"
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
    assert not ran.written and h.jobs.locks == {"t1": "host-a:1"}
    # When this process starts its next job, Then the stale lock is released first
    h.runner.run(h.job(task_id="t2"))
    assert "t1" not in h.jobs.locks
