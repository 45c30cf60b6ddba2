"""The batch lane's pump on a real broker and the mock provider's batch APIs over HTTP (SIMULATED delay
and item failures), on a clock the test moves: a pool waits until it is old enough or full; a batch's
answers go to their jobs at the batch price; failed items, a batch that will not end in time, a
refused batch and a pump that died mid-submit all send their jobs to the live chain, none lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis

from fleet import keys
from fleet.batch.config import batch_link
from fleet.batch.lane import BatchPump, InFlight, in_flight, pool_job
from fleet.models import JobEnvelope, RoutingDecision, Tier, validate_request
from fleet.providers import build_provider
from fleet.providers.batch import BatchAPI, batch_api
from fleet.providers.mock_server import MockConfig, MockServerThread
from fleet.settings import Settings, load_settings

from ..conftest import flush_fleet_keys

LANE = {"batch.min_deadline_s": 100, "batch.max_wait_s": 5, "batch.poll_s": 1, "batch.fallback_margin_s": 20,
        "batch.max_items": 3}  # fmt: skip


@pytest.fixture
def lane_redis(broker_url: str) -> Iterator[redis.Redis]:
    """A database of its own: the batch workers of fleets on the session's broker pump its first
    ones (and would take these tests' pools)."""
    parts = urlsplit(broker_url)
    db = (int(parts.path.strip("/") or 0) + 7) % 16  # neither the session's nor other_db_url's
    url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
    flush_fleet_keys(url)
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServerThread]:
    with MockServerThread(MockConfig(batch_delay_s=0.0)) as server:
        yield server


@pytest.fixture
def settings(mock: MockServerThread) -> Settings:
    s = load_settings(profile="demo", env={}, overrides=LANE)
    s.mock.url = mock.url
    return s


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


def _pump(
    settings: Settings, client: redis.Redis, http: httpx.Client, clock: Clock
) -> tuple[BatchPump, list[JobEnvelope]]:
    sent: list[JobEnvelope] = []

    def api(provider: str) -> BatchAPI | None:
        return batch_api(build_provider(provider, settings, http))

    return BatchPump(client, settings, api, lambda _payload, env: sent.append(env), clock=clock), sent


def _pool(
    client: redis.Redis, settings: Settings, n: int, *, deadline_s: int = 3600, tier: Tier = Tier.MINI
) -> list[str]:
    ids = []
    for i in range(n):
        payload = {
            "prompt": f"Rename a{i} to b{i} in c{i}.py",
            "max_tokens": 30,
            "hints": {"deadline_s": deadline_s},
        }
        req = validate_request(payload)
        envelope = JobEnvelope(id=f"job-{tier}-{i}", submitted_at=time.time())
        envelope.routing = RoutingDecision(tier=tier, reasons=["test"], classifier="pinned")
        link = batch_link(settings, req, envelope.routing)
        assert link is not None
        pool_job(client, payload, envelope, link, deadline_s)
        ids.append(envelope.id)
    return ids


def _wait_ended(pump: BatchPump) -> None:
    """Poll until every batch in flight has been delivered (the mock's batches end at once)."""
    for _ in range(50):
        pump.step()
        if not in_flight(pump.client):
            return
        time.sleep(0.05)


def test_a_young_pool_waits_and_an_old_one_goes_out_as_one_batch(
    settings: Settings, lane_redis: redis.Redis, http: httpx.Client
) -> None:
    clock = Clock()
    pump, sent = _pump(settings, lane_redis, http, clock)
    ids = _pool(lane_redis, settings, 2)
    # A pool of 2 (under max_items 3) younger than max_wait_s: nothing is submitted
    counts = pump.step()
    assert counts is not None and counts.submitted == 0 and not in_flight(lane_redis)
    # Once it is old enough, it goes out as one batch on the tier's first link (the mock's batch
    # ends at once: the same pass polls it and delivers)
    clock.now += 6
    counts = pump.step()
    assert counts is not None and counts.submitted == 1 and counts.answered == 2, counts
    assert lane_redis.zcard(keys.batch_pool("openai:gpt-4.1-mini")) == 0 and not in_flight(lane_redis)
    batch_ids = {e.batch.batch_id for e in sent if e.batch is not None}
    assert len(batch_ids) == 1 and next(iter(batch_ids)).startswith("batch_")
    # Each job goes to its tier with its item's answer, priced at half the list price
    assert sorted(e.id for e in sent) == ids
    model = settings.model("openai", "gpt-4.1-mini")
    for env in sent:
        assert env.batch is not None and env.batch.answer
        a = env.batch.attempt
        assert a.batch_id in batch_ids and a.outcome == "ok" and a.link == "openai:gpt-4.1-mini"
        assert a.cost_usd == pytest.approx(model.cost(a.input_tokens, a.output_tokens) * 0.5)
    assert not lane_redis.exists(*(keys.batch_job(i) for i in ids))


