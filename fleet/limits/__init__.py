"""Limits shared by every worker on every machine: rate limits (token buckets) and circuit breakers.

    limiter = RateLimiter(redis_client)          # Redis: every worker shares the buckets
    reservation = limiter.acquire([bucket], max_wait_s=1.0, counter=keys.rate_counter("mini", slot))

The ports (:mod:`fleet.limits.ports`) have two implementations: :mod:`fleet.limits.redis` (Lua
scripts, time from Redis) and :mod:`fleet.limits.memory` (one process, a clock the test controls).
"""

from __future__ import annotations

from fleet.limits.memory import MemoryBreaker, MemoryLimiter, MemoryLimits
from fleet.limits.model import (
    BREAKER_FAILURES,
    BreakerState,
    Bucket,
    Correction,
    Gate,
    GateAnswer,
    Permit,
    Reservation,
    link_corrections,
    pace_floor_ms,
)
from fleet.limits.ports import Breaker, Limiter, apply_correction
from fleet.limits.redis import CircuitBreaker, RateLimiter

__all__ = [
    "BREAKER_FAILURES",
    "Breaker",
    "BreakerState",
    "Bucket",
    "CircuitBreaker",
    "Correction",
    "Gate",
    "GateAnswer",
    "Limiter",
    "MemoryBreaker",
    "MemoryLimiter",
    "MemoryLimits",
    "Permit",
    "RateLimiter",
    "Reservation",
    "apply_correction",
    "link_corrections",
    "pace_floor_ms",
]
