"""The tier job path alone, in one thread of this process: what a tier worker spends on each job
between Celery handing it the message and the task returning (validation, the start script, the
model call over HTTP to the mock, the result's round trip, spans and metrics). ``--hop route``
measures the router's instead: validation, the heuristic, the routing record and the publish of the
tier message.

Celery's consumer (kombu's fetch, the request, events, the ack) is left out: this measures the
fleet's own code, the part a change to it moves. Each job runs through Celery's tracer in this
process (``Task.apply``), one after another, against an embedded broker and the mock provider at
zero latency; the jobs are submitted first, as a producer would.

- CPU per job: ``time.process_time`` over ``--jobs`` jobs, after ``--warmup`` jobs. Other load on
  the machine slows this less than a wall-clock rate, but it still moves it: compare two trees in
  one run (``--tree DIR`` runs the path of the fleet in DIR, in a child process, alternately).
- ``--profile FILE``: cProfile of the measured jobs, written for ``python -m pstats FILE``.

Usage: python bench/job_path.py [--json] [--hop execute|route] [--jobs 2000] [--tree DIR ...] [--rounds N]
       [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _rig import BENCH, broker, fleet_env, high_limits, mock_provider, otel_env


def run_here(
    url: str, mock_url: str, jobs: int, warmup: int, profile: str | None, hop: str
) -> dict[str, Any]:
    """Run ``warmup + jobs`` jobs through the tier task (or the router's) in this process, one at a time."""
    os.environ.update(fleet_env(url, mock_url, **otel_env(), **high_limits()))
    import fleet.worker  # noqa: F401 - the tasks, and what a worker process sets up once
    from fleet import telemetry
    from fleet.app import EXECUTE_TASK, ROUTE_TASK, app
    from fleet.producer import Client, prepare_many, queue_records
    from fleet.settings import get_settings

    settings = get_settings()
    telemetry.on_worker_process_init(settings, "mini" if hop == "execute" else "router")
    client = Client(settings, redis_url=url)
    # What the producer sends, with the records it writes; the messages themselves are not needed.
    # The router's jobs carry no tier, so the heuristic classifies each.
    hint = {"tier": "mini"} if hop == "execute" else {}
    outgoing = prepare_many(settings, [{"prompt": f"Rename field f{i} to g{i}", **hint}
                                       for i in range(warmup + jobs)])  # fmt: skip
    pipe = client.redis.pipeline(transaction=False)
    queue_records(pipe, outgoing, settings.broker.result_expires_s, settings=settings)
    pipe.execute()
    task = app.tasks[EXECUTE_TASK if hop == "execute" else ROUTE_TASK]

    def run(batch: list[Any]) -> None:
        for job in batch:
            task.apply(args=(job.payload, job.envelope.model_dump(mode="json")), task_id=job.id, throw=True)

    run(outgoing[:warmup])
    measured = outgoing[warmup:]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profile:
        with cProfile.Profile() as profiler:
            run(measured)
        profiler.dump_stats(profile)
    else:
        run(measured)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if hop == "execute":
        done = client.peek([job.id for job in measured])
        completed = sum(1 for r in done.values() if r.status == "completed")
        if completed != len(measured):
            raise RuntimeError(f"{len(measured) - completed} of {len(measured)} jobs did not complete")
    else:  # every job went on to a tier queue
        queued = sum(client.redis.llen(tier) for tier in ("mini", "standard", "full", "fast"))
        if queued != warmup + jobs:
            raise RuntimeError(f"{warmup + jobs - queued} of {warmup + jobs} jobs were not sent on to a tier")
    client.close()
    return {"cpu_us_per_job": round(cpu * 1e6 / len(measured), 1),
            "wall_us_per_job": round(wall * 1e6 / len(measured), 1)}  # fmt: skip


def run_tree(tree: Path, jobs: int, warmup: int, hop: str) -> dict[str, Any]:
    """This benchmark run on the fleet in ``tree`` (another checkout), in a child process."""
    env = {**os.environ, "PYTHONPATH": f"{BENCH}:{tree}"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--json", "--rounds", "1",
         "--jobs", str(jobs), "--warmup", str(warmup), "--hop", hop],
        capture_output=True, text=True, env=env, cwd=tree, check=False, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the run on {tree} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs measured per round")
    parser.add_argument("--warmup", type=int, default=200, help="jobs run first, not measured")
    parser.add_argument(
        "--rounds", type=int, help="rounds per tree, the median reported (default: 3 with --tree, else 1)"
    )
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="also run the fleet in this checkout, alternately with this one")  # fmt: skip
    parser.add_argument("--profile", metavar="FILE", help="cProfile of the measured jobs (one round)")
    parser.add_argument("--hop", choices=["execute", "route"], default="execute",
                        help="the tier's task (default) or the router's")  # fmt: skip
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.tree else 1)
    if args.rounds == 1 and not args.tree:
        with (
            tempfile.TemporaryDirectory(prefix="fleet-bench-path-") as tmp,
            broker() as url,
            mock_provider(0.0, Path(tmp)) as mock_url,
        ):
            here = run_here(url, mock_url, args.jobs, args.warmup, args.profile, args.hop)
        print(json.dumps(here))
        return 0
    trees = [BENCH.parent, *(t.resolve() for t in args.tree)]
    runs: dict[str, list[float]] = {str(t): [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:  # alternately: a slow spell of the machine falls on every tree alike
            runs[str(tree)].append(run_tree(tree, args.jobs, args.warmup, args.hop)["cpu_us_per_job"])
            if not args.json:
                print(f"{tree}: {runs[str(tree)][-1]} us of CPU per job", file=sys.stderr)
    medians = {tree: statistics.median(v) for tree, v in runs.items()}
    out: dict[str, Any] = {
        "hop": args.hop,
        "jobs": args.jobs,
        "rounds": args.rounds,
        "cpu_us_per_job": medians,
        "all": runs,
    }
    if len(trees) > 1:
        base = medians[str(trees[0])]
        out["vs_here"] = {tree: round(m / base, 3) for tree, m in medians.items()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
