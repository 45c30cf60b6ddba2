"""Submit -> result latency under an open-loop offered load, the fleet beside bare Celery two hops.

Jobs arrive on a fixed schedule (default 200/s for 30 s), whether or not earlier ones finished,
so queueing shows in the tail. Before it, each variant runs WARMUP jobs to completion (not
measured): the first job of a worker process pays its imports and connections, and that backlog
would otherwise sit in the first second of a steady-state figure.

Same layout for both: one router worker and one worker on the four tier queues (prefork,
concurrency 2 each); ``--layout shipped`` runs the fleet's in the pools it ships with instead
(queues/router.toml, queues/mini.toml: router threads x 2, tiers asyncio x 16). The fleet's
provider is zero-latency: the mock's answers made inside the worker (``mock.transport = "inline"``),
tracing and metrics on with no-op exporters.

With ``--one-hop``, the fleet runs again with ``router.in_producer = "all"``: the producer routes
each job with the heuristic and sends it straight to its tier (``fleet_1hop_*``).

Usage: python bench/latency.py [--json] [--rate 200] [--seconds 30] [--one-hop] [--layout same|shipped]
Last stdout line: {"fleet_p50_ms", "fleet_p95_ms", "fleet_p99_ms", "bare_2hop_p50_ms", ...,
"bare_2hop_p99_ms"}. Target: fleet p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from _rig import (
    SAME,
    TIERS,
    Layout,
    broker,
    collect_results,
    fleet_env,
    high_limits,
    inline_mock,
    layout,
    mock_provider,
    otel_env,
    start_workers,
    stop,
    wait_for_fleet,
    wait_until,
)
from celery import Celery

from fleet.demo import percentile
from fleet.producer import Client
from fleet.settings import load_settings

PCTS = ("p50", "p95", "p99")
POOL, CONCURRENCY = SAME.router
WARMUP = 100
PROMPTS = [
    "Reformat this list as CSV: apples, pears, plums",
    "Add a docstring to def area(r): return 3.14159 * r * r",
    "Translate 'the build is green' into German",
    "Classify this ticket as billing, bug or feature: 'I was charged twice'",
]


def _open_loop(rate: float, seconds: float, submit: Callable[[int], None]) -> float:
    """Call ``submit(i)`` on a fixed schedule; returns how far behind schedule it fell (s)."""
    n = int(rate * seconds)
    start = time.perf_counter()
    worst_lag = 0.0
    for i in range(n):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        else:
            worst_lag = max(worst_lag, now - due)
        submit(i)
    return worst_lag


def _summary(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(latencies_ms, 50), 2),
        "p95": round(percentile(latencies_ms, 95), 2),
        "p99": round(percentile(latencies_ms, 99), 2),
    }


def run_bare(url: str, mock_url: str, rate: float, seconds: float, log_dir: Path) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = fleet_env(url, mock_url)
    workers = start_workers(
        "_bare", "router", 1, env=env, concurrency=CONCURRENCY, pool=POOL, log_dir=log_dir
    )
    workers += start_workers("_bare", TIERS, 1, env=env, concurrency=CONCURRENCY, pool=POOL,
                             log_dir=log_dir, name="tiers")  # fmt: skip
    producer = Celery("bare-producer", broker=url)
    producer.conf.update(task_serializer="json")
    sent: dict[int, float] = {}
    try:
        with producer.producer_or_acquire() as pub:
            for i in range(WARMUP):
                producer.send_task("bare.route", args=[-1 - i], queue="router", producer=pub)
            wait_until(lambda: int(client.get("bare:done") or 0) >= WARMUP, timeout=60)
            client.delete("bare:done", "bare:done_at")

            def submit(i: int) -> None:
                sent[i] = time.time()
                producer.send_task("bare.route", args=[i], queue="router", producer=pub)

            lag = _open_loop(rate, seconds, submit)
        wait_until(lambda: int(client.get("bare:done") or 0) >= len(sent), timeout=120)
        done = {int(k): float(v) for k, v in client.hgetall("bare:done_at").items()}
    finally:
        stop(workers)
        producer.close()
    latencies = [(done[i] - t) * 1000 for i, t in sent.items() if i in done]
    return {**_summary(latencies), "lost": len(sent) - len(latencies), "producer_lag_s": round(lag, 3)}


def run_fleet(
    url: str,
    mock_url: str,
    rate: float,
    seconds: float,
    log_dir: Path,
    in_producer: str = "off",
    layout: Layout = SAME,
) -> dict[str, float]:
    redis.Redis.from_url(url).flushdb()
    env = fleet_env(url, mock_url, **otel_env(), **high_limits(), **inline_mock())
    env["FLEET_ROUTER__IN_PRODUCER"] = in_producer  # "all": the producer routes; no router hop
    workers = layout.start(env, log_dir)
    client = Client(load_settings(env=env), redis_url=url)
    ids: list[str] = []
    try:
        for i in range(WARMUP):
            client.submit({"prompt": PROMPTS[i % 4]})
        wait_for_fleet(url, WARMUP, timeout=60)
        lag = _open_loop(rate, seconds, lambda i: ids.append(client.submit({"prompt": PROMPTS[i % 4]})))
        wait_for_fleet(url, WARMUP + len(ids), timeout=120)
        results = collect_results(client, ids)
    finally:
        stop(workers)
        client.close()
    latencies = [r.latency_ms for r in results.values() if r.latency_ms is not None]
    return {**_summary(latencies), "lost": len(ids) - len(results), "producer_lag_s": round(lag, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--rate", type=float, default=200.0, help="jobs offered per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load lasts")
    parser.add_argument(
        "--one-hop",
        action="store_true",
        help="also the fleet routing in the producer (router.in_producer = all)",
    )
    parser.add_argument(
        "--layout", choices=["same", "shipped"], default="same",
        help="the fleet's pools: bare Celery's (prefork x 2 each) or the shipped ones (router threads x 2, "
        "tiers asyncio x 16)",
    )  # fmt: skip
    args = parser.parse_args()
    fleet_layout = layout(args.layout)
    with (
        tempfile.TemporaryDirectory(prefix="fleet-bench-lat-") as tmp,
        broker() as url,
        mock_provider(0.0, Path(tmp)) as mock_url,
    ):
        bare = run_bare(url, mock_url, args.rate, args.seconds, Path(tmp))
        fleet = run_fleet(url, mock_url, args.rate, args.seconds, Path(tmp), layout=fleet_layout)
        one_hop = (
            run_fleet(url, mock_url, args.rate, args.seconds, Path(tmp), "all", fleet_layout)
            if args.one_hop
            else {}
        )
    out = {
        "offered_per_s": args.rate,
        "seconds": args.seconds,
        "layout": f"bare Celery: {SAME.describe()}; "
        f"the fleet ({fleet_layout.name}): {fleet_layout.describe()}",
        **{f"fleet_{k}_ms" if k in PCTS else f"fleet_{k}": v for k, v in fleet.items()},
        **{f"bare_2hop_{k}_ms" if k in PCTS else f"bare_2hop_{k}": v for k, v in bare.items()},
        **{f"fleet_1hop_{k}_ms" if k in PCTS else f"fleet_1hop_{k}": v for k, v in one_hop.items()},
        "target_met": fleet["p99"] < 20.0,
    }
    if not args.json:
        print(f"fleet p99 {fleet['p99']} ms, bare 2-hop p99 {bare['p99']} ms at {args.rate:.0f}/s offered")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
