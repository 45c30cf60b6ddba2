"""The runner: a model's answer becomes the job's result with its cost line; a chain with no link left
hands the job to people; a chain whose links are all busy sends it back to its queue."""

from __future__ import annotations

import pytest

from fleet.errors import BrokerError, Reason, ServerError
from fleet.escalations import EscalationRecord, MemoryEscalationStore, NewEscalation
from fleet.handoff import Handoff
from fleet.middleware.base import Middleware, Requeue
from fleet.models import Attempt, JobEnvelope, RoutingDecision, TaskResult, Tier
from fleet.providers import ChatRequest, ChatResponse
from fleet.settings import load_settings

from .harness import Harness


def _down(req: ChatRequest) -> ChatResponse:
    raise ServerError("HTTP 500", provider="x", model=req.model, status=500)


def test_an_answer_is_the_result_and_its_cost_line_goes_with_it() -> None:
    h = Harness()
    ran = h.runner.run(h.job(kind="code.rename"))
    res = ran.result
    assert res.status == "completed" and res.tier == Tier.MINI and res.kind == "code.rename"
    assert res.cost_usd == pytest.approx(sum(a.cost_usd for a in res.attempts)) and res.cost_usd > 0
    [line] = h.jobs.costs
    assert line["task_id"] == "t1" and line["kind"] == "code.rename" and float(line["cost"]) > 0
    # and the task returns one line for Celery's log and Flower, not the result
    assert ran.summary() == f"completed on mini by {res.model} ${res.cost_usd:.6f}"


def test_no_link_left_hands_the_job_to_people_with_the_last_outcome() -> None:
    # Given every provider failing with a server error
    h = Harness(providers={"openai": [_down], "anthropic": [_down], "groq": [_down]})
    ran = h.runner.run(h.job())
    # Then the job is escalated with that reason, and its failed calls are charged
    assert ran.result.status == "escalated"
    assert h.escalations[0][1] is Reason.SERVER_ERROR
    assert len(ran.result.attempts) >= 2 and h.jobs.costs[0]["status"] == "escalated"
    line = ran.summary()
    assert line.startswith("escalated on mini") and line.endswith(f"escalation {ran.result.escalation_id}")


def test_links_all_at_their_rate_limit_send_the_job_back_to_its_queue() -> None:
    # Given every model of the mini tier at 1 request a minute, and a job that used them up
    overrides = {"limits.provider_limit": "wait"}
    settings = load_settings(env={}, overrides=overrides)
    for provider, model in settings.tier("mini").links():
        settings.model(provider, model).rpm = 1
    h = Harness(settings)
    h.runner.run(h.job(task_id="a"))
    # When the next job starts, Then it waits in its queue, carrying the attempts so far
    job = h.job(task_id="b")
    with pytest.raises(Requeue):
        h.runner.run(job)
    assert job.envelope.attempts and job.envelope.attempts[-1].outcome == "throttled"


def test_a_retried_job_is_charged_only_for_its_new_calls() -> None:
    # Given a job people retried, carrying its first run's (already charged) attempts
    h = Harness()
    provider, model = "openai", "gpt-4.1-mini"
    earlier = Attempt(
        link=f"{provider}:{model}", provider=provider, model=model, outcome="server_error", cost_usd=1.0
    )
    routing = RoutingDecision(tier=Tier.MINI, reasons=["retried"], classifier="human")
    envelope = JobEnvelope(id="t1", submitted_at=0.0, routing=routing, attempts=[earlier], retry_of="esc-0")
    ran = h.runner.run(h.job(envelope=envelope))
    # Then the result shows every attempt, and the cost line only this run's
    assert len(ran.result.attempts) == 2
    assert float(h.jobs.costs[0]["cost"]) == pytest.approx(ran.result.attempts[1].cost_usd)


def test_a_middleware_can_replace_the_result_after_the_call() -> None:
    # Given a middleware that rewrites every answer (as the quality gate will)
    class Shout(Middleware):
        def after_call(self, job: object, result: TaskResult) -> TaskResult:
            return result.model_copy(update={"answer": (result.answer or "").upper()})

    h = Harness(extra=[Shout()])
    ran = h.runner.run(h.job())
    assert ran.result.answer == "FINE" and h.jobs.results["t1"]["answer"] == "FINE"


class _ReplyLost(MemoryEscalationStore):
    """A store whose first create is applied but whose reply never arrives (the broker died after
    EXEC), as a worker sees it: BrokerError."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def create(self, new: NewEscalation) -> tuple[EscalationRecord, bool]:
        made = super().create(new)
        if not self.lost:
            self.lost += 1
            raise BrokerError("connection lost")
        return made


def test_a_hand_off_whose_write_was_cut_off_is_recorded_once_and_announced() -> None:
    # Given every provider failing, and the broker dying while the escalation is being written
    down = {"openai": [_down], "anthropic": [_down], "groq": [_down]}
    h = Harness(providers=down)
    h.store = _ReplyLost()
    h.handoff = Handoff(h.store, announce=h.announced.append)
    # When the delivery fails with the broker error (its message goes back to the queue; FleetTask)
    with pytest.raises(BrokerError):
        h.runner.run(h.job())
    assert "t1" not in h.jobs.results and h.jobs.locks == {}
    # And the job is delivered again
    ran = h.runner.run(h.job(redelivered=True))
    # Then there is one escalation, the one the result names, and it was announced (once)
    [record] = h.store.list()
    assert ran.result.status == "escalated" and ran.result.escalation_id == record.id
    assert h.announced == [record.id]
