"""The escalation record, typed: what the inbox keeps about a job no model could do.

Records are JSON documents that this version and older ones wrote, so loading one is lenient where
an old value may no longer fit: fields it does not know are ignored, an unknown reason becomes
``Reason.of(...)`` (``chain_exhausted``), an unknown tier or a non-text kind becomes none, and an
attempt or routing decision that no longer validates is dropped. One odd record never breaks a
listing. Dumped with ``model_dump(mode="json")``, a record has the JSON shape the fleet always wrote
(the HTTP API, ``--json`` and the inbox page read it).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from fleet.errors import EscalationError, Reason
from fleet.models import Attempt, RoutingDecision, TaskResult, Tier

__all__ = [
    "ACTIONS",
    "FINAL_STATES",
    "MAX_ANSWER",
    "MAX_DETAIL",
    "MAX_NAME",
    "MAX_RAW_BODY",
    "MAX_REASON",
    "STATES",
    "Action",
    "EscalationRecord",
    "EscalationStats",
    "HistoryEntry",
    "NewEscalation",
    "Resolution",
    "State",
    "parse_state",
    "result_for",
]

State = Literal["open", "claimed", "resolved", "retried", "discarded"]
Action = Literal["claim", "release", "resolve", "retry", "discard"]
STATES: tuple[State, ...] = ("open", "claimed", "resolved", "retried", "discarded")
FINAL_STATES: tuple[State, ...] = ("resolved", "retried", "discarded")
ACTIONS: tuple[Action, ...] = ("claim", "release", "resolve", "retry", "discard")
_STATE_OF: dict[str, State] = {state: state for state in STATES}

#: Largest raw body kept for a message that could not be decoded.
MAX_RAW_BODY = 64 * 1024
#: Longest name of a person, answer, discard reason and failure detail kept on a record.
MAX_NAME = 128
MAX_ANSWER = 1024 * 1024
MAX_REASON = 4096
MAX_DETAIL = 2000


def parse_state(text: str) -> State:
    """The state named ``text``. Raises EscalationError for an unknown name."""
    try:
        return _STATE_OF[text]
    except KeyError:
        raise EscalationError(f"unknown state {text!r}: expected one of {', '.join(STATES)}") from None


# -- lenient readers of stored values: each returns what fits, never raises --------------------------


def _reason(value: Any) -> Any:
    return value if isinstance(value, Reason) else Reason.of(value if isinstance(value, str) else None)


def _tier(value: Any) -> Tier | None:
    try:
        return Tier(value) if value is not None else None
    except ValueError:
        return None


def _known_fields(model: type[BaseModel], value: Any) -> Any:
    """``value`` without the keys ``model`` does not know (the wire models forbid extra fields)."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k in model.model_fields}
    return value


def _routing(value: Any) -> RoutingDecision | None:
    if value is None or isinstance(value, RoutingDecision):
        return value
    try:
        return RoutingDecision.model_validate(_known_fields(RoutingDecision, value))
    except ValidationError:
        return None


def _attempts(value: Any) -> list[Attempt]:
    out: list[Attempt] = []
    for item in value if isinstance(value, list) else []:
        try:
            out.append(Attempt.model_validate(_known_fields(Attempt, item)))
        except ValidationError:
            continue  # an attempt an older fleet wrote in another shape: nothing to retry or charge
    return out


