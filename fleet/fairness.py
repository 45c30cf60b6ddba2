"""Team fair shares of a tier's concurrency: a team cannot take more than its share of a tier's
workers while another team's jobs wait for them.

A job's team is its ``metadata[budgets.team_key]`` (:func:`fleet.budgets.team_of`); a job without
one takes no part, and costs no Redis work. Each tier keeps, per team, the jobs waiting in its queue
and the jobs running on it (:func:`fleet.keys.fair_waiting`, :func:`fleet.keys.fair_running`): sorted
sets of job ids scored by when each mark lapses.

- A job sent to a tier's queue is marked waiting with the write that records it (the producer's
  pipeline, the router's): :func:`queue_wait`, no round trip of its own.
- Its start asks its share with the rest of the start (``fair_admit.lua`` in ``job_start.lua``): once
  its lock is held and before any rate-limit token is taken. It is refused when another team has
  a job ready to start, its own team already runs ``ceil((running + 1) / teams)`` of the tier's jobs,
  and the tier has no room (its configured slots) for it and every such job of the other teams. A
  refused job goes back to its queue for ``fairness.requeue_s`` (:class:`FairShare`).
- Its end drops its marks, or marks it waiting where it goes next (a requeue, an upgrade to another
  tier), with the job's last writes (its tail: no round trip of their own). A job sent back for a
  countdown is not ready to start, and holds no other team back, until its countdown is over
  (:func:`fleet.keys.fair_delayed`): a tier's slots do not stand idle for jobs held back for later.

The share is of what runs now, so no worker count is needed to be fair, and a team alone on a tier
is never held back. Marks bound what a lost message costs: a waiting mark lapses after
``fairness.wait_ttl_s``, a running one after the tier's ``timeout_s`` + 60 s.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from fleet import keys
from fleet.budgets import BudgetSettings, team_of
from fleet.middleware.base import Job, Middleware, Requeue

if TYPE_CHECKING:
    from fleet.middleware.start import StartAnswer, StartPlan
    from fleet.middleware.tail import Tail
    from fleet.settings import QueueSettings, Settings

__all__ = [
    "FairAnswer",
    "FairAsk",
    "FairShare",
    "FairnessSettings",
    "capacity",
    "marked_team",
    "queue_wait",
]

log = logging.getLogger(__name__)

#: How much longer than the tier's ``timeout_s`` a running mark lives (a hard time limit is +30 s).
LEASE_GRACE_S = 60.0
#: How long a tier's set of teams lives after its last mark (always longer than any mark).
TEAMS_TTL_S = 86_400


class FairnessSettings(BaseModel):
    """``[fairness]``: team fair shares of each tier's concurrency."""

    model_config = ConfigDict(extra="forbid")

    #: Hold a team to its share of a tier while another team's jobs wait (jobs without a team: never).
    enabled: bool = True
    #: How long a waiting mark lives, in seconds: what a lost or purged message can cost (it holds
    #: the other teams to their share that long at most). A job that waits longer stops counting.
    wait_ttl_s: float = Field(default=900.0, gt=0)
    #: The countdown of a job refused its start, in seconds (it goes to the back of its queue).
    requeue_s: float = Field(default=1.0, ge=0)


@dataclass(frozen=True, slots=True)
class FairAsk:
    """A job's share, asked with its start: its tier and team, its running mark's lease, the tier's
    configured worker slots (0: unknown) and how long a tier's set of teams lives."""

    tier: str
    team: str
    lease_ms: int
    capacity: int
    teams_ttl_ms: int

    def spec(self, task_id: str) -> str:
        """``fair_admit.lua``'s spec (JSON)."""
        return json.dumps({
            "teams": keys.fair_teams(self.tier), "waiting": keys.fair_waiting(self.tier, ""),
            "delayed": keys.fair_delayed(self.tier, ""), "running": keys.fair_running(self.tier, ""),
            "team": self.team, "job": task_id,
            "lease_ms": self.lease_ms, "capacity": self.capacity, "teams_ttl_ms": self.teams_ttl_ms,
        })  # fmt: skip


@dataclass(frozen=True, slots=True)
class FairAnswer:
    """What a job's share found: ``admitted``, its team's running jobs (``own``), every team's
    (``running``), the active ``teams`` and the other teams' ``waiting`` jobs (the job in none)."""

    admitted: bool
    own: int
    running: int
    teams: int
    waiting: int


def marked_team(settings: Settings, metadata: Mapping[str, str] | None) -> str | None:
    """A job's team when fairness marks its jobs (None: fairness is off, or the job has no team)."""
    return team_of(settings.budgets, metadata) if settings.fairness.enabled else None


