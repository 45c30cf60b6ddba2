"""Team fair shares of a tier (fleet.fairness): the admission asked with a job's start, on a real broker
(the embedded valkey-server), and the marks a job's way leaves behind."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import pytest
import redis

from fleet import keys
from fleet.app import app, encode_result
from fleet.boundary import BoundaryRedis
from fleet.fairness import FairAnswer, FairShare, queue_wait
from fleet.limits import Bucket
from fleet.middleware.base import Job, Middleware, Requeue
from fleet.middleware.start import QueueToken, RedisJobStarter, StartPlan
from fleet.middleware.tail import RedisTail
from fleet.models import JobEnvelope, RoutingDecision, Tier
from fleet.producer import Outgoing, queue_records, queue_routing
from fleet.runner import JobRunner
from fleet.settings import Settings, load_settings

from .middleware.harness import Harness


class Fleet:
    """One tier worker's view: its FairShare and start on the broker, jobs built by the harness."""

    def __init__(self, client: redis.Redis, *, slots: int = 2, enabled: bool = True, extra: Any = ()) -> None:
        self.settings = load_settings(
            env={}, overrides={"queues.mini.concurrency": slots, "fairness.enabled": enabled}
        )
        self.client = client
        self.h = Harness(self.settings)
        self.fair = FairShare(self.settings.fairness, self.settings.budgets)
        self.starter = RedisJobStarter(client)
        self.runner = JobRunner(
            [self.fair, *extra], self.starter, self.h.chain, self.h.hand_over, self.settings.limits
        )

    def job(self, task_id: str, team: str | None, *, tier: str = "mini") -> Job:
        """A job whose last writes go to the broker, as a tier worker's do."""
        metadata = {"team": team} if team is not None else {}
        job = self.h.job(task_id=task_id, tier=tier, metadata=metadata)
        job.tail = RedisTail(self.client, partial(encode_result, app))
        return job

    def end(self, job: Job) -> None:
        """A job's end as the runner does it: FairShare's part, then the job's last writes."""
        self.fair.after_job(job)
        job.tail.flush()

    def wait(
        self, task_id: str, team: str, *, tier: str = "mini", ttl_s: float = 900.0, delay_s: float = 0.0
    ) -> None:
        """A job of ``team`` sent to the tier's queue (the producer's mark), to start in ``delay_s``."""
        pipe = self.client.pipeline(transaction=False)
        queue_wait(pipe, tier, team, task_id, ttl_s, delay_s=delay_s)
        pipe.execute()

    def start(self, job: Job, plan: StartPlan | None = None) -> FairAnswer | None:
        """A job's start and FairShare's reading of it, as the runner does them (Requeue: refused)."""
        plan = plan or StartPlan(job.id)
        self.fair.before_start(job, plan)
        answer = self.starter.start(plan)
        self.fair.after_start(job, answer)
        return answer.fair

    def run(self, task_id: str, team: str) -> FairAnswer | None:
        """A job of ``team`` that was waiting and starts now (admitted, still running)."""
        self.wait(task_id, team)
        return self.start(self.job(task_id, team))

    def waiting(self, team: str, tier: str = "mini") -> set[str]:
        return _members(self.client, keys.fair_waiting(tier, team))

    def running(self, team: str, tier: str = "mini") -> set[str]:
        return _members(self.client, keys.fair_running(tier, team))


def _members(client: redis.Redis, key: str) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else str(m) for m in client.zrange(key, 0, -1)}


@pytest.fixture
def fleet(clean_redis: redis.Redis) -> Fleet:
    return Fleet(clean_redis)


def test_a_team_alone_is_never_held_back(fleet: Fleet) -> None:
    # Given a tier of 2 slots and one team with a backlog of 5
    for i in range(5):
        fleet.wait(f"a{i}", "a")
    # When all of them start, Then none is refused: no other team waits
    for i in range(5):
        answer = fleet.start(fleet.job(f"a{i}", "a"))
        assert answer is not None and answer.admitted
    assert fleet.running("a") == {f"a{i}" for i in range(5)} and fleet.waiting("a") == set()


