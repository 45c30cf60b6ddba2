"""`Client.submit_many` on real workers: every job of a batch runs as `submit` would run it (routed,
pinned, a pipeline), idempotency keys hold within and across batches, a bad request enqueues nothing,
and the batch costs one round trip for its records and one broker connection for its messages."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from fleet.errors import InvalidRequest
from fleet.models import Tier

from .conftest import RunningFleet

pytestmark = pytest.mark.integration


def fleet_keys(url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return sorted(client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()


def test_a_batch_runs_each_job_as_submit_would(clean_fleet: RunningFleet) -> None:
    # Given a routed job, a job pinned to full and a pipeline
    client = clean_fleet.client
    ids = client.submit_many(
        [
            {"prompt": "Extract the order id from: 'Order #A-1234 shipped'", "kind": "extract.order",
             "hints": {"complexity": "low"}},
            {"prompt": "Reformat this list as CSV: a, b, c", "tier": "full"},
            {"prompt": "Write a runbook for rotating the TLS certificate.", "pipeline": "review"},
        ]
    )  # fmt: skip
    # When they finish, Then each id is its own request's job, in order
    assert len(set(ids)) == 3
    routed, pinned, piped = (client.result(task_id, timeout=60) for task_id in ids)
    assert [routed.task_id, pinned.task_id, piped.task_id] == ids
    assert routed.status == "completed" and routed.kind == "extract.order" and routed.tier is Tier.MINI
    assert routed.routing is not None and routed.routing.classifier != "pinned"
    assert pinned.status == "completed" and pinned.tier is Tier.FULL
    assert pinned.routing is not None and pinned.routing.classifier == "pinned"
    assert piped.status == "completed" and piped.pipeline == "review"
    assert [s.step for s in piped.steps] == ["write", "review", "revise"]


def test_idempotency_keys_hold_within_and_across_batches(clean_fleet: RunningFleet) -> None:
    # Given a job submitted earlier under key "order-1"
    client = clean_fleet.client
    earlier = client.submit({"prompt": "Translate 'good morning' to French", "idempotency_key": "order-1"})
    # When a batch repeats that key, and holds key "order-2" twice
    ids = client.submit_many(
        [
            {"prompt": "Translate 'good morning' to French", "idempotency_key": "order-1"},
            {"prompt": "Translate 'good night' to French", "idempotency_key": "order-2"},
            {"prompt": "Translate 'good night' to French", "idempotency_key": "order-2"},
            {"prompt": "Translate 'thank you' to French"},
        ]
    )
    # Then the repeats get the first ids, and only two new jobs were enqueued (three records in all)
    assert ids[0] == earlier and ids[1] == ids[2] and len({earlier, ids[1], ids[3]}) == 3
    assert len(fleet_keys(clean_fleet.redis_url, "fleet:job:")) == 3
    for task_id in (earlier, ids[1], ids[3]):
        assert client.result(task_id, timeout=30).status == "completed"
    # And a later submit with a key of the batch gets its id too
    assert client.submit({"prompt": "again", "idempotency_key": "order-2"}) == ids[1]


def test_an_invalid_request_enqueues_nothing(clean_fleet: RunningFleet) -> None:
    # Given a batch whose fourth request has no prompt
    batch: list[Any] = [{"prompt": f"job {n}", "idempotency_key": f"k-{n}"} for n in range(3)]
    batch.append({"kind": "x"})
    # When it is submitted, Then it is refused naming that request, and nothing was written or sent
    with pytest.raises(InvalidRequest, match=r"requests\[3\]: "):
        clean_fleet.client.submit_many(batch)
    written = [
        k
        for k in fleet_keys(clean_fleet.redis_url, "fleet:")
        if not k.startswith((b"fleet:worker", b"fleet:batch:pump"))
    ]
    assert written == []  # (the workers' heartbeats come and go on their own)
    assert clean_fleet.client.redis.llen("router") == 0
    assert clean_fleet.client.submit_many(batch[:3])  # the same keys are still free


def test_a_batch_is_one_round_trip_for_its_records_and_one_connection(
    clean_fleet: RunningFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a client that counts its pipeline round trips and its producer acquisitions
    client = clean_fleet.client
    executes, acquires = [], []
    make_pipeline = client.redis.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        run = pipe.execute

        def execute(*a: Any, **kw: Any) -> Any:
            executes.append(len(pipe.command_stack))
            return run(*a, **kw)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    pool = client.app.producer_pool
    acquire = pool.acquire

    def counting_acquire(*args: Any, **kwargs: Any) -> Any:
        acquires.append(1)
        return acquire(*args, **kwargs)

    monkeypatch.setattr(client.redis, "pipeline", pipeline)
    monkeypatch.setattr(pool, "acquire", counting_acquire)
    # When 50 jobs are submitted in one batch
    ids = client.submit_many([{"prompt": f"Say {n}", "tier": "fast"} for n in range(50)])
    # Then their records went in one pipeline (an HSET and an EXPIRE each), their messages on one
    # producer, and every job is known at once
    assert executes == [100]
    assert acquires == [1]
    assert {client.status(task_id).task_id for task_id in ids} == set(ids)