def _request(value: Any) -> dict[str, Any] | str | None:
    """A request as a record keeps it: a JSON object, or text (a body that was not one, bounded)."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value[:MAX_RAW_BODY]).decode("utf-8", "replace")
    if isinstance(value, str):
        return value[:MAX_RAW_BODY]
    return json.dumps(value, default=repr)[:MAX_RAW_BODY]


def _drop(data: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in names}


class _Stored(BaseModel):
    """A document read back from the store: unknown fields (a newer or older fleet's) are ignored."""

    model_config = ConfigDict(extra="ignore")


class _Lenient(BaseModel):
    """The lenient readers above, for the fields of a subclass that has them."""

    _reason = field_validator("reason", mode="before", check_fields=False)(_reason)
    _tier = field_validator("tier", mode="before", check_fields=False)(_tier)
    _request = field_validator("request", mode="before", check_fields=False)(_request)
    _routing = field_validator("routing", mode="before", check_fields=False)(_routing)
    _attempts = field_validator("attempts", mode="before", check_fields=False)(_attempts)


class HistoryEntry(_Stored):
    """One step of a record's story: who moved it to which state, and why."""

    at: float
    state: State
    by: str
    #: The person's action; none for the fleet's own steps (opened, reopened after a failed retry).
    action: Action | None = None
    note: str | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The fleet always wrote these two keys only when they had a value.
        data: dict[str, Any] = handler(self)
        return _drop(data, {k for k in ("action", "note") if data.get(k) is None})


#: The value each action keeps on its resolution (a retry keeps its tier even when none).
_RESOLUTION_VALUE = {"resolve": "answer", "discard": "reason", "retry": "tier"}


class Resolution(_Stored):
    """How a person closed an escalation: resolved with an answer, discarded with a reason, or retried
    (on a pinned tier, or through the router when ``tier`` is none)."""

    action: Literal["resolve", "retry", "discard"]
    by: str
    at: float
    answer: str | None = None
    reason: str | None = None
    tier: Tier | None = None

    _tier = field_validator("tier", mode="before")(_tier)

    @model_serializer(mode="wrap")
    def _only_its_value(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return _drop(data, set(_RESOLUTION_VALUE.values()) - {_RESOLUTION_VALUE[self.action]})


class NewEscalation(_Lenient):
    """What a worker knows when it gives a job up.

    Lenient like a stored record: a worker that gives up must always be able to say so, so an
    unknown reason code becomes ``Reason.of(code)``, an unknown tier none, and a raw body is kept as
    bounded text.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    reason: Reason
    tier: Tier | None = None
    request: dict[str, Any] | str | None = None
    routing: RoutingDecision | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    detail: str = ""
    trace_id: str | None = None
    queue: str | None = None
    submitted_at: float | None = None
    #: The escalation whose retry this job was (from the message's envelope), if any.
    retry_of: str | None = None


class EscalationRecord(_Stored, _Lenient):
    """One escalation as stored: the failed job, where it was routed, every attempt, and who did what."""

    id: str
    task_id: str
    state: State
    tier: Tier | None = None
    queue: str | None = None
    reason: Reason = Reason.CHAIN_EXHAUSTED
    detail: str = ""
    kind: str | None = None
    request: dict[str, Any] | str | None = None
    routing: RoutingDecision | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    trace_id: str | None = None
    submitted_at: float | None = None
    created_at: float
    updated_at: float
    assignee: str | None = None
    claimed_at: float | None = None
    resolution: Resolution | None = None
    retry_of: str | None = None
    followed_by: str | None = None
    notified_at: float | None = None
    history: list[HistoryEntry] = Field(default_factory=list)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> str | None:
        return value if isinstance(value, str) else None  # a bad message may carry any JSON here

    @classmethod
    def load(cls, raw: str | bytes) -> EscalationRecord:
        """A record from its stored JSON. Raises pydantic.ValidationError for a document that is not one."""
        return cls.model_validate_json(raw)

    def dump(self) -> str:
        """The stored JSON of this record."""
        return self.model_dump_json()

    @classmethod
    def opened(
        cls, esc_id: str, new: NewEscalation, *, now: float, previous: EscalationRecord | None = None
    ) -> EscalationRecord:
        """A new open record for ``new``; ``previous`` is the escalation of the retry that failed again."""
        note = str(new.reason) if previous is None else f"{new.reason} (again, after retry of {previous.id})"
        request = new.request
        return cls(
            id=esc_id,
            task_id=new.task_id,
            state="open",
            tier=new.tier,
            queue=new.queue,
            reason=new.reason,
            detail=new.detail[:MAX_DETAIL],
            kind=request.get("kind") if isinstance(request, dict) else None,
            request=request,
            routing=new.routing,
            attempts=list(new.attempts),
            trace_id=new.trace_id,
            submitted_at=new.submitted_at,
            created_at=now,
            updated_at=now,
            retry_of=previous.id if previous is not None else None,
            history=[HistoryEntry(at=now, state="open", by="fleet", note=note)],
        )


class EscalationStats(BaseModel):
    """Counts by state, by tier and by reason (each split by state), and the oldest open escalation."""

    total: int
    by_state: dict[str, int]
    by_tier: dict[str, dict[str, int]]
    by_reason: dict[str, dict[str, int]]
    oldest_open_id: str | None
    oldest_open_age_s: float | None

    @classmethod
    def of(cls, records: list[EscalationRecord], *, now: float) -> EscalationStats:
        by_state = dict.fromkeys(STATES, 0)
        by_tier: dict[str, dict[str, int]] = {}
        by_reason: dict[str, dict[str, int]] = {}
        oldest: EscalationRecord | None = None
        for record in records:
            by_state[record.state] += 1
            tier = record.tier.value if record.tier else "none"
            by_tier.setdefault(tier, dict.fromkeys(STATES, 0))[record.state] += 1
            by_reason.setdefault(record.reason.value, dict.fromkeys(STATES, 0))[record.state] += 1
            if record.state == "open" and (oldest is None or record.created_at < oldest.created_at):
                oldest = record
        return cls(
            total=len(records),
            by_state=by_state,
            by_tier=dict(sorted(by_tier.items())),
            by_reason=dict(sorted(by_reason.items())),
            oldest_open_id=oldest.id if oldest else None,
            oldest_open_age_s=round(now - oldest.created_at, 3) if oldest else None,
        )


def result_for(record: EscalationRecord, *, now: float | None = None) -> TaskResult:
    """The task's final result for a resolved or discarded escalation (what its producer receives)."""
    discarded = record.state == "discarded"
    resolution = record.resolution
    return TaskResult.from_attempts(
        record.task_id,
        "discarded" if discarded else "completed",
        record.attempts,
        answer=None if discarded or resolution is None else resolution.answer,
        tier=record.tier,
        kind=record.kind,
        routing=record.routing,
        escalation_id=record.id,
        reason=resolution.reason if discarded and resolution is not None else None,
        resolved_by="human",
        resolver=resolution.by if resolution is not None else None,
        submitted_at=record.submitted_at,
        finished_at=now if now is not None else time.time(),
    )
