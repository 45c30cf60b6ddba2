"""The heuristic against the labeled set: accuracy >= 90% and no job that needs full routed below it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fleet.models import Tier, validate_request
from fleet.router import decide
from fleet.router.config import default_router_settings

LABELED = Path(__file__).resolve().parents[2] / "data" / "router" / "coding_train.jsonl"


def _rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in LABELED.read_text(encoding="utf-8").splitlines() if line.strip()]


ROWS = _rows()


def test_the_labeled_set_is_large_and_labeled() -> None:
    assert len(ROWS) >= 200
    tiers = Counter(str(row["expected_tier"]) for row in ROWS)
    assert set(tiers) == {t.value for t in Tier}
    assert all(isinstance(row.get("why"), str) and row["why"] for row in ROWS)
    # Long pasted inputs whose ask is mechanical are part of the set.
    assert sum(1 for row in ROWS if len(str(row["prompt"])) > 1500 and row["expected_tier"] == "mini") >= 15


def test_accuracy_and_no_under_routing() -> None:
    # Given the default router settings and every labeled request
    settings = default_router_settings()
    misses: list[str] = []
    under: list[str] = []
    for number, row in enumerate(ROWS, start=1):
        data = {k: v for k, v in row.items() if k not in ("expected_tier", "why")}
        # When each is routed
        got = decide(validate_request(data), settings).tier.value
        expected = row["expected_tier"]
        if got != expected:
            misses.append(f"line {number}: expected {expected}, got {got}: {str(row['prompt'])[:60]!r}")
        if expected == "full" and got in ("mini", "fast"):
            under.append(misses[-1])
    # Then at least 90% are right and nothing that needs the full tier goes to mini or fast
    accuracy = 1 - len(misses) / len(ROWS)
    assert not under, "under-routed:\n" + "\n".join(under)
    assert accuracy >= 0.90, f"accuracy {accuracy:.1%}:\n" + "\n".join(misses)


@pytest.mark.parametrize("row", [r for r in ROWS if r["expected_tier"] == "full"][:5])
def test_a_full_job_carries_its_reasons(row: dict[str, object]) -> None:
    data = {k: v for k, v in row.items() if k not in ("expected_tier", "why")}
    decision = decide(validate_request(data), default_router_settings())
    assert decision.reasons
