"""Chaos at load: the scenarios of docs/reliability.md against one real fleet, >= 1,000 jobs.

    python bench/chaos.py --json                 # messages on Redis (embedded valkey)
    python bench/chaos.py --json --amqp auto     # messages on RabbitMQ, state on Redis

Each scenario submits its jobs, breaks something on purpose while they run (pool processes and a
whole worker SIGKILLed, the broker SIGKILLed and restarted on its data directory, a deploy, provider
outages and faults, poison messages on every queue, one idempotency key from ten threads, one of two
worker hosts in network namespaces cut off for 20 s: bench/_partition.py), then
waits until every job has a final state. The fleet runs with its default configuration (the
visibility timeout is 11 minutes): what brings a dead worker's jobs back fast is the fleet's own
recovery (heartbeats and the reaper, docs/reliability.md). The last line of output is JSON:

    {"submitted", "completed", "escalated", "lost", "results_written_twice", "calls_after_caller_died",
     "concurrent_live_runs", "scenarios": {name: {..., "recovery_s"}}, ...}

- ``recovery_s`` (every scenario): seconds from the (last) fault to the last job it affected reaching
  its final state; for the scenarios whose faults last throughout (provider faults, poison messages,
  one idempotency key from ten threads), from their first job.
- ``results_written_twice``: jobs whose final result was written more than once (every result write
  is PUBLISHed; a subscriber counts them). Must be 0.
- Model calls of one job that overlap in time (the mock provider, wrapped here, tracks calls in
  flight per prompt and which process made each): ``calls_after_caller_died`` when the earlier call's
  process was dead by then (the cost of at-least-once delivery: the provider finishes a call nobody
  waits for), ``calls_after_own_timeout`` when the same process called again (it gave up at its read
  timeout and retried while the provider still ran the first call), ``concurrent_live_runs`` when
  two different live processes called: two live workers on one job, a bug. Must be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import redis
import uvicorn
from kombu import Connection

from fleet.app import EXECUTE_TASK, NOTIFY_TASK, ROUTE_TASK
from fleet.consumer import MAX_BODY_SLACK
from fleet.embedded import EmbeddedBroker
from fleet.errors import BrokerError
from fleet.escalations import RedisEscalationStore
from fleet.keys import QUEUES
from fleet.procs import children_of
from fleet.producer import Client
from fleet.providers.mock_server import MockConfig
from fleet.settings import Settings, load_settings
from fleet.supervisor import FleetOptions, Supervisor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' RabbitMQ helper
from _partition import CallWatch, ResultWrites, partition  # bench/: on the path as a script

from tests.integration.rabbit import rabbit_vhost

CRASH_MARKER = "BENCH-CHAOS-CRASH"
TIERS = ("mini", "standard", "full", "fast")
WORKER_ENV = {
    "FLEET_QUEUES__MINI__POOL": "prefork",
    "FLEET_CHAOS__CRASH_MARKER": CRASH_MARKER,
    "FLEET_BREAKER__COOLDOWN_S": "2",
    "FLEET_QUALITY__ENABLED": "false",  # the scenarios count exact calls and tiers
    "FLEET_MOCK__SIMULATE_QUALITY": "false",
}
SCALE = {"router": 4, "mini": 4, "standard": 6, "full": 4, "fast": 6, "escalations": 2}


# --- the mock provider, watched ---------------------------------------------------------------------


class WatchedMock(CallWatch):
    """The watched mock provider (bench/_partition.py's CallWatch: model calls of one job that overlap
    in time, and whether the earlier caller was alive), served on a free loopback port."""

    def __init__(self) -> None:
        super().__init__(MockConfig(latency_ms=20))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> WatchedMock:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def configure(self, **patch: Any) -> None:
        httpx.post(f"{self.url}/_mock/config", json=patch, timeout=5).raise_for_status()


# --- the fleet ----------------------------------------------------------------------------------------


@dataclass
class Rig:
    tmp: Path
    mock: WatchedMock
    broker: EmbeddedBroker
    settings: Settings
    supervisor: Supervisor
    client: Client
    log: Callable[[str], None]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: When each job was first seen final (monotonic seconds).
    final_at: dict[str, float] = field(default_factory=dict)

    @property
    def messages_url(self) -> str:
        """Where messages go: RabbitMQ with --amqp, else the Redis that keeps the state."""
        return self.settings.broker.url or self.broker.url

    def start_fleet(self) -> None:
        env = {
            **WORKER_ENV,
            **({"FLEET_BROKER_URL": self.settings.broker.url} if self.settings.broker.url else {}),
        }
        options = FleetOptions(
            queues=QUEUES, scale=SCALE, flower=False, publish_state=False,
            log_dir=self.tmp / "logs", shutdown_grace_s=20, env=env,
        )  # fmt: skip
        self.supervisor = Supervisor(self.settings, options)
        self.supervisor.start()

    def submit(self, request: dict[str, Any]) -> str:
        while True:
            try:
                return self.client.submit(request)
            except BrokerError:
                time.sleep(0.2)  # not accepted: a service retries

    def wait(self, ids: list[str], timeout: float) -> dict[str, str]:
        """task id -> final status, for those that got one within ``timeout``."""
        done: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(ids) and time.monotonic() < deadline:
            try:
                for task_id, res in self.client.peek([i for i in ids if i not in done]).items():
                    done[task_id] = res.status
                    self.final_at.setdefault(task_id, time.monotonic())
            except (BrokerError, redis.RedisError, OSError):
                pass
            for event in self.supervisor.check():
                self.log(event)
            time.sleep(0.25)
        return done

    def record(
        self, name: str, ids: list[str], done: dict[str, str], started: float, fault_at: float | None = None
    ) -> None:
        statuses = Counter(done.values())
        self.results[name] = {
            "submitted": len(ids),
            "completed": statuses.get("completed", 0),
            "escalated": statuses.get("escalated", 0),
            "lost": len(ids) - len(done),
            "seconds": round(time.monotonic() - started, 1),
        }
        if fault_at is not None:
            last = max((self.final_at[i] for i in ids if i in self.final_at), default=fault_at)
            self.results[name]["recovery_s"] = round(max(0.0, last - fault_at), 1)
        self.log(f"{name}: {self.results[name]}")


def _job(i: int, tag: str, tier: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"prompt": f"[{tag}] Rename variable v{i} to value_{i}", "kind": f"chaos.{tag}"}
    if tier:
        request["tier"] = tier
    return request


def worker_kills(rig: Rig, n: int) -> None:
    started = time.monotonic()
    rig.mock.configure(latency_ms=400, failure_rate=0.0, down_models=[])
    ids = [rig.submit(_job(i, "workers", "mini")) for i in range(n)]
    rng = random.Random(1)
    fault_at = time.monotonic()
    for round_ in range(6):
        time.sleep(1.5)
        pool = rig.supervisor.pools["mini"]
        fault_at = time.monotonic()
        if round_ == 3:
            rig.log("workers: SIGKILL the mini worker's main process")
            pool.signal(signal.SIGKILL)
            continue
        children = children_of(pool.pid)
        if children:
            victim = rng.choice(children)
            rig.log(f"workers: SIGKILL pool process {victim}")
            os.kill(victim, signal.SIGKILL)
    rig.record("worker_kills", ids, rig.wait(ids, 180), started, fault_at)


def broker_restart(rig: Rig, n: int) -> None:
    started = time.monotonic()
    rig.mock.configure(latency_ms=150)
    first = [rig.submit(_job(i, "broker", TIERS[i % 4])) for i in range(n // 2)]
    time.sleep(1.5)  # past the AOF's everysec window: what was accepted is on disk
    while len(rig.client.peek(first)) < n // 8:
        time.sleep(0.1)
    port = rig.broker.port
    rig.log("broker: SIGKILL (the Redis that keeps the state, and the messages unless --amqp)")
    fault_at = time.monotonic()
    rig.broker.kill()
    if rig.settings.broker.url:
        vhost = urlsplit(rig.settings.broker.url).path.lstrip("/") or "/"
        closed = subprocess.run(
            ["rabbitmqctl", "close_all_connections", "-p", unquote(vhost), "chaos: broker_restart"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        rig.log(
            f"broker: RabbitMQ closed every connection of the fleet (rabbitmqctl exit {closed.returncode})"
        )
    second: list[str] = []
    producer = threading.Thread(
        target=lambda: second.extend(rig.submit(_job(i, "broker", TIERS[i % 4])) for i in range(n // 2, n))
    )
    producer.start()
    time.sleep(1.0)
    rig.broker = EmbeddedBroker(rig.tmp / "broker", port=port)
    rig.broker.start()
    rig.log("broker: restarted on the same port and data directory")
    producer.join(120)
    ids = first + second
    rig.record("broker_restart", ids, rig.wait(ids, 180), started, fault_at)


def deploy(rig: Rig, n: int) -> None:
    started = time.monotonic()
    rig.mock.configure(latency_ms=600)
    ids = [rig.submit(_job(i, "deploy", TIERS[i % 4])) for i in range(n)]
    while len(rig.client.peek(ids)) < n // 5:
        time.sleep(0.1)
    rig.log("deploy: stopping the fleet (what SIGTERM to `fleet up` does), then starting it again")
    fault_at = time.monotonic()
    rig.supervisor.stop()
    rig.start_fleet()
    rig.record("deploy", ids, rig.wait(ids, 180), started, fault_at)


def provider_faults(rig: Rig, n: int) -> None:
    started = time.monotonic()
    rig.mock.configure(latency_ms=50, failure_rate=0.3, down_models=["gpt-4.1-mini"], seed=5)
    ids = [rig.submit(_job(i, "providers", TIERS[i % 4])) for i in range(n)]
    done = rig.wait(ids, 240)
    rig.mock.configure(failure_rate=0.0, down_models=[])
    rig.record("provider_faults", ids, done, started, fault_at=started)


def poison(rig: Rig, good: int) -> None:
    started = time.monotonic()
    rig.mock.configure(latency_ms=20)
    store = RedisEscalationStore(rig.client.redis)
    poisoned: list[str] = []
    what: dict[str, str] = {}
    big = "x" * (rig.settings.limits.max_prompt_bytes + MAX_BODY_SLACK)
    for queue in QUEUES:
        name = {"router": ROUTE_TASK, "escalations": NOTIFY_TASK}.get(queue, EXECUTE_TASK)
        for args, task in (
            ([], "fleet.no_such_task"),
            ([{"bogus": True}, {"id": "x"}], name),
            ([{"prompt": big}, {"id": "x"}], name),
            ([{"prompt": "hi", "response_schema": {"type": "nonsense"}}, {"id": "x"}], name),
        ):
            task_id = uuid.uuid4().hex
            rig.client.app.send_task(task, args=args, task_id=task_id, queue=queue)
            poisoned.append(task_id)
            what[task_id] = f"{queue}:{task}:{str(args)[:40]}"
        for body in (b"{not json", b'{"prompt": "wrong shape"}'):
            task_id = uuid.uuid4().hex
            with Connection(rig.messages_url) as conn:
                conn.Producer().publish(
                    body, exchange="fleet", routing_key=queue, content_type="application/json",
                    content_encoding="utf-8", headers={"task": name, "id": task_id, "lang": "py"},
                    serializer=None,
                )  # fmt: skip
            poisoned.append(task_id)
            what[task_id] = f"{queue}:{body[:20]!r}"
    crashers = [rig.submit({"prompt": f"Rename a{i} {CRASH_MARKER}", "tier": "mini"}) for i in range(4)]
    ids = [rig.submit(_job(i, "poison", TIERS[i % 4])) for i in range(good)]
    done = rig.wait(crashers + ids, 180)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(store.for_task(t) is None for t in poisoned):
        time.sleep(0.2)
    for task_id in poisoned:
        if store.for_task(task_id) is not None:
            done[task_id] = "escalated"
        else:
            rig.log(f"poison: no escalation for {task_id} ({what[task_id]})")
    rig.record("poison", poisoned + crashers + ids, done, started, fault_at=started)


def idempotency(rig: Rig, keys: int) -> None:
    started = time.monotonic()
    ids: list[str] = []
    seen: list[set[str]] = []
    for k in range(keys):
        request = {**_job(k, "idem", "mini"), "idempotency_key": f"bench-{uuid.uuid4().hex}"}
        barrier = threading.Barrier(10)
        got: list[str] = []

        def submit(request: dict[str, Any] = request, barrier: threading.Barrier = barrier,
                   got: list[str] = got) -> None:  # fmt: skip
            barrier.wait(5)
            got.append(rig.submit(request))

        threads = [threading.Thread(target=submit) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        seen.append(set(got))
        ids.append(got[0])
    split = sum(1 for s in seen if len(s) != 1)
    rig.record("idempotency", ids, rig.wait(ids, 120), started, fault_at=started)
    rig.results["idempotency"]["keys_split"] = split
    rig.results["idempotency"]["submit_calls"] = 10 * keys


def partition_here(rig: Rig, n: int) -> None:
    """Host a of two worker hosts (network namespaces) cut off for 20 s mid-run (bench/_partition.py).
    On RabbitMQ the hosts' messages would have to reach RabbitMQ over the namespaces' bridge, and the
    RabbitMQ it starts with listens on 127.0.0.1 only: skipped there, saying so."""
    if rig.settings.broker.url:
        why = "the namespaced hosts reach the broker over a bridge; this RabbitMQ listens on 127.0.0.1 only"
        rig.log(f"partition: skipped: {why}")
        rig.results["partition"] = {"skipped": why}
        return
    partition(rig, n)


def _rabbitmq_here() -> str | None:
    url = os.environ.get("FLEET_TEST_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672//"
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.connect()
    except Exception:
        return None
    return url


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--json", action="store_true", help="print only progress to stderr and JSON last")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's job count")
    parser.add_argument("--only", nargs="*", help="run only these scenarios (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the logs and broker data (prints where)")
    parser.add_argument(
        "--amqp", metavar="URL|auto", help="messages on this RabbitMQ, in a virtual host of their own "
        "(Redis keeps the state); auto: FLEET_TEST_AMQP_URL or 127.0.0.1:5672, else skip",
    )  # fmt: skip
    args = parser.parse_args()
    if args.amqp == "auto":
        args.amqp = _rabbitmq_here()
        if args.amqp is None:
            print(
                json.dumps(
                    {"broker": "rabbitmq", "skipped": "no RabbitMQ answers (FLEET_TEST_AMQP_URL, :5672)"}
                )
            )
            return 0

    def log(msg: str) -> None:
        out = sys.stderr if args.json else sys.stdout
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=out, flush=True)

    def n(count: int) -> int:
        return max(4, int(count * args.scale))

    began = time.monotonic()
    keep = tempfile.mkdtemp(prefix="fleet-chaos-") if args.keep else None
    workdir = contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="fleet-chaos-")
    rabbit = rabbit_vhost(args.amqp) if args.amqp else contextlib.nullcontext("")
    with workdir as tmp_name, rabbit as amqp_url:
        log(f"working in {tmp_name}" + (f"; messages on RabbitMQ ({amqp_url})" if amqp_url else ""))
        tmp = Path(tmp_name)
        mock = WatchedMock().start()
        broker = EmbeddedBroker(tmp / "broker")  # append-only file on, everysec
        broker.start()
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        env = {**base, **WORKER_ENV, "FLEET_REDIS_URL": broker.url, "FLEET_STATE_DIR": str(tmp / "state"),
               "FLEET_MOCK__URL": mock.url}  # fmt: skip
        if amqp_url:
            env["FLEET_BROKER_URL"] = amqp_url
        settings = load_settings(profile="demo", env=env)
        writes = ResultWrites(broker.url).start()
        rig = Rig(tmp, mock, broker, settings, None, None, log)  # type: ignore[arg-type]
        try:
            rig.start_fleet()
            rig.client = Client(settings, redis_url=broker.url)
            log(f"fleet up in {time.monotonic() - began:.1f} s")
            plan: list[tuple[str, Callable[[Rig, int], None], int]] = [
                ("worker_kills", worker_kills, 200), ("deploy", deploy, 150),
                ("broker_restart", broker_restart, 300), ("provider_faults", provider_faults, 200),
                ("poison", poison, 100), ("idempotency", idempotency, 50), ("partition", partition_here, 300),
            ]  # fmt: skip
            for name, scenario, count in plan:
                if not args.only or name in args.only:
                    scenario(rig, n(count))
            time.sleep(2)  # late copies (visibility timeout) would write now
        finally:
            if rig.client is not None:
                rig.client.close()
            if rig.supervisor is not None:
                rig.supervisor.stop()
            writes.stop()
            rig.broker.stop()
            mock.stop()
    rewritten = {t for t, count in writes.writes.items() if count > 1}
    scenarios = rig.results
    summary = {
        "broker": "rabbitmq" if args.amqp else "redis",
        "submitted": sum(s.get("submitted", 0) for s in scenarios.values()),
        "completed": sum(s.get("completed", 0) for s in scenarios.values()),
        "escalated": sum(s.get("escalated", 0) for s in scenarios.values()),
        "lost": sum(s.get("lost", 0) for s in scenarios.values()),
        "results_written_twice": len(rewritten),
        "calls_after_caller_died": len(mock.after_death),
        "calls_after_own_timeout": len(mock.after_timeout),
        "concurrent_live_runs": len(mock.concurrent),
        "concurrent_live_run_prompts": sorted(mock.concurrent)[:10],
        "model_calls": sum(mock.calls.values()),
        "seconds": round(time.monotonic() - began, 1),
        "scenarios": scenarios,
    }
    print(json.dumps(summary))
    recovered = all(s.get("recovery_s", 0) <= 30 for s in scenarios.values())
    ok = summary["lost"] == 0 and not rewritten and not mock.concurrent and recovered
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
