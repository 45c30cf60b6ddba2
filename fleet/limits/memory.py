"""In-memory twins of the Redis limits (Dramatiq's ``brokers/stub.py`` is the model): the same GCRA
and breaker rules, in one process, on a clock the test controls. A contract test runs the same
scenarios against these and :mod:`fleet.limits.redis`, so the two cannot drift apart.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleet.limits.model import (
    BREAKER_FAILURES,
    BreakerState,
    Bucket,
    Gate,
    GateAnswer,
    Permit,
    Reservation,
    changes_breaker,
)

if TYPE_CHECKING:
    from fleet.settings import BreakerSettings

__all__ = ["MemoryBreaker", "MemoryLimiter", "MemoryLimits"]

#: A clock in milliseconds.
Clock = Callable[[], float]


def _wall_ms() -> float:
    return time.time() * 1000.0


@dataclass
class _BreakerRecord:
    state: BreakerState = "closed"
    opened_at: float = 0.0
    probe: str | None = None
    probe_at: float = 0.0
    opens: int = 0
    #: Calls in the current window (the window starts at its first call, as Redis's INCR + PEXPIRE).
    calls: int = 0
    calls_until: float = 0.0
    failures: list[float] = field(default_factory=list)


class MemoryLimits:
    """The state both twins share (bucket arrival times, counters, breakers) and their clock."""

    def __init__(self, clock: Clock = _wall_ms) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.tats: dict[str, float] = {}
        self.counters: dict[str, int] = {}
        self.breakers: dict[str, _BreakerRecord] = {}


class MemoryLimiter:
    """Token buckets in one process (a :class:`fleet.limits.ports.Limiter`)."""

    def __init__(self, limits: MemoryLimits | None = None, breaker: MemoryBreaker | None = None) -> None:
        self.limits = limits or MemoryLimits()
        self.breaker = breaker

    def acquire(self, buckets: Sequence[Bucket], *, max_wait_s: float, counter: str) -> Reservation:
        with self.limits.lock:
            now = self.limits.clock()
            worst, tats = 0.0, []
            for b in buckets:
                tat = max(self.limits.tats.get(b.key, 0.0), now) + b.emission_ms * b.cost
                worst = max(worst, tat - b.emission_ms - b.tolerance_ms - now)
                tats.append(tat)
            if worst > max_wait_s * 1000.0:
                return Reservation(False, worst / 1000.0)
            for b, tat in zip(buckets, tats, strict=True):
                self.limits.tats[b.key] = tat
            self.limits.counters[counter] = self.limits.counters.get(counter, 0) + 1
            return Reservation(True, max(0.0, worst) / 1000.0)

    def ask(self, gate: Gate) -> GateAnswer:
        wait = 0.0
        if gate.buckets:
            got = self.acquire(gate.buckets, max_wait_s=gate.max_wait_s, counter=gate.counter)
            if not got.reserved:
                return GateAnswer(False, got.wait_s, None)
            wait = got.wait_s
        if not gate.asks_breaker or self.breaker is None:
            return GateAnswer(True, wait, None)
        return GateAnswer(True, wait, self.breaker.allow(gate.provider, token=gate.token))

    def adjust(self, bucket: Bucket, delta_cost: float) -> None:
        with self.limits.lock:
            if bucket.key in self.limits.tats and delta_cost:
                tat = self.limits.tats[bucket.key] + bucket.emission_ms * delta_cost
                self.limits.tats[bucket.key] = max(tat, self.limits.clock())

    def pace(self, bucket: Bucket, floor_ms: float) -> None:
        with self.limits.lock:
            floor = self.limits.clock() + floor_ms
            if floor_ms > 0 and self.limits.tats.get(bucket.key, 0.0) < floor:
                self.limits.tats[bucket.key] = floor

    def fill(self, bucket: Bucket) -> float:
        with self.limits.lock:
            tat = self.limits.tats.get(bucket.key)
            if tat is None:
                return bucket.burst
            backlog = max(0.0, tat - self.limits.clock())
            return max(0.0, min(bucket.burst, bucket.burst - backlog / bucket.emission_ms))


class MemoryBreaker:
    """A breaker per provider in one process (a :class:`fleet.limits.ports.Breaker`)."""

    def __init__(self, settings: BreakerSettings, limits: MemoryLimits | None = None) -> None:
        self.settings = settings
        self.limits = limits or MemoryLimits()

    def _get(self, provider: str) -> _BreakerRecord:
        return self.limits.breakers.setdefault(provider, _BreakerRecord())

    def allow(self, provider: str, *, token: str | None = None) -> Permit:
        if not self.settings.enabled:
            return Permit(True, "closed", "")
        token = token or uuid.uuid4().hex
        cooldown, window = self.settings.cooldown_s * 1000, self.settings.window_s * 1000
        with self.limits.lock:
            now, rec = math.floor(self.limits.clock()), self._get(provider)
            if rec.state == "closed":
                if now >= rec.calls_until:
                    rec.calls, rec.calls_until = 0, now + window
                rec.calls += 1
                return Permit(True, "closed", token)
            if now - rec.opened_at < cooldown:
                return Permit(False, "open", token)
            if rec.probe is not None and now - rec.probe_at < cooldown:
                return Permit(False, "half_open", token)
            rec.state, rec.probe, rec.probe_at = "half_open", token, now
            return Permit(True, "half_open", token)

    def record(self, provider: str, permit: Permit, outcome: str) -> BreakerState | None:
        if not self.settings.enabled:
            return None
        if not changes_breaker(permit, outcome):
            return "closed"
        ok = outcome not in BREAKER_FAILURES
        with self.limits.lock:
            now, rec = math.floor(self.limits.clock()), self._get(provider)
            is_probe = rec.probe == permit.token
            if rec.state != "closed":
                if is_probe:
                    self.limits.breakers[provider] = rec = (
                        _BreakerRecord(opens=rec.opens) if ok else self._opened(rec, now)
                    )
                return rec.state
            if ok:
                return "closed"
            window = self.settings.window_s * 1000
            rec.failures = [t for t in rec.failures if now - t < window] + [now]
            calls = rec.calls if now < rec.calls_until else 0
            if len(rec.failures) >= self.settings.failure_threshold and len(rec.failures) >= (
                self.settings.min_failure_ratio * calls
            ):
                self.limits.breakers[provider] = self._opened(rec, now)
                return "open"
            return "closed"

    @staticmethod
    def _opened(rec: _BreakerRecord, now: float) -> _BreakerRecord:
        return _BreakerRecord(state="open", opened_at=now, opens=rec.opens + 1)

    def states(self, providers: list[str]) -> dict[str, dict[str, object]]:
        with self.limits.lock:
            return {
                p: {
                    "state": self._get(p).state,
                    "recent_failures": len(self._get(p).failures),
                    "opens": self._get(p).opens,
                }
                for p in providers
            }
