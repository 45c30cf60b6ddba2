"""The dead-letter inbox's records and store: what no model could do waits here for people.

A record is written before the failing message is acked, so a crash between the two can only
duplicate, never lose; a duplicate is recognised by its task id and returns the record already
written. A job that people retried and that fails again gets a new record, linked to the old one.

- :mod:`~fleet.escalations.record`: :class:`EscalationRecord` and its parts, :class:`NewEscalation`,
  :func:`result_for` (the task's final result once people closed it);
- :mod:`~fleet.escalations.rules`: the state machine (claim, release, resolve, retry, discard);
- :mod:`~fleet.escalations.store`: the port, :class:`EscalationStore`;
- :mod:`~fleet.escalations.redis` and :mod:`~fleet.escalations.memory`: the fleet's store and its
  in-memory twin for unit tests.
"""

from __future__ import annotations

from fleet.escalations.memory import MemoryEscalationStore, MemoryTransaction
from fleet.escalations.record import (
    ACTIONS,
    FINAL_STATES,
    STATES,
    Action,
    EscalationRecord,
    EscalationStats,
    HistoryEntry,
    NewEscalation,
    Resolution,
    State,
    parse_state,
    result_for,
)
from fleet.escalations.redis import RedisEscalationStore
from fleet.escalations.store import CommitSink, EscalationStore, OnCommit, Transaction

__all__ = [
    "ACTIONS",
    "FINAL_STATES",
    "STATES",
    "Action",
    "CommitSink",
    "EscalationRecord",
    "EscalationStats",
    "EscalationStore",
    "HistoryEntry",
    "MemoryEscalationStore",
    "MemoryTransaction",
    "NewEscalation",
    "OnCommit",
    "RedisEscalationStore",
    "Resolution",
    "State",
    "Transaction",
    "parse_state",
    "result_for",
]