def test_a_team_at_its_share_is_refused_only_while_another_team_waits(fleet: Fleet) -> None:
    # Given team a runs both slots of a tier and team b has a job waiting
    fleet.run("a1", "a")
    fleet.run("a2", "a")
    fleet.wait("b1", "b")
    fleet.wait("a3", "a")
    # When a's next job starts, Then it is refused with what its share found
    with pytest.raises(Requeue) as refused:
        fleet.start(fleet.job("a3", "a"))
    assert refused.value.countdown_s == fleet.settings.fairness.requeue_s
    assert (
        refused.value.why == "team a is at its share of the mini tier (2 of 2 running while other teams wait)"
    )
    assert fleet.waiting("a") == {"a3"} and fleet.running("a") == {"a1", "a2"}
    # And b's job is let in, after which a is no longer held back
    assert (b1 := fleet.start(fleet.job("b1", "b"))) is not None and b1.admitted
    assert fleet.start(fleet.job("a3", "a")) == FairAnswer(True, 2, 3, 2, 0)


def test_two_teams_share_a_full_tier_by_halves(clean_redis: redis.Redis) -> None:
    # Given a tier of 4 slots: a runs 2, b runs 1 (one slot is free), and both have more waiting
    fleet = Fleet(clean_redis, slots=4)
    for name in ("a1", "a2"):
        fleet.run(name, "a")
    b1 = fleet.job("b1", "b")
    fleet.start(b1)
    for name, team in (("a3", "a"), ("b2", "b"), ("b3", "b")):
        fleet.wait(name, team)
    # When a's third job starts, Then it is refused: 2 of what would be 4 is its share
    with pytest.raises(Requeue):
        fleet.start(fleet.job("a3", "a"))
    # And b's second takes the free slot (1 < 2)
    assert fleet.start(fleet.job("b2", "b")) == FairAnswer(True, 1, 3, 2, 1)
    # When b's first ends and a slot is free again, Then a is still held to its half while b waits
    fleet.end(b1)
    assert fleet.running("b") == {"b2"}
    with pytest.raises(Requeue):
        fleet.start(fleet.job("a3", "a"))
    assert fleet.start(fleet.job("b3", "b")) == FairAnswer(True, 1, 3, 2, 1)


def test_an_odd_slot_goes_to_whichever_team_comes_first(clean_redis: redis.Redis) -> None:
    # Given a tier of 3 slots where a and b run 1 each and b has another waiting
    fleet = Fleet(clean_redis, slots=3)
    fleet.run("a1", "a")
    fleet.run("b1", "b")
    fleet.wait("b2", "b")
    # When a's next job comes first, Then it takes the third slot: a share rounds up
    assert fleet.run("a2", "a") == FairAnswer(True, 1, 2, 2, 1)


def test_three_teams_share_a_full_tier_by_thirds(clean_redis: redis.Redis) -> None:
    # Given a tier of 5 slots: a runs 4 and c runs 1, and each of a, b and c has a job waiting
    fleet = Fleet(clean_redis, slots=5)
    for i in range(4):
        fleet.run(f"a{i}", "a")
    fleet.run("c0", "c")
    for name, team in (("a9", "a"), ("b0", "b"), ("c1", "c")):
        fleet.wait(name, team)
    # When each team's job starts, Then a (4 of 6, share 2) is refused, b (0) and c (1 < 2) are let in
    with pytest.raises(Requeue) as refused:
        fleet.start(fleet.job("a9", "a"))
    assert "(4 of 5 running while other teams wait)" in refused.value.why
    assert fleet.start(fleet.job("b0", "b")) == FairAnswer(True, 0, 5, 3, 2)
    assert fleet.start(fleet.job("c1", "c")) == FairAnswer(True, 1, 6, 3, 1)


