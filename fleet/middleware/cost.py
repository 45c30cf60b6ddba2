"""One cost line per finished job (completed or escalated; a shadow run's says ``shadow``), and the
job's cost added to its team's spend (fleet.budgets), written with the job's last round trip."""

from __future__ import annotations

import time

from fleet.budgets import charge, team_of
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
        team = team_of(self.settings.budgets, job.request.metadata)
        if team is not None:
            fields["team"] = team
            if job.envelope.shadow is None:  # the fleet's own check, not the team's spend
                charge(job.tail, team, float(fields["cost"]), time.time())
        job.tail.append_cost(fields)