def test_a_full_pool_goes_at_once_and_anthropic_batches_work_the_same(
    settings: Settings, lane_redis: redis.Redis, http: httpx.Client
) -> None:
    pump, sent = _pump(settings, lane_redis, http, Clock())
    ids = _pool(lane_redis, settings, 4, tier=Tier.STANDARD)  # standard's first link: anthropic
    counts = pump.step()  # 3 (max_items) at once, young as they are; 1 stays
    assert counts is not None and counts.submitted == 1
    assert lane_redis.zcard(keys.batch_pool("anthropic:claude-sonnet-4-5")) == 1
    _wait_ended(pump)
    assert len(sent) == 3 and all(
        e.batch is not None and e.batch.batch_id.startswith("msgbatch_") for e in sent
    )
    assert {e.id for e in sent} < set(ids)


def test_failed_items_go_live_with_their_attempt(
    settings: Settings, lane_redis: redis.Redis, http: httpx.Client, mock: MockServerThread
) -> None:
    httpx.post(f"{mock.url}/_mock/config", json={"batch_failure_rate": 1.0}, timeout=5)
    try:
        clock = Clock()
        pump, sent = _pump(settings, lane_redis, http, clock)
        _pool(lane_redis, settings, 2)
        clock.now += 6
        pump.step()
        _wait_ended(pump)
    finally:
        httpx.post(f"{mock.url}/_mock/config", json={"batch_failure_rate": 0.0}, timeout=5)
    assert len(sent) == 2
    for env in sent:
        assert env.batch is None  # a live call
        (failed,) = env.attempts
        assert failed.batch_id and failed.outcome == "server_error" and "SIMULATED" in (failed.error or "")


def test_a_batch_that_will_not_end_in_time_is_cancelled_and_its_jobs_go_live(
    settings: Settings, lane_redis: redis.Redis, http: httpx.Client, mock: MockServerThread
) -> None:
    httpx.post(f"{mock.url}/_mock/config", json={"batch_delay_s": 3600}, timeout=5)
    try:
        clock = Clock()
        pump, sent = _pump(settings, lane_redis, http, clock)
        _pool(lane_redis, settings, 2, deadline_s=120)
        clock.now += 6
        pump.step()
        (batch,) = in_flight(lane_redis)
        assert batch.state == "submitted" and batch.batch_id and not sent
        clock.now += 120 - 20 - 6 - 1  # one second before its fallback time: it still waits
        pump.step()
        assert not sent
        clock.now += 2
        pump.step()
    finally:
        httpx.post(f"{mock.url}/_mock/config", json={"batch_delay_s": 0.0}, timeout=5)
    assert len(sent) == 2 and not in_flight(lane_redis)
    assert all(e.batch is None and e.attempts[0].outcome == "batch_timeout" for e in sent)


def test_a_pump_that_died_mid_submit_leaves_nothing_lost(
    settings: Settings, lane_redis: redis.Redis, http: httpx.Client
) -> None:
    clock = Clock()
    pump, sent = _pump(settings, lane_redis, http, clock)
    ids = _pool(lane_redis, settings, 2)
    # A record written, its jobs out of their pool, and no batch made: the pump died there
    stale = InFlight("dead", "openai:gpt-4.1-mini", ids, clock.now, clock.now + 1000)
    lane_redis.hset(keys.batch_inflight(), stale.id, stale.dumps())
    lane_redis.zrem(keys.batch_pool("openai:gpt-4.1-mini"), *ids)
    pump.step()
    assert not sent  # it may still be submitting
    clock.now += 121
    pump.step()
    assert sorted(e.id for e in sent) == ids and not in_flight(lane_redis)


def test_one_pump_at_a_time(settings: Settings, lane_redis: redis.Redis, http: httpx.Client) -> None:
    first, _ = _pump(settings, lane_redis, http, Clock())
    second, _ = _pump(settings, lane_redis, http, Clock())
    assert first.step() is not None
    assert second.step() is None  # the lease is held
    first.stop()  # hands it on at once
    assert second.step() is not None


def test_which_jobs_can_wait(settings: Settings) -> None:
    routing = RoutingDecision(tier=Tier.MINI, reasons=[], classifier="pinned")
    short: Any = validate_request({"prompt": "x", "hints": {"deadline_s": 99}})
    long: Any = validate_request({"prompt": "x", "hints": {"deadline_s": 100}})
    assert batch_link(settings, short, routing) is None
    assert batch_link(settings, long, routing) == ("openai", "gpt-4.1-mini")
    settings.providers["openai"].batch = False
    assert batch_link(settings, long, routing) is None
    settings.providers["openai"].batch = True
    settings.batch.enabled = False
    assert batch_link(settings, long, routing) is None
