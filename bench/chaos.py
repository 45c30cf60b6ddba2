"""Chaos at load: scenarios 1-6 of docs/reliability.md against one real fleet, >= 1,000 jobs.

    python bench/chaos.py --json

Each scenario submits its jobs, breaks something on purpose while they run (pool processes and a
whole worker SIGKILLed, the broker SIGKILLed and restarted on its data directory, a deploy, provider
outages and faults, poison messages on every queue, one idempotency key from ten threads), then
waits until every job has a final state. The last line of output is JSON:

    {"submitted", "completed", "escalated", "lost", "duplicate_results", "scenarios": {...}, ...}

``duplicate_results`` counts jobs whose final result was written more than once (every result
write is PUBLISHed by Celery's Redis backend; a subscriber counts them) or whose model calls
overlapped in time (the mock provider, wrapped here, tracks calls in flight per prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
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

import httpx
import redis
import uvicorn
from kombu import Connection
from starlette.types import Message, Receive, Scope, Send

from fleet.app import EXECUTE_TASK, NOTIFY_TASK, ROUTE_TASK
from fleet.consumer import MAX_BODY_SLACK
from fleet.embedded import EmbeddedBroker
from fleet.errors import BrokerError
from fleet.escalations import RedisEscalationStore
from fleet.keys import QUEUES
from fleet.procs import children_of
from fleet.producer import Client
from fleet.providers.mock_server import MockConfig, create_app
from fleet.settings import Settings, load_settings
from fleet.supervisor import FleetOptions, Supervisor

CRASH_MARKER = "BENCH-CHAOS-CRASH"
TIERS = ("mini", "standard", "full", "fast")
WORKER_ENV = {
    "FLEET_QUEUES__MINI__POOL": "prefork",
    "FLEET_BROKER__VISIBILITY_TIMEOUT_S": "10",
    "FLEET_CHAOS__CRASH_MARKER": CRASH_MARKER,
    "FLEET_BREAKER__COOLDOWN_S": "2",
}
SCALE = {"router": 4, "mini": 4, "standard": 6, "full": 4, "fast": 6, "escalations": 2}


# --- the mock provider, watched ---------------------------------------------------------------------


class WatchedMock:
    """The mock provider in this process, recording how many calls per prompt overlap in time."""

    def __init__(self) -> None:
        self.inner = create_app(MockConfig(latency_ms=20))
        self.in_flight: Counter[str] = Counter()
        self.overlapped: set[str] = set()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.inner(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        key = _prompt_of(body)
        with self._lock:
            self.calls[key] += 1
            self.in_flight[key] += 1
            if self.in_flight[key] > 1:
                self.overlapped.add(key)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.inner(scope, replay, send)
        finally:
            with self._lock:
                self.in_flight[key] -= 1

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


def _prompt_of(body: bytes) -> str:
    try:
        data = json.loads(body)
        users = [m.get("content") for m in data.get("messages", []) if m.get("role") == "user"]
        return str(users[-1]) if users else ""
    except (ValueError, AttributeError, TypeError):
        return ""


# --- result writes, counted -------------------------------------------------------------------------


class ResultWrites:
    """Counts final (SUCCESS) result writes per task id from the backend's PUBLISH, across restarts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.writes: Counter[str] = Counter()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=2)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe("celery-task-meta-*")
                self.ready.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message["type"] == "pmessage":
                        meta = json.loads(message["data"])
                        if meta.get("status") == "SUCCESS":
                            self.writes[str(meta.get("task_id"))] += 1
                pubsub.close()
                client.close()
            except (redis.RedisError, OSError):
                time.sleep(0.05)  # the broker is down: resubscribe as soon as it is back

    def start(self) -> ResultWrites:
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


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
    results: dict[str, dict[str, int]] = field(default_factory=dict)

    def start_fleet(self) -> None:
        options = FleetOptions(
            queues=QUEUES, scale=SCALE, flower=False, publish_state=False,
            log_dir=self.tmp / "logs", shutdown_grace_s=20, env=WORKER_ENV,
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
            except (redis.RedisError, OSError):
                pass
            for event in self.supervisor.check():
                self.log(event)
            time.sleep(0.25)
        return done

    def record(self, name: str, ids: list[str], done: dict[str, str], started: float) -> None:
        statuses = Counter(done.values())
        self.results[name] = {
            "submitted": len(ids),
            "completed": statuses.get("completed", 0),
            "escalated": statuses.get("escalated", 0),
            "lost": len(ids) - len(done),
            "seconds": round(time.monotonic() - started, 1),
        }
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
    for round_ in range(6):
        time.sleep(1.5)
        pool = rig.supervisor.pools["mini"]
        if round_ == 3:
            rig.log("workers: SIGKILL the mini worker's main process")
            pool.signal(signal.SIGKILL)
            continue
        children = children_of(pool.pid)
        if children:
            victim = rng.choice(children)
            rig.log(f"workers: SIGKILL pool process {victim}")
            os.kill(victim, signal.SIGKILL)
    rig.record("worker_kills", ids, rig.wait(ids, 180), started)


def broker_restart(rig: Rig, n: int) -> None:
    started = time.monotonic()
    rig.mock.configure(latency_ms=150)
    first = [rig.submit(_job(i, "broker", TIERS[i % 4])) for i in range(n // 2)]
    time.sleep(1.5)  # past the AOF's everysec window: what was accepted is on disk
    while len(rig.client.peek(first)) < n // 8:
        time.sleep(0.1)
    port = rig.broker.port
    rig.log("broker: SIGKILL")
    rig.broker.kill()
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
    rig.record("broker_restart", ids, rig.wait(ids, 180), started)


def deploy(rig: Rig, n: int) -> None:
    started = time.monotonic()
    rig.mock.configure(latency_ms=600)
    ids = [rig.submit(_job(i, "deploy", TIERS[i % 4])) for i in range(n)]
    while len(rig.client.peek(ids)) < n // 5:
        time.sleep(0.1)
    rig.log("deploy: stopping the fleet (what SIGTERM to `fleet up` does), then starting it again")
    rig.supervisor.stop()
    rig.start_fleet()
    rig.record("deploy", ids, rig.wait(ids, 180), started)


def provider_faults(rig: Rig, n: int) -> None:
    started = time.monotonic()
    rig.mock.configure(latency_ms=50, failure_rate=0.3, down_models=["gpt-4.1-mini"], seed=5)
    ids = [rig.submit(_job(i, "providers", TIERS[i % 4])) for i in range(n)]
    done = rig.wait(ids, 240)
    rig.mock.configure(failure_rate=0.0, down_models=[])
    rig.record("provider_faults", ids, done, started)


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
            with Connection(rig.broker.url) as conn:
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
    rig.record("poison", poisoned + crashers + ids, done, started)


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
    rig.record("idempotency", ids, rig.wait(ids, 120), started)
    rig.results["idempotency"]["keys_split"] = split
    rig.results["idempotency"]["submit_calls"] = 10 * keys


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--json", action="store_true", help="print only progress to stderr and JSON last")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's job count")
    parser.add_argument("--only", nargs="*", help="run only these scenarios (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the logs and broker data (prints where)")
    args = parser.parse_args()

    def log(msg: str) -> None:
        out = sys.stderr if args.json else sys.stdout
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=out, flush=True)

    def n(count: int) -> int:
        return max(4, int(count * args.scale))

    began = time.monotonic()
    keep = tempfile.mkdtemp(prefix="fleet-chaos-") if args.keep else None
    workdir = contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="fleet-chaos-")
    with workdir as tmp_name:
        log(f"working in {tmp_name}")
        tmp = Path(tmp_name)
        mock = WatchedMock().start()
        broker = EmbeddedBroker(tmp / "broker")  # append-only file on, everysec
        broker.start()
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        env = {**base, **WORKER_ENV, "FLEET_REDIS_URL": broker.url, "FLEET_STATE_DIR": str(tmp / "state"),
               "FLEET_MOCK__URL": mock.url}  # fmt: skip
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
                ("poison", poison, 100), ("idempotency", idempotency, 50),
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
    overlapped = len(mock.overlapped)
    scenarios = rig.results
    summary = {
        "submitted": sum(s["submitted"] for s in scenarios.values()),
        "completed": sum(s["completed"] for s in scenarios.values()),
        "escalated": sum(s["escalated"] for s in scenarios.values()),
        "lost": sum(s["lost"] for s in scenarios.values()),
        "duplicate_results": len(rewritten) + overlapped,
        "results_written_twice": len(rewritten),
        "prompts_run_concurrently": overlapped,
        "model_calls": sum(mock.calls.values()),
        "seconds": round(time.monotonic() - began, 1),
        "scenarios": scenarios,
    }
    print(json.dumps(summary))
    return 0 if summary["lost"] == 0 and summary["duplicate_results"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
