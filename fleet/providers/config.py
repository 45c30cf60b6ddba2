"""The providers' settings: ``[providers.<name>]`` with its models, and ``[mock]``, the mock provider.

Also what the mock changes about a provider: with the mock on, every provider's calls go to the
mock's URL (:func:`effective_base_url`) and a provider without a key gets a placeholder one
(:func:`resolve_api_keys`).

A leaf module: it imports pydantic and the standard library only. Never :mod:`fleet.settings`,
which imports it, nor the adapters of this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "MockSettings",
    "ModelSettings",
    "ProviderSettings",
    "check_links",
    "effective_base_url",
    "resolve_api_keys",
    "split_links",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    #: USD per million input tokens.
    input_per_mtok: float = Field(ge=0)
    #: USD per million output tokens.
    output_per_mtok: float = Field(ge=0)
    #: Context window, in tokens.
    context_window: int = Field(default=128_000, gt=0)
    #: Requests per minute the account may send this model (None: no limit).
    rpm: int | None = Field(default=None, gt=0)
    #: Tokens per minute the account may send this model (None: no limit).
    tpm: int | None = Field(default=None, gt=0)
    #: USD per million input tokens read from the provider's prompt cache (None: the input price).
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    #: USD per million input tokens written to the prompt cache (None: the input price).
    cache_write_per_mtok: float | None = Field(default=None, ge=0)
    #: The share of the list price a provider batch's item costs (OpenAI's Batch API and Anthropic's
    #: Message Batches: half).
    batch_price_ratio: float = Field(default=0.5, gt=0, le=1)

    def cost(self, input_tokens: int, output_tokens: int, cached: int = 0, written: int = 0) -> float:
        """USD for one call of this model; ``cached`` and ``written`` of the input tokens were read
        from and written to the prompt cache."""
        plain = max(0, input_tokens - cached - written)
        return (
            plain * self.input_per_mtok
            + cached * self._cached_price
            + written * self._write_price
            + output_tokens * self.output_per_mtok
        ) / 1_000_000

    def batch_saving(self, batch_cost: float) -> float:
        """What a batch item that cost ``batch_cost`` would have cost more as a live call, in USD."""
        return batch_cost / self.batch_price_ratio - batch_cost

    def cache_saving(self, cached: int, written: int) -> float:
        """What the prompt cache saved on one call, in USD (a write's surcharge counts against it)."""
        return (
            cached * (self.input_per_mtok - self._cached_price)
            - written * (self._write_price - self.input_per_mtok)
        ) / 1_000_000

    @property
    def _cached_price(self) -> float:
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    @property
    def _write_price(self) -> float:
        return self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok


class ProviderSettings(_Section):
    #: Which wire format the provider speaks, and so which adapter calls it.
    kind: Literal["openai-compatible", "anthropic"]
    #: Root of the provider's API (an OpenAI-compatible one ends in ``/v1``); no trailing slash.
    base_url: str
    #: Name of the environment variable holding the API key (the key itself is never in a file).
    api_key_env: str | None = None
    #: Seconds to open a connection, and to wait for an answer (a call's own timeout wins).
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    #: Send prompt-cache hints: OpenAI's ``prompt_cache_key`` (the job's kind), Anthropic's
    #: ``cache_control`` on a system prompt long enough to cache (about 1,024 tokens and up).
    prompt_cache: bool = False
    #: The provider takes batches (OpenAI's ``/files`` + ``/batches``, Anthropic's
    #: ``/v1/messages/batches``): jobs that can wait go to the batch lane on its models (fleet.batch).
    batch: bool = True
    #: The provider's models by name, with their prices, context windows and rate limits.
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    #: Resolved from ``api_key_env`` at load time; never printed, logged or traced.
    api_key: SecretStr | None = Field(default=None, exclude=True)

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/")


class MockSettings(_Section):
    """The mock provider: when enabled, every provider points at it."""

    enabled: bool = False
    #: URL of a running mock provider; set by the supervisor when it starts one.
    url: str = ""
    #: Port the supervisor starts the mock on; 0 picks a free one.
    port: int = Field(default=0, ge=0, le=65535)
    #: Probability that a call meets a fault (rate limit, 5xx, timeout, bad answer, ...).
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Mean latency of an answer, in milliseconds.
    latency_ms: float = Field(default=20.0, ge=0.0)
    #: How long the mock's "timeout" fault holds a call before answering.
    timeout_sleep_s: float = Field(default=30.0, ge=0.0)
    #: Seed of the per-call fate: one workload under one seed meets the same faults.
    seed: int = 0
    #: "http": calls go to the mock server over HTTP. "inline": the worker answers them itself, with
    #: the same answers and no network, latency or faults: what the fleet costs with a provider that
    #: costs nothing (bench/throughput.py, bench/latency.py). failure_rate and latency_ms need "http".
    transport: Literal["http", "inline"] = "http"
    #: SIMULATE model quality in the mock (capability per model, flawed answers, a judge's accuracy:
    #: fleet.providers.mock_quality), so the quality gate has something to catch. Needs "http".
    simulate_quality: bool = False
    #: SIMULATED batch APIs: a batch ends this long after it was created (real ones: minutes to
    #: hours, within 24 h), and each of its items fails with this probability.
    batch_delay_s: float = Field(default=30.0, ge=0.0)
    batch_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: SIMULATED prompt caching of long repeated prefixes (off: a workload's cost without caches).
    prompt_cache: bool = True

    @model_validator(mode="after")
    def _inline_has_no_faults(self) -> MockSettings:
        if self.transport == "inline" and self.failure_rate > 0:
            raise ValueError('failure_rate needs transport = "http": the inline mock injects no faults')
        return self


def check_links(value: list[str]) -> list[str]:
    """Validate ``provider:model`` links (a chain, a judge).

    Raises:
        ValueError: a link is not ``provider:model``.
    """
    for link in value:
        provider, sep, model = link.partition(":")
        if not sep or not provider or not model:
            raise ValueError(f"{link!r} is not a 'provider:model' link")
    return value


def split_links(links: list[str]) -> list[tuple[str, str]]:
    """``["openai:gpt-4.1"]`` -> ``[("openai", "gpt-4.1")]`` (links already checked)."""
    return [(p, m) for p, _, m in (link.partition(":") for link in links)]


def effective_base_url(provider: ProviderSettings, mock: MockSettings) -> str:
    """The provider's base URL, or the mock provider's (in the provider's wire format) when it is on."""
    if mock.enabled and mock.url:
        root = mock.url.rstrip("/")
        return f"{root}/v1" if provider.kind == "openai-compatible" else root
    return provider.base_url


def resolve_api_keys(
    providers: Mapping[str, ProviderSettings], mock: MockSettings, environ: Mapping[str, str]
) -> None:
    """Set each provider's ``api_key`` from the variable its ``api_key_env`` names.

    With the mock on, a provider without a key gets a placeholder, so the adapters send one.
    """
    for name, provider in providers.items():
        if provider.api_key_env:
            key = environ.get(provider.api_key_env)
            provider.api_key = SecretStr(key) if key else None
        if mock.enabled and provider.api_key is None:
            provider.api_key = SecretStr(f"mock-key-{name}")
