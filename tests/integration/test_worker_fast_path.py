"""The worker's fast path keeps what it saves on: batched task events still reach a monitor, the
result the worker writes itself is Celery's, and kombu's commands share one client per pool."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import redis
from celery.result import AsyncResult
from kombu import Connection

from fleet.app import create_app
from fleet.transport import Channel, Transport

from .conftest import RunningFleet


def _collect_task_events(
    url: str, stop: threading.Event, out: list[tuple[str, list[dict[str, Any]]]]
) -> None:
    """Every task-event message published while ``stop`` is unset: (channel, the events it holds)."""
    pubsub = redis.Redis.from_url(url).pubsub()
    pubsub.psubscribe("*celeryev/task.*")
    try:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if not message or message["type"] != "pmessage":
                continue
            envelope = json.loads(message["data"])
            body = envelope["body"]
            if envelope.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            events = json.loads(body)
            out.append((message["channel"].decode(), events if isinstance(events, list) else [events]))
    finally:
        pubsub.close()


def test_task_events_reach_monitors_batched(clean_fleet: RunningFleet) -> None:
    seen: list[tuple[str, list[dict[str, Any]]]] = []
    stop = threading.Event()
    listener = threading.Thread(target=_collect_task_events, args=(clean_fleet.redis_url, stop, seen))
    listener.start()
    try:
        time.sleep(0.3)  # subscribed before the jobs run
        ids = [
            clean_fleet.client.submit({"prompt": f"Uppercase: word {i}", "tier": "mini"}) for i in range(5)
        ]
        for task_id in ids:
            assert clean_fleet.client.result(task_id, timeout=30).status == "completed"
        deadline = time.monotonic() + 5
        by_job: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            by_job = {}
            for _, events in list(seen):
                for event in events:
                    by_job.setdefault(event.get("uuid", ""), set()).add(event["type"])
            if all({"task-received", "task-started", "task-succeeded"} <= by_job.get(i, set()) for i in ids):
                break
            time.sleep(0.1)
    finally:
        stop.set()
        listener.join(5)
    for task_id in ids:  # what Flower needs to follow every job
        assert {"task-received", "task-started", "task-succeeded"} <= by_job.get(task_id, set()), by_job
    # Celery's per-task INFO lines: kept by the router, off on the tiers (task_log_lines = false)
    routed = clean_fleet.client.submit({"prompt": "Rename variable a to b in one line of code"})
    assert clean_fleet.client.result(routed, timeout=30).status == "completed"
    logs = clean_fleet.state_dir / "logs"
    router_log = (logs / "router.log").read_text(errors="replace")
    assert f"fleet.route[route-{routed}] received" in router_log
    tiers_log = "".join(
        (logs / f"{tier}.log").read_text(errors="replace") for tier in ("mini", "standard", "full", "fast")
    )
    assert not any(f"{task_id}]" in tiers_log for task_id in [*ids, routed])
    # The worker stored each result itself and handed Celery only the summary (with the answer Celery
    # would have stored it): Flower shows that summary.
    succeeded = [
        e for _, events in seen for e in events if e["type"] == "task-succeeded" and e.get("uuid") in ids
    ]
    assert len(succeeded) == len(ids)
    for event in succeeded:
        assert event["result"].startswith("'completed on ") and "Mock answer" not in event["result"], event
    channels = {channel.rsplit("/", 1)[-1] for channel, _ in seen}
    assert channels == {"task.multi"}, channels  # batched: never one message per event
    # and a message carries several (Celery alone flushes on every loop pass: about one each)
    assert sum(len(events) for _, events in seen) >= 2 * len(seen), [len(e) for _, e in seen]


def test_the_worker_writes_celerys_result_with_its_expiry(clean_fleet: RunningFleet) -> None:
    task_id = clean_fleet.client.submit({"prompt": "Uppercase: hello", "tier": "mini"})
    result = clean_fleet.client.result(task_id, timeout=30)
    assert result.status == "completed"
    app = create_app(clean_fleet.settings, clean_fleet.redis_url)
    async_result = AsyncResult(task_id, app=app)
    assert async_result.state == "SUCCESS"
    assert async_result.result["task_id"] == task_id and async_result.result["status"] == "completed"
    key = app.backend.get_key_for_task(task_id)
    ttl = redis.Redis.from_url(clean_fleet.redis_url).ttl(key)
    assert 0 < ttl <= clean_fleet.settings.broker.result_expires_s


def test_a_channel_keeps_one_client_per_pool(broker_url: str) -> None:
    connection = Connection(broker_url)
    transport = Transport(connection)
    channel = transport.create_channel(transport)
    try:
        assert isinstance(channel, Channel)
        first = channel._create_client()
        assert channel._create_client() is first
        with channel.conn_or_acquire() as client:
            assert client is first and client.ping()
        channel._disconnect_pools()  # as after a fork or a lost connection
        assert channel._create_client() is not first
        assert channel._create_client(asynchronous=True) is not channel._create_client(asynchronous=True)
    finally:
        channel.close()
        connection.release()
