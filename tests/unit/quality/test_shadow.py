"""Shadow evaluation: a sampled answered job is re-run on full in the background, its producer's
result unchanged; the shadow run judges both answers side by side and counts the comparison."""

from __future__ import annotations

import json
import re

from fleet.models import JobEnvelope, RoutingDecision, ShadowOf, Tier
from fleet.providers import ChatRequest, ChatResponse
from fleet.quality.judge import Judge
from fleet.quality.shadow import ShadowRun
from fleet.settings import load_settings

from ..middleware.harness import Harness

PAIR = re.compile(r"<answer_a>\n(.*?)\n</answer_a>\n<answer_b>\n(.*?)\n</answer_b>", re.S)


def model(req: ChatRequest) -> ChatResponse:
    pair = PAIR.search(req.prompt)
    if pair:  # a side-by-side judge: mini's answer is worse than full's
        text = json.dumps(
            {"a": {"score": 2, "problems": ["missed a case"]}, "b": {"score": 5, "problems": []}}
        )
    else:
        text = f"answer by {req.model}"
    return ChatResponse(
        text=text, finish_reason="stop", input_tokens=50, output_tokens=10, response_model=req.model
    )


def harness(rate: float) -> tuple[Harness, list[tuple[object, JobEnvelope]]]:
    settings = load_settings(env={})
    h = Harness(settings, providers={"openai": [model], "anthropic": [model], "groq": [model]})
    sent: list[tuple[object, JobEnvelope]] = []
    shadow = ShadowRun(
        rate, Judge(h.chain, settings.tier("standard").links()), lambda p, e: sent.append((p, e))
    )
    h.middlewares.insert(-1, shadow)
    h.runner.middlewares = h.middlewares
    return h, sent


def test_a_sampled_job_sends_a_shadow_run_and_its_own_result_is_unchanged() -> None:
    h, sent = harness(rate=1.0)
    ran = h.runner.run(h.job(kind="code.rename"))
    assert ran.result.answer == "answer by gpt-4.1-mini" and ran.result.quality == []
    [(payload, envelope)] = sent
    assert envelope.id == "shadow-t1" and envelope.routing is not None and envelope.routing.tier is Tier.FULL
    assert envelope.shadow == ShadowOf(
        task_id="t1", tier=Tier.MINI, kind="code.rename", answer="answer by gpt-4.1-mini"
    )
    assert payload == {"prompt": "Rename x to total", "kind": "code.rename"}


def test_a_job_outside_the_sample_or_on_full_sends_none() -> None:
    h, sent = harness(rate=0.0)
    h.runner.run(h.job())
    h2, sent2 = harness(rate=1.0)
    h2.runner.run(h2.job(tier="full"))
    assert sent == [] and sent2 == []


def test_the_shadow_run_judges_both_answers_and_counts_them_on_its_own_line() -> None:
    h, sent = harness(rate=1.0)
    routing = RoutingDecision(tier=Tier.FULL, reasons=["shadow"], classifier="shadow")
    envelope = JobEnvelope(
        id="shadow-t1", submitted_at=0.0, routing=routing,
        shadow=ShadowOf(task_id="t1", tier=Tier.MINI, kind="code.rename", answer="answer by gpt-4.1-mini"),
    )  # fmt: skip
    ran = h.runner.run(h.job(kind="code.rename", tier="full", task_id="shadow-t1", envelope=envelope))
    [check] = ran.result.quality
    assert check.action == "compared: mini scored 2, full 5" and check.score == 5
    [counts] = h.jobs.counts.values()
    assert counts["mini|code.rename|shadow"] == 1 and counts["mini|code.rename|shadow_b"] == 1
    assert "mini|code.rename|shadow_a" not in counts and counts["mini|code.rename|shadow_a_sum"] == 2
    assert h.jobs.costs[0]["status"] == "shadow"
    assert sent == []  # a shadow run sends no shadow of its own
