"""SIMULATED prompt caching for the mock provider, so the fleet's cache accounting has something to
count: a call whose prompt prefix was seen on the same model within ``ttl_s`` reads it from the
cache.

As the providers describe theirs: a prefix of 1,024 tokens or more (about four characters a token)
is cached; OpenAI caches every such prefix by itself (every message before the last one) and
reports the hit in 128-token steps as ``prompt_tokens_details.cached_tokens``; Anthropic caches
only a system prompt marked with ``cache_control``, reporting ``cache_creation_input_tokens`` on the
first call and ``cache_read_input_tokens`` on later ones. Real caches are best effort (they miss
under load, across machines, after eviction); this one always hits within the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.providers._http import CACHE_MIN_TOKENS
from fleet.providers.mock_answers import MockCall

__all__ = ["CacheUse", "PromptCache"]

#: Prefixes remembered at most (an endless unique workload starts over rather than grow).
_MAX_PREFIXES = 100_000


@dataclass(frozen=True, slots=True)
class CacheUse:
    """Input tokens of one call read from the cache, and written to it."""

    read: int = 0
    written: int = 0


@dataclass
class PromptCache:
    """The prefixes seen per provider and model, and when (the mock's state; ``/_mock/reset`` empties it)."""

    ttl_s: float = 300.0
    _seen: dict[tuple[str, str, bytes], float] = field(default_factory=dict)

    def use(self, call: MockCall, now: float) -> CacheUse:
        """What the cache does for ``call`` at ``now`` (a monotonic clock)."""
        tokens = call.prefix_chars // 4
        if tokens < CACHE_MIN_TOKENS or not call.cache_hint:
            return CacheUse()
        key = (call.wire, call.model, call.prefix)  # each provider keeps its own cache
        last = self._seen.get(key)
        if last is None and len(self._seen) >= _MAX_PREFIXES:
            self._seen.clear()
        self._seen[key] = now
        hit = last is not None and now - last <= self.ttl_s
        if call.wire == "openai":
            return CacheUse(read=tokens // 128 * 128) if hit else CacheUse()
        return CacheUse(read=tokens) if hit else CacheUse(written=tokens)
