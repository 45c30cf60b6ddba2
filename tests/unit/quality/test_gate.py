"""The quality gate on the job's runner (memory ports, scripted models): each action a failed answer
can get (upgrade, polish, escalate), what a passing or skipped answer costs, and the checks recorded."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from fleet.errors import Reason
from fleet.middleware.base import Requeue
from fleet.models import Tier
from fleet.providers import ChatRequest, ChatResponse
from fleet.quality.gate import QualityGate
from fleet.quality.judge import Judge
from fleet.settings import Settings, load_settings

from ..middleware.harness import Harness

ANSWER = re.compile(r"<answer>\n(.*?)\n</answer>", re.S)


def brain(
    score_of: Callable[[str], int], answer: Callable[[ChatRequest], str] | None = None
) -> Callable[[ChatRequest], ChatResponse]:
    """A model that answers jobs (``answer``: its text) and, asked as a judge, scores the answer."""

    def step(req: ChatRequest) -> ChatResponse:
        judged = ANSWER.search(req.prompt)
        if judged:
            score = score_of(judged.group(1))
            text = json.dumps({"score": score, "problems": [] if score >= 3 else ["wrong total"]})
        elif "<draft>" in req.prompt:
            text = f"polished by {req.model}"
        else:
            text = answer(req) if answer else f"answer by {req.model}"
        return ChatResponse(
            text=text, finish_reason="stop", input_tokens=100, output_tokens=20, response_model=req.model
        )

    return step


def _settings(**policy: object) -> Settings:
    overrides = {f"quality.tiers.mini.{k}": v for k, v in policy.items()}
    return load_settings(env={}, overrides={"quality.enabled": True, **overrides})


def harness(settings: Settings, score_of: Callable[[str], int], **kw: object) -> Harness:
    model = brain(score_of, **kw)  # type: ignore[arg-type]
    h = Harness(settings, providers={"openai": [model], "anthropic": [model], "groq": [model]})
    judge = Judge(h.chain, settings.tier("standard").links())
    links = lambda tier, _exact=False: settings.tier(tier).links()  # noqa: E731
    gate = QualityGate(settings.quality, judge, h.handoff.job, links)
    h.middlewares.insert(-1, gate)  # before the cost record, as the fleet orders them
    h.runner.middlewares = h.middlewares
    return h


def test_a_failed_mini_answer_is_upgraded_to_standard_with_its_calls() -> None:
    # Given every mini answer judged (sample 1.0) and a judge that fails gpt-4.1-mini's answers
    h = harness(_settings(sample_rate=1.0, action="upgrade"), lambda a: 2 if "gpt-4.1-mini" in a else 5)
    job = h.job()
    # When the job runs on mini, Then it goes to the standard queue carrying its attempts and the check
    with pytest.raises(Requeue) as info:
        h.runner.run(job)
    assert info.value.queue == "standard"
    assert job.envelope.routing is not None and job.envelope.routing.tier is Tier.STANDARD
    assert "scored 2 < 3" in job.envelope.routing.reasons[-1]
    [check] = job.envelope.quality
    assert (check.score, check.passed, check.action) == (2, False, "upgrade")
    assert [a.purpose for a in job.envelope.attempts] == ["answer", "judge"]
    # And the failed verdict counts against mini's pass rate, with the job's last round trip
    [counts] = h.jobs.counts.values()
    assert counts == {"mini|none|judged": 1}
    # When its next hop runs on standard, Then it is judged again, passes, and the result shows both
    ran = h.runner.run(h.job(envelope=job.envelope, tier="standard"))
    res = ran.result
    assert (
        res.status == "completed"
        and res.tier is Tier.STANDARD
        and res.answer == "answer by claude-sonnet-4-5"
    )
    assert [c.action for c in res.quality] == ["upgrade", "pass"]
    assert [a.purpose for a in res.attempts] == ["answer", "judge", "answer", "judge"]
    assert res.cost_usd == pytest.approx(sum(a.cost_usd for a in res.attempts))


def test_a_failed_answer_is_polished_by_a_stronger_model() -> None:
    h = harness(_settings(sample_rate=1.0, action="polish"), lambda a: 2)
    ran = h.runner.run(h.job())
    res = ran.result
    assert res.status == "completed" and res.answer == "polished by claude-sonnet-4-5"
    assert res.model == "claude-sonnet-4-5"
    [check] = res.quality
    assert check.action == "polish" and check.problems == ["wrong total"] and check.cost_usd > 0
    assert [a.purpose for a in res.attempts] == ["answer", "judge", "polish"]


def test_a_failed_answer_is_escalated_to_people() -> None:
    h = harness(_settings(sample_rate=1.0, action="escalate"), lambda a: 1)
    ran = h.runner.run(h.job(kind="billing.refund"))
    res = ran.result
    assert res.status == "escalated" and res.reason == Reason.QUALITY_CHECK_FAILED
    [record] = h.store.list()
    assert record.reason is Reason.QUALITY_CHECK_FAILED and "scored 1 < 3" in record.detail
    assert [a.purpose for a in record.attempts] == ["answer", "judge"]
    assert res.quality[0].action == "escalate"


def test_a_passing_answer_ships_with_its_check_and_the_judge_charged() -> None:
    h = harness(_settings(sample_rate=1.0), lambda a: 5)
    res = h.runner.run(h.job()).result
    assert res.status == "completed" and [c.action for c in res.quality] == ["pass"]
    assert res.quality[0].judge == "anthropic:claude-sonnet-4-5" and res.quality[0].score == 5
    assert float(h.jobs.costs[0]["cost"]) == pytest.approx(res.cost_usd)


def test_an_answer_the_sample_skips_costs_no_call_and_no_write() -> None:
    judged: list[str] = []
    h = harness(_settings(sample_rate=0.0), lambda a: judged.append(a) or 5)
    res = h.runner.run(h.job()).result
    assert res.quality == [] and judged == [] and h.jobs.counts == {}
    assert [a.purpose for a in res.attempts] == ["answer"]


def test_a_low_confidence_answer_is_judged_though_the_sample_skipped_it() -> None:
    # Given a sample of 0 and an answer that hedges
    h = harness(
        _settings(sample_rate=0.0), lambda a: 2, answer=lambda req: "I'm not sure, but the total is 12."
    )
    with pytest.raises(Requeue) as info:
        h.runner.run(job := h.job())
    # Then the judge was asked, and the check says which signal decided
    assert info.value.queue == "standard"
    [check] = job.envelope.quality
    assert check.why == "low confidence" and check.signals == ['hedging: "i\'m not sure"']


def test_a_low_confidence_answer_is_upgraded_without_a_judge_when_told() -> None:
    h = harness(
        _settings(sample_rate=0.0, on_low_confidence="upgrade"),
        lambda a: 5,
        answer=lambda req: "I cannot say.",
    )
    with pytest.raises(Requeue):
        h.runner.run(job := h.job())
    [check] = job.envelope.quality
    assert check.action == "upgrade" and check.judge is None and check.score is None
    assert [a.purpose for a in job.envelope.attempts] == ["answer"]


def test_a_judge_that_gives_no_valid_verdict_lets_the_answer_ship() -> None:
    h = harness(_settings(sample_rate=1.0), lambda a: 9)  # 9 is no valid score: the verdict fails validation
    res = h.runner.run(h.job()).result
    assert res.status == "completed" and res.quality[0].action == "judge_unavailable"


def test_the_gate_off_checks_nothing() -> None:
    settings = load_settings(
        env={}, overrides={"quality.enabled": False, "quality.tiers.mini.sample_rate": 1.0}
    )
    h = harness(settings, lambda a: 1)
    assert h.runner.run(h.job()).result.quality == []
