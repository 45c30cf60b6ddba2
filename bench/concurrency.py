"""Many calls in flight: one tier worker process with ``--in-flight`` slots (default 1,000) against
the mock provider answering in ``--latency-ms`` (default 5,000), beside LiteLLM's Router on the same
mock in the same run (what a user would pick instead).

Little's law puts the ceiling at in_flight / latency (200 jobs/s at the defaults); the target is at
least 180. The fleet's jobs are pinned to the mini tier and queued before the worker starts; the rate
is taken between 10% and 90% of completions. The worker's CPU (its main process, threads included) is
divided by the jobs; its peak RSS is VmHWM.

LiteLLM (``litellm.Router``, asyncio, one deployment with a fallback) runs in a throwaway venv under
``.bench/litellm`` (made on first use: ``pip install litellm``; never a dependency of the fleet), as
its own process: ``--in-flight`` calls at once through an asyncio semaphore, ``--litellm-calls`` in
all. ``--skip-litellm`` leaves it out (no network needed).

Usage: python bench/concurrency.py [--json] [--in-flight 1000] [--latency-ms 5000] [--jobs 4000]
                                  [--pool threads|asyncio|gevent] [--skip-litellm] [--profile FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
from _rig import (
    BENCH,
    broker,
    collect_results,
    cpu_s,
    fleet_env,
    high_limits,
    mock_provider,
    otel_env,
    peak_rss_mb,
    start_workers,
    steady_rate,
    stop,
    wait_for_fleet,
)

from fleet.producer import Client
from fleet.settings import load_settings

LITELLM_VENV = BENCH.parent / ".bench" / "litellm"
GEVENT_DIR = BENCH.parent / ".bench" / "gevent"
TOOLS_VENV = BENCH.parent / ".bench" / "tools"

#: The LiteLLM side, run by the throwaway venv's interpreter: argv = mock URL, in flight, calls.
LITELLM_SCRIPT = r"""
import asyncio, importlib.metadata, json, resource, sys, time
import litellm
from litellm import Router

url, in_flight, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
litellm.suppress_debug_info = True
router = Router(
    model_list=[
        {"model_name": "mini", "litellm_params": {"model": "openai/gpt-4.1-mini", "api_base": url + "/v1",
                                                   "api_key": "mock", "timeout": 60}},
        {"model_name": "mini-fallback", "litellm_params": {"model": "openai/llama-3.3-70b-versatile",
                                                            "api_base": url + "/v1", "api_key": "mock"}},
    ],
    fallbacks=[{"mini": ["mini-fallback"]}],
    num_retries=1,
)

async def main():
    gate = asyncio.Semaphore(in_flight)
    finishes = []
    async def one(i):
        async with gate:
            ask = [{"role": "user", "content": f"Rename f{i} to g{i}"}]
            await router.acompletion(model="mini", messages=ask)
            finishes.append(time.monotonic())
    await asyncio.gather(*(one(i) for i in range(calls)))
    return finishes

cpu0 = resource.getrusage(resource.RUSAGE_SELF)
finishes = sorted(asyncio.run(main()))
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
lo, hi = int(len(finishes) * 0.1), int(len(finishes) * 0.9)
rate = (hi - lo) / (finishes[hi] - finishes[lo])
cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
print(json.dumps({"calls_per_s": round(rate, 1), "cpu_ms_per_call": round(cpu * 1000 / len(finishes), 2),
                  "peak_rss_mb": round(cpu1.ru_maxrss / 1024, 1),
                  "version": importlib.metadata.version("litellm")}))
