"""`fleet.AsyncClient` on real workers: the sync client's contract (submit, submit_many, result,
status and their errors) without ever blocking the event loop, and waiting by pub/sub."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from fleet import keys
from fleet.aio import AsyncClient
from fleet.app import encode_result
from fleet.errors import BrokerError, InvalidRequest, ResultTimeout, TaskFailed, TaskNotFound
from fleet.models import JobStatus, TaskResult, Tier

from .conftest import RunningFleet

pytestmark = pytest.mark.integration


def run(fleet: RunningFleet, scenario: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
    """``scenario(client)`` in a new event loop, with a client of ``fleet`` closed after it."""

    async def main() -> Any:
        async with AsyncClient(fleet.settings, redis_url=fleet.redis_url) as client:
            return await scenario(client)

    return asyncio.run(main())


def stuck_job(fleet: RunningFleet) -> str:
    """An id with a job record and no message: on its way for as long as the test likes."""
    task_id = f"stuck-{uuid.uuid4().hex}"
    fleet.client.redis.hset(keys.job(task_id), mapping={"state": "queued", "queue": "router"})
    return task_id


class Ticker:
    """An asyncio task that wakes every 10 ms and records the gaps between its wake-ups."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.times.append(time.monotonic())
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    def ticks_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t <= end)

    def longest_gap(self) -> float:
        return max(b - a for a, b in zip(self.times, self.times[1:], strict=False))


def test_submit_then_result_then_status(clean_fleet: RunningFleet) -> None:
    async def scenario(client: AsyncClient) -> tuple[str, TaskResult, JobStatus]:
        task_id = await client.submit({"prompt": "Reformat this list as CSV: a, b, c", "tier": "fast"})
        res = await client.result(task_id, timeout=30)
        return task_id, res, await client.status(task_id)

    task_id, res, status = run(clean_fleet, scenario)
    assert res.task_id == task_id and res.status == "completed" and res.tier is Tier.FAST
    assert res.routing is not None and res.routing.classifier == "pinned" and res.answer
    assert status.state == "completed" and status.result == res
    # The sync client reads the same job the same way
    assert clean_fleet.client.result(task_id, timeout=1) == res


def test_submit_many_runs_routed_pinned_and_pipelined_jobs_with_their_keys(clean_fleet: RunningFleet) -> None:
    earlier = clean_fleet.client.submit({"prompt": "Translate 'merci' to English", "idempotency_key": "ak-1"})

    async def scenario(client: AsyncClient) -> tuple[list[str], list[TaskResult], str]:
        pinned = {"prompt": "Reformat as CSV: a, b, c", "tier": "standard", "idempotency_key": "ak-2"}
        ids = await client.submit_many(
            [
                {"prompt": "Extract the order id from: 'Order #A-1234 shipped'", "kind": "extract.order",
                 "hints": {"complexity": "low"}},
                pinned,
                {"prompt": "A memo about moving s1 to the new cluster by March.",
                 "pipeline": "extract_reason"},
                {"prompt": "Translate 'merci' to English", "idempotency_key": "ak-1"},
                pinned,
            ]
        )  # fmt: skip
        results = [await client.result(task_id, timeout=60) for task_id in ids[:3]]
        again = await client.submit({"prompt": "anything", "idempotency_key": "ak-2"})
        return ids, results, again

    ids, (routed, pinned, piped), again = run(clean_fleet, scenario)
    # The repeated keys get the first ids (the earlier submit's, the batch's own)
    assert ids[3] == earlier and ids[4] == ids[1] == again and len(set(ids[:3])) == 3
    assert [routed.task_id, pinned.task_id, piped.task_id] == ids[:3]
    assert routed.status == "completed" and routed.tier is Tier.MINI and routed.kind == "extract.order"
    assert pinned.status == "completed" and pinned.tier is Tier.STANDARD
    assert pinned.routing is not None and pinned.routing.classifier == "pinned"
    assert piped.status == "completed" and piped.pipeline == "extract_reason"
    assert [(s.step, s.tier) for s in piped.steps] == [("extract", Tier.MINI), ("reason", Tier.FULL)]


