"""A tier job's start in one round trip: middlewares describe their parts (:class:`StartPlan`), a
starter asks them all at once and answers with a :class:`StartAnswer`.

:class:`RedisJobStarter` runs ``fleet/lua/job_start.lua``; it is the only code that knows that
script's KEYS and ARGV. :class:`MemoryJobStarter` answers the same way in one process, for unit tests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fleet import keys, scripts
from fleet.fairness import FairAnswer, FairAsk
from fleet.limits import Bucket, Gate, GateAnswer, MemoryLimiter, Reservation
from fleet.limits.redis import acquire_args, gate_answer, gate_layout

__all__ = [
    "JobStarter",
    "MemoryJobStarter",
    "MemoryJobs",
    "QueueToken",
    "RedisJobStarter",
    "StartAnswer",
    "StartPlan",
]

#: How long a job's delivery count is kept, in seconds (a week: far beyond any redelivery loop).
DELIVERIES_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class QueueToken:
    """The queue's fleet-wide rate limit: its buckets (none: only count the start), the counter of
    starts, and how far ahead a reservation may be booked."""

    buckets: list[Bucket]
    counter: str
    max_wait_s: float


@dataclass
class StartPlan:
    """What a job's start asks, part by part (a part left at its default is not asked)."""

    task_id: str
    #: The job lock (JobLock): its owner and how long it lives.
    lock_owner: str = ""
    lock_ttl_ms: int = 0
    #: Count this redelivery, and stop past this many deliveries (PoisonGuard).
    count_delivery: bool = False
    max_deliveries: int = 0
    #: The queue's rate-limit token (QueueRateLimit).
    queue: QueueToken | None = None
    #: The chain's first link's admission, asked when the queue's token is due within ``link_within_s``.
    link: Gate | None = None
    link_within_s: float = 0.0
    #: Mark the job ``running`` on its record, with the chain's first link (``provider:model``).
    running_link: str = ""
    #: The job's team's share of its tier (FairShare), asked once the lock is ours, before any token.
    fair: FairAsk | None = None


@dataclass(frozen=True, slots=True)
class StartAnswer:
    """What a job's start found, in the order its parts were tried.

    ``state``: ``done`` (the job already has its final result), ``cancelled`` (its record is marked
    cancelled: nothing was taken), ``locked`` (another worker runs it:
    ``holder``, its lock's ``holder_ttl_s``), ``poison`` (past the delivery limit; the lock is ours)
    or ``ok`` (the lock is ours; ``queue``, ``link`` and ``fair`` answer the parts that were asked:
    a job its fair share refuses took no token, and its ``queue`` and ``link`` are None).
    """

    state: Literal["done", "cancelled", "locked", "poison", "ok"]
    holder: str = ""
    holder_ttl_s: float = 0.0
    deliveries: int = 1
    queue: Reservation | None = None
    link: GateAnswer | None = None
    fair: FairAnswer | None = None


