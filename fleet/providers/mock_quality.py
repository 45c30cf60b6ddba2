"""SIMULATED model quality: the mock provider's stand-in for what real models can and cannot do.

Real models differ in capability, and a cheap one is sometimes wrong in a way that looks right. To
measure what the fleet's quality gate buys without real models, the mock simulates it:

- every model has a capability level (1-5, :attr:`Simulation.capability`);
- every job has a difficulty (1-5) that only the mock knows: for the bundled demo workload, a table
  beside this file (``mock_difficulty.json``, judged by a person who did not read the router); for
  anything else, a hash of the prompt;
- a call answers with a plausibly shaped but FLAWED answer with a probability that grows with the
  gap between the job's difficulty and the model's capability (:meth:`Simulation.flaw_probability`),
  drawn from a hash of (seed, model, prompt): the same model on the same job is consistently right
  or wrong, as real ones tend to be;
- a flawed answer more often shows what real low-confidence answers show (low token log-probabilities,
  a hedging phrase, an answer far shorter than asked), and a sound one rarely does;
- a judge call (a prompt with ``<request>`` and ``<answer>``) catches a flaw with probability
  :attr:`Simulation.judge_catch` and raises a false alarm on a sound answer with
  :attr:`Simulation.judge_false_alarm`; a rewrite (``<draft>`` and ``<problems>``) is flawed less
  often than a first answer by the same model.

The truth (which answer is flawed) stays in the mock's process. The fleet never reads it: its router
and gate see only the answers. A measurement harness (``fleet demo``'s summary) asks for it through
``POST /_mock/truth``, and labels every figure it derives as simulated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.providers.mock_answers import MockCall, answer_text, asked_words

__all__ = [
    "Simulation",
    "Truth",
    "TruthBook",
    "decide_answer",
    "difficulty_of",
    "job_prompt",
    "judge_verdict",
    "simulate",
]

#: Capability of the models the fleet ships config for (1 tiny .. 5 frontier reasoning), and the mock's own.
DEFAULT_CAPABILITY: dict[str, int] = {
    "llama-3.1-8b-instant": 1,
    "mock-small": 1,
    "gpt-4.1-mini": 2,
    "claude-haiku-4-5": 2,
    "llama-3.3-70b-versatile": 3,
    "gpt-4.1": 4,
    "claude-sonnet-4-5": 4,
    "mock-large": 4,
    "o3": 5,
    "claude-opus-4-1": 5,
}
#: Difficulty of a job not in the table, by a hash of its prompt: shares of levels 1..5.
HASH_DIFFICULTY = (0.30, 0.35, 0.20, 0.13, 0.02)
_VARIANT = re.compile(r" \(variant \d+\)$")
_TAGS = ("request", "answer", "draft", "problems", "answer_a", "answer_b")
_TAG = {name: re.compile(rf"<{name}>\n?(.*?)\n?</{name}>", re.S) for name in _TAGS}
#: Phrases a simulated low-confidence answer opens with.
HEDGES = ("I'm not entirely sure, but ", "I think, though I may be wrong, ", "It's hard to say for certain; ")


class Simulation(BaseModel):
    """``MockConfig.quality``: the simulation of model capability and judge accuracy (off by default)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    #: Model name -> capability level 1-5; a model not listed has ``default_capability``.
    capability: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_CAPABILITY))
    default_capability: int = Field(default=3, ge=1, le=5)
    #: Chance of a flaw on a job well within the model's capability (difficulty below it).
    flaw_within: float = Field(default=0.03, ge=0, le=1)
    #: ... on a job at the edge of it (difficulty equal to capability).
    flaw_at_edge: float = Field(default=0.5, ge=0, le=1)
    #: ... one level beyond it, and how much each further level adds (capped at 0.95).
    flaw_beyond: float = Field(default=0.75, ge=0, le=1)
    flaw_per_level: float = Field(default=0.2, ge=0, le=1)
    #: A rewrite given the judge's problems is flawed this much less often than a first answer.
    polish_factor: float = Field(default=0.5, ge=0, le=1)
    #: The judge's accuracy: the share of flaws it catches, and of sound answers it fails.
    judge_catch: float = Field(default=0.9, ge=0, le=1)
    judge_false_alarm: float = Field(default=0.05, ge=0, le=1)
    #: How often a flawed / a sound answer shows a low-confidence signal.
    signal_when_flawed: float = Field(default=0.65, ge=0, le=1)
    signal_when_sound: float = Field(default=0.05, ge=0, le=1)

    def capability_of(self, model: str) -> int:
        return self.capability.get(model, self.default_capability)

    def flaw_probability(self, model: str, difficulty: int, *, polish: bool = False) -> float:
        gap = difficulty - self.capability_of(model)
        if gap < 0:
            p = self.flaw_within
        elif gap == 0:
            p = self.flaw_at_edge
        else:
            p = min(0.95, self.flaw_beyond + (gap - 1) * self.flaw_per_level)
        return p * self.polish_factor if polish else p


def _uniform(*parts: object) -> float:
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@cache
def _table() -> dict[str, int]:
    data = json.loads(files("fleet.providers").joinpath("mock_difficulty.json").read_text("utf-8"))
    return {sha: int(job["difficulty"]) for sha, job in data["jobs"].items()}


