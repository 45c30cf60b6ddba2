"""The LLM classifier: asks the mini tier's model for a JSON verdict, falls back to the heuristic.

Opt-in with ``[router] classifier = "llm"``. The caller passes ``ask(prompt, timeout_s) -> text``
(:data:`Ask`), which runs the mini tier's provider chain and raises on any failure: the worker builds
it (fleet.tasks), so this module knows nothing of the chain or the providers. The verdict
``{"score": 1-5, "tier": "mini"|"standard"|"full", "reason": "..."}`` is validated by pydantic;
an exception, a timeout, invalid JSON, wrong fields, an out-of-range score or a tier that does not
match the score all fall back to the heuristic, and the decision's ``reasons`` say so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from fleet.models import RoutingDecision, TaskRequest, Tier
from fleet.router import heuristic
from fleet.router.config import RouterSettings

__all__ = [
    "CLASSIFIER",
    "FALLBACK",
    "VERDICT_SCHEMA",
    "Ask",
    "Verdict",
    "build_prompt",
    "classify",
    "parse_verdict",
]

#: ``classifier`` of a decision made from the model's verdict.
CLASSIFIER = "llm"
#: ``classifier`` of a decision where the LLM failed and the heuristic decided.
FALLBACK = "heuristic (llm fallback)"

#: (prompt, timeout_s) -> the model's raw answer text; raises on any failure.
Ask = Callable[[str, float], str]

# Characters of the request shown to the classifying model: enough to see the ask, cheap to send.
_HEAD_CHARS = 3000
_TAIL_CHARS = 1000
_JSON_RE = re.compile(r"\{.*\}", re.S)

_INSTRUCTIONS = """\
You route AI jobs to the cheapest model tier that does them well.
Score the job 1-5 and pick its tier:
- 1-2 "mini": mechanical, bounded, well-specified work (format, extract, translate, rename,
  docstrings, boilerplate, scaffolding, classification, lint fixes, short summaries).
- 3 "standard": ordinary writing, coding or analysis that needs some judgement.
- 4-5 "full": design, architecture, trade-offs, security, debugging across components, proofs,
  algorithm design, ambiguous goals, high stakes.
Long pasted input (code, logs, documents) does not by itself make a job hard: judge what is asked.
Answer with one JSON object and nothing else:
{"score": <1-5>, "tier": "<mini|standard|full>", "reason": "<one short sentence>"}
"""


class Verdict(BaseModel):
    """The classifying model's answer."""

    model_config = ConfigDict(extra="forbid")

    score: StrictInt = Field(ge=1, le=5)
    tier: Literal["mini", "standard", "full"]
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _tier_matches_score(self) -> Verdict:
        expected = heuristic.tier_for_score(self.score).value
        if self.tier != expected:
            raise ValueError(f"tier {self.tier!r} does not match score {self.score} ({expected!r})")
        return self


#: The JSON schema asked of the classifying model (providers that support it answer to the schema).
VERDICT_SCHEMA: dict[str, object] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["score", "tier", "reason"],
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "tier": {"type": "string", "enum": ["mini", "standard", "full"]},
        "reason": {"type": "string", "minLength": 1, "maxLength": 500},
    },
}


def build_prompt(request: TaskRequest) -> str:
    """The classification prompt: instructions, then the job (its middle cut when long)."""
    text = request.text
    if len(text) > _HEAD_CHARS + _TAIL_CHARS:
        cut = len(text) - _HEAD_CHARS - _TAIL_CHARS
        text = f"{text[:_HEAD_CHARS]}\n[... {cut} characters omitted ...]\n{text[-_TAIL_CHARS:]}"
    facts = []
    if request.kind:
        facts.append(f"kind: {request.kind}")
    if request.hints.files:
        facts.append(f"files touched: {len(request.hints.files)}")
    if request.response_schema is not None:
        facts.append("the answer must satisfy a JSON schema")
    header = "\n".join(facts)
    return f"{_INSTRUCTIONS}\n{header}\n<job>\n{text}\n</job>\n"


def parse_verdict(answer: str) -> Verdict:
    """The verdict in a model's answer (a JSON object, possibly inside a code fence or prose).

    Raises:
        ValueError: no JSON object, or one that fails validation (a pydantic ValidationError).
    """
    match = _JSON_RE.search(answer)
    if match is None:
        raise ValueError("no JSON object in the answer")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg}") from None
    return Verdict.model_validate(data)


def _why(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "verdict"
        return f"invalid verdict ({where}: {err['msg']})"
    if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
        return f"timed out ({type(exc).__name__})"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def classify(request: TaskRequest, settings: RouterSettings, ask: Ask) -> RoutingDecision:
    """Ask the model for a verdict; on any failure, the heuristic's decision, saying why."""
    try:
        verdict = parse_verdict(ask(build_prompt(request), settings.llm_timeout_s))
    # Any failure of the model call (provider errors, timeouts, bugs in the callable) must not
    # stop routing: the heuristic always has an answer, and the reasons record the failure.
    except Exception as exc:  # noqa: BLE001
        decision = heuristic.classify(request, settings)
        why = _why(exc)[:300]
        decision.reasons.insert(0, f"llm classifier failed, fell back to the heuristic: {why}")
        decision.classifier = FALLBACK
        return decision
    tier = Tier(verdict.tier)
    reasons = [f"llm verdict: score {verdict.score} -> {tier.value}: {verdict.reason}"]
    return RoutingDecision(tier=tier, score=verdict.score, reasons=reasons, classifier=CLASSIFIER)