def test_an_invalid_request_in_submit_many_enqueues_nothing(clean_fleet: RunningFleet) -> None:
    async def scenario(client: AsyncClient) -> None:
        with pytest.raises(InvalidRequest, match=r"requests\[2\]\.temperature") as info:
            await client.submit_many(
                [{"prompt": "a", "idempotency_key": "ik-1"}, {"prompt": "b"},
                 {"prompt": "c", "temperature": 9}]
            )  # fmt: skip
        assert info.value.code == "invalid_request" and len(info.value.errors) == 1

    run(clean_fleet, scenario)
    # Nothing was written: no job record, no idempotency key; and nothing reached the router
    probe = redis.Redis.from_url(clean_fleet.redis_url)
    try:
        written = [
            k
            for k in probe.scan_iter(match="fleet:*")
            if not k.startswith((b"fleet:worker", b"fleet:batch:pump"))
        ]
        assert written == []  # (the workers' heartbeats come and go on their own)
        assert probe.llen("router") == 0
    finally:
        probe.close()


def test_an_unknown_id_is_not_found_at_once(clean_fleet: RunningFleet) -> None:
    async def scenario(client: AsyncClient) -> float:
        with pytest.raises(TaskNotFound) as info:
            await client.status("nobody-submitted-this")
        assert info.value.task_id == "nobody-submitted-this"
        began = time.monotonic()
        with pytest.raises(TaskNotFound):
            await client.result("nobody-submitted-this", timeout=30)
        return time.monotonic() - began

    assert run(clean_fleet, scenario) < 2
    # The sync client says the same
    with pytest.raises(TaskNotFound):
        clean_fleet.client.status("nobody-submitted-this")


def test_a_job_still_on_its_way_is_queued_then_times_out(clean_fleet: RunningFleet) -> None:
    task_id = stuck_job(clean_fleet)

    async def scenario(client: AsyncClient) -> JobStatus:
        status = await client.status(task_id)
        with pytest.raises(ResultTimeout, match=r"no final state after 0\.3 s"):
            await client.result(task_id, timeout=0.3)
        return status

    status = run(clean_fleet, scenario)
    assert status.state == "queued" and status.queue == "router" and status.result is None


def test_a_task_that_raised_is_task_failed(clean_fleet: RunningFleet) -> None:
    task_id = stuck_job(clean_fleet)
    clean_fleet.client.redis.set(keys.result(task_id), json.dumps({"status": "FAILURE", "result": None}))

    async def scenario(client: AsyncClient) -> JobStatus:
        with pytest.raises(TaskFailed):
            await client.result(task_id, timeout=5)
        return await client.status(task_id)

    assert run(clean_fleet, scenario).state == "failed"


def test_result_leaves_the_event_loop_free_while_it_waits(clean_fleet: RunningFleet) -> None:
    task_id = stuck_job(clean_fleet)

    async def scenario(client: AsyncClient) -> tuple[Ticker, float, float]:
        # Given a ticker that wants to run every 10 ms
        ticker = Ticker()
        ticker.start()
        await asyncio.sleep(0.05)
        # When result() waits 1 s for a job that does not finish
        began = time.monotonic()
        with pytest.raises(ResultTimeout):
            await client.result(task_id, timeout=1.0)
        ended = time.monotonic()
        await ticker.stop()
        return ticker, began, ended

    ticker, began, ended = run(clean_fleet, scenario)
    # Then the ticker kept ticking through the wait (a blocking wait would leave a 1 s gap)
    assert ended - began >= 0.95
    assert ticker.longest_gap() < 0.25, ticker.longest_gap()
    assert ticker.ticks_between(began, ended) >= 40


