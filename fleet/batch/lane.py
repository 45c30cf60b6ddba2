"""The batch lane's parts: which jobs go (:func:`batch_link`), the pool (:func:`pool_job`) and the
pump that submits, polls and sends jobs on (:class:`BatchPump`). See :mod:`fleet.batch`.

State, all in Redis (the batch worker that pools a job acks its message only once it is there):

- ``fleet:batch:job:<id>``: the job's request and envelope, its link and deadline;
- ``fleet:batch:pool:<provider:model>``: the pooled job ids, scored by when they came;
- ``fleet:batch:inflight``: each batch's record, written *before* its jobs leave their pool and
  removed only after each of its jobs was sent on. A pump that dies between the two leaves a record
  the next pump finishes: a batch never submitted (``submitting`` for over a minute) sends its jobs to
  their live chains. A job sent on twice runs once (its tier's job lock and final result say so).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet import keys
from fleet.batch.config import BatchSettings
from fleet.chain import charged, chat_request, check_answer
from fleet.errors import BrokerError, InvalidRequest, ProviderError
from fleet.models import Attempt, BatchAnswer, JobEnvelope, TaskRequest, validate_request
from fleet.providers.base import ChatResponse
from fleet.providers.batch import BatchAPI, BatchItem
from fleet.settings import Settings

__all__ = ["BatchPump", "InFlight", "in_flight", "pool_job"]

log = logging.getLogger(__name__)

#: A batch record still ``submitting`` after this long lost its pump mid-submit.
_STALE_SUBMIT_S = 120.0
#: Where a job in the batch lane is sent on: its tier queue, with or without an answer.
Send = Callable[[Any, JobEnvelope], None]


def pool_job(
    client: Any, payload: Any, envelope: JobEnvelope, link: tuple[str, str], deadline_s: float
) -> None:
    """Put a job in its link's pool (one round trip; a redelivery only writes it again)."""
    name = f"{link[0]}:{link[1]}"
    now = time.time()
    blob = {
        "payload": payload,
        "envelope": envelope.model_dump(mode="json"),
        "link": name,
        "deadline_at": envelope.submitted_at + deadline_s,
    }
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.batch_job(envelope.id), json.dumps(blob))
    pipe.zadd(keys.batch_pool(name), {envelope.id: now}, nx=True)
    pipe.sadd(keys.batch_pools(), name)
    record = {"state": "batched", "queue": "batch", "since": repr(now)}
    if envelope.routing is not None:
        record |= {"tier": str(envelope.routing.tier), "reasons": json.dumps(envelope.routing.reasons)}
    pipe.hset(keys.job(envelope.id), mapping=record)
    pipe.execute()


