"""The mock provider's wire formats: a request body read as a call, and the answers and errors of
the OpenAI and Anthropic APIs (status codes, error types and bodies as the real ones send them).

Pure functions of their arguments; :mod:`fleet.providers.mock_server` decides which to send.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

from starlette.responses import Response

from fleet.providers._http import SCHEMA_MARKER
from fleet.providers.mock_answers import MockCall, Wire, answer_text, answer_usage
from fleet.providers.mock_cache import CacheUse

__all__ = [
    "HTTP_FAULTS",
    "MALFORMED",
    "answer_response",
    "error_response",
    "fault_response",
    "json_response",
    "model_not_found",
    "parse_call",
]

#: Faults answered with an HTTP error, by kind:
#: (openai status, openai type, openai code, anthropic status, anthropic type, message)
HTTP_FAULTS: dict[str, tuple[int, str, str | None, int, str, str]] = {
    "rate_limited": (429, "requests", "rate_limit_exceeded", 429, "rate_limit_error", "Rate limit reached."),
    "overloaded": (503, "server_error", None, 529, "overloaded_error", "The server is overloaded."),
    "server_error": (500, "server_error", None, 500, "api_error", "The server had an error."),
    "auth": (401, "invalid_request_error", "invalid_api_key", 401, "authentication_error", "Bad API key."),
    "bad_request": (
        400,
        "invalid_request_error",
        "invalid_value",
        400,
        "invalid_request_error",
        "Bad request",
    ),
    # The message is built per call: the real ones name the token counts.
    "context_length_exceeded": (400, "invalid_request_error", "context_length_exceeded", 400, "", ""),
}

#: The body of a "malformed_response" fault: JSON cut off mid-string.
MALFORMED = b'{"id": "mock", "object": "chat.completion", "choices": [{"message": {"content": "cut'


# --- the call -------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _marker_schema(texts: Sequence[str]) -> dict[str, Any] | None:
    for text in texts:
        at = text.find(SCHEMA_MARKER)
        if at >= 0:
            try:
                found, _ = json.JSONDecoder().raw_decode(text[at + len(SCHEMA_MARKER) :].lstrip())
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None


def parse_call(wire: Wire, body: Any) -> MockCall | str:
    """The call described by a request body, or the reason it is invalid."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "model: a string is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "messages: a non-empty list of objects is required"
    if body.get("stream"):
        return "stream: the mock provider does not stream"
    system = _text(body.get("system")) if wire == "anthropic" else ""
    if wire == "anthropic" and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    texts = [system, *(_text(m.get("content")) for m in messages)]
    users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    fmt = body.get("response_format") if wire == "openai" else None
    schema = None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
    schema = schema if isinstance(schema, dict) else _marker_schema(texts)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    canonical = json.dumps([body["model"], system, messages], sort_keys=True, separators=(",", ":"))
    if wire == "openai":
        prefix_texts = [_text(m.get("content")) for m in messages[:-1]]
        cache_hint = True  # OpenAI caches every long prefix by itself
    else:
        prefix_texts = [system]
        blocks = body.get("system")
        cache_hint = isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("cache_control") for b in blocks
        )
    prefix = json.dumps([body["model"], prefix_texts], separators=(",", ":")).encode()
    return MockCall(
        wire=wire,
        model=body["model"],
        canonical=canonical.encode(),
        last_user=users[-1] if users else texts[-1],
        prompt_chars=sum(len(t) for t in texts),
        schema=schema,
        json_mode=isinstance(fmt, dict) and fmt.get("type") == "json_object",
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
        logprobs=wire == "openai" and body.get("logprobs") is True,
        prefix_chars=sum(len(t) for t in prefix_texts),
        prefix=hashlib.blake2b(prefix, digest_size=16).digest(),
        cache_hint=cache_hint,
    )


# --- responses ------------------------------------------------------------------------------------


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Compact JSON, as the real APIs send it."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_response(
    wire: Wire, status: int, etype: str, message: str, code: str | None = None, **hdr: str
) -> Response:
    """An error body in the wire format's shape, with headers ``hdr``."""
    if wire == "openai":
        body: dict[str, Any] = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    else:
        body = {"type": "error", "error": {"type": etype, "message": message}}
    return json_response(body, status, hdr or None)


