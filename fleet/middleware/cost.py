"""One cost line per finished job (completed or escalated; a shadow run's says ``shadow``), written
with the job's last round trip."""

from __future__ import annotations

from fleet.costs import job_fields
from fleet.middleware.base import Job, Middleware
from fleet.models import TaskResult
from fleet.settings import Settings

__all__ = ["CostRecord"]


class CostRecord(Middleware):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def before_finish(self, job: Job, result: TaskResult) -> None:
        fields = job_fields(self.settings, result, job.charged(result))
        if job.envelope.shadow is not None:
            fields["status"] = "shadow"  # a shadow run's cost is its own line, not the job's
        if job.envelope.step is not None:
            fields["pipeline"], fields["step"] = job.envelope.step.pipeline, job.envelope.step.step
        job.tail.append_cost(fields)
