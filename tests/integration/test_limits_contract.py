"""The in-memory limits and job start are twins of the Redis ones: the same scenarios, the same answers.

Each scenario runs against both: Redis (Lua, time from Redis, real waits) and memory (a clock the test
moves). If the two drift apart, the middleware unit tests that use the memory twins stop proving
anything about the fleet: this is what keeps them honest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from fleet import keys
from fleet.discovery import redis_client
from fleet.limits import (
    Breaker,
    Bucket,
    CircuitBreaker,
    Gate,
    Limiter,
    MemoryBreaker,
    MemoryLimiter,
    MemoryLimits,
    RateLimiter,
)
from fleet.middleware.start import (
    JobStarter,
    MemoryJobs,
    MemoryJobStarter,
    QueueToken,
    RedisJobStarter,
    StartPlan,
)
from fleet.settings import BreakerSettings, load_settings

pytestmark = pytest.mark.integration

BREAKER = BreakerSettings(failure_threshold=2, min_failure_ratio=0.5, window_s=30, cooldown_s=0.3)


@dataclass
class Twin:
    limiter: Limiter
    breaker: Breaker
    starter: JobStarter
    advance: Callable[[float], None]
    #: Marks a job finished (its result stored) / locked by someone else.
    finish: Callable[[str], None]
    hold: Callable[[str, str], None]


@pytest.fixture(params=["redis", "memory"])
def twin(request: pytest.FixtureRequest, clean_redis: redis.Redis, broker_url: str) -> Iterator[Twin]:
    if request.param == "redis":
        client = redis_client(load_settings(env={}), broker_url)
        breaker = CircuitBreaker(client, BREAKER)
        yield Twin(
            RateLimiter(client), breaker, RedisJobStarter(client), time.sleep,
            lambda t: client.set(keys.result(t), '{"status": "SUCCESS", "result": {}}'),
            lambda t, owner: client.set(keys.running(t), owner, px=60_000),
        )  # fmt: skip
        return
    now = [time.time() * 1000.0]

    def advance(seconds: float) -> None:
        now[0] += seconds * 1000.0

    limits = MemoryLimits(clock=lambda: now[0])
    memory_breaker = MemoryBreaker(BREAKER, limits)
    limiter = MemoryLimiter(limits, memory_breaker)
    jobs = MemoryJobs()
    yield Twin(
        limiter, memory_breaker, MemoryJobStarter(jobs, limiter), advance,
        lambda t: jobs.results.__setitem__(t, {}), lambda t, owner: _hold(jobs, t, owner),
    )  # fmt: skip


def _hold(jobs: MemoryJobs, task_id: str, owner: str) -> None:
    jobs.locks[task_id] = owner
    jobs.lock_left[task_id] = 60.0


def _bucket(per_minute: float, burst: float = 1.0, cost: float = 1.0) -> Bucket:
    return Bucket(keys.bucket("rpm", f"contract:{per_minute}"), per_minute / 60.0, burst=burst, cost=cost)


def test_a_bucket_grants_its_burst_then_reserves_or_refuses(twin: Twin) -> None:
    bucket = _bucket(60, burst=2)
    counter = keys.rate_counter("contract", 1)
    first = [twin.limiter.acquire([bucket], max_wait_s=0.5, counter=counter) for _ in range(2)]
    assert all(r.reserved and r.wait_s == pytest.approx(0, abs=0.05) for r in first)
    refused = twin.limiter.acquire([bucket], max_wait_s=0.5, counter=counter)
    assert not refused.reserved and refused.wait_s == pytest.approx(1.0, abs=0.1)
    reserved = twin.limiter.acquire([bucket], max_wait_s=5, counter=counter)
    assert reserved.reserved and reserved.wait_s == pytest.approx(1.0, abs=0.1)


def test_buckets_are_all_or_nothing_and_corrections_move_them(twin: Twin) -> None:
    rpm, tpm = _bucket(60, burst=5), _bucket(600, burst=100, cost=100)
    counter = keys.rate_counter("contract", 2)
    assert twin.limiter.acquire([rpm, tpm], max_wait_s=0, counter=counter).reserved
    # tpm is used up: neither bucket is taken
    assert not twin.limiter.acquire([rpm, tpm], max_wait_s=0, counter=counter).reserved
    assert twin.limiter.fill(rpm) == pytest.approx(4, abs=0.1)
    # the call used 40 tokens, not 100: a refund of 60 lets 60 more through
    twin.limiter.adjust(tpm, -60)
    assert twin.limiter.acquire([_bucket(60, burst=5)], max_wait_s=0, counter=counter).reserved
    assert twin.limiter.fill(tpm) == pytest.approx(60, abs=1)


def test_a_pace_books_a_bucket_ahead_and_never_back(twin: Twin) -> None:
    rpm = _bucket(60, burst=5)
    counter = keys.rate_counter("contract", 3)
    assert twin.limiter.fill(rpm) == pytest.approx(5, abs=0.1)
    # booked 2 s ahead: the burst of 5 (4 s of tolerance) has 2 units left, and a job waits for more
    twin.limiter.pace(rpm, 2000)
    assert twin.limiter.fill(rpm) == pytest.approx(3, abs=0.1)
    # a smaller floor moves nothing back
    twin.limiter.pace(rpm, 500)
    assert twin.limiter.fill(rpm) == pytest.approx(3, abs=0.1)
    assert twin.limiter.acquire([rpm], max_wait_s=0, counter=counter).reserved


def test_the_breaker_opens_on_failures_probes_after_cooldown_and_closes(twin: Twin) -> None:
    permits = [twin.breaker.allow("p") for _ in range(3)]
    assert all(p.allowed and p.state == "closed" for p in permits)
    assert twin.breaker.record("p", permits[0], "server_error") == "closed"
    assert twin.breaker.record("p", permits[1], "timeout") == "open"
    assert not twin.breaker.allow("p").allowed
    twin.advance(0.35)
    probe = twin.breaker.allow("p")
    assert probe.allowed and probe.state == "half_open"
    assert not twin.breaker.allow("p").allowed  # one probe at a time
    assert twin.breaker.record("p", probe, "ok") == "closed"
    assert twin.breaker.allow("p").state == "closed"


def test_a_gate_reserves_its_buckets_then_asks_the_breaker(twin: Twin) -> None:
    gate = Gate([_bucket(60, burst=1)], keys.rate_counter("gate", 1), "p", 0.5, BREAKER)
    first = twin.limiter.ask(gate)
    assert first.reserved and first.permit is not None and first.permit.allowed
    second = twin.limiter.ask(Gate([_bucket(60, burst=1)], keys.rate_counter("gate", 1), "p", 0.5, BREAKER))
    assert not second.reserved and second.permit is None


def _plan(task_id: str, **parts: Any) -> StartPlan:
    return StartPlan(task_id, lock_owner="host:1", lock_ttl_ms=60_000, **parts)


def test_a_start_reports_done_locked_poison_and_ok(twin: Twin) -> None:
    twin.finish("done-job")
    assert twin.starter.start(_plan("done-job")).state == "done"
    twin.hold("held-job", "other:2")
    locked = twin.starter.start(_plan("held-job"))
    assert locked.state == "locked" and locked.holder == "other:2" and locked.holder_ttl_s > 0
    first = twin.starter.start(_plan("fresh", count_delivery=True, max_deliveries=2))
    assert first.state == "ok" and first.deliveries == 2  # a redelivery: the second delivery
    poison = twin.starter.start(_plan("fresh2", count_delivery=True, max_deliveries=1))
    assert poison.state == "poison" and poison.deliveries == 2


def test_a_start_takes_the_queue_token_and_the_first_link_at_once(twin: Twin) -> None:
    queue = QueueToken([_bucket(1, burst=1)], keys.rate_counter("q", 1), 120.0)
    link = Gate([_bucket(6000, burst=10)], keys.rate_counter("l", 1), "p", 1.0, BREAKER)
    answer = twin.starter.start(_plan("j1", queue=queue, link=link, link_within_s=1.0))
    assert answer.state == "ok" and answer.queue is not None and answer.queue.reserved
    assert answer.link is not None and answer.link.reserved and answer.link.permit is not None
    # the queue's next token is a minute away: it is reserved, and the link is not asked
    later = twin.starter.start(_plan("j2", queue=queue, link=link, link_within_s=1.0))
    assert later.queue is not None and later.queue.reserved and later.queue.wait_s > 50
    assert later.link is None
