"""Killing the escalations worker in the middle of a notification loses nothing.

A small fleet of its own (only the escalations pool) on another database of the session's broker, so
the shared fleet's escalations pool neither sees these messages nor is disturbed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.app import NOTIFY_TASK, create_app
from fleet.escalations import NewEscalation, RedisEscalationStore
from fleet.settings import load_settings
from fleet.supervisor import FleetOptions, Supervisor

from ..conftest import other_db_url

pytestmark = pytest.mark.integration


class SlowWebhook:
    """A local webhook: the first call hangs for ``first_delay_s`` seconds, later ones answer at once."""

    def __init__(self, first_delay_s: float) -> None:
        self.started: list[dict[str, Any]] = []
        self.answered: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.started.append(body)
                if len(hook.started) == 1:
                    time.sleep(first_delay_s)
                try:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    return  # the caller was killed while we slept
                hook.answered.append(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hook() -> Iterator[SlowWebhook]:
    server = SlowWebhook(first_delay_s=4.0)
    yield server
    server.close()


def test_a_killed_escalations_worker_loses_no_escalation_and_no_notification(
    broker_url: str, hook: SlowWebhook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an escalations pool of its own, notifying a webhook that is slow to answer
    url = other_db_url(broker_url)
    db = redis.Redis.from_url(url)
    db.flushdb()
    for var, value in {
        "FLEET_ESCALATION__WEBHOOK_URL": hook.url,
        "FLEET_ESCALATION__WEBHOOK_TIMEOUT_S": "10",
        "FLEET_ESCALATION__WEBHOOK_BACKOFF_S": "0.2",
    }.items():
        monkeypatch.setenv(var, value)  # read by the pool the supervisor starts
    env = dict(os.environ, FLEET_REDIS_URL=url, FLEET_STATE_DIR=str(tmp_path))
    env.pop("FLEET_PROFILE", None)
    settings = load_settings(env=env)
    sup = Supervisor(
        settings,
        FleetOptions(queues=("escalations",), flower=False, publish_state=False, log_dir=tmp_path / "logs",
                     shutdown_grace_s=2),
    )  # fmt: skip
    app = create_app(settings, url)
    sup.start()
    try:
        # When a tier worker gives a job up (record first, then the announcement), as dead_letter does
        store = RedisEscalationStore(db)
        record, created = store.create(
            NewEscalation(
                task_id="job-1", reason="chain_exhausted", tier="full", request={"prompt": "Design X"}
            )
        )
        assert created
        app.send_task(NOTIFY_TASK, args=[record.id], queue="escalations")
        _wait(lambda: hook.started, 20, "the webhook call")

        # And the pool is killed while the webhook is still answering
        pool = sup.pools["escalations"]
        pool.signal(signal.SIGKILL)
        _wait(lambda: not pool.alive(), 10, "the pool to die")
        assert not hook.answered and store.get(record.id).notified_at is None

        # And the supervisor restarts it
        assert any("escalations" in event for event in sup.check())

        # Then the escalation exists exactly once, and the webhook gets it after all
        _wait(lambda: store.get(record.id).notified_at is not None, 30, "the notification")
    finally:
        sup.stop()
        app.close()
    assert store.count() == 1 and store.count("open") == 1
    assert [r.task_id for r in store.list()] == ["job-1"]
    assert record.id in hook.answered[0]["text"] and hook.answered[0]["blocks"]
    db.flushdb()
    db.close()
