"""Scenarios 1, 5 (the crash-every-time job) and 7: worker processes die, jobs outlive the broker's
visibility timeout, and still every job reaches one final state, run by one worker at a time."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest

from fleet import keys

from .chaosrig import CRASH_MARKER, ChaosFleet, chaos_fleet, kill, wait_for

pytestmark = pytest.mark.integration

#: Small enough that a job whose worker died comes back within seconds; above the kill tests'
#: call latency (1 s), below the slow job's (7 s).
VISIBILITY_S = 4
ENV = {
    "FLEET_QUEUES__MINI__POOL": "prefork",
    "FLEET_QUEUES__MINI__TIMEOUT_S": "20",  # the execution lock lives timeout + 30 s
    "FLEET_BROKER__VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
    "FLEET_PROVIDERS__OPENAI__READ_TIMEOUT_S": "30",  # the slow job's call must not time out
    "FLEET_LIMITS__MAX_DELIVERIES": "3",
}


@pytest.fixture(scope="module")
def prefork_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    with chaos_fleet(tmp_path_factory.mktemp("chaos-workers"), env=ENV, scale={"mini": 3}) as fleet:
        yield fleet


@pytest.fixture
def fleet(prefork_fleet: ChaosFleet) -> Iterator[ChaosFleet]:
    prefork_fleet.mock_reset()
    prefork_fleet.mock_config(latency_ms=5, failure_rate=0.0, down_models=[])
    yield prefork_fleet


def _wait_running(fleet: ChaosFleet, task_id: str) -> str:
    """The identity of the worker running ``task_id`` (its lock's holder: "host:pid:nonce")."""
    wait_for(lambda: fleet.client.redis.exists(keys.running(task_id)), 15, f"task {task_id} to start")
    raw = fleet.client.redis.get(keys.running(task_id))
    assert raw is not None
    return str(raw.decode())


def test_pool_process_killed_mid_call_the_job_is_redelivered_and_completes_once(fleet: ChaosFleet) -> None:
    # Given a job in flight in a prefork child (the model call takes 1 s)
    fleet.mock_config(latency_ms=1000)
    task_id = fleet.client.submit({"prompt": "Rename variable n to count", "tier": "mini"})
    holder = _wait_running(fleet, task_id)
    assert holder.split(":")[1] == str(fleet.supervisor.pools["mini"].pid)  # the worker, not a child

    # When the pool's children are SIGKILLed mid-call (the main process lives on)
    started = time.monotonic()
    for child in fleet.pool_children("mini"):
        kill(child)

    # Then the job is requeued at once (reject_on_worker_lost), its lock does not hold it back (the
    # worker's heartbeat no longer lists it as running), and it completes: one final result
    result = fleet.client.result(task_id, timeout=20)
    assert result.status == "completed"
    assert time.monotonic() - started < 15  # not the lock's TTL (50 s), not a visibility timeout
    assert fleet.supervisor.pools["mini"].alive()
    assert not fleet.client.redis.exists(keys.running(task_id))


# Long (the visibility timeout, then the job): in make chaos. make test kills a main process in
# test_recovery.py, where the reaper gives the job back under the default configuration.
@pytest.mark.chaos
def test_worker_main_process_killed_the_job_comes_back_after_the_visibility_timeout(
    fleet: ChaosFleet,
) -> None:
    # Given a job in flight on the mini worker
    fleet.mock_config(latency_ms=1000)
    task_id = fleet.client.submit({"prompt": "Rename variable m to total", "tier": "mini"})
    _wait_running(fleet, task_id)

    # When the whole worker (main process and pool) is SIGKILLed, and restarted as `fleet up` does
    started = time.monotonic()
    fleet.supervisor.pools["mini"].signal(signal.SIGKILL)
    wait_for(lambda: not fleet.supervisor.pools["mini"].alive(), 5, "the worker to die")
    restarted = fleet.supervisor.check()
    assert restarted and "pool mini exited" in restarted[0]

    # Then the broker redelivers it once the visibility timeout passed, and it completes once
    done = fleet.wait_final([task_id], timeout=40)
    assert done[task_id].status == "completed"
    assert time.monotonic() - started >= VISIBILITY_S - 1
    assert fleet.client.result(task_id, timeout=1).task_id == task_id


def test_a_job_that_kills_its_worker_every_time_becomes_a_poison_message(fleet: ChaosFleet) -> None:
    # Given a job whose every run kills the prefork child running it (the chaos crash marker)
    task_id = fleet.client.submit({"prompt": f"Rename x to y {CRASH_MARKER}", "tier": "mini"})

    # Then after limits.max_deliveries (3 here) the delivery counter stops the loop
    result = fleet.client.result(task_id, timeout=60)
    assert result.status == "escalated" and result.reason == "poison_message"
    record = fleet.store().for_task(task_id)
    assert record is not None and record.reason == "poison_message" and record.queue == "mini"
    assert int(fleet.client.redis.get(keys.deliveries(task_id)) or 0) == 3
    assert fleet.mock_stats()["total"] == 0  # it never got as far as a model call

    # And the worker keeps consuming
    ok = fleet.client.submit({"prompt": "Rename p to q", "tier": "mini"})
    assert fleet.client.result(ok, timeout=20).status == "completed"


def test_a_job_slower_than_the_visibility_timeout_runs_once(fleet: ChaosFleet) -> None:
    # Given a model call (7 s) far slower than the broker's visibility timeout (4 s), and free slots
    fleet.mock_config(latency_ms=7000)

    # When the job runs, the broker hands its message out again while it is still running
    task_id = fleet.client.submit({"prompt": "Rename variable slow to quick", "tier": "mini"})
    result = fleet.client.result(task_id, timeout=30)

    # Then the model was called once (celery/celery#5935: the lock made the copy wait), and the
    # producer sees one completed result
    assert result.status == "completed"
    assert fleet.mock_stats()["total"] == 1
    time.sleep(VISIBILITY_S + 1)  # more copies come back; none runs, none escalates
    assert fleet.mock_stats()["total"] == 1
    assert fleet.store().for_task(task_id) is None
    assert f"task {task_id} requeued for" in fleet.logs()  # a copy did come back while it ran


def test_a_late_redelivery_of_a_finished_job_is_dropped_not_counted(fleet: ChaosFleet) -> None:
    # Given a finished job whose delivery counter already stands at the limit
    task_id = fleet.client.submit({"prompt": "Rename k to v", "tier": "mini"})
    assert fleet.client.result(task_id, timeout=20).status == "completed"
    fleet.client.redis.set(keys.deliveries(task_id), fleet.settings.limits.max_deliveries)
    calls = fleet.mock_stats()["total"]

    # When a redelivered copy of its message arrives (as the visibility timeout makes happen)
    _push_redelivered_copy(fleet, task_id, {"prompt": "Rename k to v", "tier": "mini"})
    time.sleep(3)

    # Then it is dropped: no second model call, no poison escalation, the result stays completed
    assert fleet.mock_stats()["total"] == calls
    assert fleet.store().for_task(task_id) is None
    assert fleet.client.peek([task_id])[task_id].status == "completed"
    assert "already has its result" in fleet.logs()


def _push_redelivered_copy(fleet: ChaosFleet, task_id: str, request: dict[str, object]) -> None:
    """Publish the job's message on a queue nobody reads, then move it to mini flagged as
    redelivered, the way kombu restores a message whose visibility timeout passed."""
    from fleet.app import EXECUTE_TASK

    envelope = {"id": task_id, "submitted_at": time.time()}
    fleet.client.app.send_task(EXECUTE_TASK, args=[request, envelope], task_id=task_id, queue="full")
    raw = fleet.client.redis.rpop("full")
    assert raw is not None
    message = json.loads(raw)
    message["headers"]["redelivered"] = True
    message["properties"]["delivery_info"].update(routing_key="mini", redelivered=True)
    fleet.client.redis.lpush("mini", json.dumps(message))


@pytest.mark.chaos
def test_pool_processes_killed_again_and_again_under_load(fleet: ChaosFleet) -> None:
    # Given 150 jobs in flight on a prefork pool
    fleet.mock_config(latency_ms=300)
    ids = [fleet.client.submit({"prompt": f"Rename v{i} to w{i}", "tier": "mini"}) for i in range(150)]

    # When a pool process is SIGKILLed every second, ten times
    for _ in range(10):
        time.sleep(1.0)
        children = fleet.pool_children("mini")
        if children:
            kill(children[0])

    # Then every job completes, each once
    done = fleet.wait_final(ids, timeout=120)
    assert len(done) == 150
    assert {r.status for r in done.values()} == {"completed"}
