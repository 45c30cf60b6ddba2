"""A fleet-wide queue rate limit against Celery's per-worker one, with 3 worker processes.

Three worker processes consume one queue limited to 300/m, calling a zero-latency mock provider,
with more jobs than the limit lets through in the measured minute. Then the same three processes
run the same model call under Celery's built-in ``rate_limit="300/m"``, which Celery counts per
worker (celery/celery#5732), so it lets about three times as many through.

Usage: python bench/rate_limit.py [--json] [--seconds 60]
Prints one JSON object as its last line:
{"processes", "configured_per_min", "observed_per_min", "max_excess_in_any_10s_window",
 "celery_builtin_observed_per_min", ...}. Target: observed within +-5% of configured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import redis
from _rig import broker, fleet_env, mock_provider, start_workers, stop
from celery import Celery

from fleet.producer import Client
from fleet.settings import load_settings

PROCESSES = 3
RATE_PER_MIN = 300
CONCURRENCY = 8


def _window_stats(finishes: list[float], start: float, seconds: float) -> tuple[float, int]:
    """Completions per minute inside [start, start + seconds) and the worst 10 s excess."""
    inside = [f for f in finishes if start <= f < start + seconds]
    per_min = len(inside) * 60.0 / seconds
    allowed_10s = RATE_PER_MIN / 6
    worst = 0
    for i, t in enumerate(inside):
        count = sum(1 for f in inside[i:] if f < t + 10)
        worst = max(worst, int(count - allowed_10s))
    return per_min, worst


def run_fleet(url: str, mock_url: str, seconds: float, log_dir: Path) -> dict[str, float]:
    env = fleet_env(url, mock_url, FLEET_QUEUES__MINI__RATE_LIMIT=f'"{RATE_PER_MIN}/m"')
    workers = start_workers(
        "fleet.worker", "mini", PROCESSES, env=env, concurrency=CONCURRENCY, pool="threads", log_dir=log_dir
    )
    try:
        settings = load_settings(env=env)
        client = Client(settings, redis_url=url)
        jobs = int(RATE_PER_MIN * (seconds + 15) / 60)
        started = time.time()
        ids = [client.submit({"prompt": f"Reformat record {i} as CSV", "tier": "mini"}) for i in range(jobs)]
        # Measure from the moment the queue is saturated (every job submitted) for `seconds`.
        window_start = time.time() + 1.0
        time.sleep(max(0.0, window_start + seconds + 2 - time.time()))
        results = client.peek(ids)
        finishes = sorted(r.finished_at for r in results.values() if r.finished_at)
        per_min, worst = _window_stats(finishes, window_start, seconds)
        client.close()
        return {
            "observed_per_min": round(per_min, 1),
            "max_excess_in_any_10s_window": worst,
            "jobs_submitted": jobs,
            "submit_s": round(window_start - 1.0 - started, 2),
        }
    finally:
        stop(workers)


def run_celery_builtin(url: str, mock_url: str, seconds: float, log_dir: Path, pool: str) -> float:
    """Completions per minute under Celery's own rate_limit, 3 workers of ``pool``."""
    env = fleet_env(url, mock_url, BARE_RATE_LIMIT=f"{RATE_PER_MIN}/m")
    workers = start_workers(
        "_bare", "bare", PROCESSES, env=env, concurrency=CONCURRENCY, pool=pool, log_dir=log_dir
    )
    try:
        client = redis.Redis.from_url(url)
        client.delete("bare:finishes")
        app = Celery("bare-producer", broker=url)
        app.conf.update(task_serializer="json")
        jobs = int(RATE_PER_MIN * PROCESSES * 2 * (seconds + 10) / 60)
        with app.producer_or_acquire() as producer:
            for _ in range(jobs):
                app.send_task("bare.limited", queue="bare", producer=producer)
        window_start = time.time() + 2.0
        time.sleep(max(0.0, window_start + seconds + 1 - time.time()))
        finishes = [float(v) for v in client.lrange("bare:finishes", 0, -1)]
        inside = [f for f in finishes if window_start <= f < window_start + seconds]
        client.delete("bare")  # what is left of the backlog
        app.close()
        return round(len(inside) * 60.0 / seconds, 1)
    finally:
        stop(workers)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured window")
    parser.add_argument("--builtin-seconds", type=float, default=30.0, help="window for Celery's rate_limit")
    args = parser.parse_args()
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="fleet-bench-rl-") as tmp,
        broker() as url,
        mock_provider(0.0, Path(tmp)) as mock_url,
    ):
        fleet = run_fleet(url, mock_url, args.seconds, Path(tmp))
        builtin = run_celery_builtin(url, mock_url, args.builtin_seconds, Path(tmp), "threads")
        builtin_prefork = run_celery_builtin(url, mock_url, args.builtin_seconds, Path(tmp), "prefork")
    out = {
        "processes": PROCESSES,
        "configured_per_min": RATE_PER_MIN,
        "observed_per_min": fleet["observed_per_min"],
        "max_excess_in_any_10s_window": fleet["max_excess_in_any_10s_window"],
        "celery_builtin_observed_per_min": builtin,
        "celery_builtin_prefork_observed_per_min": builtin_prefork,
        "error_pct": round((fleet["observed_per_min"] - RATE_PER_MIN) / RATE_PER_MIN * 100, 2),
        "target_met": abs(fleet["observed_per_min"] - RATE_PER_MIN) <= RATE_PER_MIN * 0.05,
        "window_s": args.seconds,
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    if not args.json:
        print(f"fleet-wide limit: {out['observed_per_min']}/min observed for {RATE_PER_MIN}/min configured")
        print(
            f"celery built-in:  {builtin}/min (threads), {builtin_prefork}/min (prefork), {PROCESSES} workers"
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
