"""The escalation state machine as pure functions of a record; every store applies these same rules.

States and the transitions people make::

    open ──claim──> claimed ──release──> open
    open | claimed ──resolve──> resolved     (the answer becomes the task's result)
    open | claimed ──retry────> retried      (the request is enqueued again under the same task id)
    open | claimed ──discard──> discarded    (the task's result says discarded, with the reason)

A claimed escalation can only be acted on by its assignee (``force`` releases someone else's claim);
claiming what you hold already changes nothing. A failure of a job people retried opens a new
escalation linked to the old one (``retry_of`` / ``followed_by``); any other failure of a task that
has an escalation is a redelivery, recognised and not recorded twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from fleet.errors import EscalationError, IllegalTransition
from fleet.escalations.record import (
    FINAL_STATES,
    MAX_ANSWER,
    MAX_NAME,
    MAX_REASON,
    Action,
    EscalationRecord,
    HistoryEntry,
    NewEscalation,
    Resolution,
    State,
)
from fleet.models import Tier

__all__ = ["CreatePlan", "Move", "is_noop", "move", "moved", "notified", "plan_create", "refuse", "reopened"]

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
_PAST: dict[State, str] = {
    "claimed": "claimed",
    "open": "released",
    "resolved": "resolved",
    "retried": "retried",
    "discarded": "discarded",
}


def _when(ts: float | None) -> str:
    if ts is None:
        return "?"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- creation ----------------------------------------------------------------------------------------


class CreatePlan(NamedTuple):
    """What recording a failure comes to: the record, whether it is new, and the escalation it
    follows (with ``followed_by`` set, to be written with it)."""

    record: EscalationRecord
    created: bool
    previous: EscalationRecord | None = None


def plan_create(
    new: NewEscalation, mapped_id: str | None, existing: EscalationRecord | None, fresh_id: str, now: float
) -> CreatePlan:
    """Decide what a failure of ``new.task_id`` records, given the escalation id the task maps to and
    that record (None when the record is gone). ``fresh_id`` names a new record."""
    if existing is not None and not (new.retry_of == existing.id and existing.state == "retried"):
        return CreatePlan(existing, created=False)
    if existing is None:
        # No mapping, or a mapping whose record was never written (or expired): write it under that id.
        return CreatePlan(EscalationRecord.opened(mapped_id or fresh_id, new, now=now), created=True)
    record = EscalationRecord.opened(fresh_id, new, now=now, previous=existing)
    return CreatePlan(record, True, existing.model_copy(update={"followed_by": fresh_id}))


# -- people's actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """One person's action with its values checked: build it with :func:`move`."""

    action: Action
    by: str
    answer: str | None = None
    reason: str | None = None
    tier: Tier | None = None
    force: bool = False


def _name(by: str | None) -> str:
    name = (by or "").strip()
    if not name:
        raise EscalationError("a name is required (--by NAME, or set $USER)")
    if len(name) > MAX_NAME:
        raise EscalationError(f"a name is at most {MAX_NAME} characters")
    return name


def move(
    action: Action,
    by: str | None,
    *,
    answer: str | None = None,
    reason: str | None = None,
    tier: Tier | None = None,
    force: bool = False,
) -> Move:
    """Check what a person asks before any record is read.

    Raises:
        EscalationError: no name or one too long, no answer to resolve or one too long, no reason
            to discard (a long reason is cut to MAX_REASON).
    """
    name = _name(by)
    if action == "resolve":
        if answer is None or not answer.strip():
            raise EscalationError("an answer is required to resolve an escalation")
        if len(answer) > MAX_ANSWER:
            raise EscalationError(f"the answer is {len(answer)} characters, over {MAX_ANSWER}")
    if action == "discard":
        if reason is None or not reason.strip():
            raise EscalationError("a reason is required to discard an escalation")
        reason = reason.strip()[:MAX_REASON]
    return Move(action, name, answer=answer, reason=reason, tier=tier, force=force)