def fault_response(
    call: MockCall, kind: str, *, down: bool, retry_after_s: float, context_window: int
) -> Response:
    """The error of HTTP fault ``kind`` (a key of :data:`HTTP_FAULTS`) in the call's wire format.

    ``down``: the model is configured down, so the answer is a 503 whatever the kind.
    """
    o_status, o_type, o_code, a_status, a_type, message = HTTP_FAULTS[kind]
    a_type = a_type or o_type
    headers: dict[str, str] = {}
    if kind == "rate_limited":
        after = retry_after_s
        headers["retry-after"] = str(int(after)) if after == int(after) else f"{after:g}"
        headers["retry-after-ms"] = str(round(after * 1000))
    if kind == "context_length_exceeded":
        tokens = max(context_window + 1, call.prompt_chars // 4)
        message = (
            f"This model's maximum context length is {context_window} tokens. However, your "
            f"messages resulted in {tokens} tokens. Please reduce the length of the messages."
            if call.wire == "openai"
            else f"prompt is too long: {tokens} tokens > {context_window} maximum"
        )
    if call.wire == "openai":
        return error_response("openai", 503 if down else o_status, o_type, message, o_code, **headers)
    return error_response("anthropic", 503 if down else a_status, a_type, message, **headers)


def model_not_found(wire: Wire, model: str) -> Response:
    """The 404 a provider sends for a model it does not serve."""
    if wire == "openai":
        text = f"The model `{model}` does not exist or you do not have access to it."
        return error_response(wire, 404, "invalid_request_error", text, "model_not_found")
    return error_response(wire, 404, "not_found_error", f"model: {model}")


def _logprobs(text: str, low: bool, ref: str) -> dict[str, Any]:
    """OpenAI's ``choices[0].logprobs``: one entry per word-piece of the answer (at most 256); a
    confident answer's log-probabilities are near 0, a low-confidence one's well below -1."""
    pieces = text.split()[:256] or [""]
    out = []
    for i, piece in enumerate(pieces):
        u = int(ref[(i * 2) % len(ref) : (i * 2) % len(ref) + 2] or "0", 16) / 255.0
        value = -(0.8 + 1.7 * u) if low else -(0.02 + 0.3 * u)
        out.append({"token": piece, "logprob": round(value, 4), "bytes": None, "top_logprobs": []})
    return {"content": out, "refusal": None}


def answer_response(
    call: MockCall,
    kind: str,
    base: bytes,
    *,
    text: str | None = None,
    low_confidence: bool = False,
    cache: CacheUse | None = None,
) -> Response:
    """The answer to ``call`` shaped by ``kind`` ("ok" or an answer-shaped fault); ``base`` is the
    digest of the call, quoted in the answer's id and text. ``text``: the simulation's answer instead
    of the default one (``low_confidence``: its token log-probabilities say so). ``cache``: what the
    SIMULATED prompt cache read and wrote for it (:mod:`fleet.providers.mock_cache`)."""
    ref = base.hex()
    if text is None:
        text, finish = answer_text(call, kind, ref)
    else:
        finish = "stop"
    tokens_in, tokens_out = answer_usage(call, text)
    read, written = (cache.read, cache.written) if cache is not None else (0, 0)
    if call.wire == "openai":
        content = None if finish == "content_filter" else text
        return json_response(
            {
                "id": f"chatcmpl-mock{ref[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": call.model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": _logprobs(text, low_confidence, ref)
                        if call.logprobs and content
                        else None,
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": tokens_in,
                    "completion_tokens": tokens_out,
                    "total_tokens": tokens_in + tokens_out,
                    "prompt_tokens_details": {"cached_tokens": read},
                },
            }
        )
    stop = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}[finish]
    return json_response(
        {
            "id": f"msg_mock{ref[:24]}",
            "type": "message",
            "role": "assistant",
            "model": call.model,
            # Anthropic sends no block for an empty answer or a refusal.
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": max(0, tokens_in - read - written),
                "output_tokens": tokens_out,
                "cache_read_input_tokens": read,
                "cache_creation_input_tokens": written,
            },
        }
    )
