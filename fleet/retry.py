"""The retry policy of the fallback chain, as data: the ``[retry]`` table of ``config/fleet.toml``.

An outcome code (a :class:`fleet.errors.ProviderError` ``code``) maps to what the chain does next:
``retry`` the same link with capped, jittered backoff, go to the ``next_link``, or ``skip_provider``
(every remaining link of that provider). :data:`DEFAULT_POLICY` holds the defaults; ``[retry.policy]``
overrides entries.

A leaf module: it imports pydantic and the standard library only, never :mod:`fleet.settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_POLICY", "Action", "RetrySettings"]

Action = Literal["retry", "next_link", "skip_provider"]

#: What the chain does after each outcome; ``[retry.policy]`` in fleet.toml overrides entries.
DEFAULT_POLICY: dict[str, Action] = {
    "rate_limited": "retry",
    "overloaded": "retry",
    "server_error": "retry",
    "timeout": "retry",
    "connection": "retry",
    "context_length_exceeded": "next_link",  # to the next link with a larger context window
    "content_filtered": "next_link",
    "bad_request": "next_link",
    "malformed_response": "next_link",
    "empty_answer": "next_link",
    "truncated": "next_link",
    "schema_mismatch": "next_link",
    "auth": "skip_provider",  # a configuration fault: no link of that provider can work
}


class RetrySettings(BaseModel):
    """How the chain retries the same link on a retryable outcome."""

    model_config = ConfigDict(extra="forbid")

    #: Calls of one link on a retryable outcome, the first included.
    max_attempts_per_link: int = Field(default=2, ge=1, le=10)
    #: Backoff before the n-th retry: ``backoff_base_s * 2**(n-1)``, capped at ``backoff_max_s``,
    #: then jittered down to half of that.
    backoff_base_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    #: A Retry-After longer than this moves to the next link instead of holding the worker slot.
    max_wait_s: float = Field(default=5.0, ge=0)
    #: Outcome code -> "retry" (same link, with backoff), "next_link" or "skip_provider".
    policy: dict[str, Action] = Field(default_factory=dict)

    @field_validator("policy")
    @classmethod
    def _known_codes(cls, value: dict[str, Action]) -> dict[str, Action]:
        unknown = sorted(set(value) - set(DEFAULT_POLICY))
        if unknown:
            raise ValueError(f"unknown outcome codes {unknown}; known: {sorted(DEFAULT_POLICY)}")
        return {**DEFAULT_POLICY, **value}

    def action(self, code: str) -> Action:
        """What the chain does after outcome ``code``; an unknown code goes to the next link."""
        return self.policy.get(code) or DEFAULT_POLICY.get(code, "next_link")
