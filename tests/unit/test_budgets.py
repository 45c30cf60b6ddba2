"""Team budgets' rules: a team's spend against its budget, and what refuse and route_down do to a
batch (a pure unit: the Redis reads and writes are tested on real workers)."""

from __future__ import annotations

import calendar

import pytest

from fleet.budgets import Spend, enforce, periods, spend_of, teams_to_check
from fleet.errors import BudgetExceeded
from fleet.models import Tier
from fleet.producer import prepare
from fleet.settings import BudgetSettings, Settings, TeamBudget, load_settings

BUDGETS = {"acme": TeamBudget(daily_usd=5.0, monthly_usd=100.0), "*": TeamBudget(daily_usd=1.0)}


@pytest.fixture
def settings() -> Settings:
    return load_settings(env={})


def test_a_teams_budget_is_its_own_else_the_default() -> None:
    budgets = BudgetSettings(teams={**BUDGETS, "free": TeamBudget()})
    assert budgets.budget("acme") == BUDGETS["acme"]
    assert budgets.budget("other") == BUDGETS["*"]
    assert budgets.budget("free") is None  # listed with no limit: none (not the default)
    assert BudgetSettings().budget("acme") is None


def test_spend_is_counted_per_utc_day_and_month() -> None:
    assert periods(calendar.timegm((2026, 12, 31, 23, 59, 0))) == ("d:20261231", "m:202612")
    spend = spend_of("acme", BUDGETS["acme"], [b"5000000", None])
    assert (spend.day_usd, spend.month_usd) == (5.0, 0.0)
    assert spend.over is not None and "daily budget is $5.00" in spend.over
    assert Spend("acme", 4.99, 100.0, BUDGETS["acme"]).over is not None  # the month's
    assert Spend("acme", 4.99, 99.0, BUDGETS["acme"]).over is None


def test_refuse_names_the_team_and_leaves_other_teams_alone(settings: Settings) -> None:
    settings.budgets = BudgetSettings(teams=BUDGETS)
    jobs = [prepare(settings, {"prompt": "a", "metadata": {"team": "acme"}}),
            prepare(settings, {"prompt": "b", "metadata": {"team": "beta"}}),
            prepare(settings, {"prompt": "c"})]  # fmt: skip
    assert teams_to_check(settings.budgets, (j.payload for j in jobs)) == ["acme", "beta"]
    with pytest.raises(BudgetExceeded, match=r"team 'acme' spent \$5.00 today.*refused"):
        enforce(settings.budgets, jobs, {"acme": Spend("acme", 5.0, 5.0, BUDGETS["acme"])})
    enforce(settings.budgets, jobs, {"beta": Spend("beta", 0.5, 0.5, BUDGETS["*"])})  # under: nothing


def test_route_down_sends_a_teams_jobs_to_mini_but_not_interactive_ones_or_pipelines(
    settings: Settings,
) -> None:
    settings.budgets = BudgetSettings(teams=BUDGETS, action="route_down")
    team = {"metadata": {"team": "acme"}}
    routed, pinned, fast, hinted, piped, other = (
        prepare(settings, {"prompt": "a", **team}),
        prepare(settings, {"prompt": "b", "tier": "full", **team}),
        prepare(settings, {"prompt": "c", "tier": "fast", **team}),
        prepare(settings, {"prompt": "d", "hints": {"latency_budget_ms": 800}, **team}),
        prepare(settings, {"prompt": "e", "pipeline": "extract_reason", **team}),
        prepare(settings, {"prompt": "f", "tier": "full", "metadata": {"team": "beta"}}),
    )
    jobs = [routed, pinned, fast, hinted, piped, other]
    enforce(settings.budgets, jobs, {"acme": Spend("acme", 6.0, 6.0, BUDGETS["acme"])})
    for job in (routed, pinned):
        assert job.envelope.routing is not None and job.envelope.routing.tier is Tier.MINI
        assert (
            job.envelope.routing.classifier == "budget"
            and "routed down to mini" in job.envelope.routing.reasons[0]
        )
        assert "tier" not in job.payload
    assert fast.envelope.routing is not None and fast.envelope.routing.tier is Tier.FAST
    assert hinted.envelope.routing is None and piped.envelope.routing is None
    assert other.envelope.routing is not None and other.envelope.routing.tier is Tier.FULL
