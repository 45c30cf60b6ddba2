"""The dead-letter store: what no model could do waits here for people.

A record is written to Redis before the failing message is acked, so a crash between the two can
only duplicate, never lose; a duplicate is recognised by its task id (``SET NX`` on
``fleet:esc:task:<task_id>``) and returns the record already written.

States: ``open -> claimed -> resolved | retried | discarded`` (a claimed one may also be released).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import redis

from fleet import keys
from fleet.errors import EscalationNotFound

__all__ = ["STATES", "EscalationStore", "NewEscalation"]

State = Literal["open", "claimed", "resolved", "retried", "discarded"]
STATES: tuple[State, ...] = ("open", "claimed", "resolved", "retried", "discarded")
#: Largest raw body kept for a message that could not be decoded.
MAX_RAW_BODY = 64 * 1024


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


class EscalationStore:
    """Escalation records in Redis: JSON per record, sorted-set indexes by creation time."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, new: NewEscalation) -> tuple[dict[str, Any], bool]:
        """Persist an escalation; returns ``(record, created)``; ``created`` is False for a duplicate."""
        esc_id = uuid.uuid4().hex[:16]
        if not self.redis.set(keys.escalation_by_task(new.task_id), esc_id, nx=True):
            existing_id = self.redis.get(keys.escalation_by_task(new.task_id))
            esc_id = existing_id.decode() if isinstance(existing_id, bytes) else str(existing_id)
            existing = self.get_or_none(esc_id)
            if existing is not None:
                return existing, False
            # The mapping was written but the record was not (a crash between the two): write it now.
        now = time.time()
        request = new.request
        if isinstance(request, bytes | bytearray):
            request = request[:MAX_RAW_BODY].decode("utf-8", "replace")
        elif isinstance(request, str):
            request = request[:MAX_RAW_BODY]
        record: dict[str, Any] = {
            "id": esc_id,
            "task_id": new.task_id,
            "state": "open",
            "tier": new.tier,
            "queue": new.queue,
            "reason": new.reason,
            "detail": new.detail[:2000],
            "request": request,
            "routing": new.routing,
            "attempts": new.attempts or [],
            "trace_id": new.trace_id,
            "submitted_at": new.submitted_at,
            "created_at": now,
            "updated_at": now,
            "assignee": None,
            "resolution": None,
            "history": [{"at": now, "state": "open", "by": "fleet", "note": new.reason}],
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.escalation(esc_id), json.dumps(record))
        pipe.zadd(keys.escalations_index(), {esc_id: now})
        pipe.zadd(keys.escalations_state("open"), {esc_id: now})
        pipe.execute()
        return record, True

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
            raise EscalationNotFound(f"no escalation {esc_id!r}")
        return record

    def for_task(self, task_id: str) -> dict[str, Any] | None:
        esc_id = self.redis.get(keys.escalation_by_task(task_id))
        if esc_id is None:
            return None
        return self.get_or_none(esc_id.decode() if isinstance(esc_id, bytes) else str(esc_id))

    def list(
        self, *, state: str | None = None, tier: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Records, oldest first, filtered by state and tier."""
        index = keys.escalations_state(state) if state else keys.escalations_index()
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in self.redis.zrange(index, 0, -1)]
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            for raw in self.redis.mget([keys.escalation(i) for i in batch]):
                if raw is None:
                    continue
                record = json.loads(raw)
                if tier and record.get("tier") != tier:
                    continue
                out.append(record)
                if len(out) >= limit:
                    return out
        return out

    def count(self, state: str | None = None) -> int:
        index = keys.escalations_state(state) if state else keys.escalations_index()
        return int(self.redis.zcard(index))