def difficulty_of(prompt: str) -> int:
    """The job's difficulty: the table's for the bundled workload (its " (variant k)" repeats too),
    else a level drawn from a hash of the prompt."""
    key = hashlib.sha256(_VARIANT.sub("", prompt).encode()).hexdigest()
    known = _table().get(key)
    if known is not None:
        return known
    u, acc = _uniform("difficulty", prompt), 0.0
    for level, share in enumerate(HASH_DIFFICULTY, start=1):
        acc += share
        if u < acc:
            return level
    return len(HASH_DIFFICULTY)


def tag(text: str, name: str) -> str | None:
    """The content between ``<name>`` and ``</name>`` in a prompt, if it has them."""
    found = _TAG[name].search(text)
    return found.group(1) if found else None


def job_prompt(text: str) -> str:
    """The job a prompt is about: the ``<request>`` a judge or a rewrite is given, else the prompt."""
    return tag(text, "request") or text


@dataclass(frozen=True, slots=True)
class Truth:
    """What the simulation decided about one answer it gave."""

    flawed: bool
    model: str
    difficulty: int
    #: The low-confidence signal the answer shows: None, "logprob", "hedge" or "short".
    signal: Literal["logprob", "hedge", "short"] | None = None


class TruthBook:
    """The truth of every answer the mock gave, by a digest of the answer's text (bounded)."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self._truths: dict[bytes, Truth] = {}

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.strip().encode(), digest_size=16).digest()

    def remember(self, text: str, truth: Truth) -> None:
        if len(self._truths) >= self.limit:
            self._truths.clear()  # only runs this long lose old answers' truth
        self._truths[self.key(text)] = truth

    def get(self, text: str) -> Truth | None:
        return self._truths.get(self.key(text))

    def clear(self) -> None:
        self._truths.clear()


def decide_answer(sim: Simulation, seed: int, model: str, prompt: str, *, polish: bool) -> Truth:
    """Whether ``model``'s answer to ``prompt`` is flawed, and the signal it shows (deterministic)."""
    difficulty = difficulty_of(prompt)
    p = sim.flaw_probability(model, difficulty, polish=polish)
    flawed = _uniform(seed, "flaw", "polish" if polish else "answer", model, prompt) < p
    shows = _uniform(seed, "signal", model, prompt) < (
        sim.signal_when_flawed if flawed else sim.signal_when_sound
    )
    signal: Literal["logprob", "hedge", "short"] | None = None
    if shows:
        pick = _uniform(seed, "which", model, prompt)
        signal = "logprob" if pick < 0.5 else ("hedge" if pick < 0.8 else "short")
    return Truth(flawed, model, difficulty, signal)


def judge_verdict(sim: Simulation, seed: int, answer: Truth | None, key: str) -> dict[str, Any]:
    """The simulated judge's verdict on an answer ({"score", "problems"}); an answer the mock did not
    give (a person's, say) is judged as sound."""
    flawed = answer is not None and answer.flawed
    u = _uniform(seed, "judge", key)
    fails = u < sim.judge_catch if flawed else u < sim.judge_false_alarm
    if fails:
        score = 1 + int(_uniform(seed, "score", key) * 2)  # 1 or 2
        problem = (
            "The answer states a wrong detail as fact and misses part of what was asked."
            if flawed
            else "The answer may be incomplete on one point."
        )
        return {"score": score, "problems": [problem]}
    return {"score": 4 + int(_uniform(seed, "score", key) * 2), "problems": []}


def _shown(text: str, truth: Truth, prompt: str, logprobs: bool) -> tuple[str, bool]:
    """The answer as its signal shows it: (text, low token confidence)."""
    signal = truth.signal
    if signal == "short" and asked_words(prompt) is None:
        signal = "hedge"  # "far shorter than asked" needs an ask for a length
    if signal == "logprob" and not logprobs:
        signal = "hedge"  # Anthropic's API and a caller that did not ask get no log-probabilities
    if signal == "hedge":
        return HEDGES[len(text) % len(HEDGES)] + text[0].lower() + text[1:], False
    if signal == "short":
        words = text.split()
        return " ".join(words[: max(8, len(words) // 5)]), False
    return text, signal == "logprob"


def simulate(
    sim: Simulation, seed: int, book: TruthBook, call: MockCall, ref: str
) -> tuple[str, bool] | None:
    """The simulated answer to a call (its text, and whether its log-probabilities are low), or None
    to answer as the plain mock does (a structured answer: a schema or JSON mode)."""
    text = call.last_user
    first, second = tag(text, "answer_a"), tag(text, "answer_b")
    if first is not None and second is not None:  # a side-by-side judge
        verdicts = {
            "a": judge_verdict(sim, seed, book.get(first), f"a:{first}"),
            "b": judge_verdict(sim, seed, book.get(second), f"b:{second}"),
        }
        return json.dumps(verdicts), False
    answer = tag(text, "answer")
    if answer is not None:  # a judge
        return json.dumps(judge_verdict(sim, seed, book.get(answer), answer)), False
    if call.schema is not None or call.json_mode:
        return None
    polish = tag(text, "draft") is not None
    prompt = job_prompt(text)
    truth = decide_answer(sim, seed, call.model, prompt, polish=polish)
    plain, _ = answer_text(dataclasses.replace(call, last_user=prompt), "ok", ref)
    shown, low = _shown(plain, truth, prompt, call.logprobs)
    book.remember(shown, truth)
    return shown, low
