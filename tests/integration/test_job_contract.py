"""Cancel and bulk redrive on real workers (the mock provider over HTTP): a queued job ends cancelled
without a call when a worker reaches it; a running one stops after its current call and is charged
only that; the waiting producer sees it; twice is harmless; the CLI and `DELETE /v1/tasks/ID` do the
same. A bulk retry moves the matching escalations, paced; a bulk discard through the API the rest."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from fastapi.testclient import TestClient

from fleet import keys
from fleet.api import create_api
from fleet.budgets import periods
from fleet.errors import BudgetExceeded, InvalidRequest, TaskNotFound
from fleet.producer import Client
from fleet.settings import BudgetSettings, TeamBudget

from .chaosrig import ChaosFleet, chaos_fleet, wait_for
from .procs import run

pytestmark = pytest.mark.integration

MINI_FIRST = "gpt-4.1-mini"  # queues/mini.toml's first link
SECRET = "callback-secret-for-tests"


@pytest.fixture(scope="module")
def contract_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    env = {
        "FLEET_QUEUES__MINI__CONCURRENCY": "1",  # one job at a time: the next one waits queued
        "FLEET_CALLBACK_SECRET": SECRET,
        "FLEET_CALLBACKS__BACKOFF_S": "0.2",
    }
    with chaos_fleet(
        tmp_path_factory.mktemp("contract"), queues=("router", "mini", "escalations"), env=env
    ) as f:
        yield f


@pytest.fixture
def fleet(contract_fleet: ChaosFleet) -> Iterator[ChaosFleet]:
    contract_fleet.mock_reset()
    contract_fleet.mock_config(latency_ms=1500, faults_by_model={}, failure_rate=0.0)
    yield contract_fleet
    contract_fleet.mock_config(latency_ms=5, faults_by_model={})


def test_a_queued_job_ends_cancelled_without_a_call(fleet: ChaosFleet) -> None:
    # Given one job running on mini's only thread, and a second one queued behind it
    client = fleet.client
    busy = client.submit({"prompt": "Rename n to count in a.py", "tier": "mini"})
    wait_for(lambda: client.status(busy).state == "running", 20, "the first job to run")
    queued = client.submit({"prompt": "Rename m to total in b.py", "tier": "mini"})
    # When the queued one is cancelled while the first still runs (at once: a CLI start can take a
    # second on a loaded machine), and again from the CLI (harmless)
    marked = client.cancel(queued)
    assert marked.state in ("queued", "routed") and marked.cancelling, marked
    again = run(["cancel", queued], fleet.cli_env())
    assert again.returncode == 0 and "cancelled" in again.stdout, again.stderr
    # Then the waiting producer sees it cancelled, with no call made and nothing charged
    res = client.result(queued, timeout=30)
    assert res.status == "cancelled" and res.attempts == [] and res.cost_usd == 0
    assert client.result(busy, timeout=30).status == "completed"
    assert fleet.mock_stats()["total"] == 1  # only the first job called the model


def test_a_running_job_stops_after_its_current_call(fleet: ChaosFleet) -> None:
    # Given a job whose first link fails after 3 s (the chain would go on to the next links; the
    # cancel below must land within that call, which a loaded CI machine once missed at 1.5 s)
    fleet.mock_config(latency_ms=3000, faults_by_model={MINI_FIRST: {"server_error": 1.0}})
    client = fleet.client
    api = TestClient(create_api(fleet.settings, fleet.redis_url, token=""))
    task_id = client.submit({"prompt": "Rename x to y in c.py", "tier": "mini"})
    wait_for(lambda: client.status(task_id).state == "running", 20, "the job to run")
    # When it is cancelled through the API while its first call is in flight
    answer = api.delete(f"/v1/tasks/{task_id}")
    assert answer.status_code == 202 and answer.json()["cancelling"] is True
    # Then it ends cancelled after that call, charged only for it: no retry, no further link
    res = client.result(task_id, timeout=30)
    assert res.status == "cancelled", res.attempts
    assert [a.model for a in res.attempts] == [MINI_FIRST], res.attempts
    # And cancelling a finished job leaves it as it is; an unknown id is not found
    assert client.cancel(task_id).result == res
    assert api.delete("/v1/tasks/never-submitted").status_code == 404
    with pytest.raises(TaskNotFound):
        client.cancel("never-submitted")
    assert not fleet.client.redis.exists(keys.running(task_id))  # nothing left held


MINI_CHAIN = ("gpt-4.1-mini", "llama-3.3-70b-versatile", "claude-sonnet-4-5")  # queues/mini.toml


def test_urgent_jobs_submitted_last_behind_a_backlog_finish_first(fleet: ChaosFleet) -> None:
    # Given mini's only thread busy, and a backlog of 12 jobs of the default priority behind it
    fleet.mock_config(latency_ms=250)
    client = fleet.client
    busy = client.submit({"prompt": "Rename n to count in a.py", "tier": "mini"})
    wait_for(lambda: client.status(busy).state == "running", 20, "the first job to run")
    backlog = client.submit_many(
        [{"prompt": f"Rename v{i} to value{i} in c.py", "tier": "mini"} for i in range(12)]
    )
    # When three urgent jobs are submitted last (one through the router: it keeps the priority)
    urgent = [
        client.submit({"prompt": f"Urgent: rename u{i} to urgent{i} in d.py", "tier": "mini", "priority": 9})
        for i in range(2)
    ]
    urgent.append(client.submit({"prompt": "Urgent: rename w to weight in e.py", "priority": 9,
                                 "hints": {"complexity": "low"}, "kind": "code.rename"}))  # fmt: skip
    # Then every job completes, and the urgent ones ahead of the backlog: at most the one or two
    # already on their way to the worker (its prefetch) finish before the last urgent one
    done = {task_id: client.result(task_id, timeout=60) for task_id in [busy, *backlog, *urgent]}
    assert all(r.status == "completed" for r in done.values())
    pinned_urgent = [done[t] for t in urgent if done[t].tier == "mini"]
    assert len(pinned_urgent) >= 2, [done[t].tier for t in urgent]
    last_urgent = max(r.finished_at or 0 for r in pinned_urgent)
    ahead = [t for t in backlog if (done[t].finished_at or 0) < last_urgent]
    assert len(ahead) <= 2, f"{len(ahead)} of the backlog finished before the last urgent job"


def test_a_team_at_its_budget_is_refused_or_routed_down(fleet: ChaosFleet) -> None:
    fleet.mock_config(latency_ms=5)
    team = {"metadata": {"team": "acme"}}
    # Given team acme's spend, added up by the workers as its jobs finish
    first = fleet.client.result(
        fleet.client.submit({"prompt": "Rename a to b in x.py", "tier": "mini", **team}), 30
    )
    day, month = redis.Redis.from_url(fleet.redis_url).hmget(keys.spend("acme"), *periods(time.time()))
    assert day is not None and int(day) == int(month or 0) == round(first.cost_usd * 1_000_000)
    # When acme's daily budget is under what it spent, and the producer refuses at the budget
    settings = fleet.settings.model_copy(deep=True)
    settings.budgets = BudgetSettings(teams={"acme": TeamBudget(daily_usd=first.cost_usd / 2)})
    refusing = Client(settings, redis_url=fleet.redis_url)
    records = len(list(redis.Redis.from_url(fleet.redis_url).scan_iter(keys.job("*"))))
    # Then acme's next job is refused, naming the team and its spend, and nothing is enqueued
    with pytest.raises(BudgetExceeded, match=r"team 'acme' spent \$0\.\d+ today; its daily budget"):
        refusing.submit({"prompt": "Rename c to d in y.py", "tier": "mini", **team})
    assert len(list(redis.Redis.from_url(fleet.redis_url).scan_iter(keys.job("*")))) == records
    # while another team's goes through
    other = refusing.submit({"prompt": "Rename e to f in z.py", "tier": "mini", "metadata": {"team": "beta"}})
    assert refusing.result(other, 30).status == "completed"
    # And the CLI says so with exit code 9
    env = fleet.cli_env(FLEET_BUDGETS__TEAMS__ACME__DAILY_USD=str(first.cost_usd / 2))
    cli = run(["submit", "Rename g to h", "--tier", "mini", "--meta", "team=acme"], env)
    assert cli.returncode == 9 and "daily budget" in cli.stderr, (cli.returncode, cli.stderr)
    # With route_down instead, a job pinned to full runs on mini (this fleet has no full worker)
    settings.budgets.action = "route_down"
    routing = Client(settings, redis_url=fleet.redis_url)
    down = routing.result(
        routing.submit({"prompt": "Design the sharding of our ledger", "tier": "full", **team}), 30
    )
    assert down.status == "completed" and down.tier == "mini"
    assert down.routing is not None and down.routing.classifier == "budget"
    assert "routed down to mini" in down.routing.reasons[0]
    refusing.close()
    routing.close()


def test_a_job_routed_in_the_producer_goes_straight_to_its_tier(fleet: ChaosFleet) -> None:
    fleet.mock_config(latency_ms=5)
    settings = fleet.settings.model_copy(deep=True)
    settings.router.in_producer = "all"
    client = Client(settings, redis_url=fleet.redis_url)
    try:
        task_id = client.submit({"prompt": "Add a docstring to parse_rate()", "hints": {"complexity": "low"}})
        # Its record says routed before any worker saw it, and it ran on mini without the router hop
        assert client.status(task_id).state in ("routed", "running", "completed")
        res = client.result(task_id, 30)
        assert res.status == "completed" and res.tier == "mini"
        assert res.routing is not None and "routed in the producer" in res.routing.reasons[-1]
    finally:
        client.close()


def test_a_bulk_retry_redrives_the_matching_escalations_paced_and_leaves_the_rest(fleet: ChaosFleet) -> None:
    # Given an outage of every mini model: 6 jobs of one kind and 2 of another escalate
    fleet.mock_config(latency_ms=5, faults_by_model={m: {"bad_request": 1.0} for m in MINI_CHAIN})
    client = fleet.client
    hit = [
        client.submit({"prompt": f"Rename a{n} to b{n}", "tier": "mini", "kind": "test.redrive"})
        for n in range(6)
    ]
    other = [
        client.submit({"prompt": f"Rename c{n} to d{n}", "tier": "mini", "kind": "test.other"})
        for n in range(2)
    ]
    assert {client.result(t, timeout=30).status for t in hit + other} == {"escalated"}
    # When the outage is over and people redrive one kind's escalations from the CLI
    fleet.mock_config(faults_by_model={})
    args = ["escalations", "retry", "--where", "reason=bad_request", "--where", "kind=test.redrive", "--json"]
    dry = run([*args, "--dry-run"], fleet.cli_env())
    assert dry.returncode == 0 and json.loads(dry.stdout)["matched"] == 6, dry.stderr
    started = time.monotonic()
    done = run([*args, "--yes"], fleet.cli_env(FLEET_ESCALATION__REDRIVE_PER_S="5"))
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["matched"], report["moved"], report["left"]) == (6, 6, {})
    # Then those six run again and complete, paced at 5 a second; the other kind waits for people
    assert {client.result(t, timeout=30).status for t in hit} == {"completed"}
    assert took >= 5 / 5  # five pauses of 0.2 s between six retries
    assert {client.result(t, timeout=5).status for t in other} == {"escalated"}
    # And a bulk discard through the API closes the rest, with the reason for their producers
    api = TestClient(create_api(fleet.settings, fleet.redis_url, token=""))
    body = {"action": "discard", "kind": "test.other", "discard_reason": "outage test", "by": "ops"}
    answer = api.post("/v1/escalations/redrive", json=body)
    assert answer.status_code == 200 and answer.json()["moved"] == 2, answer.text
    assert {client.result(t, timeout=5).status for t in other} == {"discarded"}


class Receiver:
    """A callback endpoint on a free port: records each POST; answers ``fail_first`` 500s, each answer
    after ``delay_s``."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.posts: list[tuple[dict[str, str], bytes, float]] = []
        self.fail_first, self.delay_s = fail_first, delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                time.sleep(receiver.delay_s)
                receiver.posts.append(
                    ({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                )
                failing = len(receiver.posts) <= receiver.fail_first
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_a_callback_posts_the_signed_result_retrying_a_failing_endpoint(fleet: ChaosFleet) -> None:
    # Given an endpoint that fails twice before it answers 200
    fleet.mock_config(latency_ms=5)
    hook = Receiver(fail_first=2)
    try:
        task_id = fleet.client.submit({"prompt": "Rename p to q", "tier": "mini", "callback_url": hook.url})
        res = fleet.client.result(task_id, timeout=30)
        # Then the third POST is taken, each one signed over its timestamp and body
        wait_for(lambda: len(hook.posts) >= 3, 30, "the callback's retries")
        headers, body, _ = hook.posts[-1]
        stamp = headers["x-fleet-timestamp"]
        expected = (
            "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        assert hmac.compare_digest(headers["x-fleet-signature"], expected)
        sent = json.loads(body)
        assert sent["task_id"] == task_id and sent["result"] == res.model_dump(mode="json")
        time.sleep(1.0)
        assert len(hook.posts) == 3  # delivered: no more tries
    finally:
        hook.close()


def test_a_slow_endpoint_never_holds_the_job(fleet: ChaosFleet) -> None:
    # Given an endpoint that takes 4 s to answer
    fleet.mock_config(latency_ms=5)
    hook = Receiver(delay_s=4.0)
    try:
        started = time.monotonic()
        task_id = fleet.client.submit({"prompt": "Rename r to s", "tier": "mini", "callback_url": hook.url})
        assert fleet.client.result(task_id, timeout=30).status == "completed"
        # Then the producer had its result long before the endpoint answered, and the tier is free
        assert time.monotonic() - started < 3.0
        other = fleet.client.submit({"prompt": "Rename t to u", "tier": "mini"})
        assert fleet.client.result(other, timeout=3).status == "completed"
        wait_for(lambda: len(hook.posts) == 1, 30, "the slow callback")
    finally:
        hook.close()
    # And a callback that is not an http(s) URL is refused at the door
    with pytest.raises(InvalidRequest, match="callback_url"):
        fleet.client.submit({"prompt": "x", "callback_url": "ftp://example.com/hook"})
