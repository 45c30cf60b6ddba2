"""Team budgets: spend per team, counted fleet-wide in Redis, and the check at submit.

A job's team is ``metadata[budgets.team_key]`` (``"team"`` by default). Each finished job adds its
cost (at list prices, in micro-USD) to its team's hash, ``fleet:spend:<team>``, under the fields
``d:YYYYMMDD`` and ``m:YYYYMM`` (UTC), with the job's last round trip: a team's spend costs no round
trip of its own. Shadow runs are the fleet's own checks and are not charged to a team.

At submit, the producer reads the spend of the teams in the batch that have a budget (one round
trip; none when no team of the batch has one). A team at its daily or monthly budget gets, as
``budgets.action`` says:

- ``refuse``: :class:`BudgetExceeded` (exit code 9, HTTP 429) naming the team, its spend and its
  budget; nothing of the batch is enqueued;
- ``route_down``: its jobs go to the mini tier, the reason on their routing; an interactive job
  (pinned to fast, or with a latency budget) keeps its way, as does a pipeline (its steps have tiers).

Spend is counted when a job finishes, so jobs already queued or running when a team reaches its
budget still run: a budget can be overrun by what was in flight.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet import keys
from fleet.errors import BudgetExceeded
from fleet.models import RoutingDecision, Tier

if TYPE_CHECKING:
    from fleet.middleware.tail import Tail
    from fleet.producer import Outgoing

__all__ = [
    "BudgetExceeded",
    "BudgetSettings",
    "Spend",
    "TeamBudget",
    "charge",
    "enforce",
    "enforce_read",
    "periods",
    "queue_spend_reads",
    "spend_of",
    "team_of",
    "teams_to_check",
]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeamBudget(_Config):
    """A team's spend limits in USD at list prices (None: no limit); days and months in UTC."""

    daily_usd: float | None = Field(default=None, gt=0)
    monthly_usd: float | None = Field(default=None, gt=0)


class BudgetSettings(_Config):
    """Spend per team, counted fleet-wide in Redis, and what happens at a team's budget."""

    #: The ``metadata`` key that names a job's team (jobs without it belong to no team).
    team_key: str = Field(default="team", min_length=1)
    #: At a team's budget: "refuse" its new jobs at submit (BudgetExceeded), or "route_down" them
    #: to the mini tier (a fast job stays on fast: it is already a cheap model).
    action: Literal["refuse", "route_down"] = "refuse"
    #: Budgets by team name; ``"*"`` applies to every team not listed.
    teams: dict[str, TeamBudget] = Field(default_factory=dict)

    def budget(self, team: str) -> TeamBudget | None:
        """The budget of ``team`` (its own, else ``"*"``'s), None when it has none."""
        found = self.teams.get(team) or self.teams.get("*")
        return found if found is not None and (found.daily_usd or found.monthly_usd) else None


#: Micro-USD per USD: spend is counted in whole micro-dollars (HINCRBY).
MICRO = 1_000_000
#: A team's spend hash lives this long after its last job (a month's field must outlive the month).
SPEND_TTL_S = 40 * 86400


@dataclass(frozen=True, slots=True)
class Spend:
    """A team's spend today and this month (UTC), in USD, beside its budget."""

    team: str
    day_usd: float
    month_usd: float
    budget: TeamBudget | None

    @property
    def over(self) -> str | None:
        """Why the team is at its budget, or None."""
        b = self.budget
        if b is None:
            return None
        if b.daily_usd is not None and self.day_usd >= b.daily_usd:
            return (
                f"team {self.team!r} spent ${self.day_usd:.2f} today; its daily budget is ${b.daily_usd:.2f}"
            )
        if b.monthly_usd is not None and self.month_usd >= b.monthly_usd:
            return (
                f"team {self.team!r} spent ${self.month_usd:.2f} this month; "
                f"its monthly budget is ${b.monthly_usd:.2f}"
            )
        return None


def team_of(budgets: BudgetSettings, metadata: Mapping[str, str] | None) -> str | None:
    """A job's team: its ``metadata[team_key]``, or None."""
    team = (metadata or {}).get(budgets.team_key)
    return team or None


def periods(now: float) -> tuple[str, str]:
    """The spend hash's fields for ``now``: the UTC day's and month's."""
    day = time.strftime("%Y%m%d", time.gmtime(now))
    return f"d:{day}", f"m:{day[:6]}"


def charge(tail: Tail, team: str, cost_usd: float, now: float) -> None:
    """Add a finished job's cost to its team's spend, with the job's last writes."""
    micro = round(cost_usd * MICRO)
    if micro > 0:
        for field in periods(now):
            tail.incr(keys.spend(team), field, micro, SPEND_TTL_S)


def spend_of(team: str, budget: TeamBudget | None, raw: Sequence[Any]) -> Spend:
    """A team's :class:`Spend` from its hash's day and month fields (HMGET, in :func:`periods` order)."""
    day, month = (int(v) / MICRO if v is not None else 0.0 for v in raw)
    return Spend(team, day, month, budget)


def teams_to_check(budgets: BudgetSettings, payloads: Iterable[Mapping[str, Any]]) -> list[str]:
    """The teams of these jobs that have a budget (whose spend the producer must read)."""
    found: set[str] = set()
    for payload in payloads:
        team = team_of(budgets, payload.get("metadata"))
        if team is not None and budgets.budget(team) is not None:
            found.add(team)
    return sorted(found)


def queue_spend_reads(pipe: Any, teams: Sequence[str], now: float) -> None:
    """Queue on ``pipe`` (redis-py's or redis.asyncio's) the reads of these teams' spend."""
    for team in teams:
        pipe.hmget(keys.spend(team), *periods(now))


def enforce_read(
    budgets: BudgetSettings, jobs: Sequence[Outgoing], teams: Sequence[str], raws: Sequence[Any]
) -> None:
    """:func:`enforce` with the replies of :func:`queue_spend_reads`.

    Raises:
        BudgetExceeded: ``refuse``, and a team of the batch is at its budget.
    """
    spend = {team: spend_of(team, budgets.budget(team), raw) for team, raw in zip(teams, raws, strict=True)}
    enforce(budgets, jobs, spend)


def enforce(budgets: BudgetSettings, jobs: Sequence[Outgoing], spend: Mapping[str, Spend]) -> None:
    """Apply ``budgets.action`` to the jobs of teams at their budget (``spend``: the teams read).

    Raises:
        BudgetExceeded: ``refuse``, and a team of the batch is at its budget.
    """
    over = {team: why for team, s in spend.items() if (why := s.over) is not None}
    if not over:
        return
    if budgets.action == "refuse":
        raise BudgetExceeded([f"{why}: refused (budgets.action = refuse)" for why in over.values()])
    for job in jobs:
        team = team_of(budgets, job.payload.get("metadata"))
        if team not in over or not _routes_down(job):
            continue
        job.envelope.routing = RoutingDecision(
            tier=Tier.MINI, classifier="budget", reasons=[f"{over[team]}: routed down to mini"]
        )
        job.payload.pop("tier", None)


def _routes_down(job: Outgoing) -> bool:
    """Whether a job of a team at its budget goes down to mini (an interactive one, a pipeline and
    one already on mini keep their way)."""
    payload = job.payload
    hints = payload.get("hints") or {}
    pinned = job.envelope.routing.tier if job.envelope.routing is not None else None
    keeps = payload.get("pipeline") or hints.get("latency_budget_ms") or pinned in (Tier.FAST, Tier.MINI)
    return not keeps
