"""Each confidence signal: it fires on the answer it describes, and stays quiet on a near miss."""

from __future__ import annotations

from fleet.quality.config import ConfidenceSettings
from fleet.quality.signals import asked_words, assess

SETTINGS = ConfidenceSettings()


def test_low_token_logprobs_fire_and_confident_ones_do_not() -> None:
    low = assess("Sum these.", "The total is 12.", -1.6, SETTINGS)
    assert low.low and low.signals[0].startswith("low token confidence: mean log-probability -1.60")
    assert not assess("Sum these.", "The total is 12.", -0.2, SETTINGS).low
    assert not assess("Sum these.", "The total is 12.", None, SETTINGS).low  # no logprobs: no signal


def test_hedging_and_refusals_fire_as_whole_phrases() -> None:
    for answer in (
        "I'm not sure, but it is 12.",
        "As an AI, I cannot access that file.",
        "It's unclear which.",
    ):
        assert assess("Which one?", answer, None, SETTINGS).low, answer
    # "I cannot" inside other words, or a hedge word used plainly, is not a hedge
    assert not assess(
        "Why?", "The ICANNOT flag is unset; the service can't start without it.", None, SETTINGS
    ).low


def test_an_answer_far_shorter_than_asked_fires() -> None:
    prompt = "Write a 400-word launch announcement for the new billing page."
    short = assess(prompt, "We launched a new billing page. Try it.", None, SETTINGS)
    assert short.low and "far shorter than asked: 8 words where about 400" in short.signals[0]
    assert not assess(prompt, " ".join(["word"] * 300), None, SETTINGS).low
    assert not assess("Summarise this.", "Short.", None, SETTINGS).low  # no length asked: no signal


def test_lengths_are_read_from_counts_of_items_too() -> None:
    assert asked_words("Give me 10 bullet points on onboarding") == 50
    assert asked_words("Write 3 paragraphs about our Q3") == 120
    assert asked_words("Explain the CAP theorem") is None


def test_a_structured_answer_is_judged_by_logprobs_only() -> None:
    prompt = "Return 20 items as JSON"
    assert not assess(prompt, '{"items": []}', None, SETTINGS, structured=True).low
    assert assess(prompt, '{"items": []}', -2.0, SETTINGS, structured=True).low
