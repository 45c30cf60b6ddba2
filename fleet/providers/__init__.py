"""Provider adapters: one :class:`Provider` per configured provider account, over one httpx client.

    client = make_http_client(settings)          # once per worker process
    provider = build_provider("openai", settings, client)
    answer = provider.complete(ChatRequest(model="gpt-4o-mini", prompt="..."))

Every failed call raises a :class:`fleet.errors.ProviderError` subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from fleet.providers._http import tls_context
from fleet.providers.anthropic import AnthropicProvider
from fleet.providers.base import ChatRequest, ChatResponse, Provider
from fleet.providers.config import effective_base_url
from fleet.providers.mock_answers import InlineMockProvider
from fleet.providers.openai_compat import OpenAICompatProvider

if TYPE_CHECKING:
    from fleet.settings import Settings

__all__ = [
    "AnthropicProvider",
    "ChatRequest",
    "ChatResponse",
    "InlineMockProvider",
    "OpenAICompatProvider",
    "Provider",
    "build_provider",
    "make_http_client",
]

#: Concurrent calls one worker process is sized for (thread pools of the tier queues).
DEFAULT_MAX_CONNECTIONS = 200


def make_http_client(settings: Settings, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> httpx.Client:
    """One pooled, thread-safe client per worker process.

    Adapters set the timeouts of each call (``ChatRequest.timeout_s`` or the provider's
    ``read_timeout_s``); the client's own timeout only bounds calls made outside them.
    """
    read = max((p.read_timeout_s for p in settings.providers.values()), default=60.0)
    connect = max((p.connect_timeout_s for p in settings.providers.values()), default=5.0)
    return httpx.Client(
        verify=tls_context(),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        ),
        timeout=httpx.Timeout(read, connect=connect),
        # Redirects on a POST to a model API mean a wrong base URL; surface them, do not follow.
        follow_redirects=False,
        headers={"user-agent": "fleet"},
    )


def build_provider(name: str, settings: Settings, client: httpx.Client) -> Provider:
    """The adapter for provider ``name``, chosen by its ``kind``, at its effective base URL.

    Raises:
        KeyError: ``name`` is not a configured provider (settings validation prevents it).
    """
    cfg = settings.providers[name]
    if settings.mock.enabled and settings.mock.transport == "inline":
        return InlineMockProvider(name, "openai" if cfg.kind == "openai-compatible" else "anthropic")
    cls = OpenAICompatProvider if cfg.kind == "openai-compatible" else AnthropicProvider
    return cls(
        name,
        effective_base_url(cfg, settings.mock),
        cfg.api_key,
        client,
        connect_timeout_s=cfg.connect_timeout_s,
        read_timeout_s=cfg.read_timeout_s,
        name_caller=settings.mock.enabled,
        prompt_cache=cfg.prompt_cache,
    )
