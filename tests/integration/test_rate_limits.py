"""Fleet-wide rate limits on a real Redis and real workers; scaling a running pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fleet import keys
from fleet.chain import Chain
from fleet.limits import Bucket, RateLimiter
from fleet.models import TaskRequest
from fleet.producer import Client
from fleet.providers import ChatRequest, ChatResponse
from fleet.settings import load_settings
from fleet.supervisor import FleetOptions, Supervisor

from ..conftest import other_db_url
from .conftest import RunningFleet
from .procs import run

pytestmark = pytest.mark.integration

_HAMMER = """
import sys, time, json
import redis
from fleet.limits import Bucket, RateLimiter
limiter = RateLimiter(redis.Redis.from_url(sys.argv[1]))
bucket = Bucket("fleet:tb:queue:hammer", rate_per_s=20.0, burst=2.0)
grants, end = [], time.time() + 2.0
while time.time() < end:
    got = limiter.acquire([bucket], max_wait_s=0.05, counter="fleet:rate:hammer:0")
    if got.reserved:
        time.sleep(got.wait_s)
        grants.append(time.time())
print(json.dumps(grants))
"""


def test_two_processes_sharing_a_bucket_never_exceed_it(clean_redis: redis.Redis, broker_url: str) -> None:
    # Given two processes hammering one 20/s bucket (burst 2) for two seconds
    procs = [
        subprocess.Popen([sys.executable, "-c", _HAMMER, broker_url], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    grants = sorted(t for p in procs for t in json.loads(p.communicate(timeout=30)[0]))
    # Then together they got 20/s plus the burst over the time they ran (the two may start apart
    # on a loaded machine), and no one-second window holds more
    span = grants[-1] - grants[0]
    assert len(grants) >= 30
    assert len(grants) <= 20 * span + 2 + 1
    for i, start in enumerate(grants):
        in_window = sum(1 for t in grants[i:] if t < start + 1.0)
        assert in_window <= 20 + 2 + 1, f"{in_window} grants within one second"


class _Answer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        return ChatResponse(text="ok", finish_reason="stop", input_tokens=5, output_tokens=5)


def test_a_model_at_its_rpm_is_skipped_or_waited_for_by_policy(
    clean_redis: redis.Redis, broker_url: str
) -> None:
    # Given the mini primary limited to 60 requests a minute (one a second, burst one)
    links = [("openai", "gpt-4.1-mini"), ("groq", "llama-3.3-70b-versatile")]
    env = {"FLEET_LIMITS__MAX_SLOT_WAIT_S": "0.1"}
    settings = load_settings(env=env)
    settings.providers["openai"].models["gpt-4.1-mini"].rpm = 60
    settings.providers["groq"].models["llama-3.3-70b-versatile"].rpm = None
    providers = {"openai": _Answer("openai"), "groq": _Answer("groq")}
    chain = Chain(settings, providers=providers, limiter=RateLimiter(clean_redis))  # type: ignore[arg-type]

    # When two jobs come at once, under "next_link"
    first = chain.run(links, TaskRequest(prompt="a"))
    second = chain.run(links, TaskRequest(prompt="b"))
    # Then the second skips the busy model without calling it
    assert first.model == "gpt-4.1-mini"
    assert [a.outcome for a in second.attempts] == [
        "throttled",
        "ok",
    ] and second.model == "llama-3.3-70b-versatile"
    assert providers["openai"].calls == 1

    # And under "wait" the chain stops and says when to come back, without calling anyone
    settings.limits.provider_limit = "wait"
    third = chain.run(links, TaskRequest(prompt="c"))
    assert third.reason == "throttled" and third.retry_after is not None and 0.5 < third.retry_after <= 1.0
    assert providers["groq"].calls == 1


def test_tpm_is_charged_the_estimate_and_corrected_with_usage(clean_redis: redis.Redis) -> None:
    limiter = RateLimiter(clean_redis)
    bucket = Bucket(keys.bucket("tpm", "x:y"), rate_per_s=100.0, burst=1000.0, cost=600.0)
    assert limiter.acquire([bucket], max_wait_s=0, counter="fleet:rate:x:0").reserved
    assert limiter.fill(bucket) == pytest.approx(400, abs=5)
    limiter.adjust(bucket, -500)  # the call used 100 tokens, not 600
    assert limiter.fill(bucket) == pytest.approx(900, abs=5)


def test_header_pacing_keeps_a_model_under_the_quota_its_provider_reports(clean_fleet: RunningFleet) -> None:
    # Given a provider account whose quota for mini's first model is 30 requests per 5 s (SIMULATED
    # by the mock), far below the 5000 rpm the fleet's config says
    model, quota = "gpt-4.1-mini", {"requests": 30, "window_s": 5.0}
    clean_fleet.mock_config(quotas={model: quota})
    try:
        # The quota bites: 60 calls at once straight to the mock get 429s
        def call(i: int) -> int:
            body = {"model": model, "messages": [{"role": "user", "content": f"ping {i}"}]}
            return httpx.post(
                f"{clean_fleet.mock_url}/v1/chat/completions", json=body, timeout=10
            ).status_code

        with ThreadPoolExecutor(16) as pool:
            direct = list(pool.map(call, range(60)))
        assert direct.count(429) >= 10, direct  # (30 of 60 in a 5 s window; fewer on a slow machine)
        httpx.post(f"{clean_fleet.mock_url}/_mock/reset", timeout=5)  # the quota whole again
        # When 60 jobs go to mini through the fleet
        client = clean_fleet.client
        ids = client.submit_many(
            [{"prompt": f"Rename x{i} to y{i} in f.py", "tier": "mini"} for i in range(60)]
        )
        done = [client.result(task_id, timeout=90) for task_id in ids]
        # Then every job completes, the model is used up to its quota, and the provider sent no 429:
        # the fleet read its rate-limit headers and held back (the rest went to the next link)
        assert all(r.status == "completed" for r in done)
        stats = clean_fleet.mock_stats()["by_model_kind"][model]
        assert stats.get("quota_exceeded", 0) == 0, stats
        assert sum(1 for r in done if r.model == model) >= 10
    finally:
        clean_fleet.mock_config(quotas={})


def test_queue_rate_limit_holds_across_a_pool_and_requeues_waiting_jobs(
    broker_url: str, tmp_path: Path
) -> None:
    # Given a mini pool of 16 threads limited fleet-wide to 120 jobs a minute (2/s, burst 2),
    # on a database of its own so the session fleet's mini pool does not take its jobs
    broker_url = other_db_url(broker_url)
    redis.Redis.from_url(broker_url).flushdb()
    env = {"FLEET_QUEUES__MINI__RATE_LIMIT": '"120/m"', "FLEET_LIMITS__MAX_SLOT_WAIT_S": "0.2"}
    settings = load_settings(profile="demo", env={**os.environ, "FLEET_REDIS_URL": broker_url, **env})
    sup = Supervisor(
        settings,
        FleetOptions(queues=("mini",), flower=False, publish_state=False, log_dir=tmp_path, env=env),
    )
    sup.start()
    try:
        settings.mock.url = sup.mock_url
        client = Client(settings, redis_url=broker_url)
        # When ten jobs arrive at once
        ids = [client.submit({"prompt": f"Rename x to y in line {i}", "tier": "mini"}) for i in range(10)]
        results = [client.result(i, timeout=60) for i in ids]
        client.close()
    finally:
        sup.stop()
    # Then all complete, no faster than the limit allows (2 at once, then 2 a second)
    assert all(r.status == "completed" for r in results)
    # (when each call began: its end less its latency; a loaded machine delays ends unevenly, and
    # without the limit all ten would begin within a fraction of a second)
    began = sorted((r.finished_at or 0) - r.attempts[-1].latency_ms / 1000 for r in results)
    assert began[-1] - began[0] >= (10 - 2) / 2 * 0.75


def test_scale_changes_a_running_pool(fleet: RunningFleet) -> None:
    done = run(["scale", "mini=20", "--json"], fleet.env())
    assert done.returncode == 0, done.stderr
    changes = json.loads(done.stdout)["changes"]
    assert [(c["queue"], c["after"]) for c in changes] == [("mini", 20)]
    stats = fleet.client.app.control.inspect(timeout=2).stats() or {}
    sizes = {node.split("@")[0]: s["pool"]["max-concurrency"] for node, s in stats.items()}
    assert sizes["mini"] == 20
    pools = {node.split("@")[0]: s["pool"]["implementation"] for node, s in stats.items()}
    assert pools["mini"] == "fleet.asyncio_pool:AsyncioPool"  # queues/mini.toml
    back = run(["scale", "mini=16"], fleet.env())
    assert back.returncode == 0, back.stderr
    assert run(["scale", "nope=3"], fleet.env()).returncode == 3


def test_status_shows_rates_and_buckets(fleet: RunningFleet) -> None:
    fleet.client.result(fleet.client.submit({"prompt": "Say hi", "tier": "fast"}), timeout=30)
    done = run(["status", "--json"], fleet.env())
    data = json.loads(done.stdout)
    fast = data["queues"]["fast"]
    assert fast["rate_last_min"] >= 1
    assert fast["rate_limit"] == "3000/m" and fast["bucket_fill"] is not None
    assert set(fast) >= {"depth", "oldest_age_s", "in_flight", "workers", "concurrency"}


def test_an_autoscaled_pool_is_scaled_by_moving_its_ceiling(broker_url: str, tmp_path: Path) -> None:
    # Given a fast pool that autoscales between 2 and 6 threads, on a database of its own
    url = other_db_url(broker_url)
    redis.Redis.from_url(url).flushdb()
    env = {"FLEET_QUEUES__FAST__AUTOSCALE": "[2, 6]"}
    settings = load_settings(env={**os.environ, "FLEET_REDIS_URL": url, **env})
    sup = Supervisor(
        settings, FleetOptions(queues=("fast",), flower=False, publish_state=False, log_dir=tmp_path, env=env)
    )
    sup.start()
    try:
        cli_env = {**os.environ, "FLEET_REDIS_URL": url, "FLEET_STATE_DIR": str(tmp_path)}
        # When it is scaled to 10
        done = run(["scale", "fast=10", "--json"], cli_env)
        assert done.returncode == 0, done.stderr
        # Then its autoscaler's ceiling moved, not a fixed size
        app = sup_app(settings, url)
        stats = app.control.inspect(timeout=2).stats() or {}
        app.close()
        (node_stats,) = stats.values()
        assert node_stats["autoscaler"]["max"] == 10
        assert node_stats["autoscaler"]["min"] == 2
    finally:
        sup.stop()


def sup_app(settings: object, url: str) -> Any:
    from fleet.app import create_app

    return create_app(settings, url)  # type: ignore[arg-type]


def test_a_queue_runs_as_several_worker_processes(broker_url: str, tmp_path: Path) -> None:
    # Given the fast queue configured for two worker processes of 3 threads each
    url = other_db_url(broker_url)
    redis.Redis.from_url(url).flushdb()
    env = {"FLEET_QUEUES__FAST__PROCESSES": "2", "FLEET_QUEUES__FAST__CONCURRENCY": "3"}
    settings = load_settings(profile="demo", env={**os.environ, "FLEET_REDIS_URL": url, **env})
    sup = Supervisor(
        settings, FleetOptions(queues=("fast",), flower=False, publish_state=False, log_dir=tmp_path, env=env)
    )
    sup.start()
    try:
        # Then both consume the queue, and fleet status counts them
        assert sorted(sup.pools) == ["fast", "fast-2"]
        cli_env = {**os.environ, "FLEET_REDIS_URL": url, "FLEET_STATE_DIR": str(tmp_path)}
        status = json.loads(run(["status", "--json"], cli_env).stdout)["queues"]["fast"]
        assert (status["workers"], status["concurrency"]) == (2, 6)
        # And jobs complete through them
        settings.mock.url = sup.mock_url
        client = Client(settings, redis_url=url)
        ids = [client.submit({"prompt": f"Say hi {i}", "tier": "fast"}) for i in range(6)]
        assert all(client.result(i, timeout=30).status == "completed" for i in ids)
        client.close()
    finally:
        sup.stop()
