"""What every provider adapter speaks: one chat call in, one answer (or a ProviderError) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ChatRequest", "ChatResponse", "Provider", "Quota", "QuotaPart", "estimate_tokens"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One model call. ``response_schema``, when set, is asked of the provider where it supports it."""

    model: str
    prompt: str
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    response_schema: dict[str, Any] | None = None
    #: Read timeout for this call (seconds); None: the provider's configured timeout.
    timeout_s: float | None = None
    #: Ask for token log-probabilities where the API offers them (OpenAI's ``logprobs``): a
    #: confidence signal for the quality gate.
    logprobs: bool = False
    #: A conversation's turns before ``prompt`` (its last user message): ``(role, text)`` pairs.
    history: tuple[tuple[str, str], ...] = ()
    #: Sequences that end the answer; a seed; JSON mode (each where the provider takes it).
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_mode: bool = False
    #: Groups calls that share a prompt prefix (the job's kind): OpenAI's ``prompt_cache_key``, sent
    #: where the provider's ``prompt_cache`` is on.
    cache_key: str | None = None


@dataclass(frozen=True, slots=True)
class QuotaPart:
    """One of the account's limits on a model (requests, or tokens) as the provider reported it
    with an answer: its size (None: not sent), what is left, and the seconds until it is whole again."""

    remaining: int
    reset_s: float
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Quota:
    """The rate-limit headers of an answer (OpenAI's ``x-ratelimit-*``, Anthropic's
    ``anthropic-ratelimit-*``): what is left of the account's quota for the model."""

    requests: QuotaPart | None = None
    tokens: QuotaPart | None = None


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A well-formed answer. Quality checks (empty, truncated, schema) happen in the chain."""

    text: str
    #: Normalised finish reason: "stop", "length", "content_filter", "tool_calls" or the raw value.
    finish_reason: str
    input_tokens: int
    output_tokens: int
    #: True when the provider sent no usage and the counts are estimates.
    tokens_estimated: bool = False
    #: Of ``input_tokens``: read from the provider's prompt cache (OpenAI's
    #: ``prompt_tokens_details.cached_tokens``, Anthropic's ``cache_read_input_tokens``), and
    #: written to it (Anthropic's ``cache_creation_input_tokens``).
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    #: Of ``output_tokens``: spent reasoning (OpenAI's ``completion_tokens_details.reasoning_tokens``).
    reasoning_tokens: int = 0
    response_model: str = ""
    http_status: int = 200
    #: The mean log-probability of the answer's tokens, when the API returned them.
    mean_logprob: float | None = None
    #: What the provider's rate-limit headers said is left of the quota (None: it sent none).
    quota: Quota | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """An adapter for one provider account. Thread-safe; shares one httpx client per process."""

    name: str

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Make the call.

        Raises:
            fleet.errors.ProviderError: a subclass whose ``code`` names the outcome.
        """
        ...


def estimate_tokens(text: str) -> int:
    """A provider-neutral estimate: about four characters per token, at least one."""
    return max(1, (len(text) + 3) // 4)
