"""One Redis boundary: an unreachable broker is one line and exit code 4 from every verb that talks to
it, with the password masked; an id nobody submitted is "not found" (exit 8, HTTP 404), at once."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from fleet.api import create_api
from fleet.errors import BrokerError, TaskNotFound
from fleet.producer import Client
from fleet.settings import load_settings

from .procs import run

pytestmark = pytest.mark.integration

#: Every verb that talks to the broker, with the arguments it needs to get that far.
VERBS = [
    ["submit", "hello"],
    ["submit", "hello", "--wait", "5"],
    ["result", "abc"],
    ["result", "abc", "--wait", "1"],
    ["job", "abc"],
    ["status"],
    ["scale", "mini=2"],
    ["costs"],
    ["escalations", "list"],
    ["escalations", "show", "abc"],
    ["escalations", "claim", "abc", "--by", "alice"],
    ["escalations", "release", "abc", "--by", "alice"],
    ["escalations", "resolve", "abc", "--answer", "x", "--by", "alice"],
    ["escalations", "retry", "abc", "--by", "alice"],
    ["escalations", "discard", "abc", "--reason", "x", "--by", "alice"],
    ["escalations", "stats"],
    ["up", "--no-flower"],
    ["metrics", "--port", "0"],
]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dead_broker_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_REDIS_URL=f"redis://fleet:hunter2-canary@127.0.0.1:{_closed_port()}/0",
        FLEET_STATE_DIR=str(tmp_path / "state"),
    )
    return env


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v[:2]))
def test_every_verb_says_the_broker_is_down_in_one_line(verb: list[str], tmp_path: Path) -> None:
    # Given a broker URL nothing listens on, When a verb needs the broker
    done = run(verb, _dead_broker_env(tmp_path), timeout=60)
    # Then it exits 4 with one line naming the broker, its password masked, and no traceback
    assert done.returncode == 4, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "broker_unavailable" in lines[0] and "127.0.0.1" in lines[0]
    assert "hunter2-canary" not in done.stderr + done.stdout
    assert "***" in lines[0]
    assert "Traceback" not in done.stderr


def test_json_verbs_report_the_broker_error_as_json(tmp_path: Path) -> None:
    done = run(["status", "--json"], _dead_broker_env(tmp_path))
    assert done.returncode == 4
    assert json.loads(done.stdout)["error"]["code"] == "broker_unavailable"


def test_the_producer_raises_broker_error_not_a_redis_error(tmp_path: Path) -> None:
    settings = load_settings(env=_dead_broker_env(tmp_path))
    client = Client(settings)
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        client.submit({"prompt": "hello"})
    assert "hunter2-canary" not in str(info.value)
    with pytest.raises(BrokerError):
        client.result("abc", timeout=1)
    assert time.monotonic() - started < 30


def test_an_unknown_id_is_not_found_at_once(
    clean_redis: redis.Redis, broker_url: str, tmp_path: Path
) -> None:
    env = dict(os.environ, FLEET_REDIS_URL=broker_url, FLEET_STATE_DIR=str(tmp_path))
    client = Client(load_settings(env=env))
    # Given an id nobody submitted, When a producer waits for it, Then it hears "no such job" at once
    started = time.monotonic()
    with pytest.raises(TaskNotFound):
        client.result("never-submitted", timeout=30)
    assert time.monotonic() - started < 5
    # And the CLI exits 8 in one line, with or without --wait
    for args in (["result", "never-submitted"], ["result", "never-submitted", "--wait", "30"],
                 ["job", "never-submitted"], ["job", "never-submitted", "--json"]):  # fmt: skip
        done = run(args, env)
        assert done.returncode == 8, done.stderr
        said = done.stderr + done.stdout  # --json: the error as JSON on stdout
        assert "task_not_found" in said and "never-submitted" in said
    # And the API answers 404
    api = TestClient(create_api(load_settings(env=env), broker_url, token=""))
    answer = api.get("/v1/tasks/never-submitted")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "task_not_found"


def test_a_submitted_job_is_pending_not_unknown(
    clean_redis: redis.Redis, broker_url: str, tmp_path: Path
) -> None:
    # Given a job enqueued with no worker for its queue (a separate database, so no fleet runs it)
    from ..conftest import other_db_url

    url = other_db_url(broker_url)
    redis.Redis.from_url(url).flushdb()
    env = dict(os.environ, FLEET_REDIS_URL=url, FLEET_STATE_DIR=str(tmp_path))
    client = Client(load_settings(env=env))
    task_id = client.submit({"prompt": "hello", "tier": "mini"})
    # When its status is asked, Then it is queued on its tier's queue, not "not found"
    status = client.status(task_id)
    assert (status.state, status.queue) == ("queued", "mini")
    done = run(["result", task_id, "--json"], env)
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "queued"
    api = TestClient(create_api(load_settings(env=env), url, token=""))
    assert api.get(f"/v1/tasks/{task_id}").json()["state"] == "queued"
    # And `fleet job` says which queue and how long it has waited
    job = run(["job", task_id, "--json"], env)
    assert job.returncode == 0, job.stderr
    shown = json.loads(job.stdout)
    assert (shown["state"], shown["queue"]) == ("queued", "mini") and 0 <= shown["waited_s"] < 60
