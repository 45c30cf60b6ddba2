"""A job's last writes, sent in one round trip when its delivery ends: its result (and the PUBLISH
that wakes a waiting producer), its cost line, the tpm corrections of its calls, quality counts, its
team's share marks, and its lock's release; with the result, the message's unacked record (its ack
then sends nothing).

They are applied only while the job is still this run's (``fleet/lua/job_finish.lua``): a run whose
worker was judged dead (a partition, a stall) and whose job another worker took over writes nothing,
so no result is written twice. A broker that is away when they are sent is waited for, up to
``broker.outage_grace_s``: the results of calls in flight are written when it returns.

:class:`RedisTail` sends them with one EVALSHA; :class:`MemoryTail` applies them to a
:class:`fleet.middleware.start.MemoryJobs`, for unit tests.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from fleet import asyncio_pool, keys, scripts, transport
from fleet.costs import MAX_RECORDS
from fleet.errors import BrokerError
from fleet.limits import Correction, MemoryLimiter, apply_correction
from fleet.middleware.start import MemoryJobs

__all__ = ["Flushed", "MemoryTail", "RedisTail", "Tail"]

log = logging.getLogger(__name__)

#: What a flush did: "written" (with a result), "sent" (no result queued), "superseded" (another
#: worker owns the job now: nothing written).
Flushed = Literal["written", "sent", "superseded"]
#: Seconds between tries while the broker is away (doubling up to the cap).
_RETRY_S, _RETRY_CAP_S = 0.25, 4.0


class Tail(Protocol):
    """The job's last writes; nothing goes out before :meth:`flush`."""

    def store_result(self, task_id: str, result: dict[str, Any], *, ack_tag: str | None = None) -> None:
        """The job's final result, and a wake-up for producers waiting on it. ``ack_tag``
        (:func:`fleet.transport.ack_tag`): the message's unacked record goes with them, and its ack
        then sends nothing; the task must ack its message once they are written."""

    def append_cost(self, fields: dict[str, str]) -> None:
        """One cost line (:func:`fleet.costs.job_fields`)."""

    def correct(self, correction: Correction) -> None:
        """Correct a rate-limit bucket after a call (its tpm usage, a provider's quota)."""

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        """Add ``by`` to a counter in a hash, which lives ``ttl_s`` seconds."""

    def command(self, *args: str | int | float) -> None:
        """One more Redis write (a team's share marks: ZREM, ZADD, PEXPIRE, SADD, EXPIRE)."""

    def guard(self, task_id: str, owner: str) -> None:
        """Apply the writes only while ``owner`` holds the job's lock (then release it)."""

    def flush(self) -> Flushed:
        """Send everything queued.

        Raises:
            BrokerError: the broker stayed away longer than the grace period.
        """
        ...