def test_a_tier_with_room_for_every_waiting_job_refuses_nobody(clean_redis: redis.Redis) -> None:
    # Given a tier of 16 slots where a runs 5 and b has 2 jobs waiting
    fleet = Fleet(clean_redis, slots=16)
    for i in range(5):
        fleet.run(f"a{i}", "a")
    fleet.wait("b0", "b")
    fleet.wait("b1", "b")
    # When a's sixth starts, Then it is let in: 6 running + b's 2 fit in the tier's slots
    assert fleet.run("a5", "a") == FairAnswer(True, 5, 5, 2, 2)


def test_lapsed_marks_are_dropped_and_hold_nobody_back(fleet: Fleet) -> None:
    # Given a runs both slots, b's only waiting mark lapsed (a lost message) and a's first running
    # mark lapsed too (its worker died)
    fleet.run("a1", "a")
    fleet.run("a2", "a")
    past = int(time.time() * 1000) - 1000
    fleet.client.zadd(keys.fair_waiting("mini", "b"), {"b-lost": past})
    fleet.client.sadd(keys.fair_teams("mini"), "b")
    fleet.client.zadd(keys.fair_running("mini", "a"), {"a1": past})
    # When a's next job starts, Then it is let in, the lapsed marks are gone and so is team b
    assert fleet.run("a3", "a") == FairAnswer(True, 1, 1, 1, 0)
    assert fleet.running("a") == {"a2", "a3"}
    assert fleet.client.exists(keys.fair_waiting("mini", "b")) == 0
    assert fleet.client.smembers(keys.fair_teams("mini")) == {b"a"}


def test_a_redelivered_job_does_not_count_against_itself(clean_redis: redis.Redis) -> None:
    # Given a tier of 4 slots where a runs 2 (one of them a job whose worker died: its running mark
    # is still live) and b runs 1 and has another waiting
    fleet = Fleet(clean_redis, slots=4)
    fleet.run("a1", "a")
    fleet.run("a2", "a")
    fleet.run("b1", "b")
    fleet.wait("b2", "b")
    # When that job is delivered again, Then it is let in: it runs beside 1 of a's, not 2
    assert fleet.start(fleet.job("a2", "a")) == FairAnswer(True, 1, 2, 2, 1)


def test_a_job_held_back_for_a_countdown_holds_nobody_back_until_it_is_over(fleet: Fleet) -> None:
    # Given a tier of 2 slots where b runs 1 and a's only job went back to its queue for 0.3 s
    fleet.run("b1", "b")
    fleet.wait("a1", "a", delay_s=0.3)
    # When b's next job starts, Then it takes the free slot: a's job could not start now anyway
    b2 = fleet.job("b2", "b")
    assert fleet.start(b2) == FairAnswer(True, 1, 1, 1, 0)
    fleet.end(b2)
    # And once the countdown is over, a's job counts again and b is held to its share
    time.sleep(0.35)
    with pytest.raises(Requeue):
        fleet.run("b3", "b")


def test_a_job_without_a_team_takes_no_part(fleet: Fleet) -> None:
    # Given a runs both slots and b waits
    fleet.run("a1", "a")
    fleet.run("a2", "a")
    fleet.wait("b1", "b")
    before = sorted(fleet.client.scan_iter("fleet:fair:*"))
    # When a job with no team runs, Then it runs and leaves no mark
    plan = StartPlan("x1")
    job = fleet.job("x1", None)
    assert fleet.start(job, plan) is None and plan.fair is None
    assert fleet.runner.run(fleet.job("x2", None)).result.status == "completed"
    assert sorted(fleet.client.scan_iter("fleet:fair:*")) == before


def test_with_fairness_off_nobody_is_marked_or_refused(clean_redis: redis.Redis) -> None:
    fleet = Fleet(clean_redis, enabled=False)
    fleet.wait("b1", "b")  # (a mark left from before it was turned off)
    for i in range(3):
        assert fleet.start(fleet.job(f"a{i}", "a")) is None
    assert fleet.running("a") == set()


