"""The dead-letter store: what no model could do waits here for people.

A record is written to Redis before the failing message is acked, so a crash between the two can
only duplicate, never lose; a duplicate is recognised by its task id (``SET NX`` on
``fleet:esc:task:<task_id>``) and returns the record already written. A job that people retried and
that fails again gets a new record, linked to the old one (``retry_of`` / ``followed_by``).

States and the transitions people make::

    open ──claim──> claimed ──release──> open
    open | claimed ──resolve──> resolved     (the answer becomes the task's result)
    open | claimed ──retry────> retried      (the request is enqueued again under the same task id)
    open | claimed ──discard──> discarded    (the task's result says discarded, with the reason)

A claimed escalation can only be acted on by its assignee (``force`` releases someone else's claim).
Each transition is atomic across processes (WATCH/MULTI on the record), appends to ``history``,
moves the id between the per-state sorted sets, and lets a caller add commands to the same
transaction (delivering the task's result, say). Records in a final state expire after
``escalation.retention_days``; :meth:`EscalationStore.list` prunes ids whose record has expired.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import redis
from redis.client import Pipeline

from fleet import keys
from fleet.errors import EscalationError, EscalationNotFound, IllegalTransition
from fleet.models import Attempt, RoutingDecision, TaskResult, Tier

__all__ = [
    "ACTIONS",
    "FINAL_STATES",
    "STATES",
    "Action",
    "EscalationStore",
    "NewEscalation",
    "State",
    "result_for",
]

State = Literal["open", "claimed", "resolved", "retried", "discarded"]
Action = Literal["claim", "release", "resolve", "retry", "discard"]
STATES: tuple[State, ...] = ("open", "claimed", "resolved", "retried", "discarded")
FINAL_STATES: tuple[State, ...] = ("resolved", "retried", "discarded")
ACTIONS: tuple[Action, ...] = ("claim", "release", "resolve", "retry", "discard")

#: Which states each action may start from, and where it leads.
_FROM: dict[Action, tuple[State, ...]] = {
    "claim": ("open",),
    "release": ("claimed",),
    "resolve": ("open", "claimed"),
    "retry": ("open", "claimed"),
    "discard": ("open", "claimed"),
}
_TO: dict[Action, State] = {
    "claim": "claimed",
    "release": "open",
    "resolve": "resolved",
    "retry": "retried",
    "discard": "discarded",
}
_PAST: dict[str, str] = {
    "claimed": "claimed",
    "open": "released",
    "resolved": "resolved",
    "retried": "retried",
    "discarded": "discarded",
}
#: Largest raw body kept for a message that could not be decoded.
MAX_RAW_BODY = 64 * 1024
#: Longest name of a person, answer and reason kept on a record.
MAX_NAME = 128
MAX_ANSWER = 1024 * 1024
MAX_REASON = 4096
#: Optimistic-locking rounds before a transition gives up (only under heavy contention).
_MAX_ROUNDS = 50

#: Adds commands to a transition's MULTI block, given the record as it will be stored.
OnCommit = Callable[[Pipeline, dict[str, Any]], None]


R = TypeVar("R")


def _watch(pipe: Pipeline, key: str) -> None:
    pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.watch untyped


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _when(ts: float | None) -> str:
    if ts is None:
        return "?"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class NewEscalation:
    """What a worker knows when it gives a job up."""

    task_id: str
    reason: str
    tier: str | None = None
    request: Any = None
    routing: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] | None = None
    detail: str = ""
    trace_id: str | None = None
    queue: str | None = None
    submitted_at: float | None = None
    #: The escalation whose retry this job was (from the message's envelope), if any.
    retry_of: str | None = None


def result_for(record: dict[str, Any], *, now: float | None = None) -> TaskResult:
    """The task's final result for a resolved or discarded escalation (what its producer receives)."""
    attempts = [Attempt.model_validate(a) for a in record.get("attempts") or []]
    routing = RoutingDecision.model_validate(record["routing"]) if record.get("routing") else None
    tier: Tier | None = None
    try:
        tier = Tier(str(record.get("tier")))
    except ValueError:
        tier = None
    request = record.get("request")
    kind = request.get("kind") if isinstance(request, dict) else None
    resolution = record.get("resolution") or {}
    discarded = record["state"] == "discarded"
    return TaskResult(
        task_id=record["task_id"],
        status="discarded" if discarded else "completed",
        answer=None if discarded else resolution.get("answer"),
        tier=tier,
        kind=kind if isinstance(kind, str) else None,
        routing=routing,
        attempts=attempts,
        input_tokens=sum(a.input_tokens for a in attempts),
        output_tokens=sum(a.output_tokens for a in attempts),
        cost_usd=round(sum(a.cost_usd for a in attempts), 8),
        escalation_id=record["id"],
        reason=resolution.get("reason") if discarded else None,
        resolved_by="human",
        resolver=resolution.get("by"),
        submitted_at=record.get("submitted_at"),
        finished_at=now if now is not None else time.time(),
    )


