"""One live run per job: a lock named after the worker that holds it.

A late copy of a finished job is dropped (``Skip``); a copy of a job another worker runs goes back to
its queue until that lock lapses, rather than run twice at once, and is never dropped. The lock names
its holder's worker identity (:func:`fleet.recovery.worker_id`), and a holder is judged by its
heartbeat, on any machine: a lock whose worker is gone (SIGKILL, OOM, a lost host), or whose worker no
longer runs the job (its pool child died, its release failed while the broker was away), is dropped
and taken over at once, instead of waiting out its whole TTL (the queue's timeout + 30 s).

The lock is released by the job's last writes, which are applied only while it is still this run's
(:mod:`fleet.middleware.tail`): a run whose job was taken over writes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from fleet import keys, scripts
from fleet.errors import BrokerError
from fleet.middleware.base import Job, Middleware, Requeue, Restart, Skip
from fleet.middleware.start import StartAnswer, StartPlan
from fleet.recovery import worker_id

__all__ = ["DropLock", "HolderAlive", "JobLock", "lock_owner", "redis_drop"]

log = logging.getLogger(__name__)

#: Longest a copy of a running job waits in its queue before it looks at the lock again (a holder
#: whose heartbeat cannot tell yet is judged by its next one, within ``recovery.heartbeat_s``).
LOCK_RECHECK_S = 3.0
#: How much longer than the queue's timeout a lock lives (a hard time limit is timeout + 30 s).
LOCK_GRACE_S = 30.0

#: Deletes a job's lock if ``owner`` still holds it (one round trip); whether it did.
DropLock = Callable[[str, str], bool]
#: (holder, task id, lock age in seconds) -> whether the holder still runs the job.
HolderAlive = Callable[[str, str, float], bool]


def redis_drop(client: Any) -> DropLock:
    """A :data:`DropLock` on Redis (``drop_if_owner.lua``)."""
    script = scripts.register(client, "drop_if_owner")

    def drop(task_id: str, owner: str) -> bool:
        return bool(script(keys=[keys.running(task_id)], args=[owner]))

    return drop


def lock_owner(worker: str, retries: int) -> str:
    """A lock's value: the worker's identity and the delivery it runs the job for
    (``host:pid:nonce#retries``), so its heartbeat vouches for that delivery, not for a later copy
    (:func:`fleet.recovery.delivery`)."""
    return f"{worker}#{retries}"


class _Held:
    """The jobs this process runs, and the locks it failed to release (the broker was down): those
    are released before its next job. Pool threads share it, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running: set[str] = set()
        self.unreleased: dict[str, str] = {}

    def add(self, task_id: str) -> None:
        with self._lock:
            self.running.add(task_id)

    def done(self, task_id: str, owner: str, *, released: bool) -> None:
        with self._lock:
            self.running.discard(task_id)
            if not released:
                self.unreleased[task_id] = owner

    def take_stale(self) -> list[tuple[str, str]]:
        with self._lock:
            stale = [(t, o) for t, o in self.unreleased.items() if t not in self.running]
            for task_id, _ in stale:
                del self.unreleased[task_id]
            return stale


class JobLock(Middleware):
    """The job's execution lock: taken with the job's start, released with its last writes."""

    def __init__(self, drop: DropLock, alive: HolderAlive, owner: Callable[[], str] = worker_id) -> None:
        self._drop = drop
        self._alive = alive
        self._owner = owner
        self._held = _Held()

    def before_start(self, job: Job, plan: StartPlan) -> None:
        for stale, owner in self._held.take_stale():
            self._drop(stale, owner)
        plan.lock_owner = lock_owner(self._owner(), job.retries)
        plan.lock_ttl_ms = int(self._ttl_s(job) * 1000)

    @staticmethod
    def _ttl_s(job: Job) -> float:
        return job.queue.timeout_s + LOCK_GRACE_S

    def after_start(self, job: Job, answer: StartAnswer) -> None:
        if answer.state == "done":
            log.warning("task %s already has its result: redelivered copy dropped", job.id)
            raise Skip()
        if answer.state == "locked":
            age = max(0.0, self._ttl_s(job) - answer.holder_ttl_s)
            if not self._alive(answer.holder, job.id, age) and self._drop(job.id, answer.holder):
                log.warning("task %s: its lock's holder %s is gone; taken over", job.id, answer.holder)
                raise Restart()  # its lock is gone: take it now, in this delivery
            raise Requeue(max(0.5, min(answer.holder_ttl_s, LOCK_RECHECK_S)), f"running on {answer.holder}")
        self._held.add(job.id)
        job.notes["lock"] = lock_owner(self._owner(), job.retries)

    def after_job(self, job: Job) -> None:
        owner = job.notes.get("lock")
        if owner:
            job.tail.guard(job.id, owner)

    def after_flush(self, job: Job, written: bool) -> None:
        owner = job.notes.get("lock")
        if owner:
            self._held.done(job.id, owner, released=True)

    def on_flush_failed(self, job: Job, error: BrokerError) -> None:
        owner = job.notes.get("lock")
        if owner:
            log.warning("task %s: could not release its lock (%s); will retry", job.id, error)
            self._held.done(job.id, owner, released=False)