def is_noop(record: EscalationRecord, step: Move) -> bool:
    """Claiming what you hold already changes nothing."""
    return step.action == "claim" and record.state == "claimed" and record.assignee == step.by


def refuse(record: EscalationRecord, step: Move) -> None:
    """Raises IllegalTransition when ``step`` is not allowed from the record's state or by this person."""
    esc_id, state = record.id, record.state
    if state in FINAL_STATES:
        res = record.resolution
        detail = f" by {res.by if res else '?'} at {_when(res.at if res else None)}"
        if state == "discarded" and res is not None and res.reason:
            detail += f" (reason: {res.reason})"
        raise IllegalTransition(
            f"cannot {step.action} escalation {esc_id}: it was already {_PAST[state]}{detail}"
        )
    holder = record.assignee
    if state == "claimed" and holder != step.by and not (step.action == "release" and step.force):
        hint = " (release it with --force)" if step.action == "release" else f" (ask {holder} to release it)"
        raise IllegalTransition(
            f"cannot {step.action} escalation {esc_id}: it is claimed by {holder} since "
            f"{_when(record.claimed_at)}{hint}"
        )
    if state not in _FROM[step.action]:
        raise IllegalTransition(f"cannot {step.action} escalation {esc_id}: it is {state}")


# Each action's effect on the record and on its history entry (state and time are set by moved()).


def _claim(record: EscalationRecord, entry: HistoryEntry, step: Move) -> None:
    record.assignee, record.claimed_at = step.by, entry.at


def _release(record: EscalationRecord, entry: HistoryEntry, step: Move) -> None:
    entry.note = f"released {record.assignee}'s claim"
    record.assignee, record.claimed_at = None, None


def _resolve(record: EscalationRecord, entry: HistoryEntry, step: Move) -> None:
    _close(record, Resolution(action="resolve", by=step.by, at=entry.at, answer=step.answer))


def _retry(record: EscalationRecord, entry: HistoryEntry, step: Move) -> None:
    entry.note = f"retried on tier {step.tier}" if step.tier else "retried through the router"
    _close(record, Resolution(action="retry", by=step.by, at=entry.at, tier=step.tier))


def _discard(record: EscalationRecord, entry: HistoryEntry, step: Move) -> None:
    entry.note = step.reason
    _close(record, Resolution(action="discard", by=step.by, at=entry.at, reason=step.reason))


def _close(record: EscalationRecord, resolution: Resolution) -> None:
    record.assignee, record.resolution = resolution.by, resolution


_EFFECTS: dict[Action, Callable[[EscalationRecord, HistoryEntry, Move], None]] = {
    "claim": _claim,
    "release": _release,
    "resolve": _resolve,
    "retry": _retry,
    "discard": _discard,
}


def moved(record: EscalationRecord, step: Move, *, now: float) -> EscalationRecord:
    """The record after ``step`` (a copy; call :func:`refuse` first)."""
    after = record.model_copy(deep=True)
    entry = HistoryEntry(at=now, state=_TO[step.action], by=step.by, action=step.action)
    _EFFECTS[step.action](after, entry, step)
    after.state, after.updated_at = entry.state, now
    after.history.append(entry)
    return after


# -- the fleet's own steps ---------------------------------------------------------------------------


def reopened(record: EscalationRecord, by: str, note: str, *, now: float) -> EscalationRecord | None:
    """A retried record open again (its retry could not be enqueued); None when it is not retried."""
    if record.state != "retried":
        return None
    after = record.model_copy(
        deep=True,
        update={"state": "open", "updated_at": now, "assignee": None, "claimed_at": None, "resolution": None},
    )
    after.history.append(HistoryEntry(at=now, state="open", by=by, note=note))
    return after


def notified(record: EscalationRecord, *, now: float) -> EscalationRecord:
    """The record with ``notified_at`` set."""
    return record.model_copy(update={"notified_at": now})