def test_a_refused_start_takes_no_rate_limit_token(fleet: Fleet) -> None:
    # Given a at its share while b waits, on a tier with a rate limit
    fleet.run("a1", "a")
    fleet.run("a2", "a")
    fleet.wait("b1", "b")
    bucket = Bucket(keys.bucket("queue", "mini"), rate_per_s=1.0, burst=1.0)
    plan = StartPlan("a3", queue=QueueToken([bucket], keys.rate_counter("mini", 0), 5.0))
    # When a's next job is refused, Then the queue's bucket and counter are untouched
    with pytest.raises(Requeue):
        fleet.start(fleet.job("a3", "a"), plan)
    assert fleet.client.exists(bucket.key, keys.rate_counter("mini", 0)) == 0
    # (and a job that is let in takes its token with the same start)
    plan = StartPlan("b1", queue=QueueToken([bucket], keys.rate_counter("mini", 0), 5.0))
    fleet.start(fleet.job("b1", "b"), plan)
    assert fleet.client.exists(bucket.key) == 1


def test_a_finished_job_leaves_no_mark(fleet: Fleet) -> None:
    # Given a job of a that was sent to the tier
    fleet.wait("a1", "a")
    # When it runs to its end, Then neither its waiting nor its running mark is left
    ran = fleet.runner.run(fleet.job("a1", "a"))
    assert ran.result.status == "completed"
    assert fleet.waiting("a") == set() and fleet.running("a") == set()


def test_a_refused_job_waits_again_and_its_refusals_are_no_rate_limit(fleet: Fleet) -> None:
    # Given a at its share while b waits
    fleet.run("a1", "a")
    fleet.run("a2", "a")
    fleet.wait("b1", "b")
    fleet.wait("a3", "a")
    job = fleet.job("a3", "a")
    # When a's next job runs, Then it goes back to its queue, still marked waiting (for longer)
    before = fleet.client.zscore(keys.fair_waiting("mini", "a"), "a3")
    with pytest.raises(Requeue):
        fleet.runner.run(job)
    after = fleet.client.zscore(keys.fair_waiting("mini", "a"), "a3")
    assert before is not None and after is not None and after >= before
    assert fleet.running("a") == {"a1", "a2"}
    # And it is not ready to start before its countdown is over
    ready = fleet.client.zscore(keys.fair_delayed("mini", "a"), "a3")
    assert ready is not None and abs(ready - (time.time() + fleet.settings.fairness.requeue_s) * 1000) < 500
    # And the refusal is not counted as a rate-limit requeue (fleet.runner.MAX_REQUEUES)
    assert job.envelope.requeues == 0


class _Upgrade(Middleware):
    """Sends every job up to the full tier once it runs (as the quality gate does)."""

    def before_call(self, job: Job) -> None:
        raise Requeue(0.0, "quality gate: too weak", queue="full")


def test_a_job_sent_to_another_tier_waits_there(clean_redis: redis.Redis) -> None:
    fleet = Fleet(clean_redis, extra=[_Upgrade()])
    fleet.wait("a1", "a")
    job = fleet.job("a1", "a")
    # When a's job is let in on mini and then sent up to full
    with pytest.raises(Requeue):
        fleet.runner.run(job)
    # Then it holds nothing on mini and waits on full, its team known there
    assert fleet.running("a") == set() and fleet.waiting("a") == set()
    assert fleet.waiting("a", "full") == {"a1"}
    assert fleet.client.smembers(keys.fair_teams("full")) == {b"a"}
    # And that requeue is counted as any other (only fairness's own refusals are not)
    assert job.envelope.requeues == 1


