"""A Celery pool that runs every task on one asyncio event loop per worker process.

Celery has no asyncio pool (celery/celery#6552). This one runs each task, Celery's own tracer
included, in a greenlet driven by an asyncio task on the pool's loop thread: the task's code stays
synchronous and calls :func:`await_` where it would wait (a model call, a pause); the greenlet then
switches to the loop, which runs every other task until the awaitable is done. A task in flight
costs a greenlet and a coroutine, not a thread: no interpreter-lock handover among hundreds of
threads and no thread stacks (the SQLAlchemy asyncio bridge works the same way).

    CELERY_CUSTOM_WORKER_POOL=fleet.asyncio_pool:AsyncioPool celery -A proj worker --pool custom

Whatever a task does without :func:`await_` (a Redis round trip, JSON, logging) runs on the loop
thread and holds the loop for that long, which is what the task's CPU costs anyway. A task that
blocks for long without :func:`await_` (``time.sleep``, a blocking socket read of seconds) stalls
every task of the process: use :func:`sleep`, and call awaitables for long waits.

Celery's consumer (kombu's hub: the fetch, the task messages, the acks) can run on the same loop,
in a greenlet of its own, where the consumer's ``loop`` calls :meth:`AsyncioPool.run_consumer_loop`
(``fleet.consumer.FleetConsumer`` does): one thread then does all of a job's work.

Task-local state keeps working: Celery's request stack is greenlet-local (``celery.utils.threads``
keys its ``Local`` on ``greenlet.getcurrent``), and each greenlet has its own ``contextvars``
context. ``threading.local`` is shared by all tasks of the process (one thread runs them).

Self-contained (Celery, greenlet and the standard library), so that it could be offered upstream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet
from celery.concurrency.base import BasePool, apply_target

__all__ = ["AsyncioPool", "at_stop", "await_", "in_task", "run_in_greenlet", "sleep"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _TaskGreenlet(greenlet.greenlet):  # type: ignore[misc]  # greenlet's class is untyped to mypy
    """A task's greenlet; its parent is the loop thread's greenlet running the asyncio task."""


#: What each pool's loop closes after its last task at a warm shutdown (see :func:`at_stop`).
_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callable[[], Awaitable[Any]]]] = (
    weakref.WeakKeyDictionary()
)


def at_stop(close: Callable[[], Awaitable[Any]]) -> None:
    """Await ``close()`` on the running pool loop when the pool stops (a client session of the loop's)."""
    _closers.setdefault(asyncio.get_running_loop(), []).append(close)


def in_task() -> bool:
    """True in a task run by an :class:`AsyncioPool` (where :func:`await_` works)."""
    return isinstance(greenlet.getcurrent(), _TaskGreenlet)


def await_(awaitable: Awaitable[T]) -> T:
    """Wait for ``awaitable`` on the pool's loop, letting the loop run other tasks meanwhile; return
    its result or raise its exception.

    Raises:
        RuntimeError: not in a task of an :class:`AsyncioPool` (see :func:`in_task`).
    """
    current = greenlet.getcurrent()
    if not isinstance(current, _TaskGreenlet):
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # a coroutine that will never run: no "was never awaited" warning
        raise RuntimeError("await_() called outside a task of fleet.asyncio_pool.AsyncioPool")
    result: T = current.parent.switch(awaitable)
    return result


def sleep(seconds: float) -> None:
    """``time.sleep`` that lets the loop run other tasks when called in a pool's task."""
    if isinstance(greenlet.getcurrent(), _TaskGreenlet):
        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


async def run_in_greenlet(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run the synchronous ``fn`` in a greenlet of its own, awaiting what it passes to :func:`await_`."""
    task = _TaskGreenlet(fn)
    step = task.switch(*args, **kwargs)
    while not task.dead:
        try:
            value = await step
        except BaseException as exc:  # noqa: BLE001 - the awaitable's failure is the task's to handle
            step = task.throw(exc)
        else:
            step = task.switch(value)
    result: T = step
    return result


class _LoopPoller:
    """kombu's epoll poller for a hub driven from an asyncio loop: a poll that would block waits on
    the loop for the epoll's own descriptor instead (or for :meth:`wake`)."""

    def __init__(self, inner: Any, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._fd = fd
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def poll(self, timeout: float | None) -> Any:
        events = self._inner.poll(0)
        if events or timeout == 0:
            return events
        await_(self._readable(timeout))
        return self._inner.poll(0)

    def wake(self) -> None:
        """End the current wait (on the loop's thread): the hub has a callback to run."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _readable(self, timeout: float | None) -> None:
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        loop.add_reader(self._fd, self.wake)
        timer = loop.call_later(timeout, self.wake) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            loop.remove_reader(self._fd)
            if timer is not None:
                timer.cancel()


class AsyncioPool(BasePool):
    """Runs tasks as greenlets on one asyncio loop in a thread of the worker process.

    At most ``limit`` tasks run at once (Celery's prefetch keeps no more in hand; more wait in order).
    ``grow``/``shrink`` change the limit while running (Celery's ``pool_grow``/``pool_shrink``
    control commands, the autoscaler). A warm shutdown lets running tasks finish.
    """

    body_can_be_buffer = True
    signal_safe = False

    limit: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._running: set[asyncio.Task[Any]] = set()
        self._waiting: deque[tuple[Any, ...]] = deque()
        self._loop_ident: int | None = None
        #: The consumer's run on the loop, while it runs (a future of the calling thread's).
        self._consumer: concurrent.futures.Future[tuple[bool, Any]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def on_start(self) -> None:
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(started,), name="asyncio-pool", daemon=True
        )
        self._thread.start()
        started.wait()

    def _run_loop(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._loop_ident = threading.get_ident()
        self.loop.call_soon(started.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def on_stop(self) -> None:
        """Warm shutdown: wait for the running and waiting tasks, then stop the loop."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = asyncio.run_coroutine_threadsafe(self._drain(), self.loop)
        try:
            done.result()
        finally:
            self._stop_loop()

    def on_terminate(self) -> None:
        """Cold shutdown: stop the loop; running tasks are abandoned (their messages, unacked,
        go back to the queue)."""
        self._stop_loop()

    def _stop_loop(self) -> None:
        consumer = self._consumer
        if consumer is not None:  # stopped from another thread while the consumer runs on the loop
            consumer.cancel()
        if self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    async def _drain(self) -> None:
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for close in _closers.pop(self.loop, []):
            try:
                await close()
            except Exception:
                logger.exception("asyncio pool: a closer failed at shutdown")

    # -- Celery's consumer on the pool's loop ------------------------------------------------

    def run_consumer_loop(self, loop_fn: Callable[..., Any], *args: Any) -> Any:
        """Run Celery's consumer loop (``loop_fn``, ``asynloop``, with its ``args``) in a greenlet on
        this pool's loop while the calling thread (the worker's main thread) waits; return or raise
        what it does.

        One thread then fetches, runs the tasks and acks. With the consumer on a thread of its own,
        every fetch and every ack was a hand-over of the interpreter lock between two busy threads:
        the loop's lock waits after each of its tasks' Redis round trips stalled it for seconds at
        1,000 calls in flight, and the calls came back in waves (docs/performance.md). Here the
        hub's poll waits on the loop for the poller's descriptor instead of blocking in it; a hub
        callback queued from the loop (an ack) ends that wait. A poller without a descriptor
        (``select``) keeps the consumer on the calling thread.
        """
        hub = args[4]
        poller = hub.poller
        epoll = getattr(poller, "_epoll", None)
        if epoll is None or self._thread is None or not self._thread.is_alive():
            return loop_fn(*args)

        async def consume() -> tuple[bool, Any]:
            try:
                return True, await run_in_greenlet(self._consume, loop_fn, args, hub, epoll.fileno())
            except BaseException as exc:  # noqa: BLE001 - WorkerShutdown and the like are the caller's
                return False, exc

        self._consumer = asyncio.run_coroutine_threadsafe(consume(), self.loop)
        try:
            ok, value = self._consumer.result()
        finally:
            self._consumer = None
        if not ok:
            raise value
        return value

    def _consume(self, loop_fn: Callable[..., Any], args: tuple[Any, ...], hub: Any, fd: int) -> Any:
        inner = hub.poller
        poller = _LoopPoller(inner, fd, self.loop)
        call_soon = hub.call_soon

        def call_soon_and_wake(callback: Any, *cargs: Any) -> Any:
            queued = call_soon(callback, *cargs)
            if threading.get_ident() == self._loop_ident:
                poller.wake()  # the hub's own wake skips its loop's thread: it could not be waiting
            return queued

        hub.poller = poller
        hub.call_soon = call_soon_and_wake
        # kombu's hub sleeps (up to 0.1 s) while it has no descriptor: on the loop, the pool's sleep
        hub.create_loop = functools.partial(type(hub).create_loop, hub, sleep=sleep)
        try:
            return loop_fn(*args)
        finally:
            if hub._poller is poller:  # else the hub was reset (a lost connection): a new poller
                hub.poller = inner
            del hub.call_soon, hub.create_loop

    # -- tasks -------------------------------------------------------------------------------

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **_: Any,
    ) -> None:
        job = (target, args, kwargs, callback, accept_callback)
        if threading.get_ident() == self._loop_ident:
            self._admit(job)  # the consumer on the loop: no wake of it
            return
        self.loop.call_soon_threadsafe(self._admit, job)

    def _admit(self, job: tuple[Any, ...]) -> None:
        self._waiting.append(job)
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and len(self._running) < self.limit:
            target, args, kwargs, callback, accept_callback = self._waiting.popleft()
            task = self.loop.create_task(
                run_in_greenlet(apply_target, target, args or (), kwargs, callback, accept_callback)
            )
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # apply_target hands a task's failure to Celery's callback; what reaches here escaped it.
            logger.error("asyncio pool: a task ended outside Celery's handling", exc_info=task.exception())
        self._start_waiting()

    # -- size --------------------------------------------------------------------------------

    def grow(self, n: int = 1) -> None:
        self.limit += n
        self.loop.call_soon_threadsafe(self._start_waiting)

    def shrink(self, n: int = 1) -> None:
        self.limit = max(1, self.limit - n)

    @property
    def num_processes(self) -> int:
        return self.limit

    def _get_info(self) -> dict[str, Any]:
        return {
            "implementation": f"{type(self).__module__}:{type(self).__name__}",
            "max-concurrency": self.limit,
            "running": len(self._running),
            "waiting": len(self._waiting),
        }
