"""What both HTTP adapters share: the call, the translation of httpx failures, key scrubbing.

Every failure leaves this layer as a :class:`fleet.errors.ProviderError` subclass; nothing from httpx
leaks to callers (it stays reachable as ``__cause__``). The API key is only read when the request
headers are built, and is scrubbed from every message that echoes a provider's body.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import ssl
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn, TypeGuard

import certifi
import httpx
from pydantic import SecretStr

from fleet import asyncio_pool
from fleet.errors import (
    AuthError,
    BadRequest,
    ContextLengthExceeded,
    MalformedResponse,
    Overloaded,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from fleet.providers.base import ChatRequest, Quota, QuotaPart, estimate_tokens

__all__ = [
    "CACHE_MIN_TOKENS",
    "SCHEMA_MARKER",
    "HTTPProvider",
    "estimate_usage",
    "mentions_context_length",
    "parse_retry_after",
    "read_quota",
    "schema_instruction",
    "scrub",
    "status_error_class",
    "tls_context",
    "usage_count",
    "usage_counts",
]

#: Providers without a native JSON-schema option get this line, then the schema as JSON, in the
#: system prompt. The mock provider looks for it to answer with a schema-valid document.
SCHEMA_MARKER = "Answer with one JSON document, and nothing else, that validates against this JSON schema:"

#: How much of an error body an exception message carries.
_BODY_LIMIT = 300
_CONTEXT_RE = re.compile(
    r"context[ _-]?(length|window|limit)|maximum context|prompt is too long|too many tokens", re.I
)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, shared by every client: httpx builds one per client by default
    (loading the CA bundle each time), 0.8 MB apiece, which a client per worker thread multiplies."""
    return ssl.create_default_context(cafile=certifi.where())


def schema_instruction(schema: dict[str, Any]) -> str:
    """The system-prompt text asking for a JSON answer valid against ``schema``."""
    return f"{SCHEMA_MARKER}\n{json.dumps(schema, sort_keys=True)}"


def mentions_context_length(message: str) -> bool:
    """True when a provider's error message is about the context window."""
    return bool(_CONTEXT_RE.search(message))


#: Below this many tokens (about four characters each) a prompt prefix is not cached: OpenAI's
#: minimum, and Anthropic's for most models.
CACHE_MIN_TOKENS = 1024


def usage_count(usage: Any, *path: str) -> int:
    """A count nested in a usage object (``usage_count(u, "prompt_tokens_details", "cached_tokens")``);
    0 when absent or not a count."""
    value: Any = usage
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if _is_count(value) else 0


def usage_counts(usage: Any, input_key: str, output_key: str) -> tuple[int, int] | None:
    """(input, output) token counts from a usage object, or None when either is missing."""
    if not isinstance(usage, dict):
        return None
    tokens_in, tokens_out = usage.get(input_key), usage.get(output_key)
    if _is_count(tokens_in) and _is_count(tokens_out):
        return tokens_in, tokens_out
    return None


def _is_count(value: object) -> TypeGuard[int]:
    # bool is an int subclass; a provider sending true/false sent no usage.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def estimate_usage(request: ChatRequest, answer: str) -> tuple[int, int]:
    """(input, output) token estimates for a provider that sent no usage."""
    sent = (request.system or "") + "".join(text for _, text in request.history) + request.prompt
    return estimate_tokens(sent), estimate_tokens(answer) if answer else 0


def status_error_class(status: int) -> type[ProviderError]:
    """The error class an HTTP error status means before looking at the body."""
    if status == 429:
        return RateLimited
    if status in (401, 403):
        return AuthError
    if status == 408:
        return ProviderTimeout
    if status == 413:
        # Anthropic's request_too_large: the input does not fit, as with a context-length error.
        return ContextLengthExceeded
    if status in (503, 529):
        return Overloaded
    if status >= 500:
        return ServerError
    if status >= 400:
        return BadRequest
    # 1xx/3xx: redirects are not followed, so this is a misconfigured base URL or a broken proxy.
    return MalformedResponse