class JobStarter(Protocol):
    """Asks a job's start plan in one round trip."""

    def start(self, plan: StartPlan) -> StartAnswer: ...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJobStarter:
    """The job's start on Redis: ``job_start.lua``."""

    def __init__(self, client: Any) -> None:
        self._script = scripts.register(client, "job_start")
        self._client = client

    def layout(self, plan: StartPlan) -> tuple[list[str], list[Any]]:
        """The script's KEYS and ARGV for ``plan`` (documented in ``job_start.lua``)."""
        queue = plan.queue
        script_keys = [
            keys.result(plan.task_id),
            keys.running(plan.task_id),
            keys.deliveries(plan.task_id),
            queue.counter if queue is not None else keys.rate_counter("none", 0),
            *(b.key for b in (queue.buckets if queue is not None else [])),
        ]
        args: list[Any] = [
            plan.lock_owner, plan.lock_ttl_ms, "1" if plan.count_delivery else "0", plan.max_deliveries,
            DELIVERIES_TTL_S, len(queue.buckets) if queue is not None else -1,
            "1" if plan.link is not None else "0", plan.link_within_s * 1000.0,
            *acquire_args(queue.buckets if queue is not None else [], queue.max_wait_s if queue else 0.0),
        ]  # fmt: skip
        if plan.link is not None:
            link_keys, link_args = gate_layout(plan.link)
            script_keys += link_keys
            args += link_args
        script_keys.append(keys.job(plan.task_id))
        args += [plan.fair.spec(plan.task_id) if plan.fair is not None else "", plan.running_link]
        return script_keys, args

    def start(self, plan: StartPlan) -> StartAnswer:
        script_keys, args = self.layout(plan)
        reply = self._script(keys=script_keys, args=args, client=self._client)
        state = _text(reply[0])
        if state in ("done", "cancelled"):
            return StartAnswer("done" if state == "done" else "cancelled")
        if state == "locked":
            return StartAnswer(
                "locked", holder=_text(reply[2]), holder_ttl_s=max(0.0, int(reply[1]) / 1000.0)
            )
        if state == "poison":
            return StartAnswer("poison", deliveries=int(reply[1]))
        queue = None
        if _text(reply[2]) != "":
            queue = Reservation(bool(int(reply[2])), max(0.0, float(reply[3]) / 1000.0))
        link = None
        if plan.link is not None and _text(reply[4]) != "":
            link = gate_answer(plan.link, *reply[4:8])
        fair = None
        if plan.fair is not None and _text(reply[8]) != "":
            own, running, teams, waiting = (int(n) for n in reply[9:13])
            fair = FairAnswer(bool(int(reply[8])), own, running, teams, waiting)
        return StartAnswer("ok", deliveries=int(reply[1]), queue=queue, link=link, fair=fair)


@dataclass
class MemoryJobs:
    """The job state a memory starter and tail share: locks, results, delivery counts, cost lines."""

    locks: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    costs: list[dict[str, str]] = field(default_factory=list)
    #: Seconds left on each lock (no clock runs here: a lock set without one reads as about to lapse).
    lock_left: dict[str, float] = field(default_factory=dict)
    #: Counters in hashes (quality counts): key -> field -> count.
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Other writes, as a tail sent them (a team's share marks; their effect is tested on a broker).
    commands: list[tuple[str | int | float, ...]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def drop(self, task_id: str, owner: str) -> bool:
        """Delete a job's lock if ``owner`` holds it (a :data:`fleet.middleware.lock.DropLock`)."""
        with self.lock:
            if self.locks.get(task_id) != owner:
                return False
            del self.locks[task_id]
            self.lock_left.pop(task_id, None)
            return True


class MemoryJobStarter:
    """The job's start in one process (locks never expire here: tests release them; a team's fair
    share is not asked here: it is tested on a real broker)."""

    def __init__(self, jobs: MemoryJobs, limiter: MemoryLimiter) -> None:
        self.jobs = jobs
        self.limiter = limiter

    def start(self, plan: StartPlan) -> StartAnswer:
        jobs, task_id = self.jobs, plan.task_id
        with jobs.lock:
            if task_id in jobs.results:
                return StartAnswer("done")
            holder = jobs.locks.get(task_id)
            if plan.lock_owner and holder is not None:
                return StartAnswer("locked", holder=holder, holder_ttl_s=jobs.lock_left.get(task_id, 0.0))
            if plan.lock_owner:
                jobs.locks[task_id] = plan.lock_owner
                jobs.lock_left[task_id] = plan.lock_ttl_ms / 1000.0
            deliveries = 1
            if plan.count_delivery:
                jobs.deliveries[task_id] = jobs.deliveries.get(task_id, 0) + 1
                deliveries = jobs.deliveries[task_id] + 1
                if deliveries > plan.max_deliveries:
                    return StartAnswer("poison", deliveries=deliveries)
            if plan.queue is None:
                return StartAnswer("ok", deliveries=deliveries)
            got = self.limiter.acquire(plan.queue.buckets, max_wait_s=plan.queue.max_wait_s,
                                       counter=plan.queue.counter)  # fmt: skip
            link = None
            if plan.link is not None and got.reserved and got.wait_s <= plan.link_within_s:
                link = self.limiter.ask(plan.link)
            return StartAnswer("ok", deliveries=deliveries, queue=got, link=link)
