"""The circuit breaker on a real Redis: shared state, Redis time, one probe after the cooldown."""

from __future__ import annotations

import time

import pytest
import redis

from fleet.limits import Bucket, CircuitBreaker, Gate, Permit, RateLimiter
from fleet.settings import BreakerSettings

pytestmark = pytest.mark.integration


def _breaker(client: redis.Redis, **kw: float) -> CircuitBreaker:
    settings = BreakerSettings(failure_threshold=3, window_s=10, cooldown_s=0.5)
    return CircuitBreaker(client, settings.model_copy(update=kw))


def test_opens_after_threshold_and_probes_after_cooldown(clean_redis: redis.Redis) -> None:
    # Given two workers' breakers on the same Redis
    a, b = _breaker(clean_redis), _breaker(clean_redis)

    # When three availability failures are recorded between them
    for breaker in (a, b, a):
        permit = breaker.allow("acme")
        assert permit.allowed
        breaker.record("acme", permit, "server_error")

    # Then both see it open, and nothing is allowed through
    assert not a.allow("acme").allowed
    assert not b.allow("acme").allowed
    assert a.states(["acme"])["acme"]["state"] == "open"

    # And after the cooldown exactly one probe goes through
    time.sleep(0.6)
    probe = b.allow("acme")
    assert probe.allowed and probe.state == "half_open"
    assert not a.allow("acme").allowed

    # And a failed probe opens it again, a good one closes it
    b.record("acme", probe, "timeout")
    assert not a.allow("acme").allowed
    time.sleep(0.6)
    probe = a.allow("acme")
    assert probe.allowed
    assert a.record("acme", probe, "ok") == "closed"
    assert b.allow("acme").allowed


def test_quality_failures_do_not_open_it(clean_redis: redis.Redis) -> None:
    breaker = _breaker(clean_redis)
    for _ in range(10):
        permit = breaker.allow("acme")
        breaker.record("acme", permit, "truncated")
    assert breaker.allow("acme").allowed


def test_failures_outside_the_window_are_forgotten(clean_redis: redis.Redis) -> None:
    breaker = _breaker(clean_redis, window_s=0.3)
    for _ in range(2):
        breaker.record("acme", breaker.allow("acme"), "server_error")
    time.sleep(0.4)
    breaker.record("acme", breaker.allow("acme"), "server_error")
    assert breaker.allow("acme").allowed


def test_gate_reserves_rate_and_asks_the_breaker_in_one_call(clean_redis: redis.Redis) -> None:
    # Given a model's rpm bucket and its provider's breaker, opened by three failures
    limiter, breaker = RateLimiter(clean_redis), _breaker(clean_redis)
    bucket = Bucket("fleet:tb:rpm:acme:m", rate_per_s=1.0, burst=2.0)

    def ask() -> tuple[bool, float, Permit | None]:
        answer = limiter.ask(Gate([bucket], "fleet:rate:g:0", "acme", 0.0, breaker.settings))
        return answer.reserved, answer.wait_s, answer.permit

    reserved, wait, permit = ask()
    # Then a closed breaker lets the reserved call out
    assert reserved and wait == 0 and permit is not None and permit.allowed and permit.state == "closed"
    for _ in range(3):
        breaker.record("acme", breaker.allow("acme"), "server_error")
    # When the gate is asked again with a token left
    reserved, _, permit = ask()
    # Then the reservation stands but the open breaker refuses the call
    assert reserved and permit is not None and not permit.allowed and permit.state == "open"
    # And with the bucket empty nothing is reserved and the breaker is not asked
    reserved, wait, permit = ask()
    assert not reserved and wait > 0 and permit is None
    assert int(clean_redis.get("fleet:rate:g:0") or 0) == 2


def test_a_busy_provider_with_a_few_failures_stays_closed(clean_redis: redis.Redis) -> None:
    # Given a provider that answers 40 calls and fails 5 of them (12%), within one window
    breaker = _breaker(clean_redis)
    for i in range(45):
        permit = breaker.allow("busy")
        assert permit.allowed
        breaker.record("busy", permit, "server_error" if i % 9 == 0 else "ok")
    # Then the failure count alone does not open it: the failure rate is what matters
    assert breaker.allow("busy").allowed
    assert breaker.states(["busy"])["busy"]["state"] == "closed"