def scrub(text: str, secret: SecretStr | None, limit: int = _BODY_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with the secret (and its long fragments) masked."""
    if secret is not None:
        key = secret.get_secret_value()
        if key:
            text = text.replace(key, "***")
            # Providers echo keys partly masked ("sk-abc...xyz"); drop any long run of the key too.
            if len(key) >= 16:
                for start in range(0, len(key) - 8, 4):
                    text = text.replace(key[start : start + 12], "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


#: OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _reset_s(raw: str, now: datetime) -> float | None:
    """Seconds until a limit is whole again: an OpenAI duration ("6m0s"), plain seconds, or
    Anthropic's RFC 3339 time."""
    raw = raw.strip()
    parts = _DURATION_PART.findall(raw)
    if parts and "".join(n + u for n, u in parts) == raw:
        return sum(float(n) * _UNIT_S[u] for n, u in parts)
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass  # not seconds: an RFC 3339 time
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _quota_part(headers: httpx.Headers, name: str, now: datetime) -> QuotaPart | None:
    """One limit's headers; ``name`` has ``{field}`` (remaining, reset, limit) in it."""
    try:
        remaining = int(headers[name.format(field="remaining")])
        limit_raw = headers.get(name.format(field="limit"))
        limit = int(limit_raw) if limit_raw is not None else None
    except (KeyError, ValueError):
        return None  # a bad optional header is not an error: no quota to read
    reset = _reset_s(headers.get(name.format(field="reset"), ""), now)
    if reset is None or remaining < 0:
        return None
    return QuotaPart(remaining=remaining, reset_s=reset, limit=limit)


def read_quota(headers: httpx.Headers, *, now: datetime | None = None) -> Quota | None:
    """What an answer's rate-limit headers say is left of the account's quota for its model
    (OpenAI's ``x-ratelimit-{remaining,reset,limit}-{requests,tokens}``, Anthropic's
    ``anthropic-ratelimit-{requests,tokens}-{remaining,reset,limit}``); None when it sent none."""
    at = now or datetime.now(UTC)
    openai = "x-ratelimit-remaining-requests" in headers or "x-ratelimit-remaining-tokens" in headers
    names = "x-ratelimit-{field}-%s" if openai else "anthropic-ratelimit-%s-{field}"
    requests = _quota_part(headers, names % "requests", at)
    tokens = _quota_part(headers, names % "tokens", at)
    return Quota(requests=requests, tokens=tokens) if requests or tokens else None


def parse_retry_after(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass  # fall through to Retry-After: a bad optional header is not an error
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass  # not seconds: try the HTTP-date form
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class HTTPProvider:
    """Base of the HTTP adapters: one POST per call, failures translated to ProviderError."""

    #: Human name of the wire format, for messages.
    wire = "http"

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: SecretStr | None,
        client: httpx.Client,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        name_caller: bool = False,
        prompt_cache: bool = False,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._client = client
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        #: Send ``x-fleet-caller: <pid>`` (to the mock provider only: chaos runs tell a call whose
        #: caller died from two live runs of one job by it).
        self.name_caller = name_caller
        #: Send prompt-cache hints (:attr:`fleet.providers.config.ProviderSettings.prompt_cache`).
        self.prompt_cache = prompt_cache

    def __repr__(self) -> str:
        # The key is deliberately absent: reprs end up in logs and tracebacks.
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    # -- helpers for subclasses ------------------------------------------------------------------

    def _timeout(self, request: ChatRequest) -> httpx.Timeout:
        read = request.timeout_s if request.timeout_s is not None else self.read_timeout_s
        return httpx.Timeout(read, connect=min(self.connect_timeout_s, read))

    def _post(self, url: str, request: ChatRequest, headers: dict[str, str], payload: Any) -> httpx.Response:
        """POST ``payload`` as JSON; transport failures become ProviderTimeout/ProviderConnectionError."""
        timeout = self._timeout(request)
        if self.name_caller:
            headers = {**headers, "x-fleet-caller": str(os.getpid())}
        try:
            if asyncio_pool.in_task():
                # A job on the asyncio pool: the call waits on the pool's loop, not in a thread.
                from fleet.providers import _aio  # deferred: aiohttp is only loaded where it is used

                sent = {**self._client.headers, **headers}  # the client's own headers, as httpx sends them
                return asyncio_pool.await_(_aio.post(url, payload, sent, timeout, tls_context()))
            return self._client.post(url, json=payload, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                self._msg(request, f"no answer within {timeout.read}s ({type(exc).__name__})"),
                provider=self.name,
                model=request.model,
            ) from exc
        except httpx.DecodingError as exc:
            raise MalformedResponse(
                self._msg(request, f"undecodable body: {self._scrub(str(exc))}"),
                provider=self.name,
                model=request.model,
            ) from exc
        except httpx.RequestError as exc:
            # ConnectError, RemoteProtocolError, ReadError, WriteError, ProxyError...: the call
            # never produced an HTTP answer, so the next attempt may well succeed.
            raise ProviderConnectionError(
                self._msg(request, f"{type(exc).__name__}: {self._scrub(str(exc))}"),
                provider=self.name,
                model=request.model,
            ) from exc

    def _json(self, response: httpx.Response, request: ChatRequest) -> Any:
        """The body as JSON. Raises MalformedResponse when it is not JSON."""
        try:
            return response.json()
        except ValueError as exc:
            self._malformed(response, request, f"body is not JSON: {self._scrub(response.text, 80)!r}", exc)

    def _malformed(
        self, response: httpx.Response, request: ChatRequest, what: str, exc: BaseException | None = None
    ) -> NoReturn:
        raise MalformedResponse(
            self._msg(request, what), provider=self.name, model=request.model, status=response.status_code
        ) from exc

    def _msg(self, request: ChatRequest, text: str) -> str:
        return f"{self.name}/{request.model}: {text}"

    def _scrub(self, text: str, limit: int = _BODY_LIMIT) -> str:
        return scrub(text, self._api_key, limit)

    def _error_text(self, response: httpx.Response, body: Any, message: str) -> str:
        """One line for an error status: status, the provider's message (scrubbed)."""
        detail = message or (response.text if not isinstance(body, dict) else json.dumps(body))
        return f"HTTP {response.status_code}: {self._scrub(detail)}"

    @staticmethod
    def _error_body(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _error(
        self,
        cls: type[ProviderError],
        response: httpx.Response,
        request: ChatRequest,
        text: str,
    ) -> NoReturn:
        # Anthropic sends Retry-After on 529 too; any error may carry one.
        retry_after = parse_retry_after(response.headers)
        error = cls(
            self._msg(request, text),
            provider=self.name,
            model=request.model,
            status=response.status_code,
            retry_after=retry_after,
        )
        error.quota = read_quota(response.headers)  # a 429's headers say the quota is spent: pace on it
        raise error
