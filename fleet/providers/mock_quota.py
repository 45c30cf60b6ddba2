"""SIMULATED provider quotas for the mock provider: what a real account's rate limits look like from
the outside, so the fleet's header pacing has something to pace against.

Per model (``MockConfig.quotas``), a token bucket of requests and one of input tokens, each of
``requests`` / ``tokens`` units refilled continuously over ``window_s`` (as OpenAI and Anthropic
describe theirs). A call that finds a bucket short gets the provider's 429 with ``retry-after``;
every answer of a model with a quota carries the provider's rate-limit headers (OpenAI's
``x-ratelimit-*``, Anthropic's ``anthropic-ratelimit-*``). Input tokens are estimated at four
characters a token and charged when the call arrives. Real providers' quotas differ in their
details (tiers, output tokens, per-organisation sharing); this is a stand-in, not a model of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Admission", "MockQuota", "Quotas", "quota_headers"]

What = Literal["requests", "tokens"]


class MockQuota(BaseModel):
    """One model's SIMULATED quota: ``requests`` and/or input ``tokens`` per ``window_s`` seconds."""

    model_config = ConfigDict(extra="forbid")

    requests: int | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    window_s: float = Field(default=60.0, gt=0)


@dataclass(frozen=True, slots=True)
class Part:
    """One bucket's state after a call: its size, what is left, seconds until it is full again."""

    what: What
    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a call fits its model's quota (then it was charged), and the buckets' state."""

    allowed: bool
    retry_after_s: float
    parts: tuple[Part, ...]


@dataclass(slots=True)
class _Level:
    level: float
    at: float


@dataclass
class Quotas:
    """Every model's buckets (the mock's state; ``/_mock/reset`` starts them full again)."""

    _levels: dict[tuple[str, What], _Level] = field(default_factory=dict)

    def admit(self, model: str, quota: MockQuota, tokens: int, now: float) -> Admission:
        """Charge one call of ``tokens`` input tokens to ``model``'s quota, if it fits (``now``:
        a monotonic clock)."""
        wants: list[tuple[What, int, float]] = []
        if quota.requests is not None:
            wants.append(("requests", quota.requests, 1.0))
        if quota.tokens is not None:
            wants.append(("tokens", quota.tokens, float(min(tokens, quota.tokens))))
        levels = [self._refilled(model, what, size, quota.window_s, now) for what, size, _ in wants]
        short = [
            (cost - lvl.level) * quota.window_s / size
            for (_, size, cost), lvl in zip(wants, levels, strict=True)
            if lvl.level < cost
        ]
        if not short:
            for (_, _, cost), lvl in zip(wants, levels, strict=True):
                lvl.level -= cost
        parts = tuple(
            Part(what, size, int(lvl.level), (size - lvl.level) * quota.window_s / size)
            for (what, size, _), lvl in zip(wants, levels, strict=True)
        )
        return Admission(allowed=not short, retry_after_s=max(short, default=0.0), parts=parts)

    def _refilled(self, model: str, what: What, size: int, window_s: float, now: float) -> _Level:
        lvl = self._levels.setdefault((model, what), _Level(float(size), now))
        lvl.level = min(float(size), lvl.level + (now - lvl.at) * size / window_s)
        lvl.at = now
        return lvl


def quota_headers(wire: Literal["openai", "anthropic"], admission: Admission, wall: float) -> dict[str, str]:
    """The rate-limit headers a provider of ``wire`` sends (``wall``: the time now, for Anthropic's
    RFC 3339 reset times)."""
    headers: dict[str, str] = {}
    for part in admission.parts:
        if wire == "openai":
            headers[f"x-ratelimit-limit-{part.what}"] = str(part.limit)
            headers[f"x-ratelimit-remaining-{part.what}"] = str(part.remaining)
            headers[f"x-ratelimit-reset-{part.what}"] = f"{part.reset_s:.3f}s"
        else:
            when = datetime.fromtimestamp(wall + part.reset_s, UTC).isoformat(timespec="milliseconds")
            headers[f"anthropic-ratelimit-{part.what}-limit"] = str(part.limit)
            headers[f"anthropic-ratelimit-{part.what}-remaining"] = str(part.remaining)
            headers[f"anthropic-ratelimit-{part.what}-reset"] = when.replace("+00:00", "Z")
    return headers