@dataclass
class InFlight:
    """A batch the fleet made: its record in ``fleet:batch:inflight``."""

    id: str
    link: str
    jobs: list[str]
    created_at: float
    #: When its jobs go to their live chains if it has not ended.
    fallback_at: float
    state: str = "submitting"
    #: The provider's id of the batch (set once it was created there).
    batch_id: str = ""

    @property
    def provider(self) -> str:
        return self.link.partition(":")[0]

    @property
    def model(self) -> str:
        return self.link.partition(":")[2]

    def dumps(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def loads(cls, raw: Any) -> InFlight | None:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None


def in_flight(client: Any) -> list[InFlight]:
    """The batches in flight, oldest first (``fleet status``)."""
    found = [InFlight.loads(raw) for raw in client.hvals(keys.batch_inflight())]
    return sorted((b for b in found if b is not None), key=lambda b: b.created_at)


@dataclass
class _Pooled:
    id: str
    payload: Any
    envelope: JobEnvelope
    request: TaskRequest
    deadline_at: float


@dataclass
class PumpCounts:
    """What one pass of the pump did."""

    submitted: int = 0
    answered: int = 0
    live: int = 0
    reasons: list[str] = field(default_factory=list)


class BatchPump:
    """Submits pools, polls batches and sends jobs on. One at a time fleet-wide holds the lease;
    :meth:`step` is one pass (the thread calls it every ``batch.poll_s``)."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        api: Callable[[str], BatchAPI | None],
        send: Send,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.settings = settings
        self.lane: BatchSettings = settings.batch
        self.api = api
        self.send = send
        self.owner = owner or uuid.uuid4().hex
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> BatchPump:
        self._thread = threading.Thread(target=self._run, name="fleet-batch-pump", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(10)
        try:  # hand the lease on at once
            if self.client.get(keys.batch_pump()) in (self.owner, self.owner.encode()):
                self.client.delete(keys.batch_pump())
        except BrokerError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except BrokerError as exc:
                log.warning("batch lane: the broker is away (%s)", exc)
            except Exception:  # the pump must outlive one bad pass; the next one tries again
                log.exception("batch lane: a pass failed")
            self._stop.wait(self.lane.poll_s)

    def _lease(self) -> bool:
        """Hold (or take) the pump's lease for three passes."""
        ttl = int(self.lane.poll_s * 3 * 1000) + 1000
        key = keys.batch_pump()
        if self.client.set(key, self.owner, nx=True, px=ttl):
            return True
        held = self.client.get(key)
        if held in (self.owner, self.owner.encode()):
            self.client.pexpire(key, ttl)
            return True
        return False

    # -- one pass --------------------------------------------------------------------------------

    def step(self) -> PumpCounts | None:
        """One pass: submit the pools that are full or old enough, poll the batches in flight.
        None when another batch worker holds the lease."""
        if not self._lease():
            return None
        counts = PumpCounts()
        now = self.clock()
        for raw in sorted(self.client.smembers(keys.batch_pools())):
            self._drain(raw.decode() if isinstance(raw, bytes) else str(raw), now, counts)
        for batch in in_flight(self.client):
            self._poll(batch, now, counts)
        return counts

    def _drain(self, link: str, now: float, counts: PumpCounts) -> None:
        pool = keys.batch_pool(link)
        while True:
            entries = self.client.zrange(pool, 0, self.lane.max_items - 1, withscores=True)
            if not entries:
                return
            oldest = float(entries[0][1])
            if len(entries) < self.lane.max_items and now - oldest < self.lane.max_wait_s:
                return
            ids = [e[0].decode() if isinstance(e[0], bytes) else str(e[0]) for e in entries]
            self._submit(link, ids, now, counts)

    def _load(self, ids: Sequence[str]) -> list[_Pooled]:
        jobs = []
        for task_id, raw in zip(ids, self.client.mget([keys.batch_job(i) for i in ids]), strict=True):
            if raw is None:
                continue  # sent on already (a pass that died after sending)
            try:
                blob = json.loads(raw)
                envelope = JobEnvelope.model_validate(blob["envelope"])
                request = validate_request(
                    blob["payload"], max_prompt_bytes=self.settings.limits.max_prompt_bytes
                )
            except (ValueError, KeyError, TypeError, InvalidRequest) as exc:
                # Checked when it was pooled: only a fleet of another version gets here. Its tier
                # worker sends it to people as an invalid message.
                log.warning("batch lane: job %s does not load (%s): sent to its tier", task_id, exc)
                continue
            jobs.append(_Pooled(task_id, blob["payload"], envelope, request, float(blob["deadline_at"])))
        return jobs

    def _submit(self, link: str, ids: list[str], now: float, counts: PumpCounts) -> None:
        jobs = self._load(ids)
        margin = self.lane.fallback_margin_s
        fallback_at = min((j.deadline_at for j in jobs), default=now) - margin
        batch = InFlight(uuid.uuid4().hex, link, [j.id for j in jobs], now, fallback_at)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.batch_inflight(), batch.id, batch.dumps())
        pipe.zrem(keys.batch_pool(link), *ids)
        pipe.execute()
        due = [j for j in jobs if now >= j.deadline_at - margin]
        waiting = [j for j in jobs if now < j.deadline_at - margin]
        for job in due:
            self._live(job, None, counts, "its deadline was too near for a batch")
        api = self.api(batch.provider)
        if not waiting or api is None:
            for job in waiting:
                self._live(job, None, counts, f"provider {batch.provider} takes no batches")
            self._forget(batch, jobs)
            return
        requests = [BatchItem(j.id, chat_request(j.request, model=batch.model)) for j in waiting]
        try:
            batch.batch_id = api.submit(batch.model, requests)
        except ProviderError as exc:
            log.warning("batch lane: %s refused a batch of %d: %s", link, len(waiting), exc)
            for job in waiting:
                self._live(job, self._failed(batch, exc, now), counts, "its batch was refused")
            self._forget(batch, jobs)
            return
        batch.state = "submitted"
        batch.jobs = [j.id for j in waiting]
        self.client.hset(keys.batch_inflight(), batch.id, batch.dumps())
        counts.submitted += 1
        log.info("batch lane: %s batch %s of %d jobs submitted", link, batch.batch_id, len(waiting))

    def _poll(self, batch: InFlight, now: float, counts: PumpCounts) -> None:
        if batch.state == "submitting":
            if now - batch.created_at >= _STALE_SUBMIT_S:  # its pump died mid-submit
                self._all_live(batch, None, counts, "its batch was never submitted")
            return
        # A batch lives on the provider that holds its file: polled there, never anywhere else.
        api = self.api(batch.provider)
        if api is None:  # the provider's batches were turned off since it was sent
            off = ProviderError(f"provider {batch.provider} takes no batches", provider=batch.provider)
            self._unreadable(batch, off, now, counts)
            return
        try:
            state = api.poll(batch.batch_id)
            if state.ended:
                self._deliver(batch, api, now, counts)
                return
        except ProviderError as exc:
            self._unreadable(batch, exc, now, counts)
            return
        if now >= batch.fallback_at:
            try:
                api.cancel(batch.batch_id)
            except ProviderError as exc:
                log.warning("batch lane: could not cancel %s batch %s: %s", batch.link, batch.batch_id, exc)
            timeout = ProviderError(
                f"{batch.link}: batch {batch.batch_id} had not ended by its fallback time"
            )
            self._all_live(batch, self._failed(batch, timeout, now, outcome="batch_timeout"), counts,
                           "its batch would not end before its deadline")  # fmt: skip

    def _unreadable(self, batch: InFlight, exc: ProviderError, now: float, counts: PumpCounts) -> None:
        """A batch that could not be read: tried again at the next poll, its jobs sent live once its
        fallback time has come."""
        log.warning("batch lane: %s batch %s: %s", batch.link, batch.batch_id, exc)
        if now >= batch.fallback_at:
            self._all_live(batch, self._failed(batch, exc, now), counts, "its batch could not be read")

    def _deliver(self, batch: InFlight, api: BatchAPI, now: float, counts: PumpCounts) -> None:
        jobs = self._load(batch.jobs)
        requests = {j.id: chat_request(j.request, model=batch.model) for j in jobs}
        results = api.results(batch.batch_id, requests)
        model = self.settings.model(batch.provider, batch.model)
        for job in jobs:
            result = results.get(job.id)
            if result is None:
                missing = ProviderError(f"{batch.link}: batch {batch.batch_id} has no answer for this job")
                self._live(job, self._failed(batch, missing, now), counts, "its batch had no answer for it")
                continue
            if isinstance(result, ChatResponse):
                try:
                    check_answer(result, job.request, provider=batch.provider, model=batch.model)
                except ProviderError as exc:
                    result = exc
            if isinstance(result, ProviderError):
                self._live(job, self._failed(batch, result, now), counts, "its batch item failed")
                continue
            fields = charged(model, result)
            fields["cost_usd"] = fields["cost_usd"] * model.batch_price_ratio
            attempt = Attempt(
                link=batch.link, provider=batch.provider, model=batch.model, outcome="ok",
                http_status=result.http_status, latency_ms=round((now - batch.created_at) * 1000, 2),
                batch_id=batch.batch_id, **fields,
            )  # fmt: skip
            job.envelope.batch = BatchAnswer(batch_id=batch.batch_id, answer=result.text, attempt=attempt)
            self.send(job.payload, job.envelope)
            counts.answered += 1
        self._forget(batch, jobs)

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _failed(batch: InFlight, exc: ProviderError, now: float, outcome: str | None = None) -> Attempt:
        return Attempt(
            link=batch.link, provider=batch.provider, model=batch.model, outcome=outcome or exc.code,
            http_status=exc.status, latency_ms=round((now - batch.created_at) * 1000, 2),
            error=str(exc)[:500], batch_id=batch.batch_id or None,
        )  # fmt: skip

    def _live(self, job: _Pooled, failed: Attempt | None, counts: PumpCounts, why: str) -> None:
        """Send a job to its tier for its live chain (a failed batch attempt on its record)."""
        if failed is not None:
            job.envelope.attempts.append(failed)
        job.envelope.batch = None
        self.send(job.payload, job.envelope)
        counts.live += 1
        counts.reasons.append(why)
        log.info("batch lane: job %s goes live: %s", job.id, why)

    def _all_live(self, batch: InFlight, failed: Attempt | None, counts: PumpCounts, why: str) -> None:
        jobs = self._load(batch.jobs)
        for job in jobs:
            self._live(job, failed, counts, why)
        self._forget(batch, jobs)

    def _forget(self, batch: InFlight, jobs: Sequence[_Pooled]) -> None:
        """Drop a batch's record and its jobs' blobs: every one of them was sent on."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(keys.batch_inflight(), batch.id)
        for job in jobs:
            pipe.delete(keys.batch_job(job.id))
        pipe.execute()
