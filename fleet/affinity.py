"""Prompt-cache affinity: which chain link to try first for a kind of job.

A provider's prompt cache holds a kind's shared prefix (its long system prompt, its few-shot turns)
for minutes after a call. When the first link of a tier's chain is cold for a kind and a later link
is warm, the later one goes first, if it costs no more per token (input and output) and has not failed
for availability lately. What is warm and what failed is this worker process's own knowledge (no round
trip): a call that read or wrote the cache, or answered a prompt long enough to be cached, warms its
link for the kind for :data:`CACHE_WARM_S`; an availability failure keeps it from being moved up for
:data:`UNHEALTHY_S`. The breaker (fleet-wide, in Redis) still decides whether a link is called at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fleet.limits import BREAKER_FAILURES
from fleet.providers._http import CACHE_MIN_TOKENS

if TYPE_CHECKING:
    from fleet.models import Attempt
    from fleet.providers import ChatResponse
    from fleet.settings import Settings

__all__ = ["CACHE_WARM_S", "UNHEALTHY_S", "CacheAffinity"]

#: Seconds a provider's prompt cache is taken to stay warm after a call (both providers' default TTL).
CACHE_WARM_S = 300.0
#: Seconds after an availability failure before a link counts as healthy for a cache preference.
UNHEALTHY_S = 60.0
#: (link, kind) pairs remembered as warm at most.
_MAX_WARM = 10_000


class CacheAffinity:
    """What this process saw of each link's prompt cache and health, and the order it suggests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: (link, kind) -> when this process last saw the link's prompt cache hold the kind's prefix.
        self._warm: dict[tuple[str, str], float] = {}
        #: link -> when this process last saw it fail for availability (5xx, overloaded, timeout, ...).
        self._failed: dict[str, float] = {}

    def ordered(self, links: Sequence[tuple[str, str]], kind: str | None) -> list[tuple[str, str]]:
        """``links``, with a warm link moved first when the first one is cold for ``kind`` (see the
        module's docstring); unchanged otherwise."""
        out = list(links)
        if not kind or len(out) < 2:
            return out
        now = time.monotonic()

        def warm(link: tuple[str, str]) -> bool:
            seen = self._warm.get((f"{link[0]}:{link[1]}", kind))
            return seen is not None and now - seen <= CACHE_WARM_S

        if warm(out[0]):
            return out
        first = self.settings.model(*out[0])
        for i, link in enumerate(out[1:], 1):
            price = self.settings.model(*link)
            failed = self._failed.get(f"{link[0]}:{link[1]}")
            if (
                warm(link)
                and price.input_per_mtok <= first.input_per_mtok
                and price.output_per_mtok <= first.output_per_mtok
                and (failed is None or now - failed > UNHEALTHY_S)
            ):
                return [link, *out[:i], *out[i + 1 :]]
        return out

    def remember(self, kind: str | None, attempt: Attempt, response: ChatResponse | None) -> None:
        """What a call tells about its link: its cache holds the kind's prefix (it read or wrote it,
        or a long prompt was answered), or it failed for availability."""
        if attempt.outcome in BREAKER_FAILURES:
            self._failed[attempt.link] = time.monotonic()
        elif kind and response is not None and attempt.outcome == "ok":
            cached = response.cached_input_tokens or response.cache_write_tokens
            if cached or response.input_tokens >= CACHE_MIN_TOKENS:
                if len(self._warm) >= _MAX_WARM:
                    self._warm.clear()  # many kinds: start over rather than grow
                self._warm[(attempt.link, kind)] = time.monotonic()
