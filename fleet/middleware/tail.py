"""A job's last writes, sent in one round trip when its delivery ends: its result (and the PUBLISH
that wakes a waiting producer), its cost line, the tpm corrections of its calls, its lock's release.

:class:`RedisTail` queues them on one pipeline; :class:`MemoryTail` applies them to a
:class:`fleet.middleware.start.MemoryJobs`, for unit tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from fleet import keys
from fleet.costs import MAX_RECORDS
from fleet.errors import BrokerError
from fleet.limits import Bucket, MemoryLimiter
from fleet.middleware.start import MemoryJobs
from fleet.scripts import source

__all__ = ["MemoryTail", "RedisTail", "Tail"]

log = logging.getLogger(__name__)

#: How a result is written: Celery's result-backend format, on the tail's pipeline.
ResultWriter = Callable[[Any, str, dict[str, Any]], None]


class Tail(Protocol):
    """The job's last writes; nothing goes out before :meth:`flush`."""

    def store_result(self, task_id: str, result: dict[str, Any]) -> None:
        """The job's final result, and a wake-up for producers waiting on it."""

    def append_cost(self, fields: dict[str, str]) -> None:
        """One cost line (:func:`fleet.costs.job_fields`)."""

    def adjust(self, bucket: Bucket, delta: float) -> None:
        """Correct a rate-limit reservation by ``delta`` units."""

    def release(self, task_id: str) -> None:
        """Release the job's lock."""

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        """Add ``by`` to a counter in a hash, which lives ``ttl_s`` seconds."""

    def flush(self) -> bool:
        """Send everything queued; whether a result was queued and written."""
        ...


class RedisTail:
    """The job's last writes on one Redis pipeline (one round trip)."""

    def __init__(self, client: Any, write_result: ResultWriter) -> None:
        self._pipe = client.pipeline(transaction=False)
        self._write_result = write_result
        self._result_at: int | None = None
        self._what: list[str] = []

    def _queued(self, what: str) -> None:
        self._what.extend([what] * (len(self._pipe) - len(self._what)))

    def store_result(self, task_id: str, result: dict[str, Any]) -> None:
        self._result_at = len(self._pipe)
        self._write_result(self._pipe, task_id, result)
        self._queued("result")

    def append_cost(self, fields: dict[str, str]) -> None:
        self._pipe.xadd(keys.costs(), fields, maxlen=MAX_RECORDS, approximate=True)
        self._queued("cost line")

    def adjust(self, bucket: Bucket, delta: float) -> None:
        if delta:
            # EVAL, not EVALSHA: a pipeline would check SCRIPT EXISTS in a round trip of its own.
            self._pipe.eval(source("adjust"), 1, bucket.key, bucket.emission_ms, delta)
            self._queued("tpm correction")

    def release(self, task_id: str) -> None:
        self._pipe.delete(keys.running(task_id))
        self._queued("lock release")

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        self._pipe.hincrby(key, field, by)
        self._pipe.expire(key, ttl_s)
        self._queued("count")

    def flush(self) -> bool:
        """Raises BrokerError: the broker is down (nothing of this tail was written)."""
        if not len(self._pipe):
            return False
        answers = self._pipe.execute(raise_on_error=False)
        for what, answer in zip(self._what, answers, strict=False):
            if isinstance(answer, Exception):  # a cost line or a correction that failed: the job goes on
                log.warning("a job's last write (%s) failed: %s", what, answer)
        at = self._result_at
        return at is not None and not isinstance(answers[at], Exception)


class MemoryTail:
    """The job's last writes applied to memory state (for unit tests)."""

    def __init__(self, jobs: MemoryJobs, limiter: MemoryLimiter | None = None, *, fail: bool = False) -> None:
        self.jobs = jobs
        self.limiter = limiter
        #: A broker that is down: flush raises, as RedisTail's would.
        self.fail = fail
        self._ops: list[Callable[[], None]] = []
        self._has_result = False

    def store_result(self, task_id: str, result: dict[str, Any]) -> None:
        self._has_result = True
        self._ops.append(lambda: self.jobs.results.__setitem__(task_id, result))

    def append_cost(self, fields: dict[str, str]) -> None:
        self._ops.append(lambda: self.jobs.costs.append(fields))

    def adjust(self, bucket: Bucket, delta: float) -> None:
        if self.limiter is not None:
            limiter = self.limiter
            self._ops.append(lambda: limiter.adjust(bucket, delta))

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        def incr() -> None:
            counts = self.jobs.counts.setdefault(key, {})
            counts[field] = counts.get(field, 0) + by

        self._ops.append(incr)

    def release(self, task_id: str) -> None:
        def release() -> None:
            self.jobs.locks.pop(task_id, None)

        self._ops.append(release)

    def flush(self) -> bool:
        if self.fail:
            raise BrokerError("the broker (memory) is down")
        with self.jobs.lock:
            for op in self._ops:
                op()
        self._ops.clear()
        return self._has_result
