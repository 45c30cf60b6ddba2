"""Cheap confidence signals, read from an answer before any judge is asked (no model call, no I/O).

- token log-probabilities, where the provider returned them (OpenAI ``logprobs``): a low mean says
  the model was unsure of its own words;
- hedging and refusal phrases ("I'm not sure", "I cannot");
- an answer far shorter than the request asks for ("a 500-word post" answered in 40 words).

Each signal that fires is a human-readable reason, as the router's are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from fleet.quality.config import ConfidenceSettings

__all__ = ["Confidence", "asked_words", "assess"]

_ASKED_WORDS = re.compile(r"\b(\d{2,4})[- ]?words?\b", re.I)
_ASKED_ITEMS = re.compile(
    r"\b(\d{1,2}) (bullet points|bullets|items|examples|ideas|tips|steps|questions|sentences|paragraphs)\b",
    re.I,
)
#: Words a listed item, a sentence and a paragraph take at the least.
_MIN_WORDS = {"sentences": 8, "paragraphs": 40}
#: Characters of an answer searched for hedges (they open or close an answer).
_HEDGE_SCAN = 600


@dataclass(frozen=True, slots=True)
class Confidence:
    """What the signals say of one answer: ``low`` when any fired, with a reason per signal."""

    signals: list[str] = field(default_factory=list)

    @property
    def low(self) -> bool:
        return bool(self.signals)


def asked_words(prompt: str) -> int | None:
    """The least number of words the request asks for, if it names a length."""
    words = _ASKED_WORDS.search(prompt)
    if words:
        return int(words.group(1))
    items = _ASKED_ITEMS.search(prompt)
    if items:
        return int(items.group(1)) * _MIN_WORDS.get(items.group(2).lower(), 5)
    return None


@lru_cache(maxsize=8)
def _hedge_re(hedges: tuple[str, ...]) -> re.Pattern[str]:
    escaped = sorted((re.escape(h.lower()) for h in hedges if h.strip()), key=len, reverse=True)
    return re.compile(r"(?<!\w)(" + "|".join(escaped) + r")(?!\w)") if escaped else re.compile(r"(?!x)x")


def assess(
    prompt: str,
    answer: str,
    mean_logprob: float | None,
    settings: ConfidenceSettings,
    *,
    structured: bool = False,
) -> Confidence:
    """The signals that fire on ``answer`` to ``prompt``. ``structured``: the answer is JSON for a
    schema (its length and wording say nothing)."""
    signals: list[str] = []
    if mean_logprob is not None and mean_logprob < settings.min_mean_logprob:
        signals.append(
            f"low token confidence: mean log-probability {mean_logprob:.2f} < {settings.min_mean_logprob}"
        )
    if not structured:
        text = answer.lower()
        hedge = _hedge_re(tuple(settings.hedges)).search(text[:_HEDGE_SCAN] + "\n" + text[-_HEDGE_SCAN:])
        if hedge:
            signals.append(f"hedging: {hedge.group(1)!r}")
        asked = asked_words(prompt)
        words = len(answer.split())
        if asked is not None and words < settings.short_ratio * asked:
            signals.append(f"far shorter than asked: {words} words where about {asked} were asked")
    return Confidence(signals)
