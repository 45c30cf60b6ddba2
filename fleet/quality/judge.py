"""The judge: a model asked, with a rubric, whether an answer does what its request asked.

It answers with a JSON verdict ``{"score": 1-5, "problems": [...]}``, asked as a ``response_schema``
and validated like any other (a verdict that does not validate is no verdict). Its calls go through
the chain like any job's: the judge's links, their rate limits, breakers and fallbacks. A rewrite
("polish") is the same kind of call: a stronger model given the request, the draft and the problems.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from fleet import telemetry
from fleet.chain import Chain, ChainOutcome
from fleet.models import Attempt, Purpose, TaskRequest

__all__ = [
    "PAIR_SCHEMA",
    "VERDICT_SCHEMA",
    "Judge",
    "Judged",
    "Verdict",
    "judge_prompt",
    "pair_prompt",
    "polish_prompt",
]

#: What a judge must answer.
VERDICT_SCHEMA: dict[str, object] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["score", "problems"],
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "problems": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 500}},
    },
}
#: What a judge comparing two answers side by side must answer: a verdict for each.
PAIR_SCHEMA: dict[str, object] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["a", "b"],
    "properties": {"a": VERDICT_SCHEMA, "b": VERDICT_SCHEMA},
}

_RUBRIC = """\
You review an AI model's answer before it ships to a user. Judge only whether the answer does what the
request asks: correct, complete, following every instruction (format, length, constraints), with no
invented facts. Do not reward style. Score 5: correct and complete; 4: correct with a minor gap;
3: usable but with a real omission; 2: a wrong statement, a missed instruction or a large gap;
1: wrong or off-task. List each problem in one short sentence (none for a 5).
Answer with one JSON object and nothing else: {"score": <1-5>, "problems": ["..."]}
"""
_PAIR_RUBRIC = """\
You compare two answers to the same request, side by side, before deciding which model tier can do
this kind of work. Judge each answer on its own, by the same rubric: correct, complete, following
every instruction, no invented facts; score 1-5 and list its problems in short sentences.
Answer with one JSON object and nothing else: {"a": {"score": .., "problems": [..]}, "b": {..}}
"""
_POLISH = """\
A reviewer found problems in a draft answer. Rewrite the answer so it does exactly what the request
asks and fixes every problem listed. Answer with the corrected answer only.
"""


class Verdict(BaseModel):
    """A judge's verdict on one answer."""

    model_config = ConfigDict(extra="forbid")

    score: StrictInt = Field(ge=1, le=5)
    problems: list[str] = Field(default_factory=list, max_length=10)


def _shown(request: TaskRequest, max_chars: int) -> str:
    """The request as a judge sees it: its system text and prompt, the middle of a long one cut."""
    text = request.text
    if len(text) > max_chars:
        head, tail = max_chars * 3 // 4, max_chars // 4
        text = f"{text[:head]}\n[... {len(text) - head - tail} characters omitted ...]\n{text[-tail:]}"
    if request.system:
        text = f"{text}\n\n(System instructions the model was given: {request.system[:2000]})"
    return text


def judge_prompt(request: TaskRequest, answer: str, max_chars: int = 20_000) -> str:
    return f"{_RUBRIC}\n<request>\n{_shown(request, max_chars)}\n</request>\n<answer>\n{answer}\n</answer>\n"


def pair_prompt(request: TaskRequest, a: str, b: str, max_chars: int = 20_000) -> str:
    return (
        f"{_PAIR_RUBRIC}\n<request>\n{_shown(request, max_chars)}\n</request>\n"
        f"<answer_a>\n{a}\n</answer_a>\n<answer_b>\n{b}\n</answer_b>\n"
    )


def polish_prompt(request: TaskRequest, draft: str, problems: list[str], max_chars: int = 20_000) -> str:
    listed = "\n".join(f"- {p}" for p in problems) or "- (the reviewer gave no detail)"
    return (
        f"{_POLISH}\n<request>\n{_shown(request, max_chars)}\n</request>\n"
        f"<draft>\n{draft}\n</draft>\n<problems>\n{listed}\n</problems>\n"
    )


