"""The escalation store port: what the inbox, the workers and the monitor ask of a store.

:class:`EscalationStore` holds the verbs, their rules (:mod:`fleet.escalations.rules`) and how each
change is laid out in storage, once. A backend supplies a few storage primitives shaped like Redis's
(read a key, read many, an index's ids, one atomic change on one key); the backends are
:class:`~fleet.escalations.redis.RedisEscalationStore` (the fleet's) and
:class:`~fleet.escalations.memory.MemoryEscalationStore` (its in-memory twin for unit tests, as
Dramatiq's ``brokers/stub.py`` is to its brokers).

The layout: a record is a JSON string under ``keys.escalation(id)``; ``keys.escalation_by_task`` maps
a task to its latest escalation, so a redelivered failure is recognised; sorted sets index every id
and the ids of each state, scored by creation time. A record entering a final state expires after
the retention period, and its task mapping with it; :meth:`EscalationStore.list` prunes ids whose
record has expired. A transition lets its caller add writes to the same transaction (``on_commit``):
they commit with the new state, or neither does.
"""

from __future__ import annotations

import builtins
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

from fleet import keys
from fleet.errors import EscalationNotFound
from fleet.escalations import rules
from fleet.escalations.record import (
    FINAL_STATES,
    STATES,
    Action,
    EscalationRecord,
    EscalationStats,
    NewEscalation,
    State,
)
from fleet.models import Tier

__all__ = ["Change", "CommitSink", "EscalationStore", "OnCommit", "Transaction", "Update"]

R = TypeVar("R")


class CommitSink(Protocol):
    """Where ``on_commit`` queues writes that commit with a transition: the Redis store passes its
    pipeline after MULTI; the memory store its own transaction, applied on commit."""

    def set(self, name: str, value: Any, *, ex: int | None = None) -> object: ...

    def delete(self, *names: str) -> object: ...

    def publish(self, channel: str, message: Any) -> object: ...


class Transaction(CommitSink, Protocol):
    """The writes of one atomic change, queued after ``multi()`` and applied by ``execute()``: a Redis
    pipeline under WATCH, or the memory store's buffer."""

    def set(self, name: str, value: Any, *, ex: int | None = None, keepttl: bool = False) -> object: ...

    def expire(self, name: str, time: int) -> object: ...

    def persist(self, name: str) -> object: ...

    def zadd(self, name: str, mapping: Mapping[str, float]) -> object: ...

    def zrem(self, name: str, *values: str) -> object: ...

    def multi(self) -> None: ...

    def execute(self) -> object: ...


#: Adds writes to a transition's transaction, given the record as it will be stored.
OnCommit = Callable[[CommitSink, EscalationRecord], None]
#: A record's next version, or None to leave it as it is; raising leaves it as it is too.
Change = Callable[[EscalationRecord], EscalationRecord | None]


