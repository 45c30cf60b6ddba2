"""Outcome feedback: seeded failures move a kind up a tier; recovery moves it back down; the router
says why; pinned tiers and hints are never moved."""

from __future__ import annotations

from fleet.models import TaskRequest, Tier
from fleet.quality.config import FeedbackSettings
from fleet.quality.feedback import PassRates, read_rates, tally_human, tally_verdict
from fleet.router import decide
from fleet.router.config import default_router_settings

SETTINGS = FeedbackSettings(floor=0.7, min_judged=20)
NOW = 1_800_000_000.0


class Counter:
    """A tally in memory, read back as Redis's HGETALL would answer."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, int]] = {}

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        counts = self.hashes.setdefault(key, {})
        counts[field] = counts.get(field, 0) + by

    def pipeline(self, transaction: bool = False) -> Counter:
        self.asked: list[str] = []
        return self

    def hgetall(self, key: str) -> None:
        self.asked.append(key)

    def execute(self) -> list[dict[str, int]]:
        return [self.hashes.get(key, {}) for key in self.asked]


def _seed(counter: Counter, kind: str, passed: int, failed: int, at: float = NOW) -> None:
    for i in range(passed + failed):
        tally_verdict(counter, "mini", kind, i < passed, now=at)


def _route(rates: PassRates, kind: str) -> tuple[Tier, list[str]]:
    decision = decide(
        TaskRequest(prompt="Rename the variable x to total in this function.", kind=kind),
        default_router_settings(),
        feedback=lambda tier, k: rates.move_up(str(tier), k, SETTINGS),
    )
    return decision.tier, decision.reasons


def test_seeded_failures_move_a_kind_up_and_recovery_moves_it_back() -> None:
    counter = Counter()
    assert _route(read_rates(counter, 3600, now=NOW), "code.rename")[0] is Tier.MINI
    # Given code.rename failing 15 of 25 judged answers on mini in the last hour
    _seed(counter, "code.rename", passed=10, failed=15)
    tier, reasons = _route(read_rates(counter, 3600, now=NOW), "code.rename")
    # Then it is routed to standard, and the reasons say why
    assert tier is Tier.STANDARD
    assert "quality feedback: code.rename passed 10 of 25 checked on mini" in reasons[-1]
    # And another kind is not moved
    assert _route(read_rates(counter, 3600, now=NOW), "code.docstring")[0] is Tier.MINI
    # When later answers pass (the rate recovers above the floor), Then it comes back down
    _seed(counter, "code.rename", passed=40, failed=0, at=NOW + 60)
    assert _route(read_rates(counter, 3600, now=NOW + 60), "code.rename")[0] is Tier.MINI
    # And when its failures age out of the window, it comes back down too
    aged = Counter()
    _seed(aged, "code.rename", passed=0, failed=25, at=NOW - 7200)
    assert _route(read_rates(aged, 3600, now=NOW), "code.rename")[0] is Tier.MINI


def test_too_few_checks_move_nothing_and_people_count_as_failures() -> None:
    counter = Counter()
    _seed(counter, "support.reply", passed=2, failed=10)
    assert _route(read_rates(counter, 3600, now=NOW), "support.reply")[0] is Tier.MINI  # 12 < 20 checked
    for _ in range(10):
        tally_human(counter, "mini", "support.reply", now=NOW)
    rates = read_rates(counter, 3600, now=NOW)
    assert rates.get("mini", "support.reply").pass_rate == 2 / 22
    assert rates.move_up("mini", "support.reply", SETTINGS) is not None


def test_feedback_never_overrides_a_pinned_tier_or_a_hint() -> None:
    counter = Counter()
    _seed(counter, "code.rename", passed=0, failed=30)
    rates = read_rates(counter, 3600, now=NOW)
    feedback = lambda tier, k: rates.move_up(str(tier), k, SETTINGS)  # noqa: E731
    settings = default_router_settings()
    pinned = TaskRequest(prompt="Rename x to total.", kind="code.rename", tier=Tier.MINI)
    hinted = TaskRequest.model_validate(
        {"prompt": "Rename x.", "kind": "code.rename", "hints": {"complexity": "low"}}
    )
    assert decide(pinned, settings, feedback=feedback).tier is Tier.MINI
    assert decide(hinted, settings, feedback=feedback).tier is Tier.MINI


def test_the_full_tier_and_the_fast_tier_have_nowhere_up_to_go() -> None:
    rates = PassRates()
    for tier in ("full", "fast"):
        for _ in range(30):
            tally_verdict(_Into(rates), tier, "x", False)
        assert rates.move_up(tier, "x", SETTINGS) is None


class _Into:
    def __init__(self, rates: PassRates) -> None:
        self.rates = rates

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        from fleet.quality.feedback import _parse

        merged = _parse([{field: by}], 3600)
        for k, counts in merged.counts.items():
            mine = self.rates.counts.setdefault(k, type(counts)())
            for name in ("judged", "passed"):
                setattr(mine, name, getattr(mine, name) + getattr(counts, name))
