"""The fallback chain: each link of a tier's chain in turn, until one gives an acceptable answer.

An outcome decides what happens next; the policy is data (``[retry.policy]`` in fleet.toml,
defaults in :data:`fleet.retry.DEFAULT_POLICY`), not exceptions swallowed:

- ``ok`` and the answer passes the quality checks (not empty, not truncated, valid against
  ``response_schema``): done.
- ``retry``: the same link again, with exponential backoff and jitter, bounded in attempts and in
  total wait; a Retry-After beyond the bound moves on instead of holding the worker slot.
- ``next_link``: the next link (for ``context_length_exceeded``, the next link with a larger
  context window).
- ``skip_provider`` (``auth``, a configuration fault): every remaining link of that provider is
  skipped, and it is logged loudly.

A provider whose circuit breaker is open (:mod:`fleet.limits`) is skipped without a call; the
attempt list records it with the outcome ``circuit_open``. A model at its rpm/tpm (token buckets in
Redis) is waited for up to ``limits.max_slot_wait_s``; beyond that it is recorded as ``throttled``
and, by ``limits.provider_limit``, the next link is tried or the chain stops with a ``retry_after``
so the job goes back to its queue instead of holding a worker slot.

When no link is left the chain returns an exhausted outcome; the caller escalates to people.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from fleet import asyncio_pool, keys, telemetry
from fleet.affinity import CacheAffinity
from fleet.errors import (
    EmptyAnswer,
    ProviderError,
    SchemaMismatch,
    TruncatedAnswer,
)
from fleet.limits import (
    Breaker,
    Bucket,
    Correction,
    Gate,
    GateAnswer,
    Limiter,
    Permit,
    apply_correction,
    link_corrections,
)
from fleet.models import Attempt, Purpose, TaskRequest
from fleet.providers import ChatRequest, ChatResponse, Provider, build_provider, make_http_client
from fleet.providers.base import Quota, estimate_tokens
from fleet.providers.config import ModelSettings
from fleet.settings import Settings

__all__ = [
    "CANCELLED",
    "CIRCUIT_OPEN",
    "THROTTLED",
    "Chain",
    "ChainOutcome",
    "charged",
    "chat_request",
    "check_answer",
]

log = logging.getLogger(__name__)

#: The outcome recorded for a link skipped because its provider's breaker is open.
CIRCUIT_OPEN = "circuit_open"
#: The outcome recorded for a link whose rpm/tpm bucket had no token within the wait bound.
THROTTLED = "throttled"
#: The walk stopped because its job was cancelled (no link was called after that).
CANCELLED = "cancelled"


@dataclass
class ChainOutcome:
    """What the chain ended with: an answer from one link, or the reason no link gave one."""

    attempts: list[Attempt] = field(default_factory=list)
    answer: str | None = None
    provider: str | None = None
    model: str | None = None
    link_index: int | None = None
    #: The outcome code that ended the chain without an answer (the last failure, or a policy).
    reason: str | None = None
    #: With reason "throttled": seconds until a rate-limit token is expected.
    retry_after: float | None = None
    #: The answer's mean token log-probability, when its provider returned them.
    mean_logprob: float | None = None

    @property
    def ok(self) -> bool:
        return self.answer is not None

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)


def check_answer(response: ChatResponse, request: TaskRequest, *, provider: str, model: str) -> None:
    """The quality checks an answer must pass before the chain accepts it.

    Raises:
        EmptyAnswer, TruncatedAnswer, SchemaMismatch: the check that failed.
    """
    if response.finish_reason == "length":
        raise TruncatedAnswer(
            "the answer was cut off (finish reason: length)", provider=provider, model=model
        )
    if not response.text.strip():
        raise EmptyAnswer("the answer is empty", provider=provider, model=model)
    if request.response_schema is not None:
        import jsonschema

        try:
            document = json.loads(response.text)
        except ValueError as exc:
            raise SchemaMismatch(f"the answer is not JSON: {exc}", provider=provider, model=model) from None
        try:
            jsonschema.validate(document, request.response_schema)
        except jsonschema.ValidationError as exc:
            raise SchemaMismatch(
                f"the answer does not match response_schema: {exc.message}", provider=provider, model=model
            ) from None


#: Connections kept by each thread's HTTP client (a thread makes one call at a time).
_THREAD_CONNECTIONS = 4


@dataclass
class _Walk:
    """One walk of a chain: what it has found so far, and what it learnt about the links left."""

    request: TaskRequest
    chat: ChatRequest
    deadline: float | None
    corrections: list[Correction] | None
    purpose: Purpose = "answer"
    outcome: ChainOutcome = field(default_factory=ChainOutcome)
    #: Providers that refused our credentials: every later link of theirs is skipped.
    skipped_providers: set[str] = field(default_factory=set)
    #: After a context-length error, only links with a larger window are tried.
    min_context: int = 0
    #: The shortest wait until a throttled link has a token again.
    throttled_wait: float | None = None
    #: Asked before every call after the first: True stops the walk (the job was cancelled).
    cancelled: Callable[[], bool] | None = None

    def stops_here(self) -> bool:
        """The job was cancelled: no more calls (asked only once a call was made)."""
        if self.cancelled is not None and self.outcome.attempts and self.cancelled():
            self.outcome.reason = CANCELLED
            return True
        return False

    def stop(self, reason: str) -> ChainOutcome:
        self.outcome.reason = reason
        return self.outcome

    def throttled(self, wait: float) -> None:
        self.throttled_wait = wait if self.throttled_wait is None else min(self.throttled_wait, wait)

    def exhausted(self) -> ChainOutcome:
        if self.throttled_wait is not None:
            # A link that was only busy may answer later: the job waits in its queue, not in a slot.
            self.outcome.reason, self.outcome.retry_after = THROTTLED, self.throttled_wait
        return self.outcome


class Chain:
    """Runs tiers' chains for one worker process: one shared httpx client, providers built once."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: httpx.Client | None = None,
        providers: dict[str, Provider] | None = None,
        breaker: Breaker | None = None,
        limiter: Limiter | None = None,
        sleep: Callable[[float], None] = asyncio_pool.sleep,
    ) -> None:
        self.settings = settings
        self.breaker = breaker
        self.limiter = limiter
        self._client = client
        self._providers: dict[str, Provider] = dict(providers or {})
        #: Without a client given: one HTTP client (and adapters on it) per thread (see :meth:`provider`).
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.RLock()
        self._sleep = sleep
        #: Which link to try first for a kind (a warm prompt cache): this process's own knowledge.
        self.affinity = CacheAffinity(settings)

    @property
    def client(self) -> httpx.Client:
        """The HTTP client of this thread's calls: the one given, else this thread's own."""
        if self._client is not None:
            return self._client
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            # A thread makes one call at a time: a small pool of its own. httpx's pool spends CPU
            # that grows with its connections and the threads contending for it: one client shared
            # by 200 threads managed 51 calls/s at 19 ms of CPU each, one per thread 943/s at
            # 0.7 ms (bench/httpx_pool.py, docs/performance.md).
            client = self._local.client = make_http_client(self.settings, max_connections=_THREAD_CONNECTIONS)
            with self._lock:
                self._clients.append(client)
        return client

    def provider(self, name: str) -> Provider:
        """The adapter for provider ``name``: one given to the chain, else this thread's (on its client)."""
        found = self._providers.get(name)
        if found is not None:
            return found
        mine: dict[str, Provider] | None = getattr(self._local, "providers", None)
        if mine is None:
            mine = self._local.providers = {}
        found = mine.get(name)
        if found is None:
            found = mine[name] = build_provider(name, self.settings, self.client)
        return found

    def close(self) -> None:
        """Close the HTTP client the chain was given and every one it opened."""
        if self._client is not None:
            self._client.close()
            self._client = None
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()

    def run(
        self,
        links: Sequence[tuple[str, str]],
        request: TaskRequest,
        *,
        timeout_s: float | None = None,
        corrections: list[Correction] | None = None,
        first: GateAnswer | None = None,
        purpose: Purpose = "answer",
        logprobs: bool = False,
        cancelled: Callable[[], bool] | None = None,
    ) -> ChainOutcome:
        """Walk ``links`` (``(provider, model)`` pairs) for ``request``; never raises a ProviderError.

        With ``corrections``, the buckets' corrections (tpm usage, a provider's quota) are appended
        there for the caller to send with its own end-of-job writes (one round trip) instead of one
        round trip each here.
        ``first`` is the first link's admission when the caller already asked :meth:`first_gate`
        (with the job's start, in the same round trip). ``purpose`` marks the attempts (a job's answer,
        a judge's verdict, a rewrite); ``logprobs`` asks for token log-probabilities where offered.
        """
        chat = chat_request(request, logprobs=logprobs)
        deadline = time.monotonic() + timeout_s if timeout_s else None
        walk = _Walk(request, chat, deadline, corrections, purpose, cancelled=cancelled)
        for index, (provider, model) in enumerate(links):
            if provider in walk.skipped_providers:
                continue
            if walk.stops_here():
                return walk.outcome
            if self.settings.model(provider, model).context_window <= walk.min_context:
                continue
            if request.max_cost_usd is not None and walk.outcome.cost_usd >= request.max_cost_usd:
                return walk.stop("cost_ceiling")
            if self._link(walk, index, provider, model, first if index == 0 else None):
                return walk.outcome
        return walk.exhausted()

    def _link(self, walk: _Walk, index: int, provider: str, model: str, first: GateAnswer | None) -> bool:
        """Try one link, retrying it as the policy says; True when the walk ends here."""
        retry = self.settings.retry
        waited = 0.0
        buckets = self._buckets(provider, model, walk.request)
        for try_no in range(1, retry.max_attempts_per_link + 1):
            if walk.deadline is not None and time.monotonic() >= walk.deadline:
                walk.stop("timeout")
                return True
            if try_no > 1 and walk.stops_here():
                return True
            permit, skipped, wait = self._admit(provider, model, buckets, first if try_no == 1 else None)
            if skipped is not None:
                return self._not_called(walk, skipped, wait)
            error = self._attempt(walk, index, provider, model, buckets, permit)
            if error is None:
                return True
            delay = self._next_try(walk, error, provider, model, try_no)
            if delay is None or waited + delay > retry.max_wait_s:
                return False  # next link (waiting that long would hold the worker slot)
            waited += delay
            self._sleep(delay)
        return False

    def _not_called(self, walk: _Walk, skipped: Attempt, wait: float) -> bool:
        """A link skipped without a call (throttled, or its breaker is open); True: the walk ends."""
        walk.outcome.attempts.append(skipped)
        walk.outcome.reason = skipped.outcome
        if skipped.outcome == THROTTLED:
            walk.throttled(wait)
            if self.settings.limits.provider_limit == "wait":
                walk.outcome.retry_after = walk.throttled_wait
                return True
        return False

    def _attempt(
        self, walk: _Walk, index: int, provider: str, model: str, buckets: list[Bucket], permit: Permit | None
    ) -> ProviderError | None:
        """One call on the link, recorded on the walk; None when it answered acceptably."""
        chat = walk.chat
        with telemetry.chat_span(
            provider, model, index, prompt=chat.prompt, system=chat.system,
            max_tokens=chat.max_tokens, temperature=chat.temperature,
        ) as span:  # fmt: skip
            attempt, error, response = self._call(provider, model, chat, walk.request, walk.purpose)
            telemetry.end_attempt(span, attempt, error.code if error is not None else None)
        walk.outcome.attempts.append(attempt)
        self.affinity.remember(walk.request.kind, attempt, response)
        quota = response.quota if response is not None else error.quota if error is not None else None
        self._correct(buckets, attempt, quota, walk.corrections)
        if permit is not None and self.breaker is not None:
            self.breaker.record(provider, permit, attempt.outcome)
        if error is not None:
            walk.outcome.reason = error.code
            return error
        if response is not None:
            out = walk.outcome
            out.mean_logprob = response.mean_logprob
            out.answer, out.provider, out.model, out.link_index, out.reason = (
                response.text,
                provider,
                model,
                index,
                None,
            )
        return None

    def _next_try(
        self, walk: _Walk, error: ProviderError, provider: str, model: str, try_no: int
    ) -> float | None:
        """The delay before trying the same link again, or None to move on (the policy's answer)."""
        retry = self.settings.retry
        action = retry.action(error.code)
        if action == "skip_provider":
            log.error(
                "provider %s refused our credentials (%s): skipping it; fix its api_key_env",
                provider,
                error.status,
            )
            walk.skipped_providers.add(provider)
            return None
        if error.code == "context_length_exceeded":
            walk.min_context = self.settings.model(provider, model).context_window
            return None
        if action != "retry" or try_no == retry.max_attempts_per_link:
            return None
        if error.retry_after is not None:
            return error.retry_after
        delay = min(retry.backoff_max_s, retry.backoff_base_s * 2 ** (try_no - 1))
        return random.uniform(delay / 2, delay)

    def first_gate(self, links: Sequence[tuple[str, str]], request: TaskRequest) -> Gate | None:
        """The first link's admission, for a caller that asks it in a round trip of its own and
        passes the answer to :meth:`run` as ``first``; None when there is nothing to ask that way."""
        if not links or self.limiter is None:
            return None
        if request.max_cost_usd is not None and request.max_cost_usd <= 0:
            return None  # the chain stops before the first call: reserve nothing
        provider, model = links[0]
        return self._gate(provider, model, self._buckets(provider, model, request))

    def _gate(self, provider: str, model: str, buckets: list[Bucket]) -> Gate:
        return Gate(
            buckets,
            keys.rate_counter(f"{provider}:{model}", int(time.time()) // 10),
            provider,
            self.settings.limits.max_slot_wait_s,
            self.breaker.settings if self.breaker is not None else None,
        )

    def _admit(
        self, provider: str, model: str, buckets: list[Bucket], asked: GateAnswer | None = None
    ) -> tuple[Permit | None, Attempt | None, float]:
        """Take the link's rpm/tpm tokens and its breaker permit (one round trip when both apply),
        sleeping a short wait for a token here. ``asked``: that round trip's answer, when the caller
        already made it.

        Returns ``(permit, skipped, wait_s)``: ``skipped`` is the attempt recording why the link is
        not called (``throttled``, with the wait until a token, or ``circuit_open``), else None.
        """
        permit: Permit | None = None
        breaker_on = self.breaker is not None and self.breaker.settings.enabled
        if asked is None and self.limiter is not None and (buckets or breaker_on):
            asked = self.limiter.ask(self._gate(provider, model, buckets))
        if asked is not None:
            if not asked.reserved:
                wait = asked.wait_s
                return (
                    None,
                    _skipped(provider, model, THROTTLED, f"rpm/tpm reached: next in {wait:.1f} s"),
                    wait,
                )
            if asked.wait_s > 0:
                self._sleep(asked.wait_s)
            permit = asked.permit
        if permit is None and self.breaker is not None:
            permit = self.breaker.allow(provider)
        if permit is not None and not permit.allowed:
            why = f"breaker of {provider} is {permit.state}: skipped without a call"
            return permit, _skipped(provider, model, CIRCUIT_OPEN, why), 0.0
        return permit, None, 0.0

    def _buckets(self, provider: str, model: str, request: TaskRequest) -> list[Bucket]:
        """The model's rpm and tpm buckets (tpm costs the request's estimated tokens)."""
        if self.limiter is None:
            return []
        settings = self.settings.model(provider, model)
        buckets = []
        if settings.rpm:
            rate = settings.rpm / 60.0
            buckets.append(Bucket(keys.bucket("rpm", f"{provider}:{model}"), rate, burst=max(1.0, rate)))
        if settings.tpm:
            rate = settings.tpm / 60.0
            estimate = estimate_tokens(request.text + (request.instructions or "")) + (
                request.max_tokens or self.settings.limits.default_output_tokens
            )
            buckets.append(
                Bucket(
                    keys.bucket("tpm", f"{provider}:{model}"), rate, burst=max(rate, estimate), cost=estimate
                )
            )
        return buckets

    def _correct(
        self,
        buckets: list[Bucket],
        attempt: Attempt,
        quota: Quota | None,
        corrections: list[Correction] | None,
    ) -> None:
        """Correct the link's buckets after a call: tpm's estimate replaced by the actual usage (a
        refund or a further charge), and both booked ahead when the provider's rate-limit headers (an
        answer's, or a 429's) say its quota is nearly spent (``limits.header_pacing``), so the model
        slows down before a 429, and every worker holds off after one."""
        if self.limiter is None:
            return
        limits = self.settings.limits
        paced = quota if limits.header_pacing else None
        used = attempt.input_tokens + attempt.output_tokens
        for correction in link_corrections(buckets, used, paced, limits.quota_reserve):
            if corrections is not None:
                corrections.append(correction)
            else:
                apply_correction(self.limiter, correction)

    def _call(
        self, provider_name: str, model: str, chat: ChatRequest, request: TaskRequest, purpose: Purpose
    ) -> tuple[Attempt, ProviderError | None, ChatResponse | None]:
        """One call and its quality checks: the attempt record, the error (if any), the response."""
        model_settings = self.settings.model(provider_name, model)
        link = f"{provider_name}:{model}"
        started = time.perf_counter()
        call = dataclasses.replace(chat, model=model)
        response: ChatResponse | None = None
        try:
            response = self.provider(provider_name).complete(call)
            telemetry.record_response(response.text, response.finish_reason, response.response_model, model)
            check_answer(response, request, provider=provider_name, model=model)
        except ProviderError as exc:
            latency = (time.perf_counter() - started) * 1000
            attempt = Attempt(
                link=link,
                provider=provider_name,
                model=model,
                purpose=purpose,
                outcome=exc.code,
                http_status=exc.status
                if exc.status is not None
                else (response.http_status if response else None),
                latency_ms=round(latency, 2),
                error=exc.message[:500],
                **charged(model_settings, response),
            )
            return attempt, exc, response  # (an answer that failed its checks still tells the quota)
        latency = (time.perf_counter() - started) * 1000
        return (
            Attempt(
                link=link,
                provider=provider_name,
                model=model,
                purpose=purpose,
                outcome="ok",
                http_status=response.http_status,
                latency_ms=round(latency, 2),
                **charged(model_settings, response),
            ),
            None,
            response,
        )


def chat_request(request: TaskRequest, *, model: str = "", logprobs: bool = False) -> ChatRequest:
    """The provider call a job's request makes (on ``model``; the chain fills it in per link)."""
    return ChatRequest(
        model=model,
        prompt=request.ask,
        system=request.instructions,
        history=tuple((m.role, m.content) for m in request.history),
        stop=tuple(request.stop or ()),
        seed=request.seed,
        json_mode=request.json_mode,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        response_schema=request.response_schema,
        logprobs=logprobs,
        cache_key=request.kind,
    )


def charged(model: ModelSettings, response: ChatResponse | None) -> dict[str, Any]:
    """An attempt's tokens and their price (a call that got no answer: nothing)."""
    if response is None:
        return {}
    return {
        "input_tokens": response.input_tokens,
        "output_tokens": response.output_tokens,
        "tokens_estimated": response.tokens_estimated,
        "cached_input_tokens": response.cached_input_tokens,
        "cache_write_tokens": response.cache_write_tokens,
        "reasoning_tokens": response.reasoning_tokens,
        "cost_usd": model.cost(
            response.input_tokens,
            response.output_tokens,
            response.cached_input_tokens,
            response.cache_write_tokens,
        ),
    }


def _skipped(provider: str, model: str, outcome: str, error: str) -> Attempt:
    """The record of a link not called (its rpm/tpm had no token, or its breaker is open)."""
    return Attempt(link=f"{provider}:{model}", provider=provider, model=model, outcome=outcome, error=error)
