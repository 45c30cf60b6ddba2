"""What the limits speak: buckets, a link's gate and the answers of a reservation or a breaker."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from fleet import keys

if TYPE_CHECKING:
    from fleet.providers.base import Quota
    from fleet.settings import BreakerSettings

__all__ = [
    "BREAKER_FAILURES",
    "BreakerState",
    "Bucket",
    "Correction",
    "Gate",
    "GateAnswer",
    "Permit",
    "Reservation",
    "changes_breaker",
    "link_corrections",
    "pace_floor_ms",
]

#: Outcomes that count against a provider's availability (quality failures do not).
BREAKER_FAILURES = frozenset({"server_error", "overloaded", "timeout", "connection"})

BreakerState = Literal["closed", "open", "half_open"]
#: The start of every model's tpm bucket key (its rpm one starts otherwise).
_TPM_PREFIX = keys.bucket("tpm", "")


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``rate_per_s`` units a second, up to ``burst`` at once; this acquire's ``cost``."""

    key: str
    rate_per_s: float
    burst: float
    cost: float = 1.0

    @property
    def emission_ms(self) -> float:
        return 1000.0 / self.rate_per_s

    @property
    def tolerance_ms(self) -> float:
        """How far ahead of now the bucket may be booked and still grant at once (its burst)."""
        return max(0.0, self.burst - 1) * self.emission_ms


@dataclass(frozen=True, slots=True)
class Correction:
    """A bucket set right after a call: moved by ``delta`` units (the tpm estimate replaced by the
    actual usage), and booked at least ``floor_ms`` ahead of now (the provider's rate-limit headers
    said its quota is nearly spent: :func:`pace_floor_ms`)."""

    bucket: Bucket
    delta: float = 0.0
    floor_ms: float = 0.0


def pace_floor_ms(bucket: Bucket, remaining: int, reset_s: float, limit: int | None, reserve: float) -> float:
    """How far ahead of now ``bucket`` must be booked so that, over the ``reset_s`` seconds the
    provider needs to make its limit whole again, the fleet sends no more than the provider takes.

    The provider refills its quota to ``limit`` within ``reset_s``, so it takes ``limit`` units in that
    time (only ``remaining`` when it did not say its limit), less a ``reserve`` share kept for calls
    already on their way. A GCRA bucket booked ``floor`` ahead grants ``(reset + tolerance - floor) /
    emission`` units within ``reset``: solved for ``floor``. 0 when the bucket is already the tighter
    of the two (the usual case: nothing to write)."""
    size = limit if limit is not None else remaining
    budget = max(0, size - math.ceil(reserve * size))
    return max(0.0, reset_s * 1000.0 + bucket.tolerance_ms - budget * bucket.emission_ms)


def link_corrections(
    buckets: Sequence[Bucket], used_tokens: int, quota: Quota | None, reserve: float
) -> list[Correction]:
    """A link's buckets corrected after a call: tpm's estimate replaced by the ``used_tokens`` (a
    refund or a further charge), and rpm and tpm booked ahead when the provider's rate-limit headers
    (``quota``, an answer's or a 429's) say its quota is nearly spent (:func:`pace_floor_ms`). Only
    the buckets that change."""
    out = []
    for bucket in buckets:
        tpm = bucket.key.startswith(_TPM_PREFIX)
        delta = used_tokens - bucket.cost if tpm else 0.0
        part = (quota.tokens if tpm else quota.requests) if quota is not None else None
        floor = pace_floor_ms(bucket, part.remaining, part.reset_s, part.limit, reserve) if part else 0.0
        if delta or floor:
            out.append(Correction(bucket, delta=delta, floor_ms=floor))
    return out


@dataclass(frozen=True, slots=True)
class Reservation:
    """A rate-limit acquire's answer: ``reserved`` (then sleep ``wait_s`` and go), or not (come back
    in about ``wait_s``; nothing was booked)."""

    reserved: bool
    wait_s: float


@dataclass(frozen=True, slots=True)
class Permit:
    """The breaker's answer for one call: whether to make it, and the token to report back with."""

    allowed: bool
    state: BreakerState
    token: str


def changes_breaker(permit: Permit, outcome: str) -> bool:
    """Whether a call's outcome can change its provider's breaker (a success while closed cannot,
    so it costs no round trip)."""
    return outcome in BREAKER_FAILURES or permit.state != "closed"


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """A link's admission: ``reserved`` its rpm/tpm tokens (``wait_s`` until they are due, or until
    a token is free when not reserved), and the breaker's ``permit`` (None: no breaker asked)."""

    reserved: bool
    wait_s: float
    permit: Permit | None


@dataclass(frozen=True, slots=True)
class Gate:
    """A chain link's admission, asked in one round trip: its rpm/tpm buckets, then its provider's
    breaker. A limiter asks it alone; a job's start asks the first link's with the job's lock."""

    buckets: Sequence[Bucket]
    counter: str
    provider: str
    max_wait_s: float
    breaker: BreakerSettings | None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def asks_breaker(self) -> bool:
        return self.breaker is not None and self.breaker.enabled
