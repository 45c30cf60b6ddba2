"""The limits' ports: what the chain and the job's middlewares need of a rate limiter and a breaker.

Two implementations each: :mod:`fleet.limits.redis` (shared by every worker through Redis, one Lua
script per operation) and :mod:`fleet.limits.memory` (one process, for unit tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from fleet.limits.model import BreakerState, Bucket, Correction, Gate, GateAnswer, Permit, Reservation

if TYPE_CHECKING:
    from fleet.settings import BreakerSettings

__all__ = ["Breaker", "Limiter", "apply_correction"]


class Limiter(Protocol):
    """Token buckets (GCRA) shared by the workers that use the same limiter."""

    def acquire(self, buckets: Sequence[Bucket], *, max_wait_s: float, counter: str) -> Reservation:
        """Reserve each bucket's ``cost`` if the wait is at most ``max_wait_s`` (all or nothing);
        count the reservation in ``counter``."""
        ...

    def ask(self, gate: Gate) -> GateAnswer:
        """A link's admission: its buckets, then (when they reserved) its provider's breaker."""
        ...

    def adjust(self, bucket: Bucket, delta_cost: float) -> None:
        """Correct a reservation by ``delta_cost`` units (actual minus estimated usage)."""
        ...

    def pace(self, bucket: Bucket, floor_ms: float) -> None:
        """Book the bucket at least ``floor_ms`` ahead of now (a provider's quota is nearly spent)."""
        ...

    def fill(self, bucket: Bucket) -> float:
        """Units available now (0 .. burst), for `fleet status`."""
        ...


class Breaker(Protocol):
    """A circuit breaker per provider."""

    settings: BreakerSettings

    def allow(self, provider: str) -> Permit:
        """Whether a call to ``provider`` may go out now."""
        ...

    def record(self, provider: str, permit: Permit, outcome: str) -> BreakerState | None:
        """Report a call's outcome; the state after it (None: breakers are off)."""
        ...

    def states(self, providers: list[str]) -> dict[str, dict[str, object]]:
        """Each provider's state, recent failures and times opened, for `fleet status`."""
        ...


def apply_correction(limiter: Limiter, correction: Correction) -> None:
    """Apply a bucket's correction at once (a job's own corrections go out with its last writes)."""
    if correction.delta:
        limiter.adjust(correction.bucket, correction.delta)
    if correction.floor_ms > 0:
        limiter.pace(correction.bucket, correction.floor_ms)