@dataclass
class Judged:
    """A judge's or a rewrite's calls: the attempts (to charge), the link that answered, and what it said."""

    attempts: list[Attempt] = field(default_factory=list)
    link: str | None = None
    answer: str | None = None

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)


def _judged(outcome: ChainOutcome) -> Judged:
    link = f"{outcome.provider}:{outcome.model}" if outcome.ok else None
    return Judged(list(outcome.attempts), link, outcome.answer)


class Judge:
    """Asks the judge's chain for verdicts, and the polish chain for rewrites. Thread-safe."""

    def __init__(
        self,
        chain: Chain,
        judge_links: list[tuple[str, str]],
        *,
        timeout_s: float = 60.0,
        max_chars: int = 20_000,
    ) -> None:
        self.chain = chain
        self.links = judge_links
        self.timeout_s = timeout_s
        self.max_chars = max_chars

    def _ask(
        self, links: list[tuple[str, str]], prompt: str, schema: dict[str, object] | None, purpose: Purpose
    ) -> Judged:
        request = TaskRequest(prompt=prompt, response_schema=schema, temperature=0.0)
        return _judged(self.chain.run(links, request, timeout_s=self.timeout_s, purpose=purpose))

    def verdict(self, request: TaskRequest, answer: str) -> tuple[Verdict | None, Judged]:
        """The judge's verdict on ``answer`` (None when no link gave a valid one), in a ``judge`` span."""
        with telemetry.span("judge", attributes={"gen_ai.operation.name": "judge"}) as span:
            judged = self._ask(
                self.links, judge_prompt(request, answer, self.max_chars), VERDICT_SCHEMA, "judge"
            )
            verdict = _parse(judged.answer, Verdict)
            _annotate(span, judged, verdict.score if verdict else None)
        return verdict, judged

    def compare(self, request: TaskRequest, a: str, b: str) -> tuple[tuple[Verdict, Verdict] | None, Judged]:
        """Verdicts on two answers to one request, judged side by side in one call."""
        with telemetry.span(
            "judge", attributes={"gen_ai.operation.name": "judge", "fleet.judge.pair": True}
        ) as span:
            judged = self._ask(self.links, pair_prompt(request, a, b, self.max_chars), PAIR_SCHEMA, "judge")
            pair = _parse(judged.answer, _Pair)
            _annotate(span, judged, pair.a.score if pair else None)
        return ((pair.a, pair.b) if pair else None), judged

    def polish(
        self, links: list[tuple[str, str]], request: TaskRequest, draft: str, problems: list[str]
    ) -> Judged:
        """A stronger model's rewrite of ``draft``, given the judge's ``problems``."""
        return self._ask(
            links, polish_prompt(request, draft, problems, self.max_chars), request.response_schema, "polish"
        )


class _Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: Verdict
    b: Verdict


M = TypeVar("M", bound=BaseModel)


def _parse(answer: str | None, model: type[M]) -> M | None:
    if answer is None:
        return None
    try:
        return model.model_validate(json.loads(answer))
    except (ValueError, ValidationError):
        return None


def _annotate(span: object, judged: Judged, score: int | None) -> None:
    set_attributes = getattr(span, "set_attributes", None)
    if set_attributes is None:
        return
    attributes: dict[str, object] = {
        "gen_ai.usage.input_tokens": sum(a.input_tokens for a in judged.attempts),
        "gen_ai.usage.output_tokens": sum(a.output_tokens for a in judged.attempts),
        "fleet.cost_usd": judged.cost_usd,
    }
    if judged.link:
        attributes["gen_ai.request.model"] = judged.link.partition(":")[2]
        attributes["gen_ai.system"] = judged.link.partition(":")[0]
    if score is not None:
        attributes["fleet.quality.score"] = score
    set_attributes(attributes)
