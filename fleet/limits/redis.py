"""Limits shared by every worker on every machine, kept in Redis: rate limits and circuit breakers.

Each operation is one atomic Lua script (``fleet/lua/``) that takes its time from Redis (``TIME``),
not from the worker's clock, so workers with skewed clocks still agree.

Rate limits (a queue's ``rate_limit``, a model's ``rpm`` and ``tpm``) are token buckets kept as
GCRA: one number per bucket, the theoretical arrival time of the next unit. An acquire reserves
its units when the wait is within a bound (the caller sleeps that long, then runs) and refuses
otherwise, telling how long to wait, so a job goes back to its queue with a countdown instead of
holding a worker slot. Several buckets (rpm and tpm) are acquired all-or-nothing in one round trip.
We chose a short script over the ``limits`` library: ``limits`` has no token bucket, takes its
time from the client, and has no way to correct a reservation afterwards (tpm is estimated before
the call and corrected with the actual usage after it).

Breaker states: ``closed`` (calls flow; failures are counted in a sliding window), ``open``
(``failure_threshold`` failures within ``window_s`` that are also ``min_failure_ratio`` of the calls
in the window: calls are skipped without being made), and ``half_open`` (``cooldown_s`` after
opening, one probe call is let through; its success closes the breaker, its failure opens it again).

:func:`acquire_args` and :func:`gate_layout` are the only places that know these scripts' argument
layout; the job's start script (:mod:`fleet.middleware.start`) builds on them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fleet import keys, scripts
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

__all__ = ["CircuitBreaker", "RateLimiter", "acquire_args", "gate_answer", "gate_layout"]


def acquire_args(buckets: Sequence[Bucket], max_wait_s: float) -> list[float]:
    """ARGV of ``gcra.lua``'s ``acquire`` from its base: the wait bound (ms), then each bucket's
    (emission_ms, tolerance_ms, cost)."""
    args: list[float] = [max_wait_s * 1000.0]
    for b in buckets:
        args += [b.emission_ms, b.tolerance_ms, b.cost]
    return args


def gate_layout(gate: Gate) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``gate.lua``'s ``gate``: the link's counter, its breaker, its buckets; the
    breaker's flag, cooldown, probe token and window, then the buckets' acquire arguments."""
    b = gate.breaker
    args: list[Any] = [
        "1" if gate.asks_breaker else "0",
        int(b.cooldown_s * 1000) if b else 0,
        gate.token,
        int(b.window_s * 1000) if b else 0,
        *acquire_args(gate.buckets, gate.max_wait_s),
    ]
    return [gate.counter, keys.breaker(gate.provider), *(x.key for x in gate.buckets)], args


def gate_answer(gate: Gate, reserved: Any, wait_ms: Any, allowed: Any, state: Any) -> GateAnswer:
    """The reply of ``gate.lua``'s ``gate`` as a :class:`GateAnswer`."""
    wait = max(0.0, float(wait_ms) / 1000.0)
    if not int(reserved):
        return GateAnswer(False, wait, None)
    if not gate.asks_breaker:
        return GateAnswer(True, wait, None)
    return GateAnswer(True, wait, Permit(bool(int(allowed)), _state(state), gate.token))


def _state(raw: Any) -> BreakerState:
    name = raw.decode() if isinstance(raw, bytes) else str(raw)
    if name not in ("closed", "open", "half_open"):
        raise ValueError(f"unknown breaker state {name!r}")
    return name  # type: ignore[return-value]  # checked just above


