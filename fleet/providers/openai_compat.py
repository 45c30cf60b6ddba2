"""Adapter for OpenAI-compatible chat APIs: ``POST {base_url}/chat/completions``.

Works with OpenAI, Azure-style gateways, vLLM, Ollama, LiteLLM and the fleet's mock provider.
"""

from __future__ import annotations

from typing import Any

import httpx

from fleet.errors import BadRequest, ContentFiltered, ContextLengthExceeded
from fleet.providers._http import (
    HTTPProvider,
    estimate_usage,
    mentions_context_length,
    read_quota,
    status_error_class,
    usage_count,
    usage_counts,
)
from fleet.providers.base import ChatRequest, ChatResponse

__all__ = ["OpenAICompatProvider"]

#: Finish reasons some compatible servers use, mapped onto OpenAI's names.
_FINISH = {
    "stop": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "model_length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}
_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_POLICY_CODES = {"content_policy_violation", "content_filter", "content_policy", "responsible_ai_policy"}


def _mean_logprob(logprobs: Any) -> float | None:
    """The mean of ``logprobs.content[*].logprob``, or None when the answer carries none."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    values = [
        t["logprob"] for t in content if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)
    ]
    return sum(values) / len(values) if values else None


class OpenAICompatProvider(HTTPProvider):
    """One account of an OpenAI-compatible API.

    ``complete`` raises a :class:`fleet.errors.ProviderError` subclass for every failed call.
    """

    wire = "openai"

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Make one chat completion call.

        Raises:
            RateLimited, Overloaded, ServerError, ProviderTimeout, ProviderConnectionError,
            ContextLengthExceeded, ContentFiltered, AuthError, BadRequest, MalformedResponse.
        """
        headers = {"accept": "application/json"}
        if self._api_key is not None:
            headers["authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        response = self._post(f"{self.base_url}/chat/completions", request, headers, self._payload(request))
        if not response.is_success:
            self._raise_for_status(response, request)
        return self._parse(response, request)

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages += [{"role": role, "content": text} for role, text in request.history]
        messages.append({"role": "user", "content": request.prompt})
        payload: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.logprobs:
            payload["logprobs"] = True
        if self.prompt_cache and request.cache_key:
            payload["prompt_cache_key"] = request.cache_key
        if request.response_schema is not None:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.response_schema},
            }
        elif request.json_mode:
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _raise_for_status(self, response: httpx.Response, request: ChatRequest) -> None:
        body = self._error_body(response)
        error = body.get("error") if isinstance(body, dict) else None
        code = message = etype = ""
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            message = str(error.get("message") or "")
            etype = str(error.get("type") or "")
        elif isinstance(error, str):  # some gateways send {"error": "text"}
            message = error
        cls = status_error_class(response.status_code)
        if cls is BadRequest or response.status_code == 400:
            if code in _CONTEXT_CODES or mentions_context_length(message):
                cls = ContextLengthExceeded
            elif code in _POLICY_CODES or etype in _POLICY_CODES or "content policy" in message.lower():
                cls = ContentFiltered
        self._error(cls, response, request, self._error_text(response, body, message))

    def _parse(self, response: httpx.Response, request: ChatRequest) -> ChatResponse:
        data = self._json(response, request)
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
            raw_finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            self._malformed(response, request, "no choices[0].message in the answer", exc)
        if content is not None and not isinstance(content, str):
            self._malformed(response, request, f"message.content is {type(content).__name__}, not text")
        finish = _FINISH.get(str(raw_finish), str(raw_finish)) if raw_finish is not None else "unknown"
        refusal = message.get("refusal")
        if finish == "content_filter" or (isinstance(refusal, str) and refusal):
            raise ContentFiltered(
                self._msg(request, f"answer withheld by the content filter ({self._scrub(refusal or '')})"),
                provider=self.name,
                model=request.model,
                status=response.status_code,
            )
        text = content or ""
        counts = usage_counts(data.get("usage"), "prompt_tokens", "completion_tokens")
        estimated = counts is None
        if counts is None:
            counts = estimate_usage(request, text)
        extra = {"id": data["id"]} if isinstance(data.get("id"), str) else {}
        cached = min(counts[0], usage_count(data.get("usage"), "prompt_tokens_details", "cached_tokens"))
        return ChatResponse(
            mean_logprob=_mean_logprob(choice.get("logprobs")),
            text=text,
            finish_reason=finish,
            input_tokens=counts[0],
            output_tokens=counts[1],
            tokens_estimated=estimated,
            cached_input_tokens=cached,
            reasoning_tokens=usage_count(data.get("usage"), "completion_tokens_details", "reasoning_tokens"),
            response_model=str(data.get("model") or request.model),
            http_status=response.status_code,
            extra=extra,
            quota=read_quota(response.headers),
        )