class RedisTail:
    """The job's last writes as one guarded script call (``job_finish.lua``)."""

    def __init__(
        self,
        client: Any,
        encode_result: Callable[[str, dict[str, Any]], tuple[str, str, int | None]],
        *,
        grace_s: float = 60.0,
        sleep: Callable[[float], None] = asyncio_pool.sleep,
    ) -> None:
        self._client = client
        self._script = scripts.register(client, "job_finish")
        #: (key, value, expiry) of a task's result, as Celery's backend stores it.
        self._encode_result = encode_result
        self._ops: list[list[Any]] = []
        self._task_id = ""
        self._owner = ""
        self._has_result = False
        self._ack_tag: str | None = None
        self.grace_s = grace_s
        self._sleep = sleep

    def store_result(self, task_id: str, result: dict[str, Any], *, ack_tag: str | None = None) -> None:
        key, value, expires = self._encode_result(task_id, result)
        self._ops.append(["SET", key, value, "EX", expires] if expires else ["SET", key, value])
        self._ops.append(["PUBLISH", key, value])
        if ack_tag is not None:
            self._ops.extend(transport.unacked_drop(ack_tag))
        self._task_id, self._has_result, self._ack_tag = task_id, True, ack_tag

    def append_cost(self, fields: dict[str, str]) -> None:
        flat = [item for pair in fields.items() for item in pair]
        self._ops.append(["XADD", keys.costs(), "MAXLEN", "~", MAX_RECORDS, "*", *flat])

    def correct(self, correction: Correction) -> None:
        bucket = correction.bucket
        if correction.delta:
            self._ops.append(["ADJUST", bucket.key, bucket.emission_ms, correction.delta])
        if correction.floor_ms > 0:
            self._ops.append(["PACE", bucket.key, correction.floor_ms])

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        self._ops.append(["HINCRBY", key, field, by])
        self._ops.append(["EXPIRE", key, ttl_s])

    def command(self, *args: str | int | float) -> None:
        self._ops.append(list(args))

    def guard(self, task_id: str, owner: str) -> None:
        self._task_id, self._owner = task_id, owner

    def flush(self) -> Flushed:
        if not self._ops and not self._owner:
            return "sent"
        script_keys = [keys.running(self._task_id), keys.result(self._task_id)]
        args = [self._owner, json.dumps(self._ops, separators=(",", ":"))]
        deadline, delay = time.monotonic() + self.grace_s, _RETRY_S
        while True:
            try:
                answer = self._script(keys=script_keys, args=args, client=self._client)
                break
            except BrokerError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "task %s: the broker is away (%s); its last writes wait for it", self._task_id, exc
                )
                self._sleep(delay)
                delay = min(_RETRY_CAP_S, delay * 2)
        if (answer.decode() if isinstance(answer, bytes) else str(answer)) == "superseded":
            log.warning("task %s: another worker took it over; this run's writes were dropped", self._task_id)
            return "superseded"
        if self._ack_tag is not None:
            transport.dropped_with_writes(self._ack_tag)
        return "written" if self._has_result else "sent"


class MemoryTail:
    """The job's last writes applied to memory state (for unit tests), guarded as the script is."""

    def __init__(self, jobs: MemoryJobs, limiter: MemoryLimiter | None = None, *, fail: bool = False) -> None:
        self.jobs = jobs
        self.limiter = limiter
        #: A broker that is down: flush raises, as RedisTail's would after its grace period.
        self.fail = fail
        self._ops: list[Callable[[], None]] = []
        self._has_result = False
        self._guard: tuple[str, str] | None = None

    def store_result(self, task_id: str, result: dict[str, Any], *, ack_tag: str | None = None) -> None:
        self._has_result = True
        self._ops.append(lambda: self.jobs.results.__setitem__(task_id, result))

    def append_cost(self, fields: dict[str, str]) -> None:
        self._ops.append(lambda: self.jobs.costs.append(fields))

    def correct(self, correction: Correction) -> None:
        if self.limiter is not None:
            limiter = self.limiter
            self._ops.append(lambda: apply_correction(limiter, correction))

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        def incr() -> None:
            counts = self.jobs.counts.setdefault(key, {})
            counts[field] = counts.get(field, 0) + by

        self._ops.append(incr)

    def command(self, *args: str | int | float) -> None:
        self._ops.append(lambda: self.jobs.commands.append(args))

    def guard(self, task_id: str, owner: str) -> None:
        self._guard = (task_id, owner)

    def flush(self) -> Flushed:
        if self.fail:
            raise BrokerError("the broker (memory) is down")
        with self.jobs.lock:
            if self._guard is not None:
                task_id, owner = self._guard
                holder = self.jobs.locks.get(task_id)
                if (holder is not None and holder != owner) or (
                    holder is None and task_id in self.jobs.results
                ):
                    return "superseded"
            for op in self._ops:
                op()
            if self._guard is not None:
                self.jobs.locks.pop(self._guard[0], None)
                self.jobs.lock_left.pop(self._guard[0], None)
        self._ops.clear()
        return "written" if self._has_result else "sent"