def test_a_jobs_marks_go_with_its_last_writes_in_one_round_trip(fleet: Fleet) -> None:
    # Given a job of a that waited and was let in
    fleet.wait("a1", "a")
    job = fleet.job("a1", "a")
    fleet.start(job)
    assert fleet.running("a") == {"a1"}
    # When its end is read, Then nothing is sent yet: the marks wait for the job's last writes
    fleet.fair.after_job(job)
    assert fleet.running("a") == {"a1"}
    # And they go with them
    assert job.tail.flush() == "sent"
    assert fleet.running("a") == set() and fleet.waiting("a") == set()


def test_a_run_another_worker_took_over_leaves_that_runs_marks(fleet: Fleet) -> None:
    # Given a job of a that started here under this run's lock
    fleet.wait("a1", "a")
    job = fleet.job("a1", "a")
    fleet.start(job)
    # And another worker took it over (this run was judged dead) and runs it now
    fleet.client.set(keys.running("a1"), "other:1")
    # When this run ends, Then its writes are dropped: the job's running mark is the other run's
    fleet.fair.after_job(job)
    job.tail.guard("a1", "me:1")
    assert job.tail.flush() == "superseded"
    assert fleet.running("a") == {"a1"}


# -- the waiting marks of the producer and the router ----------------------------------------------


def _outgoing(task_id: str, *, team: str | None, tier: str | None) -> Outgoing:
    routing = None
    if tier is not None:
        routing = RoutingDecision(tier=Tier(tier), reasons=["pinned"], classifier="pinned")
    payload: dict[str, Any] = {"prompt": "Rename x"}
    if team is not None:
        payload["metadata"] = {"team": team}
    return Outgoing(payload, JobEnvelope(id=task_id, submitted_at=time.time(), routing=routing))


def _settings(**overrides: object) -> Settings:
    return load_settings(env={}, overrides=overrides)


def test_the_producer_marks_a_teams_job_sent_straight_to_a_tier(clean_redis: redis.Redis) -> None:
    jobs = [
        _outgoing("p1", team="a", tier="mini"),  # pinned: straight to mini
        _outgoing("p2", team="a", tier=None),  # to the router: marked there
        _outgoing("p3", team=None, tier="mini"),  # no team
    ]
    pipe = clean_redis.pipeline(transaction=False)
    queue_records(pipe, jobs, 60, settings=_settings())
    pipe.execute()
    assert clean_redis.zrange(keys.fair_waiting("mini", "a"), 0, -1) == [b"p1"]
    assert clean_redis.smembers(keys.fair_teams("mini")) == {b"a"}
    score = clean_redis.zscore(keys.fair_waiting("mini", "a"), "p1")
    assert score is not None and abs(score - (time.time() + 900) * 1000) < 5000
    assert 0 < clean_redis.pttl(keys.fair_waiting("mini", "a")) <= 900_000
    # Without settings (or with fairness off), nothing is marked
    clean_redis.delete(keys.fair_waiting("mini", "a"))
    pipe = clean_redis.pipeline(transaction=False)
    queue_records(pipe, jobs, 60)
    queue_records(pipe, jobs, 60, settings=_settings(**{"fairness.enabled": False}))
    pipe.execute()
    assert clean_redis.exists(keys.fair_waiting("mini", "a")) == 0


def test_the_router_marks_a_teams_job_with_its_decision(clean_redis: redis.Redis) -> None:
    decision = RoutingDecision(tier=Tier.STANDARD, reasons=["score 3"], classifier="heuristic")
    client = BoundaryRedis(connection_pool=clean_redis.connection_pool)
    fairness = _settings().fairness
    pipe = client.pipeline(transaction=False)
    queue_routing(pipe, "r1", decision, 60, team="a", fairness=fairness)
    queue_routing(pipe, "r2", decision, 60, team=None, fairness=fairness)
    queue_routing(pipe, "r3", decision, 60, team="a")
    pipe.execute()
    assert clean_redis.zrange(keys.fair_waiting("standard", "a"), 0, -1) == [b"r1"]
    assert clean_redis.hget(keys.job("r1"), "state") == b"routed"
