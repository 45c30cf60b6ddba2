"""The poison guard: a job delivered more than limits.max_deliveries times goes to people instead of
killing worker after worker; first deliveries and copies waiting for a lock are not counted."""

from __future__ import annotations

from fleet.errors import Reason

from .harness import Harness


def test_a_first_delivery_is_not_counted() -> None:
    h = Harness()
    h.runner.run(h.job())
    assert h.jobs.deliveries == {}


def test_past_the_limit_the_job_is_handed_to_people_without_a_call() -> None:
    # Given a job redelivered as often as the limit allows
    h = Harness()
    limit = h.settings.limits.max_deliveries
    h.jobs.deliveries["t1"] = limit - 1
    # When it is delivered once more
    ran = h.runner.run(h.job(redelivered=True))
    # Then it is escalated as a poison message, no model was called, its lock is released
    assert ran.result.status == "escalated" and ran.result.reason == Reason.POISON_MESSAGE
    [(_, reason, detail)] = h.escalations
    assert reason is Reason.POISON_MESSAGE and f"delivered {limit + 1} times" in detail
    assert all(p.calls == 0 for p in h.providers.values())
    assert h.jobs.locks == {} and h.jobs.results["t1"]["status"] == "escalated"


def test_within_the_limit_a_redelivery_runs() -> None:
    h = Harness()
    ran = h.runner.run(h.job(redelivered=True))
    assert ran.result.status == "completed" and h.jobs.deliveries == {"t1": 1}
