"""The fleet on RabbitMQ (``broker.url = "amqp://..."``), with Redis keeping its state: jobs travel
through quorum queues, a dead worker's job comes back as soon as its channel closes, and poison
goes to the inbox: refused messages once, and messages past the queue's delivery limit through the
``fleet.dead`` dead-letter exchange. Runs where ``FLEET_TEST_AMQP_URL`` is set (.ci/run sets it
when 127.0.0.1:5672 answers)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from fleet.app import EXECUTE_TASK
from fleet.models import JobEnvelope, RoutingDecision, Tier
from fleet.monitor import queue_snapshot

from .chaosrig import ChaosFleet, chaos_fleet, kill_worker_mid_call, wait_for
from .rabbit import amqp_skip_reason, rabbit_vhost

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(amqp_skip_reason() is not None, reason=str(amqp_skip_reason())),
]

#: The pools this module runs; nothing consumes ``full`` (the test takes its messages itself).
QUEUES = ("router", "mini", "standard", "fast", "escalations")
ENV = {"FLEET_QUEUES__MINI__POOL": "prefork", "FLEET_LIMITS__MAX_DELIVERIES": "3"}


@pytest.fixture(scope="module")
def rabbit_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    with (
        rabbit_vhost() as url,
        chaos_fleet(
            tmp_path_factory.mktemp("rabbit"), queues=QUEUES, env={**ENV, "FLEET_BROKER_URL": url}
        ) as fleet,
    ):
        yield fleet


def _job(payload: dict[str, object], tier: str) -> tuple[list[object], str]:
    task_id = uuid.uuid4().hex
    routing = RoutingDecision(tier=Tier(tier), reasons=["test"], classifier="pinned")
    envelope = JobEnvelope(id=task_id, submitted_at=time.time(), routing=routing)
    return [payload, envelope.model_dump(mode="json")], task_id


def test_jobs_travel_through_quorum_queues(rabbit_fleet: ChaosFleet) -> None:
    fleet = rabbit_fleet
    assert fleet.settings.broker.url.startswith("amqp://")
    # Given jobs pinned to each running tier, and one the router places
    ids = [fleet.client.submit({"prompt": f"Rename v{i} to w{i}", "tier": t}) for i, t in
           enumerate(("mini", "standard", "fast"))]  # fmt: skip
    ids.append(fleet.client.submit({"prompt": "Rename variable x to total"}))
    # Then every one completes, its result in Redis
    done = fleet.wait_final(ids, timeout=30)
    assert len(done) == 4 and {r.status for r in done.values()} == {"completed"}
    assert {done[i].tier for i in ids[:3]} == {Tier.MINI, Tier.STANDARD, Tier.FAST}
    # And the queues are quorum queues (declaring one as classic is refused: PRECONDITION_FAILED)
    with Connection(fleet.settings.broker.url) as conn:
        channel = conn.channel()
        with pytest.raises(conn.channel_errors, match="PRECONDITION_FAILED"):
            Queue("mini", Exchange("fleet", type="direct"), "mini", channel=channel, durable=True,
                  queue_arguments={"x-queue-type": "classic"}).declare()  # fmt: skip


def test_a_killed_workers_job_comes_back_at_once(rabbit_fleet: ChaosFleet) -> None:
    fleet = rabbit_fleet
    fleet.mock_config(latency_ms=1500)
    try:
        # Given a job mid-call on mini, When the whole mini worker is SIGKILLed and restarted
        task_id, killed_at = kill_worker_mid_call(fleet, "mini")
        # Then RabbitMQ redelivered it when the channel closed, and it completes, once
        done = fleet.wait_final([task_id], timeout=60)
        assert done[task_id].status == "completed"
        assert time.monotonic() - killed_at <= 30
    finally:
        fleet.mock_config(latency_ms=5)


def test_a_message_past_the_delivery_limit_is_dead_lettered_into_the_inbox(rabbit_fleet: ChaosFleet) -> None:
    fleet = rabbit_fleet
    url = fleet.settings.broker.url
    # Given a job on the full queue, which no worker consumes here
    args, task_id = _job({"prompt": "Design the storage layer"}, "full")
    fleet.client.app.send_task(EXECUTE_TASK, args=args, task_id=task_id, queue="full")
    # When a consumer takes it and gives it back, more often than limits.max_deliveries (3) allows
    limit = fleet.settings.limits.max_deliveries
    with Connection(url) as conn:
        returned = 0
        queue = Queue(
            "full", Exchange("fleet", type="direct"), "full", channel=conn.channel(), no_declare=True
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = queue.get(no_ack=False)
            if message is None:
                if returned > limit:
                    break
                time.sleep(0.1)
                continue
            message.requeue()
            returned += 1
    assert returned == limit + 1
    # Then RabbitMQ dead-letters it, and the escalations worker hands it to people as a poison
    # message: one record, and the job's final result says so
    done = fleet.wait_final([task_id], timeout=30)
    assert done[task_id].status == "escalated" and done[task_id].reason == "poison_message"
    record = fleet.store().for_task(task_id)
    assert record is not None and record.queue == "full" and "RabbitMQ" in record.detail
    assert record.tier == Tier.FULL


def test_a_refused_message_is_escalated_once_and_the_worker_keeps_consuming(rabbit_fleet: ChaosFleet) -> None:
    fleet = rabbit_fleet
    # Given a message for a task no worker knows, on mini
    task_id = uuid.uuid4().hex
    fleet.client.app.send_task("fleet.no_such_task", args=[], task_id=task_id, queue="mini")
    # Then it is escalated (unknown_task) once, though RabbitMQ also dead-letters the rejected message
    wait_for(lambda: fleet.store().for_task(task_id) is not None, 20, "its escalation")
    record = fleet.store().for_task(task_id)
    assert record is not None and record.reason == "unknown_task"
    time.sleep(1.0)  # the dead letter reaches the escalations worker, which records nothing more
    assert [r.task_id for r in fleet.store().list()].count(task_id) == 1
    # And mini keeps consuming
    ok = fleet.client.submit({"prompt": "Rename p to q", "tier": "mini"})
    assert fleet.client.result(ok, timeout=20).status == "completed"


def test_queue_depth_comes_from_rabbitmq(rabbit_fleet: ChaosFleet, tmp_path: Path) -> None:
    fleet = rabbit_fleet
    for _ in range(3):
        args, task_id = _job({"prompt": "Design the storage layer"}, "full")
        fleet.client.app.send_task(EXECUTE_TASK, args=args, task_id=task_id, queue="full")
    snapshot = queue_snapshot(fleet.settings, fleet.client.redis)
    assert snapshot["full"]["depth"] == 3
    assert snapshot["full"]["oldest_age_s"] == 0.0  # RabbitMQ cannot show a message without taking it
    with Connection(fleet.settings.broker.url) as conn:
        conn.channel().queue_purge("full")