def queue_wait(pipe: Any, tier: str, team: str, job_id: str, ttl_s: float, *, delay_s: float = 0.0) -> None:
    """Queue on ``pipe`` (redis-py's, or redis.asyncio's) a job's waiting mark in ``tier``'s queue,
    lapsing in ``ttl_s``; a job that cannot start for ``delay_s`` (a requeue's countdown) is not
    ready to start, and holds no other team back, until then. Times are this machine's: a skew of
    seconds against minutes is harmless. The team joins the tier's set after the mark, never before
    it: a start in between would drop a team it finds with nothing waiting."""
    now_ms, ttl_ms, delay_ms = int(time.time() * 1000), math.ceil(ttl_s * 1000), math.ceil(delay_s * 1000)
    waiting = keys.fair_waiting(tier, team)
    pipe.zadd(waiting, {job_id: now_ms + delay_ms + ttl_ms})
    pipe.pexpire(waiting, delay_ms + ttl_ms)
    if delay_ms > 0:
        delayed = keys.fair_delayed(tier, team)
        pipe.zadd(delayed, {job_id: now_ms + delay_ms})
        pipe.pexpire(delayed, delay_ms + ttl_ms)  # (not delay_ms: another's delay may be longer)
    pipe.sadd(keys.fair_teams(tier), team)
    pipe.expire(keys.fair_teams(tier), max(TEAMS_TTL_S, math.ceil(ttl_s)))


def capacity(queue: QueueSettings) -> int:
    """A tier's worker slots as configured (an autoscaled pool's ceiling), on one machine: a fleet
    on several counts more, which only makes the share stricter than it needs to be."""
    slots = queue.autoscale[1] if queue.autoscale is not None else queue.concurrency
    return slots * queue.processes


@dataclass
class _Share:
    """A delivery's part in its team's share (``job.notes``)."""

    team: str
    admitted: bool = False
    #: The queue the delivery goes back to (a requeue), None while it does not, and its countdown.
    back_to: str | None = None
    back_in_s: float = 0.0
    refusal: Requeue | None = None


class FairShare(Middleware):
    """Holds a team to its share of a tier while other teams' jobs wait (see the module's docstring)."""

    def __init__(self, fairness: FairnessSettings, budgets: BudgetSettings) -> None:
        self.fairness = fairness
        self.budgets = budgets
        self._teams_ttl_ms = max(TEAMS_TTL_S, math.ceil(fairness.wait_ttl_s)) * 1000

    def _team(self, job: Job) -> str | None:
        if not self.fairness.enabled or job.envelope.shadow is not None:
            return None  # a shadow run is the fleet's own check, not the team's work
        if job.envelope.batch is not None:
            return None  # a provider batch's answer: it makes no model call here
        return team_of(self.budgets, job.request.metadata)

    def before_start(self, job: Job, plan: StartPlan) -> None:
        team = self._team(job)
        if team is None:
            return
        job.notes["FairShare"] = _Share(team)
        lease_ms = math.ceil((job.queue.timeout_s + LEASE_GRACE_S) * 1000)
        plan.fair = FairAsk(job.queue.name, team, lease_ms, capacity(job.queue), self._teams_ttl_ms)

    def after_start(self, job: Job, answer: StartAnswer) -> None:
        share: _Share | None = job.notes.get("FairShare")
        if share is None or answer.fair is None:
            return
        if answer.fair.admitted:
            share.admitted = True
            return
        got = answer.fair
        share.refusal = Requeue(
            self.fairness.requeue_s,
            f"team {share.team} is at its share of the {job.queue.name} tier "
            f"({got.own} of {got.running} running while other teams wait)",
        )
        raise share.refusal

    def on_requeue(self, job: Job, requeue: Requeue) -> None:
        share: _Share | None = job.notes.get("FairShare")
        if share is None:
            return
        share.back_to, share.back_in_s = requeue.queue or job.queue.name, requeue.countdown_s
        if requeue is share.refusal:
            # Not a rate limit: a busy team's job may be refused many times while others catch up,
            # and must not be escalated as "throttled" for it (fleet.runner.MAX_REQUEUES).
            job.envelope.requeues -= 1

    def after_job(self, job: Job) -> None:
        share: _Share | None = job.notes.get("FairShare")
        if share is None:
            return
        tier, team = job.queue.name, share.team
        marks = _OnTail(job.tail)  # with the job's last writes: no round trip of their own
        if share.admitted:
            marks.zrem(keys.fair_running(tier, team), job.id)
        if share.back_to != tier:
            marks.zrem(keys.fair_waiting(tier, team), job.id)
            marks.zrem(keys.fair_delayed(tier, team), job.id)
        if share.back_to is not None:
            queue_wait(marks, share.back_to, team, job.id, self.fairness.wait_ttl_s, delay_s=share.back_in_s)


class _OnTail:
    """The pipeline commands :func:`queue_wait` and a job's end send, queued on the job's tail
    (:mod:`fleet.middleware.tail`) instead: applied with its result, only while the run is still the
    job's (a run another worker took over leaves that run's marks alone). A tail the broker never
    takes leaves them to lapse, as every mark can."""

    def __init__(self, tail: Tail) -> None:
        self._tail = tail

    def zadd(self, key: str, mapping: Mapping[str, int]) -> None:
        for member, score in mapping.items():
            self._tail.command("ZADD", key, str(score), member)

    def zrem(self, key: str, member: str) -> None:
        self._tail.command("ZREM", key, member)

    def pexpire(self, key: str, ms: int) -> None:
        self._tail.command("PEXPIRE", key, str(ms))

    def sadd(self, key: str, member: str) -> None:
        self._tail.command("SADD", key, member)

    def expire(self, key: str, seconds: int) -> None:
        self._tail.command("EXPIRE", key, str(seconds))
