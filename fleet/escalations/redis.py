"""The escalation store in Redis: the one the fleet runs on.

The layout and the rules are the port's (:mod:`fleet.escalations.store`); here is how Redis holds
them: a string per record, sorted sets for the indexes, and each change as optimistic locking on one
key (WATCH, then MULTI/EXEC), so concurrent people and workers never lose an update. ``on_commit``
hooks get the pipeline itself, after MULTI.

Redis access goes through the client the caller passes in; in the fleet that is
:func:`fleet.discovery.redis_client`, whose commands raise :class:`fleet.errors.BrokerError` for an
unusable broker.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.client import Pipeline

from fleet.errors import EscalationError
from fleet.escalations.store import EscalationStore, Transaction

__all__ = ["RedisEscalationStore"]

#: Optimistic-locking rounds before a change gives up (only under heavy contention).
_MAX_ROUNDS = 50
#: Keys read per MGET.
_BATCH = 500

R = TypeVar("R")


def _watch(pipe: Pipeline, key: str) -> None:
    pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.watch untyped


class RedisEscalationStore(EscalationStore):
    """Escalation records in Redis: JSON per record, sorted-set indexes by creation time."""

    def __init__(self, client: redis.Redis, *, retention_days: float = 30.0) -> None:
        super().__init__(retention_days=retention_days)
        self.redis = client

    def _atomically(self, key: str, apply: Callable[[Transaction, Any], R], contention: str) -> R:
        # A concurrent change to ``key`` fails EXEC with WatchError: read again and start over.
        for _ in range(_MAX_ROUNDS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    _watch(pipe, key)
                    return apply(pipe, pipe.get(key))
                except redis.WatchError:
                    continue
        raise EscalationError(contention)

    def _get(self, key: str) -> Any:
        return self.redis.get(key)

    def _mget(self, names: builtins.list[str]) -> builtins.list[Any]:
        out: builtins.list[Any] = []
        for start in range(0, len(names), _BATCH):
            out.extend(self.redis.mget(names[start : start + _BATCH]))
        return out

    def _ids(self, index: str) -> builtins.list[str]:
        return [i.decode() if isinstance(i, bytes) else str(i) for i in self.redis.zrange(index, 0, -1)]

    def _count(self, index: str) -> int:
        return int(self.redis.zcard(index))

    def _unindex(self, indexes: builtins.list[str], ids: builtins.list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for index in indexes:
            pipe.zrem(index, *ids)
        pipe.execute()
