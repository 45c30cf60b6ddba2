"""Fault injection for drills and the chaos tests: a job whose prompt holds the configured marker
makes its worker process exit at once (a crash every time it is delivered). Off unless set."""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel, ConfigDict

from fleet.middleware.base import Job, Middleware

__all__ = ["ChaosHook", "ChaosSettings"]

log = logging.getLogger(__name__)

#: The exit code of a worker process the chaos hook kills.
CHAOS_EXIT_CODE = 70


class ChaosSettings(BaseModel):
    """``[chaos]``: fault injection for drills and the chaos tests; off unless set."""

    model_config = ConfigDict(extra="forbid")

    #: A worker that runs a job whose prompt holds this marker exits at once (a crash every time).
    crash_marker: str = ""


class ChaosHook(Middleware):
    def __init__(self, settings: ChaosSettings) -> None:
        self.marker = settings.crash_marker

    def before_call(self, job: Job) -> None:
        if self.marker and self.marker in job.request.text:
            log.critical("chaos: crash marker in task %s: exiting this worker process", job.id)
            os._exit(CHAOS_EXIT_CODE)