def test_submit_many_leaves_the_event_loop_free_while_it_publishes(clean_fleet: RunningFleet) -> None:
    async def scenario(client: AsyncClient) -> tuple[Ticker, float, float]:
        ticker = Ticker()
        ticker.start()
        await asyncio.sleep(0.05)
        began = time.monotonic()
        # 300 messages: a few hundred milliseconds of publishing, in a worker thread
        ids = await client.submit_many([{"prompt": f"Say {n}", "tier": "fast"} for n in range(300)])
        ended = time.monotonic()
        await ticker.stop()
        # None of them may run on into the next test: cancelled, and seen to end
        for task_id in ids:
            await client.cancel(task_id)
        for task_id in ids:
            assert (await client.result(task_id, timeout=60)).status in ("cancelled", "completed")
        return ticker, began, ended

    ticker, began, ended = run(clean_fleet, scenario)
    # A publish on the loop's thread would let the ticker in at most once or twice
    assert ticker.ticks_between(began, ended) >= 5, (ended - began, ticker.ticks_between(began, ended))


def test_result_wakes_on_the_published_result_not_by_polling(clean_fleet: RunningFleet) -> None:
    task_id = stuck_job(clean_fleet)
    done = TaskResult(task_id=task_id, status="completed", answer="published", tier=Tier.MINI)
    key, value, expires = encode_result(clean_fleet.client.app, task_id, done.model_dump(mode="json"))

    async def scenario(client: AsyncClient) -> tuple[TaskResult, float, int]:
        # Given a client that counts its reads of the job
        reads = 0
        status = client.status

        async def counting(task_id: str) -> JobStatus:
            nonlocal reads
            reads += 1
            return await status(task_id)

        client.status = counting  # type: ignore[method-assign]
        # When it waits, and the result is written and published 0.4 s later
        waiter = asyncio.create_task(client.result(task_id, timeout=10))
        await asyncio.sleep(0.4)
        clean_fleet.client.redis.set(key, value, ex=expires)
        clean_fleet.client.redis.publish(key, value)
        published = time.monotonic()
        res = await waiter
        return res, time.monotonic() - published, reads

    res, woke_after, reads = run(clean_fleet, scenario)
    # Then it returns at once (its next re-read would be 0.6 s later), having read the job twice
    assert res == done
    assert woke_after < 0.3, woke_after
    assert reads <= 3, reads


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_broker_is_a_broker_error(fleet: RunningFleet) -> None:
    url = f"redis://fleet:hunter2-canary@127.0.0.1:{_closed_port()}/0"

    async def scenario() -> list[BrokerError]:
        errors = []
        async with AsyncClient(fleet.settings, redis_url=url) as client:
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: client.submit({"prompt": "hello"}),
                lambda: client.submit_many([{"prompt": "a"}, {"prompt": "b", "idempotency_key": "k"}]),
                lambda: client.status("abc"),
                lambda: client.result("abc", timeout=5),
            ]
            for call in calls:
                with pytest.raises(BrokerError) as info:
                    await asyncio.wait_for(call(), timeout=30)
                errors.append(info.value)
        return errors

    for error in asyncio.run(scenario()):
        assert error.code == "broker_unavailable"
        assert "127.0.0.1" in error.message and "***" in error.message
        assert "hunter2-canary" not in error.message


def test_cancel_marks_a_job_on_its_way_and_leaves_a_final_one(clean_fleet: RunningFleet) -> None:
    waiting = stuck_job(clean_fleet)
    done = clean_fleet.client.submit({"prompt": "Rename a to b", "tier": "mini"})
    final = clean_fleet.client.result(done, timeout=30)

    async def scenario(client: AsyncClient) -> tuple[JobStatus, JobStatus]:
        with pytest.raises(TaskNotFound):
            await client.cancel("nobody-submitted-this")
        return await client.cancel(waiting), await client.cancel(done)

    marked, left = run(clean_fleet, scenario)
    assert marked.state == "queued" and marked.cancelling
    assert left.result == final  # already final: left as it is