class RateLimiter:
    """Token buckets shared by every worker through Redis (a :class:`fleet.limits.ports.Limiter`)."""

    def __init__(self, client: Any) -> None:
        self.redis = client
        self._acquire = scripts.register(client, "acquire")
        self._adjust = scripts.register(client, "adjust")
        self._admit = scripts.register(client, "admit")
        self._pace = scripts.register(client, "pace")

    def acquire(self, buckets: Sequence[Bucket], *, max_wait_s: float, counter: str) -> Reservation:
        """Reserve ``cost`` units in every bucket if the wait is at most ``max_wait_s`` (one round trip).

        ``counter`` counts reservations (per 10-second slot, for `fleet status`).
        """
        reserved, wait_ms = self._acquire(
            keys=[*(b.key for b in buckets), counter], args=acquire_args(buckets, max_wait_s)
        )
        return Reservation(bool(int(reserved)), max(0.0, float(wait_ms) / 1000.0))

    def ask(self, gate: Gate) -> GateAnswer:
        """A link's admission in one round trip."""
        script_keys, args = gate_layout(gate)
        return gate_answer(gate, *self._admit(keys=script_keys, args=args))

    def adjust(self, bucket: Bucket, delta_cost: float) -> None:
        """Correct a reservation by ``delta_cost`` units (actual minus estimated usage)."""
        if delta_cost:
            self._adjust(keys=[bucket.key], args=[bucket.emission_ms, delta_cost])

    def pace(self, bucket: Bucket, floor_ms: float) -> None:
        """Book the bucket at least ``floor_ms`` ahead of now (a provider's quota is nearly spent)."""
        if floor_ms > 0:
            self._pace(keys=[bucket.key], args=[floor_ms])

    def fill(self, bucket: Bucket) -> float:
        """Units available now (0 .. burst), for `fleet status`."""
        raw = self.redis.get(bucket.key)
        seconds, micros = self.redis.time()
        now = seconds * 1000 + micros / 1000
        if raw is None:
            return bucket.burst
        backlog_ms = max(0.0, float(raw) - float(now))
        return max(0.0, min(bucket.burst, bucket.burst - backlog_ms / bucket.emission_ms))


class CircuitBreaker:
    """A breaker per provider, shared by every worker through Redis (a ``limits.ports.Breaker``)."""

    def __init__(self, client: Any, settings: BreakerSettings) -> None:
        self.redis = client
        self.settings = settings
        self._allow = scripts.register(client, "breaker_check")
        self._record = scripts.register(client, "breaker_record")

    def allow(self, provider: str) -> Permit:
        """Whether a call to ``provider`` may go out now (one round trip)."""
        if not self.settings.enabled:
            return Permit(True, "closed", "")
        token = uuid.uuid4().hex
        allowed, state = self._allow(
            keys=[keys.breaker(provider)],
            args=[int(self.settings.cooldown_s * 1000), token, int(self.settings.window_s * 1000)],
        )
        return Permit(bool(int(allowed)), _state(state), token)

    def record(self, provider: str, permit: Permit, outcome: str) -> BreakerState | None:
        """Report a call's outcome. A success in the closed state costs no round trip."""
        if not self.settings.enabled:
            return None
        if not changes_breaker(permit, outcome):
            return "closed"
        ok = outcome not in BREAKER_FAILURES
        state = self._record(
            keys=[keys.breaker(provider), keys.breaker_failures(provider)],
            args=[
                "1" if ok else "0",
                permit.token,
                self.settings.failure_threshold,
                int(self.settings.window_s * 1000),
                self.settings.min_failure_ratio,
            ],
        )
        return _state(state)

    def states(self, providers: list[str]) -> dict[str, dict[str, object]]:
        """Each provider's breaker state, for `fleet status`."""
        pipe = self.redis.pipeline(transaction=False)
        for provider in providers:
            pipe.hgetall(keys.breaker(provider))
            pipe.zcard(keys.breaker_failures(provider))
        raw = pipe.execute()
        out: dict[str, dict[str, object]] = {}
        for i, provider in enumerate(providers):
            data = {k.decode(): v.decode() for k, v in raw[2 * i].items()}
            out[provider] = {
                "state": data.get("state", "closed"),
                "recent_failures": int(raw[2 * i + 1]),
                "opens": int(data.get("opens", 0)),
            }
        return out
