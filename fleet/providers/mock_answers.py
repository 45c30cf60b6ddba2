"""What the mock provider answers, apart from HTTP: shared by its server and the inline transport.

``MockCall`` is one parsed call; :func:`answer_text` is its deterministic answer (a restatement of
the prompt, or an instance of the asked JSON schema) shaped by a fault kind; :func:`answer_usage`
its token counts. :class:`InlineMockProvider` answers the same way inside the worker process, with
no network, no latency and no faults (``mock.transport = "inline"``): what the fleet costs with a
provider that costs nothing, for bench/throughput.py and bench/latency.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from fleet.providers.base import ChatRequest, ChatResponse
from fleet.providers.mock_schema import mismatch_instance, schema_instance

__all__ = ["InlineMockProvider", "MockCall", "answer_text", "answer_usage"]

Wire = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class MockCall:
    wire: Wire
    model: str
    canonical: bytes  # model + messages, canonical JSON: the determinism key
    last_user: str
    prompt_chars: int
    schema: dict[str, Any] | None
    json_mode: bool
    max_tokens: int | None
    #: OpenAI's ``logprobs: true``: the answer carries token log-probabilities.
    logprobs: bool = False
    #: The prompt's prefix a provider would cache (OpenAI: every message before the last one;
    #: Anthropic: the system prompt), its length and digest, and Anthropic's ``cache_control`` on it.
    prefix_chars: int = 0
    prefix: bytes = b""
    cache_hint: bool = False


_ASKED_WORDS = re.compile(r"\b(\d{2,4})[- ]?words?\b", re.I)
_ASKED_ITEMS = re.compile(
    r"\b(\d{1,2}) (bullet points|bullets|items|examples|ideas|tips|steps|questions|sentences|paragraphs)\b",
    re.I,
)
_WORDS_PER_ITEM = {"sentences": 18, "paragraphs": 80}


def asked_words(prompt: str) -> int | None:
    """How many words the prompt asks for ("a 300-word post", "5 bullet points"), if it says."""
    words = _ASKED_WORDS.search(prompt)
    if words:
        return min(2000, int(words.group(1)))
    items = _ASKED_ITEMS.search(prompt)
    if items:
        return min(2000, int(items.group(1)) * _WORDS_PER_ITEM.get(items.group(2).lower(), 14))
    return None


def _padded(text: str, words: int | None) -> str:
    """The answer grown to about ``words`` words, as a model asked for that length writes it."""
    if words is None:
        return text
    have = len(text.split())
    parts = [text]
    n = 0
    while have < words:
        n += 1
        line = f"Point {n} develops the request further with the detail it asks for, in plain words."
        parts.append(line)
        have += len(line.split())
    return "\n".join(parts)


def answer_text(call: MockCall, kind: str, ref: str) -> tuple[str, str]:
    """The answer's text and finish reason ("stop", "length", "content_filter") for fault ``kind``
    ("ok" or an answer-shaped fault); ``ref`` is a hex digest quoted in the text."""
    if call.schema is not None:
        text = mismatch_instance(call.schema) if kind == "schema_mismatch" else None
        text = text or json.dumps(schema_instance(call.schema))
    else:
        words = call.last_user.split()
        gist = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
        text = (
            f"Mock answer from {call.model}: {gist or '(empty prompt)'}\n\nThis deterministic reply "
            f"(ref {ref[:8]}) restates the request; the mock provider adds no facts."
        )
        text = _padded(text, asked_words(call.last_user))
        text = json.dumps({"answer": text}) if call.json_mode else text
    finish = "stop"
    if call.max_tokens is not None and len(text) > call.max_tokens * 4:
        # A model given a small budget answers briefly; only the "truncated" fault runs out of it.
        brief = (
            text[: call.max_tokens * 4].rsplit(" ", 1)[0]
            if call.schema is None and not call.json_mode
            else ""
        )
        text, finish = (brief, "stop") if brief.strip() else (text[: call.max_tokens * 4], "length")
    if kind == "truncated":
        text, finish = text[: max(1, len(text) // 2)], "length"
    elif kind == "empty_answer":
        text = ""
    elif kind == "content_filtered":
        text, finish = "", "content_filter"
    return text, finish


def answer_usage(call: MockCall, text: str) -> tuple[int, int]:
    """Input and output tokens of an answer, about four characters a token."""
    return max(1, (call.prompt_chars + 3) // 4), (len(text) + 3) // 4


class InlineMockProvider:
    """The mock provider's answers without the server: no HTTP, no latency, no faults."""

    def __init__(self, name: str, wire: Wire) -> None:
        self.name = name
        self.wire = wire

    def __repr__(self) -> str:
        return f"InlineMockProvider({self.name!r})"

    def complete(self, request: ChatRequest) -> ChatResponse:
        system = request.system or ""
        canonical = f"{request.model}\0{system}\0{request.prompt}".encode()
        call = MockCall(
            wire=self.wire,
            model=request.model,
            canonical=canonical,
            last_user=request.prompt,
            prompt_chars=len(system) + len(request.prompt),
            schema=request.response_schema,
            json_mode=False,
            max_tokens=request.max_tokens,
        )
        text, finish = answer_text(call, "ok", hashlib.blake2b(canonical, digest_size=16).hexdigest())
        tokens_in, tokens_out = answer_usage(call, text)
        return ChatResponse(
            text=text,
            finish_reason=finish,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            response_model=request.model,
        )
