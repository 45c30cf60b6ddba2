"""Throughput of the fleet beside bare Celery, same broker, same machine, same worker layout.

Runs of N jobs each (default 10,000), every queue filled before its workers start, timed from the
workers' start (their boot included) to the last completion; the bare 2-hop and fleet runs alternate
in --rounds rounds (default 2) of N / rounds jobs, and each variant's rate is its jobs over its total
time:

- bare_1hop: one worker (prefork, concurrency 2) draining no-op tasks.
- bare_2hop: a trivial router task re-enqueueing onto four queues by a fixed rule; one router worker
  and one worker consuming the four queues (prefork 2 each).
- fleet: the real thing with the same layout: router (heuristic) + tier worker running the chain,
  rate limits on (high limits), tracing and metrics on with no-op exporters, cost accounting, the
  result stored, against a zero-latency provider: the mock's answers made inside the worker
  (``mock.transport = "inline"``), so the run charges the fleet for the fleet alone.
- fleet_http: the same, the provider being the mock server over real HTTP with no added latency
  (its CPU and the HTTP client's share the same two cores; --http-jobs, default 3,000).

``--one-hop`` adds a run of fleet_http with the producer routing (``router.in_producer = "all"``):
no router worker, each job sent straight to its tier (the heuristic's CPU, about 50 us a job, is then
the producer's, outside these figures); its rate beside fleet_http's (two hops), and its CPU per job.

- fleet_http_shipped (--shipped-jobs, default 3,000; 0: skip it): fleet_http in the layout the fleet
  ships with (queues/router.toml and queues/mini.toml: the router on threads x 2, the tiers on the
  asyncio pool x 16) instead of bare Celery's: what a job costs a user of `fleet up`.

``cpu_ms_http_job`` sums router + tier + broker per job over HTTP for each layout, beside bare
Celery's two hops (issue 18's target: at most 4.5 ms). ``--layout shipped`` runs the fleet and
fleet_http runs in the shipped layout as well (no fleet_http_shipped then).

Usage: python bench/throughput.py [--json] [--jobs N] [--rounds R] [--http-jobs N] [--shipped-jobs N]
                                 [--layout same|shipped] [--one-hop]
Last stdout line: {"bare_1hop_tps", "bare_2hop_tps", "fleet_tps", "fleet_vs_bare_2hop",
"fleet_http_tps", "fleet_http_vs_bare_2hop", "peak_rss_mb", "cpu_ms_per_job", "broker_requests_per_job", ...};
BENCH_OTEL_EXPORTER=none runs the fleet with telemetry off.
Target: fleet_vs_bare_2hop >= 0.8 (issue 18; 0.7 before).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import redis
from _rig import (
    SAME,
    TIERS,
    Layout,
    broker,
    broker_cpu_s,
    broker_reads,
    collect_results,
    cpu_s,
    fleet_env,
    high_limits,
    inline_mock,
    layout,
    mock_cpu_s,
    mock_provider,
    otel_env,
    peak_rss_mb,
    shipped_layout,
    start_workers,
    stop,
    wait_for_fleet,
    wait_until,
)
from celery import Celery

from fleet.producer import Client
from fleet.settings import load_settings
from fleet.workload import sample

POOL, CONCURRENCY = SAME.router


def _bare_producer(url: str) -> Celery:
    app = Celery("bare-producer", broker=url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    return app


def run_bare(
    url: str, mock_url: str, jobs: int, hops: int, log_dir: Path
) -> tuple[float, dict[str, float], dict[str, float]]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    producer = _bare_producer(url)
    with producer.producer_or_acquire() as pub:
        for i in range(jobs):
            if hops == 1:
                producer.send_task("bare.noop", args=[i], queue="bare", producer=pub)
            else:
                producer.send_task("bare.route", args=[i], queue="router", producer=pub)
    env = fleet_env(url, mock_url)
    broker0, mock0, reads0 = broker_cpu_s(), mock_cpu_s(), broker_reads(url)
    began = time.monotonic()
    if hops == 1:
        workers = start_workers("_bare", "bare", 1, env=env, concurrency=CONCURRENCY, pool=POOL,
                                log_dir=log_dir, loglevel="WARNING")  # fmt: skip
    else:
        workers = start_workers("_bare", "router", 1, env=env, concurrency=CONCURRENCY, pool=POOL,
                                log_dir=log_dir, loglevel="WARNING")  # fmt: skip
        workers += start_workers("_bare", TIERS, 1, env=env, concurrency=CONCURRENCY, pool=POOL,
                                 log_dir=log_dir, name="tiers", loglevel="WARNING")  # fmt: skip
    try:
        ok = wait_until(lambda: int(client.get("bare:done") or 0) >= jobs, timeout=300, interval=0.02)
        elapsed = time.monotonic() - began
        rss = {w.name: peak_rss_mb(w.pid or 0) for w in workers}
        cpu = {w.name: round(cpu_s(w.pid or 0) * 1000 / jobs, 3) for w in workers}
        cpu.update(_shared_cpu(jobs, broker0, mock0))
        _requests[f"bare_{hops}hop"].append((broker_reads(url) - reads0) / jobs)
    finally:
        stop(workers)
        producer.close()
    if not ok:
        raise RuntimeError(f"bare {hops}-hop run did not finish: {client.get('bare:done')} of {jobs}")
    return jobs / elapsed, rss, cpu


#: Requests the broker read per job in each run (bench/_rig.broker_reads), by variant.
_requests: dict[str, list[float]] = defaultdict(list)


def _shared_cpu(jobs: int, broker0: float, mock0: float) -> dict[str, float]:
    """CPU ms per job of the broker and the mock server since ``broker0``/``mock0``."""
    return {
        "broker": round((broker_cpu_s() - broker0) * 1000 / jobs, 3),
        "mock": round((mock_cpu_s() - mock0) * 1000 / jobs, 3),
    }


def run_fleet(
    url: str,
    mock_url: str,
    jobs: int,
    log_dir: Path,
    *,
    inline: bool = True,
    layout: Layout = SAME,
    in_producer: str = "off",
    variant: str = "fleet",
) -> tuple[float, dict[str, float], dict[str, float], float]:
    redis.Redis.from_url(url).flushdb()
    env = fleet_env(url, mock_url, **otel_env(), **high_limits(), **(inline_mock() if inline else {}))
    env["FLEET_ROUTER__IN_PRODUCER"] = in_producer  # "all": the producer routes; no router worker
    settings = load_settings(env=env)
    client = Client(settings, redis_url=url)
    requests = sample(jobs)
    for r in requests:  # keep the answer path uniform: no schema to generate, no latency hint games
        r.pop("response_schema", None)
    submit_began = time.monotonic()
    ids = [client.submit(r) for r in requests]
    submit_tps = jobs / (time.monotonic() - submit_began)
    broker0, mock0, reads0 = broker_cpu_s(), mock_cpu_s(), broker_reads(url)
    began = time.monotonic()
    workers = layout.start(env, log_dir, router=in_producer != "all", loglevel="WARNING")
    try:
        wait_for_fleet(url, jobs, timeout=600)
        elapsed = time.monotonic() - began
        _requests[variant].append((broker_reads(url) - reads0) / jobs)
        rss = {w.name: peak_rss_mb(w.pid or 0) for w in workers}
        cpu = {w.name: round(cpu_s(w.pid or 0) * 1000 / jobs, 3) for w in workers}
        cpu.update(_shared_cpu(jobs, broker0, mock0))
        missing = jobs - len(collect_results(client, ids))
    finally:
        stop(workers)
        client.close()
    if missing:
        raise RuntimeError(f"fleet run did not finish: {missing} of {jobs} jobs without a result")
    return jobs / elapsed, rss, cpu, submit_tps


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 3)


def _merge(per_round: list[dict[str, float]], how: Callable[[list[float]], float]) -> dict[str, float]:
    """One figure per worker over the rounds (peak RSS: the max; CPU per job: the mean)."""
    return {name: how([r[name] for r in per_round]) for name in per_round[0]}


def _job_cpu(cpu: dict[str, float]) -> float:
    """A job's CPU in ms over its workers and the broker (the mock server's left out)."""
    return round(sum(ms for name, ms in cpu.items() if name != "mock"), 3)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument(
        "--http-jobs", type=int, default=3_000, help="jobs of the fleet_http run (0: skip it)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2,
        help="bare 2-hop and fleet runs alternate this many times, sharing --jobs (the speed of a "
        "shared machine drifts by the minute; alternating spreads that over both)",
    )  # fmt: skip
    parser.add_argument(
        "--one-hop", action="store_true", help="also fleet_http with the producer routing (no router hop)"
    )
    parser.add_argument(
        "--shipped-jobs", type=int, default=3_000,
        help="jobs of the fleet_http_shipped run, the fleet in its shipped pools over HTTP (0: skip it)",
    )  # fmt: skip
    parser.add_argument(
        "--layout", choices=["same", "shipped"], default="same",
        help="the fleet's pools in the fleet and fleet_http runs: bare Celery's (prefork x 2 each) or "
        "the shipped ones (router threads x 2, tiers asyncio x 16)",
    )  # fmt: skip
    args = parser.parse_args()
    fleet_layout = layout(args.layout)
    per_round = max(1, args.jobs // max(1, args.rounds))
    with (
        tempfile.TemporaryDirectory(prefix="fleet-bench-tp-") as tmp,
        broker() as url,
        mock_provider(0.0, Path(tmp)) as mock_url,
    ):
        log_dir = Path(tmp)
        one, rss1, cpu1 = run_bare(url, mock_url, args.jobs, 1, log_dir)
        bare_rounds, fleet_rounds = [], []
        for _ in range(max(1, args.rounds)):
            bare_rounds.append(run_bare(url, mock_url, per_round, 2, log_dir))
            fleet_rounds.append(run_fleet(url, mock_url, per_round, log_dir, layout=fleet_layout))
        http = (
            run_fleet(
                url,
                mock_url,
                args.http_jobs,
                log_dir,
                inline=False,
                layout=fleet_layout,
                variant="fleet_http",
            )
            if args.http_jobs > 0
            else None
        )
        one_hop = (
            run_fleet(url, mock_url, args.http_jobs or per_round, log_dir, inline=False, layout=fleet_layout,
                      in_producer="all", variant="fleet_http_one_hop")
            if args.one_hop
            else None
        )  # fmt: skip
        shipped = (
            run_fleet(url, mock_url, args.shipped_jobs, log_dir, inline=False, layout=shipped_layout(),
                      variant="fleet_http_shipped")
            if args.shipped_jobs > 0 and fleet_layout != shipped_layout()
            else None
        )  # fmt: skip
    # Each variant's rate over all its rounds: its jobs over the sum of its rounds' times.
    two = len(bare_rounds) / sum(1 / r[0] for r in bare_rounds)
    fleet = len(fleet_rounds) / sum(1 / r[0] for r in fleet_rounds)
    rss2, cpu2 = _merge([r[1] for r in bare_rounds], max), _merge([r[2] for r in bare_rounds], _mean)
    rss_fleet, cpu_fleet = (
        _merge([r[1] for r in fleet_rounds], max),
        _merge([r[2] for r in fleet_rounds], _mean),
    )
    submit_tps = _mean([r[3] for r in fleet_rounds])
    out = {
        "jobs": per_round * len(fleet_rounds),
        "rounds": [
            {"bare_2hop_tps": round(b[0], 1), "fleet_tps": round(f[0], 1)}
            for b, f in zip(bare_rounds, fleet_rounds, strict=True)
        ],
        "layout": f"router worker + one worker on {TIERS}; bare Celery: {SAME.describe()}; "
        f"the fleet ({fleet_layout.name}): {fleet_layout.describe()}",
        "bare_1hop_tps": round(one, 1),
        "bare_2hop_tps": round(two, 1),
        "fleet_tps": round(fleet, 1),
        "fleet_vs_bare_2hop": round(fleet / two, 3),
        "fleet_http_tps": round(http[0], 1) if http else None,
        "fleet_http_vs_bare_2hop": round(http[0] / two, 3) if http else None,
        **(
            {
                "fleet_http_one_hop_tps": round(one_hop[0], 1),
                "fleet_http_one_hop_vs_two": round(one_hop[0] / http[0], 3) if http else None,
            }
            if one_hop
            else {}
        ),
        **(
            {
                "fleet_http_shipped_tps": round(shipped[0], 1),
                "fleet_http_shipped_vs_bare_2hop": round(shipped[0] / two, 3),
            }
            if shipped
            else {}
        ),
        "fleet_submit_tps": round(submit_tps, 1),
        "telemetry": otel_env()["OTEL_TRACES_EXPORTER"],
        "peak_rss_mb": {
            "bare_1hop": rss1,
            "bare_2hop": rss2,
            "fleet": rss_fleet,
            **({"fleet_http_shipped": shipped[1]} if shipped else {}),
        },
        # CPU ms per job of each worker (main process + pool processes), the broker and the mock
        # server: robust to other load on the machine, where rates are not.
        "cpu_ms_per_job": {
            "bare_1hop": cpu1,
            "bare_2hop": cpu2,
            "fleet": cpu_fleet,
            **({"fleet_http": http[2]} if http else {}),
            **({"fleet_http_one_hop": one_hop[2]} if one_hop else {}),
            **({"fleet_http_shipped": shipped[2]} if shipped else {}),
        },
        # Router + tier + broker per job (the mock's and the producer's CPU left out): issue 18's
        # "CPU per job over HTTP" (target <= 4.5 ms), in each layout, beside bare Celery's two hops.
        "cpu_ms_http_job": {
            name: _job_cpu(cpu)
            for name, cpu in (
                ("bare_2hop", cpu2),
                ("fleet_http", http and http[2]),
                ("fleet_http_shipped", shipped and shipped[2]),
            )
            if cpu
        },
        # Requests the broker read per job (about one per round trip; the bench's own polling of
        # its progress, a few a second, included): what the workers' round trips cost the broker.
        "broker_requests_per_job": {name: round(sum(v) / len(v), 2) for name, v in _requests.items()},
        "target_met": fleet / two >= 0.8,
    }
    if not args.json:
        print(f"bare 1 hop {one:.0f}/s, bare 2 hops {two:.0f}/s, fleet {fleet:.0f}/s ({fleet / two:.2f} x)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