"""


def _gevent_path() -> Path:
    """gevent, installed on first use under ``.bench/gevent`` (never a dependency of the fleet)."""
    if not (GEVENT_DIR / "gevent").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(GEVENT_DIR), "gevent"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return GEVENT_DIR


def _throwaway(venv: Path, package: str, command: str) -> Path:
    """``command`` of ``package``, installed on first use into its own venv under ``.bench`` (never a
    dependency of the fleet)."""
    exe = venv / "bin" / command
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", package],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return exe


def start_profile(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Sample the worker's thread holding the GIL (``--gil``: where its CPU goes, not where its threads
    wait) for ``seconds``, as folded stacks (flamegraph.pl's input; one line per stack, with a count)."""
    return subprocess.Popen(
        [str(_throwaway(TOOLS_VENV, "py-spy", "py-spy")),
         "record", "--pid", str(pid), "--gil", "--rate", "250", "--format", "raw",
         "--duration", str(int(seconds)), "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def run_fleet(
    url: str,
    mock_url: str,
    jobs: int,
    in_flight: int,
    latency_s: float,
    log_dir: Path,
    pool: str = "threads",
    profile: Path | None = None,
) -> dict[str, Any]:
    redis.Redis.from_url(url).flushdb()
    env = fleet_env(url, mock_url, **otel_env(), **high_limits())
    if pool == "gevent":  # `celery -P gevent` patches the worker at its start (celery/__main__.py)
        env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{_gevent_path()}"
    # The demo profile's 2 s read timeout would end every 5 s call: a timeout well past the latency.
    settings = load_settings(env=env)
    for name in settings.providers:
        env[f"FLEET_PROVIDERS__{name.upper()}__READ_TIMEOUT_S"] = str(max(60.0, 3 * latency_s))
    client = Client(load_settings(env=env), redis_url=url)
    ids = client.submit_many([{"prompt": f"Rename field f{i} to g{i}", "tier": "mini"} for i in range(jobs)])
    [worker] = start_workers("fleet.worker", "mini", 1, env=env, concurrency=in_flight, pool=pool,
                             log_dir=log_dir, name=f"mini-c{in_flight}")  # fmt: skip
    try:
        cpu0 = cpu_s(worker.pid or 0)
        spy = None
        if profile:  # steady state: from the first wave's end until a wave before the last
            wait_for_fleet(url, in_flight, timeout=600)
            spy = start_profile(worker.pid or 0, profile, max(2.0, (jobs / in_flight - 2) * latency_s))
        finished = wait_for_fleet(url, jobs, timeout=600)
        cpu = cpu_s(worker.pid or 0) - cpu0
        rss = peak_rss_mb(worker.pid or 0)
        results = collect_results(client, ids)
        if spy:
            spy.wait(timeout=60)
    finally:
        stop([worker])
        client.close()
    if not finished or len(results) < jobs:
        raise RuntimeError(f"{jobs - len(results)} fleet jobs unfinished")
    completed = [r for r in results.values() if r.status == "completed"]
    return {
        # Completed jobs only: a job that escalated (its calls failed) finished, but not as asked.
        "jobs_per_s": round(steady_rate([r.finished_at or 0.0 for r in completed]), 1),
        "escalated": jobs - len(completed),
        "cpu_ms_per_job": round(cpu * 1000 / jobs, 2),
        "peak_rss_mb": rss,
    }


def run_litellm(mock_url: str, in_flight: int, calls: int) -> dict[str, Any]:
    python = _throwaway(LITELLM_VENV, "litellm", "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "OTEL_"))}
    done = subprocess.run(
        [str(python), "-c", LITELLM_SCRIPT, mock_url, str(in_flight), str(calls)],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the LiteLLM run failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=5000.0)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--litellm-calls", type=int, default=4000)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--pool", choices=["threads", "asyncio", "gevent"], default="asyncio",
        help="the tier worker's pool (gevent: installed under .bench/gevent on first use)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", type=Path, metavar="FILE",
        help="write py-spy's folded stacks of the tier worker (the GIL holder) to FILE",
    )  # fmt: skip
    args = parser.parse_args()
    ceiling = args.in_flight / (args.latency_ms / 1000.0)
    with (
        tempfile.TemporaryDirectory(prefix="fleet-bench-conc-") as tmp,
        broker() as url,
        mock_provider(args.latency_ms, Path(tmp)) as mock_url,
    ):
        fleet = run_fleet(
            url,
            mock_url,
            args.jobs,
            args.in_flight,
            args.latency_ms / 1000.0,
            Path(tmp),
            pool=args.pool,
            profile=args.profile,
        )
        litellm = {} if args.skip_litellm else run_litellm(mock_url, args.in_flight, args.litellm_calls)
    out = {
        "pool": args.pool,
        "in_flight": args.in_flight,
        "latency_ms": args.latency_ms,
        "ceiling_per_s": round(ceiling, 1),
        **{f"fleet_{k}": v for k, v in fleet.items()},
        "fleet_of_ceiling": round(fleet["jobs_per_s"] / ceiling, 3),
        **{f"litellm_{k}": v for k, v in litellm.items()},
        "target_met": fleet["jobs_per_s"] >= 180.0 * ceiling / 200.0,
    }
    if not args.json:
        print(
            f"fleet {fleet['jobs_per_s']} jobs/s of {ceiling:.0f}; LiteLLM {litellm.get('calls_per_s', '-')}"
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
