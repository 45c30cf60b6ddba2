"""Submit jobs and read their results from asyncio code, without blocking the event loop.

    async with fleet.AsyncClient() as client:
        task_id = await client.submit({"prompt": "Summarise this ticket: ...", "kind": "support.summary"})
        res = await client.result(task_id, timeout=60)

The same contract as :class:`fleet.producer.Client`, step for step (validation, idempotency keys,
job records, pinned tiers, pipelines) and error for error (``InvalidRequest``, ``TaskNotFound``,
``ResultTimeout``, ``TaskFailed``, ``BrokerError``): the steps are :mod:`fleet.producer`'s functions,
only the I/O differs. Every Redis read and write goes through ``redis.asyncio``; ``result`` waits on
the result key's channel (pub/sub), not by polling.

**Publishing runs the sync publish in a worker thread** (``asyncio.to_thread``), rather than writing
the message to Redis ourselves:

- the message is Celery's protocol inside kombu's Redis envelope (base64 body, delivery info and tag,
  the exchange's binding table, priority lists): both libraries' private format, which a copy here
  would have to follow from release to release, where a mismatch means messages the workers drop;
- ``broker.url`` may name a RabbitMQ, where there is no Redis format to write;
- the publish carries the trace context in its headers (Celery's ``before_task_publish`` signal,
  :mod:`fleet.telemetry`) and the tier's time limits (:func:`fleet.producer.publish`): one place.

The cost is one hop to a thread per call (a whole batch for ``submit_many``), during which the loop
runs on; concurrent calls wait for a thread of the default executor, never on the loop. A ``submit``
cancelled while its messages are being published may still enqueue them (a thread cannot be
interrupted): the job records are written first, so ``status`` finds such a job.

A client belongs to the event loop it is first used in (redis.asyncio's connections do).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from redis import asyncio as aioredis

from fleet import keys, scripts, telemetry
from fleet.app import FleetCelery, create_app
from fleet.boundary import broker_errors
from fleet.budgets import enforce_read, queue_spend_reads, teams_to_check
from fleet.discovery import REDIS_OPTIONS, broker_url
from fleet.errors import ResultTimeout, TaskNotFound
from fleet.models import JobStatus, TaskResult
from fleet.producer import (
    ANSWER_POLL_S,
    Outgoing,
    Request,
    claims,
    decode_result,
    prepare,
    prepare_many,
    publish,
    queue_records,
    settle,
    settled,
    status_of,
)
from fleet.settings import Settings, get_settings

__all__ = ["AsyncClient"]


class AsyncClient:
    """An asyncio producer bound to one fleet (one broker). Build one per event loop and keep it;
    ``await client.close()`` (or ``async with``) when done."""

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.redis_url = redis_url or broker_url(self.settings)
        self.app: FleetCelery = create_app(self.settings, self.redis_url)
        tls = self.settings.redis_tls() if self.redis_url.startswith("rediss://") else {}
        self.redis: aioredis.Redis = aioredis.Redis.from_url(self.redis_url, **REDIS_OPTIONS, **tls)
        self._claim = scripts.register(self.redis, "claim")
        telemetry.setup(self.settings, role="producer")  # a no-op unless OTEL_* or a trace file asks

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def submit(self, request: Request) -> str:
        """Validate and enqueue a job; return its task id (see :meth:`fleet.producer.Client.submit`).

        Raises:
            InvalidRequest: the request is not valid; nothing was enqueued.
            BrokerError: the broker cannot be reached.
        """
        return (await self._send([prepare(self.settings, request)]))[0]

    async def submit_many(self, requests: Iterable[Request]) -> list[str]:
        """Validate every request, then enqueue them all; return their task ids, in order (see
        :meth:`fleet.producer.Client.submit_many`).

        Raises:
            InvalidRequest: a request is not valid, each problem named by its index
                (``requests[3].prompt: ...``); nothing was enqueued.
            BrokerError: the broker cannot be reached.
        """
        return await self._send(prepare_many(self.settings, requests))

    async def _send(self, jobs: Sequence[Outgoing]) -> list[str]:
        with broker_errors(self.redis_url):
            teams = teams_to_check(self.settings.budgets, (job.payload for job in jobs))
            if teams:  # one round trip, only for a batch with a team that has a budget
                pipe = self.redis.pipeline(transaction=False)
                queue_spend_reads(pipe, teams, time.time())
                enforce_read(self.settings.budgets, jobs, teams, await pipe.execute())
            names, args = claims(jobs, self.settings.broker.idempotency_ttl_s)
            firsts = await self._claim(keys=names, args=args) if names else []
            ids, fresh = settle(jobs, firsts)
            if not fresh:
                return ids
            pipe = self.redis.pipeline(transaction=False)
            queue_records(pipe, fresh, self.settings.broker.result_expires_s, settings=self.settings)
            await pipe.execute()
        await asyncio.to_thread(publish, self.app, self.settings, fresh, self.redis_url)
        return ids

    async def result(
        self, task_id: str, timeout: float | None = None, *, until_answered: bool = False
    ) -> TaskResult:
        """Wait for a job's final state (see :meth:`fleet.producer.Client.result`).

        Raises:
            TaskNotFound: no job was ever submitted under ``task_id``.
            ResultTimeout: no final state (no answer, with ``until_answered``) within ``timeout`` seconds.
            TaskFailed: the task raised in the worker.
            BrokerError: the broker cannot be reached.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        res = await self._wait_final(task_id, deadline, timeout)
        while until_answered and res.status == "escalated":
            # People answer in minutes: a GET every ANSWER_POLL_S, as the sync client does.
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(
                    f"task {task_id} is escalated ({res.escalation_id}); nobody answered within {timeout} s"
                )
            await asyncio.sleep(ANSWER_POLL_S)
            with broker_errors(self.redis_url):
                raw = await self.redis.get(keys.result(task_id))
            res = (decode_result(raw) if raw is not None else None) or res
        return res

    async def _wait_final(self, task_id: str, deadline: float | None, timeout: float | None) -> TaskResult:
        # Subscribe before the first read: a result published in between is not missed.
        pubsub: Any = self.redis.pubsub(ignore_subscribe_messages=True)
        with broker_errors(self.redis_url):
            try:
                await pubsub.subscribe(keys.result(task_id))
                while True:
                    got = settled(await self.status(task_id), deadline, timeout)
                    if isinstance(got, TaskResult):
                        return got
                    await pubsub.get_message(timeout=got)
            finally:
                await pubsub.aclose()

    async def status(self, task_id: str) -> JobStatus:
        """Where a job is (see :meth:`fleet.producer.Client.status`).

        Raises:
            TaskNotFound: no job was ever submitted under ``task_id`` (or its record expired).
            BrokerError: the broker cannot be reached.
        """
        with broker_errors(self.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(keys.result(task_id))
            pipe.hgetall(keys.job(task_id))
            raw, record = await pipe.execute()
        return status_of(task_id, raw, record)

    async def cancel(self, task_id: str) -> JobStatus:
        """Cancel a job (see :meth:`fleet.producer.Client.cancel`); its status after the mark.

        Raises:
            TaskNotFound: no job was ever submitted under ``task_id``.
            BrokerError: the broker cannot be reached.
        """
        with broker_errors(self.redis_url):
            script = self.redis.register_script(scripts.source("cancel"))
            marked = await script(keys=[keys.result(task_id), keys.job(task_id)], args=[repr(time.time())])
        if (marked.decode() if isinstance(marked, bytes) else str(marked)) == "unknown":
            raise TaskNotFound(task_id)
        return await self.status(task_id)

    async def close(self) -> None:
        """Close the Redis connections and the broker connections (the latter in a thread)."""
        await self.redis.aclose()
        await asyncio.to_thread(self.app.close)
