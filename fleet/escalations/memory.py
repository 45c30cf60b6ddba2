"""The escalation store in memory: the Redis store's twin for fast unit tests (Dramatiq's ``StubBroker``).

The verbs, rules and layout are the port's (:mod:`fleet.escalations.store`), so the twins differ
only in how they hold values: here a dict of values with expiry read lazily against ``clock`` (a
test moves time instead of sleeping), and a dict per sorted set. A lock makes each change atomic.

A change's writes, ``on_commit``'s included, go to a :class:`MemoryTransaction` that records them and
applies them all on ``execute()``: a check or hook that raises first leaves nothing behind, as an
unexecuted MULTI would. ``publish`` lands in :attr:`MemoryEscalationStore.published`; tests read
what hooks wrote with :meth:`MemoryEscalationStore.value`.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fleet.escalations.store import EscalationStore, Transaction

__all__ = ["MemoryEscalationStore", "MemoryTransaction"]

R = TypeVar("R")


class _KeySpace:
    """Values with an optional expiry (honoured lazily, as Redis does) and sorted sets."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._values: dict[str, Any] = {}
        self._expires: dict[str, float] = {}
        self.zsets: dict[str, dict[str, float]] = {}

    def get(self, key: str) -> Any:
        if key in self._expires and self._expires[key] <= self._clock():
            self.delete(key)
        return self._values.get(key)

    def set(self, key: str, value: Any, *, ex: int | None = None, keepttl: bool = False) -> None:
        self._values[key] = value
        if ex is not None:
            self._expires[key] = self._clock() + ex
        elif not keepttl:
            self._expires.pop(key, None)

    def delete(self, *names: str) -> None:
        for key in names:
            self._values.pop(key, None)
            self._expires.pop(key, None)

    def expire(self, key: str, seconds: int) -> None:
        if self.get(key) is not None:
            self._expires[key] = self._clock() + seconds

    def persist(self, key: str) -> None:
        self._expires.pop(key, None)

    def ttl(self, key: str) -> float | None:
        if self.get(key) is None or key not in self._expires:
            return None
        return self._expires[key] - self._clock()

    def zadd(self, name: str, mapping: Mapping[str, float]) -> None:
        self.zsets.setdefault(name, {}).update(mapping)

    def zrem(self, name: str, *values: str) -> None:
        for value in values:
            self.zsets.get(name, {}).pop(value, None)


class MemoryTransaction:
    """One change's writes, recorded in order (``commands``) and applied together by ``execute()``."""

    def __init__(self, space: _KeySpace, published: list[tuple[str, Any]]) -> None:
        self._space, self._published = space, published
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def _queue(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.commands.append((name, args, kwargs))

    def multi(self) -> None:
        return None  # the writes are buffered from the start

    def set(self, name: str, value: Any, *, ex: int | None = None, keepttl: bool = False) -> None:
        self._queue("set", name, value, ex=ex, keepttl=keepttl)

    def delete(self, *names: str) -> None:
        self._queue("delete", *names)

    def expire(self, name: str, time: int) -> None:
        self._queue("expire", name, time)

    def persist(self, name: str) -> None:
        self._queue("persist", name)

    def zadd(self, name: str, mapping: Mapping[str, float]) -> None:
        self._queue("zadd", name, dict(mapping))

    def zrem(self, name: str, *values: str) -> None:
        self._queue("zrem", name, *values)

    def publish(self, channel: str, message: Any) -> None:
        self._queue("publish", channel, message)

    def execute(self) -> None:
        for name, args, kwargs in self.commands:
            if name == "publish":
                self._published.append((args[0], args[1]))
            else:
                getattr(self._space, name)(*args, **kwargs)
        self.commands = []


class MemoryEscalationStore(EscalationStore):
    """Escalation records in this process, with the Redis store's rules, layout and expiry."""

    def __init__(self, *, retention_days: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        super().__init__(retention_days=retention_days)
        self.clock = clock
        self._lock = threading.RLock()
        self._space = _KeySpace(clock)
        #: What ``on_commit`` hooks published, in order: (channel, message).
        self.published: list[tuple[str, Any]] = []

    def _now(self) -> float:
        return self.clock()

    def value(self, key: str) -> Any:
        """What a key holds now (a record's JSON, a result an ``on_commit`` hook wrote), or None."""
        with self._lock:
            return self._space.get(key)

    def ttl(self, key: str) -> float | None:
        """Seconds until the key expires; None when it does not (or does not exist)."""
        with self._lock:
            return self._space.ttl(key)

    def _atomically(self, key: str, apply: Callable[[Transaction, Any], R], contention: str) -> R:
        with self._lock:  # nobody else changes anything meanwhile: no contention here
            return apply(MemoryTransaction(self._space, self.published), self._space.get(key))

    def _get(self, key: str) -> Any:
        return self.value(key)

    def _mget(self, names: builtins.list[str]) -> builtins.list[Any]:
        with self._lock:
            return [self._space.get(key) for key in names]

    def _ids(self, index: str) -> builtins.list[str]:
        with self._lock:
            members = self._space.zsets.get(index, {})
            return sorted(members, key=lambda member: (members[member], member))

    def _count(self, index: str) -> int:
        with self._lock:
            return len(self._space.zsets.get(index, {}))

    def _unindex(self, indexes: builtins.list[str], ids: builtins.list[str]) -> None:
        with self._lock:
            for index in indexes:
                self._space.zrem(index, *ids)
