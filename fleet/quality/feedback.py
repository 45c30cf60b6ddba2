"""Pass rates per kind and tier, the outcome feedback that routing reads.

Every judged answer counts once on its tier (``judged``, and ``passed`` when it passed); every
escalation a person answers counts as a failure of the tier it escalated from (``human``); every
shadow comparison counts the two verdicts side by side. Counts live in Redis in five-minute buckets
(``keys.quality_bucket``, kept 8 days), written with a job's last round trip; a report or the router
reads a window of buckets in one round trip.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet import keys
from fleet.quality.config import FeedbackSettings

__all__ = [
    "BUCKET_S",
    "KEEP_S",
    "NEXT_UP",
    "QUALITY_REASONS",
    "Counts",
    "PassRates",
    "RedisTally",
    "Tally",
    "read_rates",
    "tally_human",
    "tally_shadow",
    "tally_verdict",
]

#: The width of a bucket of counts, and how long buckets are kept.
BUCKET_S = 300
KEEP_S = 8 * 24 * 3600
_FIELDS = ("judged", "passed", "human", "shadow", "shadow_a", "shadow_b", "shadow_a_sum", "shadow_b_sum")


class Tally(Protocol):
    """Where counts are queued (a job's tail: ``fleet.middleware.tail.Tail``)."""

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None: ...


class RedisTally:
    """Counts written at once, one round trip each (a person's answer in the inbox)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def incr(self, key: str, field: str, by: int, ttl_s: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(key, field, by)
        pipe.expire(key, ttl_s)
        pipe.execute()


#: Escalation reasons about an answer's quality: a person's answer to one counts as a failure of its
#: tier. Availability failures (a provider down, a rate limit) say nothing of what a tier can do.
QUALITY_REASONS = frozenset(
    {"quality_check_failed", "schema_mismatch", "truncated", "empty_answer", "answer_rejected"}
)


def _bucket(now: float | None = None) -> int:
    return int(now if now is not None else time.time()) // BUCKET_S


def _field(tier: str, kind: str | None, what: str) -> str:
    return f"{tier}|{kind or 'none'}|{what}"


def tally_verdict(
    tally: Tally, tier: str, kind: str | None, passed: bool, *, now: float | None = None
) -> None:
    """Count one judged answer of ``kind`` on ``tier``."""
    key = keys.quality_bucket(_bucket(now))
    tally.incr(key, _field(tier, kind, "judged"), 1, KEEP_S)
    if passed:
        tally.incr(key, _field(tier, kind, "passed"), 1, KEEP_S)


def tally_human(tally: Tally, tier: str, kind: str | None, *, now: float | None = None) -> None:
    """Count one escalation of ``kind`` from ``tier`` that a person had to answer."""
    tally.incr(keys.quality_bucket(_bucket(now)), _field(tier, kind, "human"), 1, KEEP_S)


def tally_shadow(
    tally: Tally,
    tier: str,
    kind: str | None,
    scores: tuple[int, int],
    threshold: int,
    *,
    now: float | None = None,
) -> None:
    """Count one side-by-side comparison: the tier's answer (a) against the full tier's (b)."""
    key = keys.quality_bucket(_bucket(now))
    a, b = scores
    tally.incr(key, _field(tier, kind, "shadow"), 1, KEEP_S)
    tally.incr(key, _field(tier, kind, "shadow_a_sum"), a, KEEP_S)
    tally.incr(key, _field(tier, kind, "shadow_b_sum"), b, KEEP_S)
    if a >= threshold:
        tally.incr(key, _field(tier, kind, "shadow_a"), 1, KEEP_S)
    if b >= threshold:
        tally.incr(key, _field(tier, kind, "shadow_b"), 1, KEEP_S)


@dataclass
class Counts:
    """The counts of one kind on one tier over a window."""

    judged: int = 0
    passed: int = 0
    human: int = 0
    shadow: int = 0
    shadow_a: int = 0
    shadow_b: int = 0
    shadow_a_sum: int = 0
    shadow_b_sum: int = 0

    @property
    def pass_rate(self) -> float | None:
        """Passed over judged plus people's answers (None before anything was judged)."""
        seen = self.judged + self.human
        return self.passed / seen if seen else None

    def as_dict(self) -> dict[str, Any]:
        rate = self.pass_rate
        out: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        out["pass_rate"] = round(rate, 4) if rate is not None else None
        if self.shadow:
            out["shadow_pass_rate"] = round(self.shadow_a / self.shadow, 4)
            out["shadow_full_pass_rate"] = round(self.shadow_b / self.shadow, 4)
            out["shadow_mean_score"] = round(self.shadow_a_sum / self.shadow, 3)
            out["shadow_full_mean_score"] = round(self.shadow_b_sum / self.shadow, 3)
        return out


#: The order tiers move up in when a kind keeps failing (fast is latency, not capability: it stays).
NEXT_UP = {"mini": "standard", "standard": "full"}


@dataclass
class PassRates:
    """Counts per (tier, kind) over a window, and what they mean for routing."""

    counts: dict[tuple[str, str], Counts] = field(default_factory=dict)
    window_s: float = 3600.0

    def get(self, tier: str, kind: str | None) -> Counts:
        return self.counts.get((tier, kind or "none"), Counts())

    def move_up(self, tier: str, kind: str | None, settings: FeedbackSettings) -> str | None:
        """Why ``kind`` should run one tier above ``tier`` now (its pass rate there is below the floor
        over enough judged answers), or None."""
        if not settings.enabled or tier not in NEXT_UP:
            return None
        counts = self.get(tier, kind)
        rate = counts.pass_rate
        seen = counts.judged + counts.human
        if rate is None or seen < settings.min_judged or rate >= settings.floor:
            return None
        minutes = round(self.window_s / 60)
        return (
            f"quality feedback: {kind or 'jobs without a kind'} passed {counts.passed} of {seen} checked on "
            f"{tier} in the last {minutes} min ({rate:.0%} < {settings.floor:.0%}): up to {NEXT_UP[tier]}"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per (tier, kind), for ``fleet quality``."""
        return [
            {"tier": tier, "kind": kind, **counts.as_dict()}
            for (tier, kind), counts in sorted(self.counts.items())
        ]


def _parse(raw: Iterable[dict[Any, Any]], window_s: float) -> PassRates:
    rates = PassRates(window_s=window_s)
    for bucket in raw:
        for name, value in (bucket or {}).items():
            text = name.decode() if isinstance(name, bytes) else str(name)
            tier, _, rest = text.partition("|")
            kind, _, what = rest.rpartition("|")
            if what not in _FIELDS or not tier:
                continue
            counts = rates.counts.setdefault((tier, kind), Counts())
            setattr(counts, what, getattr(counts, what) + int(value))
    return rates


def read_rates(client: Any, window_s: float, *, now: float | None = None) -> PassRates:
    """The counts of the last ``window_s`` seconds (whole buckets), in one round trip."""
    last = _bucket(now)
    first = _bucket((now if now is not None else time.time()) - window_s)
    pipe = client.pipeline(transaction=False)
    for bucket in range(first, last + 1):
        pipe.hgetall(keys.quality_bucket(bucket))
    return _parse(pipe.execute(), window_s)
