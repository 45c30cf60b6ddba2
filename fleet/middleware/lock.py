"""One live run per job: a lock named after the worker that holds it.

A late copy of a finished job is dropped (``Skip``); a copy of a job another worker runs goes back to
its queue until that lock lapses, rather than run twice at once, and is never dropped. A lock whose
holder was a process on this machine that no longer exists (SIGKILL, OOM) is dropped at once, so its
redelivery need not wait out the lock's whole TTL (the queue's timeout + 30 s).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from fleet import keys, scripts
from fleet.errors import BrokerError
from fleet.middleware.base import Job, Middleware, Requeue, Restart, Skip
from fleet.middleware.start import StartAnswer, StartPlan
from fleet.procs import pid_alive

__all__ = ["DropLock", "JobLock", "process_owner", "redis_drop"]

log = logging.getLogger(__name__)

#: Longest a copy of a running job waits in its queue before it looks at the lock again.
LOCK_RECHECK_S = 10.0
#: How much longer than the queue's timeout a lock lives (a hard time limit is timeout + 30 s).
LOCK_GRACE_S = 30.0


def process_owner() -> str:
    """This process as a lock holder: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Held:
    """The jobs this process runs, and the locks it failed to release (the broker was down): those
    are released before its next job. Pool threads share it, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running: set[str] = set()
        self.unreleased: set[str] = set()

    def take_stale(self) -> list[str]:
        with self._lock:
            stale = [t for t in self.unreleased if t not in self.running]
            self.unreleased.difference_update(stale)
            return stale


#: Deletes a job's lock if ``owner`` still holds it (one round trip); whether it did.
DropLock = Callable[[str, str], bool]


def redis_drop(client: Any) -> DropLock:
    """A :data:`DropLock` on Redis (``drop_if_owner.lua``)."""
    script = scripts.register(client, "drop_if_owner")

    def drop(task_id: str, owner: str) -> bool:
        return bool(script(keys=[keys.running(task_id)], args=[owner]))

    return drop


class JobLock(Middleware):
    """The job's execution lock: taken with the job's start, released with its last writes."""

    def __init__(self, drop: DropLock, owner: Callable[[], str] = process_owner) -> None:
        self._drop = drop
        self._owner = owner
        self._held = _Held()

    def before_start(self, job: Job, plan: StartPlan) -> None:
        for stale in self._held.take_stale():
            self._release_now(stale)
        plan.lock_owner = self._owner()
        plan.lock_ttl_ms = int((job.queue.timeout_s + LOCK_GRACE_S) * 1000)

    def after_start(self, job: Job, answer: StartAnswer) -> None:
        if answer.state == "done":
            log.warning("task %s already has its result: redelivered copy dropped", job.id)
            raise Skip()
        if answer.state == "locked":
            if self._holder_gone(job.id, answer.holder):
                raise Restart()  # its lock is gone: take it now, in this delivery
            raise Requeue(max(0.5, min(answer.holder_ttl_s, LOCK_RECHECK_S)), f"running on {answer.holder}")
        with self._held._lock:
            self._held.running.add(job.id)
        job.notes["lock"] = True

    def after_job(self, job: Job) -> None:
        if job.notes.get("lock"):
            job.tail.release(job.id)

    def after_flush(self, job: Job, written: bool) -> None:
        with self._held._lock:
            self._held.running.discard(job.id)

    def on_flush_failed(self, job: Job, error: BrokerError) -> None:
        if job.notes.get("lock"):
            log.warning("task %s: could not release its lock (%s); will retry", job.id, error)
            with self._held._lock:
                self._held.running.discard(job.id)
                self._held.unreleased.add(job.id)

    def _release_now(self, task_id: str) -> None:
        self._drop(task_id, self._owner())

    def _holder_gone(self, task_id: str, holder: str) -> bool:
        """Drop the lock when its holder was a process on this machine that no longer exists (or
        this process, which no longer runs the job: its release failed while the broker was down).
        A holder on another machine is waited for."""
        host, _, pid = holder.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        if int(pid) == os.getpid():
            with self._held._lock:
                if task_id in self._held.running:
                    return False
        elif pid_alive(int(pid)):
            return False
        return self._drop(task_id, holder)
