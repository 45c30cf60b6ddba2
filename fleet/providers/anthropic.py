"""Adapter for Anthropic's Messages API: ``POST {base_url}/v1/messages``.

A ``response_schema`` is asked for in the system prompt (:data:`fleet.providers._http.SCHEMA_MARKER`),
which every Messages API version understands; the chain validates the answer either way.
"""

from __future__ import annotations

from typing import Any

import httpx

from fleet.errors import (
    AuthError,
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from fleet.providers._http import (
    CACHE_MIN_TOKENS,
    HTTPProvider,
    estimate_usage,
    mentions_context_length,
    read_quota,
    schema_instruction,
    status_error_class,
    usage_count,
    usage_counts,
)
from fleet.providers.base import ChatRequest, ChatResponse, estimate_tokens

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
#: The Messages API requires max_tokens; this is sent when the request leaves it unset.
DEFAULT_MAX_TOKENS = 1024

_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
#: Error ``type`` in the body wins over the status: a proxy may change the status, not the body.
_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "overloaded_error": Overloaded,
    "rate_limit_error": RateLimited,
    "authentication_error": AuthError,
    "permission_error": AuthError,
    "request_too_large": ContextLengthExceeded,
    "api_error": ServerError,
    "timeout_error": ProviderTimeout,
}


class AnthropicProvider(HTTPProvider):
    """One account of the Anthropic Messages API.

    ``complete`` raises a :class:`fleet.errors.ProviderError` subclass for every failed call.
    """

    wire = "anthropic"

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Make one Messages API call.

        Raises:
            RateLimited, Overloaded, ServerError, ProviderTimeout, ProviderConnectionError,
            ContextLengthExceeded, ContentFiltered, AuthError, BadRequest, MalformedResponse.
        """
        headers = {"accept": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.get_secret_value()
        response = self._post(f"{self.base_url}/v1/messages", request, headers, self._payload(request))
        if not response.is_success:
            self._raise_for_status(response, request)
        return self._parse(response, request)

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": _turns(request),
        }
        system = [request.system] if request.system else []
        if request.response_schema is not None:
            system.append(schema_instruction(request.response_schema))
        elif request.json_mode:  # the Messages API has no JSON mode: the instruction stands in
            system.append(JSON_MODE_INSTRUCTION)
        if request.stop:
            payload["stop_sequences"] = list(request.stop)
        if system:
            text = "\n\n".join(system)
            if self.prompt_cache and estimate_tokens(text) >= CACHE_MIN_TOKENS:
                # A long system prompt is the prefix jobs of a kind share: cache it (5 minutes).
                payload["system"] = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
            else:
                payload["system"] = text
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        return payload

    def _raise_for_status(self, response: httpx.Response, request: ChatRequest) -> None:
        body = self._error_body(response)
        error = body.get("error") if isinstance(body, dict) else None
        etype = message = ""
        if isinstance(error, dict):
            etype = str(error.get("type") or "")
            message = str(error.get("message") or "")
        cls = _ERROR_TYPES.get(etype) or status_error_class(response.status_code)
        if cls is BadRequest and mentions_context_length(message):
            cls = ContextLengthExceeded
        self._error(cls, response, request, self._error_text(response, body, message))

    def _parse(self, response: httpx.Response, request: ChatRequest) -> ChatResponse:
        data = self._json(response, request)
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            self._malformed(response, request, "no content list in the answer")
        if data.get("type") == "error":
            self._malformed(response, request, "an error body with a success status")
        parts: list[str] = []
        for block in data["content"]:
            if not isinstance(block, dict):
                self._malformed(response, request, "a content block is not an object")
            if block.get("type") == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    self._malformed(response, request, "a text block without text")
                parts.append(text)
        raw_stop = data.get("stop_reason")
        if raw_stop == "refusal":
            raise ContentFiltered(
                self._msg(request, "the model refused to answer (stop_reason refusal)"),
                provider=self.name,
                model=request.model,
                status=response.status_code,
            )
        finish = _STOP.get(str(raw_stop), str(raw_stop)) if raw_stop is not None else "unknown"
        text = "".join(parts)
        counts = usage_counts(data.get("usage"), "input_tokens", "output_tokens")
        estimated = counts is None
        if counts is None:
            counts = estimate_usage(request, text)
        # Anthropic's input_tokens leave out what was read from the cache and written to it.
        usage = data.get("usage")
        read = usage_count(usage, "cache_read_input_tokens")
        written = usage_count(usage, "cache_creation_input_tokens")
        extra = {"id": data["id"]} if isinstance(data.get("id"), str) else {}
        return ChatResponse(
            text=text,
            finish_reason=finish,
            input_tokens=counts[0] + read + written,
            output_tokens=counts[1],
            tokens_estimated=estimated,
            cached_input_tokens=read,
            cache_write_tokens=written,
            response_model=str(data.get("model") or request.model),
            http_status=response.status_code,
            extra=extra,
            quota=read_quota(response.headers),
        )


#: What stands in for JSON mode on the Messages API.
JSON_MODE_INSTRUCTION = "Answer with a single JSON object and nothing else."


def _turns(request: ChatRequest) -> list[dict[str, str]]:
    """The conversation as the Messages API takes it: user and assistant turns alternating, starting
    with the user's (turns of one role in a row are joined; a leading assistant turn gets an empty
    user turn before it). There is no seed parameter: a request's seed is not sent."""
    turns: list[dict[str, str]] = []
    for role, text in [*request.history, ("user", request.prompt)]:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    if turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "(the conversation so far)"})
    return turns
