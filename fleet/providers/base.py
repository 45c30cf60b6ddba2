"""What every provider adapter speaks: one chat call in, one answer (or a ProviderError) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ChatRequest", "ChatResponse", "Provider", "estimate_tokens"]


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
    response_model: str = ""
    http_status: int = 200
    #: The mean log-probability of the answer's tokens, when the API returned them.
    mean_logprob: float | None = None
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
