"""The heuristic against the labelled sets: accuracy floors, and nothing that needs full routed below it.

Each file is measured on its own and reported (``pytest -q -s`` prints it): accuracy, under-routing
(labelled full, routed to mini or fast), full -> standard, and accuracy per domain. The heuristic is
tuned on the train files only; domains_dev never is, and its floors are what one measurement showed
when the tuning was done (tests/data/router/README.md).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from fleet.models import Tier, validate_request
from fleet.router import decide
from fleet.router.config import default_router_settings

DATA = Path(__file__).resolve().parents[2] / "data" / "router"
LABELS = ("expected_tier", "why", "domain")


@dataclass(frozen=True)
class Floor:
    """What a file must keep: its accuracy, and at most this many full jobs sent to mini or fast."""

    accuracy: float
    under: int = 0


#: coding_train keeps the original 90%; domains_train what the tuning reached (89.0%) less a margin.
#: domains_dev is what it measured once, after the tuning: 80.3% (277/345) and 6 full jobs sent to
#: mini or fast (5 to mini; 1 to fast by its latency hint, rule 3). Those are its floors, not a
#: target: zero under-routing on dev was not reached, and dev is not tuned on to reach it.
FLOORS = {
    "coding_train": Floor(accuracy=0.90),
    "domains_train": Floor(accuracy=0.87),
    "domains_dev": Floor(accuracy=0.80, under=6),
}


@dataclass
class Measure:
    """One file routed by the shipped settings."""

    name: str
    rows: int = 0
    right: int = 0
    full_standard: int = 0
    under: list[str] = field(default_factory=list)
    domains: dict[str, list[int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.right / self.rows

    def report(self) -> str:
        lines = [
            f"{self.name}: accuracy {self.accuracy:.1%} ({self.right}/{self.rows}), "
            f"full->mini/fast {len(self.under)}, full->standard {self.full_standard}"
        ]
        if len(self.domains) > 1:
            per = (f"{d} {r / n:.0%} ({r}/{n})" for d, (r, n) in sorted(self.domains.items()))
            lines.append("  by domain: " + ", ".join(per))
        return "\n".join(lines + [f"  under-routed: {u}" for u in self.under])


def _rows(name: str) -> list[dict[str, object]]:
    text = (DATA / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@cache
def _measure(name: str) -> Measure:
    settings = default_router_settings()
    measure = Measure(name)
    for number, row in enumerate(_rows(name), start=1):
        request = validate_request({k: v for k, v in row.items() if k not in LABELS})
        got = decide(request, settings).tier.value
        expected = str(row["expected_tier"])
        domain = measure.domains.setdefault(str(row.get("domain", "-")), [0, 0])
        domain[1] += 1
        measure.rows += 1
        if got == expected:
            measure.right += 1
            domain[0] += 1
        elif expected == "full" and got in ("mini", "fast"):
            measure.under.append(f"line {number}: full -> {got}: {str(row['prompt'])[:70]!r}")
        elif expected == "full":
            measure.full_standard += 1
    return measure


@pytest.mark.parametrize("name", list(FLOORS))
def test_the_labeled_sets_are_large_and_labeled(name: str) -> None:
    rows = _rows(name)
    assert len(rows) >= 200
    assert {str(row["expected_tier"]) for row in rows} == {t.value for t in Tier}
    assert all(isinstance(row.get("why"), str) and row["why"] for row in rows)
    if name.startswith("domains"):
        assert len(Counter(str(row["domain"]) for row in rows)) == 14


def test_long_pasted_inputs_with_a_mechanical_ask_are_part_of_the_coding_set() -> None:
    rows = _rows("coding_train")
    assert sum(1 for row in rows if len(str(row["prompt"])) > 1500 and row["expected_tier"] == "mini") >= 15


@pytest.mark.parametrize("name", list(FLOORS))
def test_accuracy_and_under_routing(name: str) -> None:
    # Given every labelled request of the file, routed with the shipped settings
    measure, floor = _measure(name), FLOORS[name]
    print(measure.report())
    # Then the file keeps its accuracy, and (almost) nothing that needs full goes to mini or fast
    assert len(measure.under) <= floor.under, measure.report()
    assert measure.accuracy >= floor.accuracy, measure.report()


@pytest.mark.parametrize("row", [r for r in _rows("coding_train") if r["expected_tier"] == "full"][:5])
def test_a_full_job_carries_its_reasons(row: dict[str, object]) -> None:
    data = {k: v for k, v in row.items() if k not in LABELS}
    decision = decide(validate_request(data), default_router_settings())
    assert decision.reasons