class Update(NamedTuple):
    """What an update left: the record as stored, and whether it was written."""

    record: EscalationRecord
    written: bool


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EscalationStore(ABC):
    """Escalation records and their state machine. Thread-safe; every change is atomic."""

    def __init__(self, *, retention_days: float = 30.0) -> None:
        self.retention_s = max(1, int(retention_days * 86400))

    # -- what a backend supplies -------------------------------------------------------------------

    @abstractmethod
    def _atomically(self, key: str, apply: Callable[[Transaction, Any], R], contention: str) -> R:
        """``apply(tx, value of key)``, where the writes ``apply`` queues on ``tx`` (after
        ``tx.multi()``, applied by ``tx.execute()``) happen only if ``key`` did not change meanwhile.

        Raises:
            EscalationError: ``key`` kept changing (the message is ``contention``).
        """

    @abstractmethod
    def _get(self, key: str) -> Any:
        """The key's value, None when it has none (or it expired)."""

    @abstractmethod
    def _mget(self, names: builtins.list[str]) -> builtins.list[Any]:
        """The values of many keys, None for each that has none."""

    @abstractmethod
    def _ids(self, index: str) -> builtins.list[str]:
        """The ids of a sorted-set index, by score then id."""

    @abstractmethod
    def _count(self, index: str) -> int:
        """How many ids an index holds."""

    @abstractmethod
    def _unindex(self, indexes: builtins.list[str], ids: builtins.list[str]) -> None:
        """Remove ``ids`` from each of ``indexes``."""

    def _now(self) -> float:
        return time.time()

    # -- reading -----------------------------------------------------------------------------------

    def get_or_none(self, esc_id: str) -> EscalationRecord | None:
        """The record, or None when there is none (or it expired)."""
        raw = self._get(keys.escalation(esc_id))
        return EscalationRecord.load(raw) if raw is not None else None

    def get(self, esc_id: str) -> EscalationRecord:
        """Raises EscalationNotFound."""
        record = self.get_or_none(esc_id)
        if record is None:
            raise EscalationNotFound(f"no escalation {esc_id!r} (it may have passed its retention period)")
        return record

    def for_task(self, task_id: str) -> EscalationRecord | None:
        """The latest escalation of a task (after a retry that failed again: the new one)."""
        esc_id = self._get(keys.escalation_by_task(task_id))
        return self.get_or_none(_text(esc_id)) if esc_id is not None else None

    def list(
        self, *, state: State | None = None, tier: Tier | None = None, limit: int = 1000
    ) -> builtins.list[EscalationRecord]:
        """Records, oldest first, filtered by state and tier; ids whose record expired are pruned."""
        ids = self._ids(keys.escalations_state(state) if state else keys.escalations_index())
        out: builtins.list[EscalationRecord] = []
        expired: builtins.list[str] = []
        for esc_id, raw in zip(ids, self._mget([keys.escalation(i) for i in ids]), strict=True):
            if raw is None:
                expired.append(esc_id)
                continue
            record = EscalationRecord.load(raw)
            if (tier is None or record.tier == tier) and len(out) < limit:
                out.append(record)
        if expired:
            self._unindex([keys.escalations_index(), *map(keys.escalations_state, STATES)], expired)
        return out

    def count(self, state: State | None = None) -> int:
        """Ids in the index (of one state): expired ones count until a listing prunes them."""
        return self._count(keys.escalations_state(state) if state else keys.escalations_index())

    def stats(self, *, now: float | None = None) -> EscalationStats:
        """Counts by state, by tier and by reason (each split by state), and the oldest open one."""
        return EscalationStats.of(self.list(limit=10**9), now=self._now() if now is None else now)

    # -- writing -----------------------------------------------------------------------------------

    def create(self, new: NewEscalation) -> tuple[EscalationRecord, bool]:
        """Persist an escalation; returns ``(record, created)``; ``created`` is False for a duplicate.

        A failure of a job people retried (``new.retry_of`` names the escalation the task id still
        maps to) is a new escalation, linked both ways.

        Raises:
            EscalationError: too much contention on the task.
        """
        by_task = keys.escalation_by_task(new.task_id)

        def apply(tx: Transaction, mapped: Any) -> rules.CreatePlan:
            mapped_id = _text(mapped) if mapped is not None else None
            existing = self.get_or_none(mapped_id) if mapped_id else None
            made = rules.plan_create(new, mapped_id, existing, uuid.uuid4().hex[:16], self._now())
            if made.created:
                record = made.record
                tx.multi()
                tx.set(by_task, record.id)
                tx.set(keys.escalation(record.id), record.dump())
                tx.zadd(keys.escalations_index(), {record.id: record.created_at})
                tx.zadd(keys.escalations_state("open"), {record.id: record.created_at})
                if made.previous is not None:
                    tx.set(keys.escalation(made.previous.id), made.previous.dump(), keepttl=True)
                tx.execute()
            return made

        contention = f"could not record the escalation of task {new.task_id}: too much contention"
        made = self._atomically(by_task, apply, contention)
        return made.record, made.created

    def _update(self, esc_id: str, change: Change, on_commit: OnCommit | None = None) -> Update | None:
        """Atomically: read the record, ``change`` it, store the new version, and commit
        ``on_commit``'s writes with it. None when there is no such record.

        Raises:
            EscalationError: the record kept changing under us (heavy contention).
            whatever ``change`` or ``on_commit`` raise (nothing is written then).
        """

        def apply(tx: Transaction, raw: Any) -> Update | None:
            if raw is None:
                return None
            before = EscalationRecord.load(raw)
            after = change(before)
            if after is None:
                return Update(before, written=False)
            tx.multi()
            self._write(tx, before.state, after)
            if on_commit is not None:
                on_commit(tx, after)
            tx.execute()
            return Update(after, written=True)

        contention = f"escalation {esc_id} is changing too fast; try again"
        return self._atomically(keys.escalation(esc_id), apply, contention)

    def _write(self, tx: Transaction, was: State, record: EscalationRecord) -> None:
        """Queue a record's new version: its JSON, its expiry, its state index."""
        key, by_task = keys.escalation(record.id), keys.escalation_by_task(record.task_id)
        if record.state == was:
            tx.set(key, record.dump(), keepttl=True)
            return
        if record.state in FINAL_STATES:
            tx.set(key, record.dump(), ex=self.retention_s)
            # The task -> escalation mapping goes with the record (a retry that fails repoints it).
            tx.expire(by_task, self.retention_s)
        else:
            tx.set(key, record.dump())
            if was in FINAL_STATES:  # reopened: it stays until people close it again
                tx.persist(by_task)
        tx.zrem(keys.escalations_state(was), record.id)
        tx.zadd(keys.escalations_state(record.state), {record.id: record.created_at})

    # -- the verbs ---------------------------------------------------------------------------------

    def transition(
        self,
        esc_id: str,
        action: Action,
        by: str,
        *,
        answer: str | None = None,
        reason: str | None = None,
        tier: Tier | None = None,
        force: bool = False,
        check: Callable[[EscalationRecord], None] | None = None,
        on_commit: OnCommit | None = None,
    ) -> EscalationRecord:
        """Apply one action atomically; returns the record as stored.

        ``check`` may refuse the action after the state rules passed (it sees the current record);
        ``on_commit`` adds writes to the same transaction.

        Raises:
            EscalationNotFound: no such record.
            IllegalTransition: the action is not allowed from the record's state or by this person.
            EscalationError: a required value is missing or too long.
        """
        step = rules.move(action, by, answer=answer, reason=reason, tier=tier, force=force)

        def change(record: EscalationRecord) -> EscalationRecord | None:
            if rules.is_noop(record, step):
                return None
            rules.refuse(record, step)
            if check is not None:
                check(record)
            return rules.moved(record, step, now=self._now())

        done = self._update(esc_id, change, on_commit)
        if done is None:
            raise EscalationNotFound(f"no escalation {esc_id!r}")
        return done.record

    def reopen(self, esc_id: str, by: str, note: str) -> EscalationRecord | None:
        """Undo a retry whose message could not be enqueued: ``retried`` -> ``open`` (no expiry).

        Only the inbox calls this, right after a failed enqueue; None when the record is not retried.
        """
        done = self._update(esc_id, lambda record: rules.reopened(record, by, note, now=self._now()))
        return done.record if done is not None and done.written else None

    def mark_notified(self, esc_id: str) -> bool:
        """Set ``notified_at`` (keeping any expiry); False when the record is gone."""
        return self._update(esc_id, lambda record: rules.notified(record, now=self._now())) is not None
