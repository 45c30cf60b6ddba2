"""Submits per second from one process: fleet.submit (validation, idempotency) and Client.submit_many
beside bare send_task.

Nothing consumes during the run; all enqueue onto the same broker. fleet.submit is measured twice:
plain requests, and requests with an idempotency key (one script call more per job). submit_many
sends the same plain requests in batches of --batch (the job records in one pipeline per batch, the
messages on one connection).

Usage: python bench/producer.py [--json] [--jobs N] [--batch B]
Last stdout line: {"fleet_submit_per_s", "fleet_submit_idempotent_per_s", "fleet_submit_many_per_s",
"bare_send_task_per_s", ...}
"""

from __future__ import annotations

import argparse
import json
import time

import redis
from _rig import broker
from celery import Celery

from fleet.producer import Client
from fleet.settings import load_settings

REQUEST = {
    "prompt": "Summarise this support ticket in one sentence: the invoice PDF fails to download.",
    "kind": "support.summary",
    "hints": {"complexity": "low"},
}


def bare_rate(url: str, jobs: int) -> float:
    app = Celery("bare-producer", broker=url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    app.send_task("bare.noop", args=[REQUEST, {"id": "warm"}], queue="bare")  # connect first
    began = time.perf_counter()
    for i in range(jobs):
        app.send_task("bare.noop", args=[REQUEST, {"id": str(i)}], queue="bare")
    elapsed = time.perf_counter() - began
    app.close()
    return jobs / elapsed


def fleet_rate(url: str, jobs: int, idempotent: bool) -> float:
    client = Client(load_settings(env={"FLEET_REDIS_URL": url}), redis_url=url)
    client.submit(REQUEST)  # connect first
    began = time.perf_counter()
    for i in range(jobs):
        client.submit({**REQUEST, "idempotency_key": f"k-{i}"} if idempotent else REQUEST)
    elapsed = time.perf_counter() - began
    client.close()
    return jobs / elapsed


def fleet_many_rate(url: str, jobs: int, batch: int) -> float:
    client = Client(load_settings(env={"FLEET_REDIS_URL": url}), redis_url=url)
    client.submit_many([REQUEST])  # connect first
    began = time.perf_counter()
    for start in range(0, jobs, batch):
        client.submit_many([REQUEST] * min(batch, jobs - start))
    elapsed = time.perf_counter() - began
    client.close()
    return jobs / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500, help="requests per submit_many call")
    args = parser.parse_args()
    with broker() as url:
        bare = bare_rate(url, args.jobs)
        redis.Redis.from_url(url).flushdb()
        fleet = fleet_rate(url, args.jobs, idempotent=False)
        redis.Redis.from_url(url).flushdb()
        idem = fleet_rate(url, args.jobs, idempotent=True)
        redis.Redis.from_url(url).flushdb()
        many = fleet_many_rate(url, args.jobs, args.batch)
    out = {
        "jobs": args.jobs,
        "bare_send_task_per_s": round(bare, 1),
        "fleet_submit_per_s": round(fleet, 1),
        "fleet_submit_idempotent_per_s": round(idem, 1),
        "fleet_vs_bare": round(fleet / bare, 3),
        "submit_many_batch": args.batch,
        "fleet_submit_many_per_s": round(many, 1),
        "submit_many_vs_bare": round(many / bare, 3),
    }
    if not args.json:
        print(
            f"bare send_task {bare:.0f}/s, fleet.submit {fleet:.0f}/s, with idempotency key {idem:.0f}/s, "
            f"submit_many (batches of {args.batch}) {many:.0f}/s"
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
