"""The mock's SIMULATED quality: flaws by capability and difficulty, a judge of the configured
accuracy, signals that correlate with flaws, the demo workload's difficulty table, truth kept apart."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files

import pytest

from fleet.providers.mock_answers import MockCall
from fleet.providers.mock_quality import (
    Simulation,
    TruthBook,
    decide_answer,
    difficulty_of,
    judge_verdict,
    simulate,
)
from fleet.workload import load_workload

SIM = Simulation(enabled=True)


def _call(prompt: str, model: str = "gpt-4.1-mini", *, logprobs: bool = False) -> MockCall:
    return MockCall(
        wire="openai", model=model, canonical=prompt.encode(), last_user=prompt, prompt_chars=len(prompt),
        schema=None, json_mode=False, max_tokens=None, logprobs=logprobs,
    )  # fmt: skip


def test_flaws_grow_with_the_gap_between_difficulty_and_capability() -> None:
    p = SIM.flaw_probability
    assert p("gpt-4.1-mini", 1) == SIM.flaw_within
    assert p("gpt-4.1-mini", 2) == SIM.flaw_at_edge
    assert p("gpt-4.1-mini", 3) == SIM.flaw_beyond
    assert p("gpt-4.1-mini", 5) == pytest.approx(min(0.95, SIM.flaw_beyond + 2 * SIM.flaw_per_level))
    assert p("claude-opus-4-1", 5) == SIM.flaw_at_edge and p("unknown-model", 3) == SIM.flaw_at_edge
    assert p("gpt-4.1-mini", 2, polish=True) == SIM.flaw_at_edge * SIM.polish_factor


def test_a_models_answer_to_a_job_is_consistently_right_or_wrong_at_the_configured_rate() -> None:
    prompts = [f"job number {n}: rename the variable" for n in range(4000)]
    flawed = [decide_answer(SIM, 0, "gpt-4.1-mini", p, polish=False).flawed for p in prompts]
    again = [decide_answer(SIM, 0, "gpt-4.1-mini", p, polish=False).flawed for p in prompts]
    assert flawed == again
    expected = sum(SIM.flaw_probability("gpt-4.1-mini", difficulty_of(p)) for p in prompts) / len(prompts)
    assert sum(flawed) / len(prompts) == pytest.approx(expected, abs=0.03)


def test_the_judge_catches_flaws_and_raises_false_alarms_at_the_configured_rates() -> None:
    book_flawed = decide_answer(SIM, 0, "x", "p", polish=False)
    flawed = type(book_flawed)(True, "x", 3)
    sound = type(book_flawed)(False, "x", 3)
    caught = sum(judge_verdict(SIM, 0, flawed, f"a{n}")["score"] < 3 for n in range(4000)) / 4000
    alarms = sum(judge_verdict(SIM, 0, sound, f"b{n}")["score"] < 3 for n in range(4000)) / 4000
    assert caught == pytest.approx(SIM.judge_catch, abs=0.02)
    assert alarms == pytest.approx(SIM.judge_false_alarm, abs=0.02)
    people = sum(judge_verdict(SIM, 0, None, f"c{n}")["score"] < 3 for n in range(4000)) / 4000
    assert people == pytest.approx(SIM.judge_false_alarm, abs=0.02)  # an answer it did not give is sound


def test_the_demo_workload_has_its_difficulty_in_the_table_and_its_variants_too() -> None:
    jobs = load_workload()
    table = json.loads((files("fleet.providers") / "mock_difficulty.json").read_text("utf-8"))["jobs"]
    first = jobs[0]["prompt"]
    assert difficulty_of(first) == table[hashlib.sha256(first.encode()).hexdigest()]["difficulty"]
    assert difficulty_of(first + " (variant 3)") == difficulty_of(first)
    assert len(table) == len(jobs)


def test_a_judge_call_is_answered_with_a_verdict_from_the_truth_book() -> None:
    book = TruthBook()
    answer = simulate(SIM, 0, book, _call("Rename x to total in: x = a + b"), "ab" * 16)
    assert answer is not None and book.get(answer[0]) is not None
    judge_prompt = f"Review.\n<request>\nRename x\n</request>\n<answer>\n{answer[0]}\n</answer>\n"
    verdict = simulate(SIM, 0, book, _call(judge_prompt, "gpt-4.1"), "cd" * 16)
    assert verdict is not None and set(json.loads(verdict[0])) == {"score", "problems"}


def test_low_logprobs_only_when_asked_and_a_hedge_otherwise() -> None:
    sim = Simulation(enabled=True, flaw_within=1.0, flaw_at_edge=1.0, flaw_beyond=1.0, signal_when_flawed=1.0)
    prompts = [f"Translate phrase {n} to German" for n in range(60)]
    asked = [simulate(sim, 0, TruthBook(), _call(p, logprobs=True), "ef" * 16) for p in prompts]
    plain = [simulate(sim, 0, TruthBook(), _call(p), "ef" * 16) for p in prompts]
    assert any(a is not None and a[1] for a in asked)  # some flaws show low logprobs when asked
    assert not any(p is not None and p[1] for p in plain)  # never without logprobs: a hedge instead
    assert all(p is not None and ("sure" in p[0] or "wrong" in p[0] or "certain" in p[0]) for p in plain)
