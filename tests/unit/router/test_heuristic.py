"""The heuristic content classifier: features, reasons, pasted input, tuning by config, caching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleet.models import RoutingDecision, Tier, validate_request
from fleet.router import heuristic
from fleet.router.config import RouterSettings, default_router_settings
from fleet.settings import load_settings

REPO = Path(__file__).resolve().parents[3]
SETTINGS = default_router_settings()

PASTED_CODE = "\n".join(
    f"def handler_{i}(request):\n    # security review: architecture trade-offs, root cause\n    return {i};"
    for i in range(200)
)


def classify(prompt: str, settings: RouterSettings = SETTINGS, **fields: Any) -> RoutingDecision:
    return heuristic.classify(validate_request({"prompt": prompt, **fields}), settings)


@pytest.mark.parametrize(
    "prompt",
    [
        "Add docstrings to the functions in billing/invoice.py.",
        "Extract the invoice number and total from this receipt text and return JSON.",
        "Translate this paragraph into Spanish.",
        "Classify this ticket as billing, bug or other.",
        "Generate the boilerplate for a new Flask app.",
    ],
)
def test_mechanical_asks_go_to_mini(prompt: str) -> None:
    decision = classify(prompt)
    assert decision.tier is Tier.MINI
    assert decision.score is not None and decision.score <= 2
    assert decision.classifier == "heuristic"


@pytest.mark.parametrize(
    "prompt",
    [
        "Do a security review of our login flow.",
        "Design the architecture for a multi-region event store and weigh the trade-offs.",
        "Prove that this scheduling algorithm always terminates.",
        "Find the root cause of the duplicate charges between the orders and payments services.",
        "Should we move off our monolith this year? I'm not sure what to prioritise.",
    ],
)
def test_design_security_proof_and_ambiguity_go_to_full(prompt: str) -> None:
    decision = classify(prompt)
    assert decision.tier is Tier.FULL
    assert decision.score is not None and decision.score >= 4


def test_reasons_name_the_deciding_features() -> None:
    decision = classify("Do a security review of the session handling.")
    assert any("matched 'security review'" in r and "(+2" in r for r in decision.reasons)
    assert decision.reasons[-1] == f"score {decision.score} -> full"


def test_long_pasted_input_alone_does_not_raise_the_score() -> None:
    # Given the same mechanical ask, once short and once with a long paste full of hard words
    short = classify("Add docstrings to these functions.")
    long = classify("Add docstrings to these functions.\n\n```python\n" + PASTED_CODE + "\n```")
    # Then the score does not move, and the reasons say the paste was not counted
    assert long.score == short.score
    assert long.tier is Tier.MINI
    assert any(r.startswith("pasted input (") and "not counted as difficulty" in r for r in long.reasons)


def test_pasted_document_after_an_intro_line_is_not_read_as_the_ask() -> None:
    doc = "We should redesign the architecture and weigh every trade-off. " * 60
    decision = classify("Translate the following email into German:\n" + doc)
    assert decision.tier is Tier.MINI


def test_a_question_after_the_paste_is_part_of_the_ask() -> None:
    logs = "\n".join(f"2024-06-02T14:00:{i:02d}Z ERROR orders upstream timeout" for i in range(60))
    decision = classify("Here are the logs:\n" + logs + "\n\nWhat is the root cause of these timeouts?")
    assert decision.tier is Tier.FULL


def test_many_files_count_as_wider_scope() -> None:
    files = [f"svc/module_{i}.py" for i in range(7)]
    decision = classify("Implement request-id propagation.", hints={"files": files})
    assert "touches 7 files (+1)" in decision.reasons
    assert decision.tier is Tier.FULL


def test_paths_in_the_ask_count_as_files() -> None:
    prompt = "Update api/routes.py, api/models.py, core/db.py and web/views.py to use the new client."
    decision = classify(prompt)
    assert "touches 4 files (+1)" in decision.reasons


def test_a_design_ask_is_not_made_cheap_by_a_mechanical_word() -> None:
    decision = classify("Show that any comparison sort needs n log n comparisons in the worst case.")
    assert decision.tier is Tier.FULL
    assert any(r.startswith("ignored 'sort'") for r in decision.reasons)


def test_kind_counts_as_part_of_the_ask() -> None:
    assert classify("Look at this.", kind="security-review").tier is Tier.FULL
    assert classify("Look at this.", kind="docstring").tier is Tier.MINI


def test_response_schema_lowers_the_score() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    plain = classify("Write a product description for a desk lamp.")
    fixed = classify("Write a product description for a desk lamp.", response_schema=schema)
    assert plain.score is not None and fixed.score == plain.score - 1


def test_no_feature_means_the_base_score() -> None:
    decision = classify("Write a blog post about our team offsite.")
    assert decision.score == 3
    assert decision.tier is Tier.STANDARD
    assert "no deciding feature: base score 3" in decision.reasons


@pytest.mark.parametrize(
    ("score", "tier"), [(1, "mini"), (2, "mini"), (3, "standard"), (4, "full"), (5, "full")]
)
def test_score_to_tier(score: int, tier: str) -> None:
    assert heuristic.tier_for_score(score).value == tier


def test_operators_tune_keywords_and_weights_without_code() -> None:
    # Given an operator who treats "invoice" as high stakes, through the environment
    env = {"FLEET_ROUTER__HEURISTIC__KEYWORDS__STAKES": '["invoice*"]'}
    tuned = load_settings(config_dir=REPO, env=env).router
    prompt = "Write a blog post about invoices."
    # Then the same prompt scores higher with the tuned settings
    assert classify(prompt, tuned).score == (classify(prompt).score or 0) + 1
    # And a weight of 0 switches a feature off
    quiet = load_settings(config_dir=REPO, env={"FLEET_ROUTER__HEURISTIC__WEIGHTS__HARD": "0"}).router
    assert classify("Do a security review of the login flow.", quiet).score == 4


def test_compiled_patterns_are_cached_per_settings_object() -> None:
    settings = SETTINGS.heuristic
    first = heuristic._compiled(settings)
    assert heuristic._compiled(settings) is first
    assert heuristic._compiled(settings.model_copy(deep=True)) is not first


def test_split_ask_reports_pasted_characters() -> None:
    prompt = "Fix the lint errors in this file.\n\n```python\n" + PASTED_CODE + "\n```"
    split = heuristic.split_ask(prompt, SETTINGS.heuristic)
    assert split.ask == "Fix the lint errors in this file."
    assert split.pasted_chars == len(prompt) - len(split.ask)


# Features that generalise beyond coding: each fires on one ask and not on its near miss.


def _has(decision: RoutingDecision, text: str) -> bool:
    return any(text in reason for reason in decision.reasons)


def test_a_dotted_kind_is_read_without_its_namespace() -> None:
    prompt = "Turn these into a bulleted list: passwords need 14 characters, accounts lock after 10 tries."
    # The namespace names the area ("security"), not the difficulty of bulleting a paragraph
    decision = classify(prompt, kind="security.bulletize")
    assert decision.tier is Tier.MINI
    assert "kind namespace 'security' not read as part of the ask" in decision.reasons
    assert not _has(decision, "high stakes")
    # Near miss: an undotted kind is read whole
    assert _has(classify(prompt, kind="security"), "matched 'security' (+1, high stakes)")


def test_a_decision_question_goes_to_full() -> None:
    decision = classify("Should we move our support team to a four-day week?")
    assert decision.tier is Tier.FULL
    assert "matched 'should we' (+1, asks whether to act)" in decision.reasons
    # Near miss: ordinary writing about the same team asks nothing to decide
    near = classify("Write an FAQ entry on how to reach our support team.")
    assert near.tier is Tier.STANDARD and not _has(near, "asks whether to act")


@pytest.mark.parametrize(
    ("prompt", "asked"),
    [
        ("Customer approved a replacement by phone. Can I just charge the card on file for $240?", "'can i'"),
        ("The migration job on prod has held a lock on orders for six hours. Kill it?", "'kill it'"),
        ("Is this headline defamatory? 'Local builder scams pensioners'", "'is this headline'"),
        ("Remove last year's leavers from the HR system and purge their records?", "'remove last year's'"),
    ],
)
def test_a_decision_about_something_consequential_goes_to_full(prompt: str, asked: str) -> None:
    decision = classify(prompt)
    assert decision.tier is Tier.FULL
    assert any(r.startswith(f"asks whether to act ({asked}) on ") and "(+1)" in r for r in decision.reasons)


@pytest.mark.parametrize(
    "prompt",
    [
        "Which of these emails mention a refund? Answer with the numbers only.\n\n1. Where is my order?",
        "What does the kill command do on Linux?",
        "Summarize our refund policy for the help center.",
    ],
)
def test_a_question_for_information_about_a_consequential_word_is_not_a_decision(prompt: str) -> None:
    decision = classify(prompt)
    assert not _has(decision, "asks whether to act")
    assert decision.tier is not Tier.FULL


def test_a_consequential_audience_raises_the_score() -> None:
    decision = classify("Draft the paragraph on Q2 revenue for our investors.")
    assert decision.tier is Tier.FULL
    assert "matched 'investors' (+1, consequential audience)" in decision.reasons
    assert classify("Draft the paragraph on Q2 revenue for the team newsletter.").tier is Tier.STANDARD


def test_a_general_explanation_of_a_sensitive_subject_is_ordinary_work() -> None:
    decision = classify("Explain controller vs processor under GDPR for our product managers.")
    assert decision.tier is Tier.STANDARD
    assert "ignored 'gdpr': a general explanation, not a decision about a case" in decision.reasons
    # Near miss: a decision about a case under the same law
    near = classify("Can we keep this customer's chat logs after their GDPR erasure request?")
    assert near.tier is Tier.FULL and _has(near, "matched 'gdpr' (+1, high stakes)")


def test_a_mechanical_verb_counts_only_when_it_is_what_is_asked() -> None:
    decision = classify("Convert these dates to ISO 8601: 3/7/24, 12/31/2023, 1/1/25.")
    assert decision.tier is Tier.MINI
    assert _has(decision, "matched 'convert' (-2, mechanical task)")
    # Near miss: the same verb, mentioned inside ordinary writing
    near = classify("Write a wiki page on why timestamps are in UTC and how analysts should convert them.")
    assert near.tier is Tier.STANDARD
    assert "ignored 'convert': mentioned, not what is asked" in near.reasons
    counted = classify("Express endpoint GET /users with paging; include the total count in the response.")
    assert "ignored 'count': mentioned, not what is asked" in counted.reasons


def test_translation_targets_are_mechanical() -> None:
    decision = classify("German for these buttons: Save / Publish / Undo")
    assert decision.tier is Tier.MINI and _has(decision, "matched 'german for' (-2, mechanical task)")
    assert not _has(classify("Write a welcome note for our German office."), "mechanical task")


def test_a_short_ask_made_of_its_numbers_is_arithmetic() -> None:
    decision = classify("Average velocity over the last 5 sprints: 21, 18, 25, 23, 19")
    assert decision.tier is Tier.MINI
    assert "works on 6 given values (-1)" in decision.reasons
    # Near miss: numbers inside a question that asks what they mean
    near = classify("What does a 95% interval of 11.8-16.6 around a mean of 14.2 tell me?")
    assert near.tier is Tier.STANDARD and not _has(near, "given values")


def test_an_explanatory_question_is_not_a_quick_one() -> None:
    decision = classify("How does caffeine affect sleep?")
    assert decision.tier is Tier.STANDARD and not _has(decision, "quick one-line question")
    assert "quick one-line question (-1)" in classify("What is the capital of Australia?").reasons


def test_a_situation_report_that_asks_nothing_goes_to_full() -> None:
    decision = classify("EDR flagged mimikatz on a domain controller at 02:14.")
    assert decision.tier is Tier.FULL
    assert _has(decision, "reports a situation and asks nothing") and _has(decision, "(+1)")
    # Near misses: the same kind of report followed by an instruction, or a question
    for prompt in (
        "A customer upgraded to the annual plan last week. Write a short thank-you email.",
        "A customer upgraded to the annual plan last week. Which plan is cheaper per seat?",
    ):
        assert not _has(classify(prompt), "reports a situation")


def test_health_stakes_and_a_yes_no_question_go_to_full() -> None:
    decision = classify("Is a rash normal two weeks after starting lamotrigine?")
    assert decision.tier is Tier.FULL and _has(decision, "matched 'rash' (+1, high stakes)")
    # Near miss: translating the same word is still mechanical work
    assert classify("Translate 'rash' and 'dizziness' into Spanish.").tier is Tier.MINI


def test_phrases_are_indexed_by_their_first_two_words() -> None:
    index = heuristic._compiled(SETTINGS.heuristic)
    assert ("into", "spanish") in index.pairs
    names = [cat.name for cat in index.categories]
    hits = index.match("we moved into the spanish office; translate it into spanish")
    assert hits[names.index("mechanical")] == ["into spanish"]


def test_a_conversation_is_scored_on_its_last_user_turn_with_the_earlier_turns_as_context() -> None:
    # Given a mechanical last ask after a long design discussion
    design = "Design the multi-region failover architecture, weigh the security trade-offs. " * 40
    ask = "Translate this paragraph into Spanish: hello world."
    turns = [{"role": "user", "content": design}, {"role": "assistant", "content": "A design. " * 200},
             {"role": "user", "content": ask}]  # fmt: skip
    decision = heuristic.classify(validate_request({"messages": turns}), SETTINGS)
    # Then the ask decides (the design words of earlier turns are not read as the ask) ...
    alone = classify(ask)
    assert decision.tier == alone.tier == Tier.MINI and not any("pasted" in r for r in alone.reasons)
    # ... and the earlier turns count as the ask's context, as pasted input does
    assert any("pasted" in r for r in decision.reasons), decision.reasons