class EscalationStore:
    """Escalation records in Redis: JSON per record, sorted-set indexes by creation time."""

    def __init__(self, client: redis.Redis, *, retention_days: float = 30.0) -> None:
        self.redis = client
        self.retention_s = max(1, int(retention_days * 86400))

    # -- creation ----------------------------------------------------------------------------------

    def create(self, new: NewEscalation) -> tuple[dict[str, Any], bool]:
        """Persist an escalation; returns ``(record, created)``; ``created`` is False for a duplicate.

        A failure of a job people retried (``new.retry_of`` names the escalation the task id still
        maps to) is a new escalation, linked both ways.
        """
        by_task = keys.escalation_by_task(new.task_id)

        def apply(pipe: Pipeline, mapped: bytes | None) -> tuple[dict[str, Any], bool]:
            esc_id = uuid.uuid4().hex[:16]
            previous: dict[str, Any] | None = None
            if mapped is not None:
                existing_id = _decode(mapped)
                existing = self.get_or_none(existing_id)
                if existing is not None and not (
                    new.retry_of == existing_id and existing["state"] == "retried"
                ):
                    return existing, False
                if existing is None:
                    # Mapping written, record not (or expired): write it under that id now.
                    esc_id = existing_id
                else:
                    previous = existing
            record = self._new_record(esc_id, new, previous)
            pipe.multi()
            pipe.set(by_task, esc_id)
            pipe.set(keys.escalation(esc_id), json.dumps(record))
            pipe.zadd(keys.escalations_index(), {esc_id: record["created_at"]})
            pipe.zadd(keys.escalations_state("open"), {esc_id: record["created_at"]})
            if previous is not None:
                previous["followed_by"] = esc_id
                pipe.set(keys.escalation(previous["id"]), json.dumps(previous), keepttl=True)
            pipe.execute()
            return record, True

        def contention() -> tuple[dict[str, Any], bool]:
            raise EscalationError(
                f"could not record the escalation of task {new.task_id}: too much contention"
            )

        return self._watched(by_task, apply, contention)

    def _watched(self, key: str, apply: Callable[[Pipeline, Any], R], contention: Callable[[], R]) -> R:
        """Optimistic locking on ``key``: ``apply(pipe, value)`` sees the key's value under WATCH and
        either returns without writing or queues its writes after ``pipe.multi()`` and executes them.
        A concurrent change to ``key`` makes it start over (up to _MAX_ROUNDS, then ``contention()``)."""
        for _ in range(_MAX_ROUNDS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    _watch(pipe, key)
                    return apply(pipe, pipe.get(key))
                except redis.WatchError:
                    continue
        return contention()

    def _new_record(self, esc_id: str, new: NewEscalation, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = time.time()
        request = new.request
        if isinstance(request, bytes | bytearray):
            request = request[:MAX_RAW_BODY].decode("utf-8", "replace")
        elif isinstance(request, str):
            request = request[:MAX_RAW_BODY]
        note = new.reason if previous is None else f"{new.reason} (again, after retry of {previous['id']})"
        return {
            "id": esc_id,
            "task_id": new.task_id,
            "state": "open",
            "tier": new.tier,
            "queue": new.queue,
            "reason": new.reason,
            "detail": new.detail[:2000],
            "kind": request.get("kind") if isinstance(request, dict) else None,
            "request": request,
            "routing": new.routing,
            "attempts": new.attempts or [],
            "trace_id": new.trace_id,
            "submitted_at": new.submitted_at,
            "created_at": now,
            "updated_at": now,
            "assignee": None,
            "claimed_at": None,
            "resolution": None,
            "retry_of": previous["id"] if previous is not None else None,
            "followed_by": None,
            "notified_at": None,
            "history": [{"at": now, "state": "open", "by": "fleet", "note": note}],
        }

    # -- reading -----------------------------------------------------------------------------------

    def get_or_none(self, esc_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(keys.escalation(esc_id))
        if raw is None:
            return None
        data: dict[str, Any] = json.loads(raw)
        return data

    def get(self, esc_id: str) -> dict[str, Any]:
        """Raises EscalationNotFound."""
        record = self.get_or_none(esc_id)
        if record is None:
            raise EscalationNotFound(f"no escalation {esc_id!r} (it may have passed its retention period)")
        return record

    def for_task(self, task_id: str) -> dict[str, Any] | None:
        """The latest escalation of a task (after a retry that failed again: the new one)."""
        esc_id = self.redis.get(keys.escalation_by_task(task_id))
        if esc_id is None:
            return None
        return self.get_or_none(_decode(esc_id))

    def list(
        self, *, state: str | None = None, tier: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Records, oldest first, filtered by state and tier; ids whose record expired are pruned."""
        index = keys.escalations_state(state) if state else keys.escalations_index()
        ids = [_decode(i) for i in self.redis.zrange(index, 0, -1)]
        out: list[dict[str, Any]] = []
        expired: list[str] = []
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            for esc_id, raw in zip(batch, self.redis.mget([keys.escalation(i) for i in batch]), strict=True):
                if raw is None:
                    expired.append(esc_id)
                    continue
                record = json.loads(raw)
                if tier and record.get("tier") != tier:
                    continue
                if len(out) < limit:
                    out.append(record)
        if expired:
            self._prune(expired)
        return out

    def _prune(self, ids: builtins.list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(keys.escalations_index(), *ids)
        for state in STATES:
            pipe.zrem(keys.escalations_state(state), *ids)
        pipe.execute()

    def count(self, state: str | None = None) -> int:
        index = keys.escalations_state(state) if state else keys.escalations_index()
        return int(self.redis.zcard(index))

    def stats(self, *, now: float | None = None) -> dict[str, Any]:
        """Counts by state, by tier and by reason (each split by state), and the oldest open one."""
        now = time.time() if now is None else now
        records = self.list(limit=10**9)
        by_state = dict.fromkeys(STATES, 0)
        by_tier: dict[str, dict[str, int]] = {}
        by_reason: dict[str, dict[str, int]] = {}
        oldest: dict[str, Any] | None = None
        for record in records:
            state = record["state"]
            by_state[state] = by_state.get(state, 0) + 1
            tier = record.get("tier") or "none"
            by_tier.setdefault(tier, dict.fromkeys(STATES, 0))[state] += 1
            by_reason.setdefault(record.get("reason") or "unknown", dict.fromkeys(STATES, 0))[state] += 1
            if state == "open" and (oldest is None or record["created_at"] < oldest["created_at"]):
                oldest = record
        return {
            "total": len(records),
            "by_state": by_state,
            "by_tier": dict(sorted(by_tier.items())),
            "by_reason": dict(sorted(by_reason.items())),
            "oldest_open_id": oldest["id"] if oldest else None,
            "oldest_open_age_s": round(now - oldest["created_at"], 3) if oldest else None,
        }

    # -- transitions -------------------------------------------------------------------------------

    def transition(
        self,
        esc_id: str,
        action: Action,
        by: str,
        *,
        answer: str | None = None,
        reason: str | None = None,
        tier: str | None = None,
        force: bool = False,
        check: Callable[[dict[str, Any]], None] | None = None,
        on_commit: OnCommit | None = None,
    ) -> dict[str, Any]:
        """Apply one action atomically; returns the record as stored.

        ``check`` may refuse the action after the state rules passed (it sees the current record);
        ``on_commit`` adds commands to the same MULTI block.

        Raises:
            EscalationNotFound: no such record.
            IllegalTransition: the action is not allowed from the record's state or by this person.
            EscalationError: a required value is missing or too long.
        """
        by = _name(by)
        if action == "resolve":
            if answer is None or not answer.strip():
                raise EscalationError("an answer is required to resolve an escalation")
            if len(answer) > MAX_ANSWER:
                raise EscalationError(f"the answer is {len(answer)} characters, over {MAX_ANSWER}")
        if action == "discard":
            if reason is None or not reason.strip():
                raise EscalationError("a reason is required to discard an escalation")
            reason = reason.strip()[:MAX_REASON]
        key = keys.escalation(esc_id)

        def apply(pipe: Pipeline, raw: bytes | None) -> dict[str, Any]:
            if raw is None:
                raise EscalationNotFound(f"no escalation {esc_id!r}")
            record: dict[str, Any] = json.loads(raw)
            old = record["state"]
            if action == "claim" and old == "claimed" and record.get("assignee") == by:
                return record  # claiming what you hold already is a no-op
            self._refuse_illegal(record, action, by, force)
            if check is not None:
                check(record)
            new = _TO[action]
            now = time.time()
            record["state"] = new
            record["updated_at"] = now
            entry: dict[str, Any] = {"at": now, "state": new, "by": by, "action": action}
            if action == "claim":
                record["assignee"], record["claimed_at"] = by, now
            elif action == "release":
                entry["note"] = f"released {record.get('assignee')}'s claim"
                record["assignee"], record["claimed_at"] = None, None
            else:
                record["assignee"] = by
                resolution: dict[str, Any] = {"action": action, "by": by, "at": now}
                if action == "resolve":
                    resolution["answer"] = answer
                elif action == "discard":
                    resolution["reason"] = entry["note"] = reason
                else:
                    resolution["tier"] = tier
                    entry["note"] = f"retried on tier {tier}" if tier else "retried through the router"
                record["resolution"] = resolution
            record["history"].append(entry)
            pipe.multi()
            if new in FINAL_STATES:
                pipe.set(key, json.dumps(record), ex=self.retention_s)
            else:
                pipe.set(key, json.dumps(record))
            pipe.zrem(keys.escalations_state(old), esc_id)
            pipe.zadd(keys.escalations_state(new), {esc_id: record["created_at"]})
            if new in FINAL_STATES:
                # The task -> escalation mapping goes with the record (a retry repoints it).
                pipe.expire(keys.escalation_by_task(record["task_id"]), self.retention_s)
            if on_commit is not None:
                on_commit(pipe, record)
            pipe.execute()
            return record

        def contention() -> dict[str, Any]:
            raise EscalationError(f"escalation {esc_id} is changing too fast; try again")

        return self._watched(key, apply, contention)

    def _refuse_illegal(self, record: dict[str, Any], action: Action, by: str, force: bool) -> None:
        esc_id, state = record["id"], record["state"]
        if state in FINAL_STATES:
            res = record.get("resolution") or {}
            detail = f" by {res.get('by', '?')} at {_when(res.get('at'))}"
            if state == "discarded" and res.get("reason"):
                detail += f" (reason: {res['reason']})"
            raise IllegalTransition(
                f"cannot {action} escalation {esc_id}: it was already {_PAST[state]}{detail}"
            )
        holder = record.get("assignee")
        if state == "claimed" and holder != by and not (action == "release" and force):
            hint = " (release it with --force)" if action == "release" else f" (ask {holder} to release it)"
            raise IllegalTransition(
                f"cannot {action} escalation {esc_id}: it is claimed by {holder} since "
                f"{_when(record.get('claimed_at'))}{hint}"
            )
        if state not in _FROM[action]:
            raise IllegalTransition(f"cannot {action} escalation {esc_id}: it is {state}")

    def reopen(self, esc_id: str, by: str, note: str) -> dict[str, Any] | None:
        """Undo a retry whose message could not be enqueued: ``retried`` -> ``open`` (no TTL).

        Only the inbox calls this, right after a failed enqueue; None when the record is not retried.
        """
        key = keys.escalation(esc_id)

        def apply(pipe: Pipeline, raw: bytes | None) -> dict[str, Any] | None:
            if raw is None:
                return None
            record: dict[str, Any] = json.loads(raw)
            if record["state"] != "retried":
                return None
            now = time.time()
            record.update(state="open", updated_at=now, assignee=None, claimed_at=None, resolution=None)
            record["history"].append({"at": now, "state": "open", "by": by, "note": note})
            pipe.multi()
            pipe.set(key, json.dumps(record))
            pipe.persist(keys.escalation_by_task(record["task_id"]))
            pipe.zrem(keys.escalations_state("retried"), esc_id)
            pipe.zadd(keys.escalations_state("open"), {esc_id: record["created_at"]})
            pipe.execute()
            return record

        return self._watched(key, apply, lambda: None)

    def mark_notified(self, esc_id: str) -> bool:
        """Set ``notified_at`` (keeping any TTL); False when the record is gone."""
        key = keys.escalation(esc_id)

        def apply(pipe: Pipeline, raw: bytes | None) -> bool:
            if raw is None:
                return False
            record = json.loads(raw)
            record["notified_at"] = time.time()
            pipe.multi()
            pipe.set(key, json.dumps(record), keepttl=True)
            pipe.execute()
            return True

        return self._watched(key, apply, lambda: False)


def _name(by: str | None) -> str:
    name = (by or "").strip()
    if not name:
        raise EscalationError("a name is required (--by NAME, or set $USER)")
    if len(name) > MAX_NAME:
        raise EscalationError(f"a name is at most {MAX_NAME} characters")
    return name
