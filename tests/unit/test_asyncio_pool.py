"""The asyncio pool: synchronous tasks as greenlets on one event loop, waiting without a thread each."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
import time
from typing import Any

import pytest
from celery.utils.threads import LocalStack
from kombu.asynchronous import Hub

from fleet.asyncio_pool import AsyncioPool, await_, in_task, run_in_greenlet, sleep


async def _double_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


async def _fail_later() -> None:
    await asyncio.sleep(0.01)
    raise ValueError("from the awaitable")


def test_await_returns_results_and_raises_failures_inside_sync_code() -> None:
    def job() -> tuple[bool, int, str]:
        first = await_(_double_later(4))
        try:
            await_(_fail_later())
        except ValueError as exc:
            caught = str(exc)
        return in_task(), first, caught

    assert asyncio.run(run_in_greenlet(job)) == (True, 8, "from the awaitable")


def test_a_failure_of_the_sync_code_reaches_the_awaiting_caller() -> None:
    def job() -> None:
        await_(asyncio.sleep(0))
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        asyncio.run(run_in_greenlet(job))


def test_outside_a_task_await_refuses_and_sleep_blocks() -> None:
    assert not in_task()
    coroutine = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="outside a task"):
        await_(coroutine)
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning
    began = time.monotonic()
    sleep(0.02)
    assert time.monotonic() - began >= 0.02


def test_tasks_wait_together_and_keep_their_own_context() -> None:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("var", default=-1)
    stack = LocalStack()  # what Celery keeps a task's request in

    def job(i: int) -> tuple[int, int, int]:
        var.set(i)
        stack.push(i)
        sleep(0.2)  # on the loop: the other tasks run meanwhile
        return i, var.get(), stack.top

    async def main() -> list[tuple[int, int, int]]:
        return await asyncio.gather(*(run_in_greenlet(job, i) for i in range(50)))

    began = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - began < 2.0  # 50 x 0.2 s one after another would be 10 s
    assert results == [(i, i, i) for i in range(50)]


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.results: list[Any] = []
        self.accepted = 0
        self.done = threading.Event()

    def target(self, i: int, pause: float) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        sleep(pause)
        with self.lock:
            self.running -= 1
        return i

    def callback(self, result: Any) -> None:
        self.results.append(result)

    def accept(self, pid: int, at: float) -> None:
        self.accepted += 1


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_pool_runs_at_most_limit_tasks_and_grows_while_running() -> None:
    pool = AsyncioPool(limit=3)
    pool.start()
    rec = _Recorder()
    try:
        for i in range(9):
            pool.apply_async(rec.target, (i, 0.2), callback=rec.callback, accept_callback=rec.accept)
        _wait(lambda: rec.running == 3)
        time.sleep(0.05)
        assert rec.peak == 3  # the rest wait their turn
        pool.grow(3)
        _wait(lambda: len(rec.results) == 9)
        assert rec.peak == 6
        assert sorted(rec.results) == list(range(9))
        assert rec.accepted == 9
        assert pool.num_processes == 6
        pool.shrink(10)
        assert pool.num_processes == 1
        assert pool.info["implementation"] == "fleet.asyncio_pool:AsyncioPool"
    finally:
        pool.stop()


def test_warm_shutdown_lets_running_tasks_finish() -> None:
    pool = AsyncioPool(limit=4)
    pool.start()
    rec = _Recorder()
    for i in range(4):
        pool.apply_async(rec.target, (i, 0.3), callback=rec.callback)
    _wait(lambda: rec.running == 4)
    pool.stop()
    assert sorted(rec.results) == [0, 1, 2, 3]
    assert pool._thread is not None and not pool._thread.is_alive()


def test_a_task_escaping_celerys_handling_is_logged_and_the_pool_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = AsyncioPool(limit=2)
    pool.start()
    rec = _Recorder()

    def broken() -> None:
        raise RuntimeError("not Celery's tracer")

    try:
        pool.apply_async(broken, ())
        pool.apply_async(rec.target, (7, 0.0), callback=rec.callback)
        _wait(lambda: rec.results == [7])
        _wait(lambda: "ended outside Celery's handling" in caplog.text)
    finally:
        pool.stop()


def _hub_loop(hub: Hub, until: threading.Event, seen: list[str]) -> Any:
    """A consumer loop as Celery's asynloop runs one: the hub's iterations until ``until``."""

    def loop_fn(*args: Any) -> str:
        seen.append(threading.current_thread().name)
        steps = hub.create_loop()
        while not until.is_set():
            next(steps)
        return "stopped"

    return loop_fn


def _loop_args(hub: Hub) -> tuple[Any, ...]:
    # asynloop's arguments: (consumer, connection, task consumer, blueprint, hub, qos, heartbeat, clock)
    return (None, None, None, None, hub, None, None, None)


def test_the_consumer_runs_on_the_pools_loop_and_its_poll_does_not_block_the_tasks() -> None:
    # Given a pool, and a hub watching a socket that no one writes to yet
    pool = AsyncioPool(limit=4)
    pool.start()
    hub = Hub()
    reader, writer = socket.socketpair()
    read: list[tuple[bytes, str]] = []
    hub.add_reader(reader, lambda: read.append((reader.recv(10), threading.current_thread().name)))
    stop, seen, rec = threading.Event(), [], _Recorder()
    outcome: list[Any] = []
    # When the consumer loop runs through the pool (the worker's main thread waits in it)
    consumer = threading.Thread(
        target=lambda: outcome.append(pool.run_consumer_loop(_hub_loop(hub, stop, seen), *_loop_args(hub)))
    )
    consumer.start()
    try:
        _wait(lambda: seen == ["asyncio-pool"])
        # Then tasks run beside its waiting poll, the descriptor's callback runs on the loop's thread
        began = time.monotonic()
        for i in range(4):
            pool.apply_async(rec.target, (i, 0.1), callback=rec.callback)
        _wait(lambda: sorted(rec.results) == [0, 1, 2, 3], timeout=3)
        assert time.monotonic() - began < 0.6  # the hub's poll waits 1 s at a time here
        writer.send(b"ping")
        _wait(lambda: read == [(b"ping", "asyncio-pool")], timeout=3)
        # and a callback a task queues on the hub ends the hub's wait at once (a poll of 1 s)
        queued_at: list[float] = []
        ran_at: list[float] = []

        def queue_on_hub() -> None:
            queued_at.append(time.monotonic())
            hub.call_soon(lambda: ran_at.append(time.monotonic()))

        pool.apply_async(queue_on_hub, ())
        _wait(lambda: bool(ran_at), timeout=3)
        assert ran_at[0] - queued_at[0] < 0.5
    finally:
        stop.set()
        writer.send(b"x")  # one more iteration, to see the stop
        consumer.join(5)
        pool.stop()
        reader.close()
        writer.close()
    assert outcome == ["stopped"]
    assert type(hub.poller).__name__ != "_LoopPoller" and "call_soon" not in vars(hub)


def test_what_the_consumer_loop_raises_reaches_the_waiting_thread_and_the_hub_is_as_before() -> None:
    class Shutdown(SystemExit):  # Celery's WorkerShutdown is a SystemExit
        pass

    pool = AsyncioPool(limit=2)
    pool.start()
    hub = Hub()
    poller = hub.poller

    def loop_fn(*args: Any) -> None:
        raise Shutdown(0)

    try:
        with pytest.raises(Shutdown):
            pool.run_consumer_loop(loop_fn, *_loop_args(hub))
        assert hub.poller is poller and "call_soon" not in vars(hub) and "create_loop" not in vars(hub)
        # and the pool's loop goes on running tasks
        rec = _Recorder()
        pool.apply_async(rec.target, (1, 0.0), callback=rec.callback)
        _wait(lambda: rec.results == [1])
    finally:
        pool.stop()
